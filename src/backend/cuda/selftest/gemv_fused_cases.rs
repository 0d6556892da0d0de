//! The GEMVs with a fused prologue at the Llama-3.1-8B and Qwen2.5-0.5B decode shapes, one
//! and two rows, each timed next to the unfused launches it replaces:
//! - the SwiGLU in the down projection (`gemv1_silu` / `gemv2_silu`), against the reference's
//!   `silu_mul` (rounded to the dtype, as the unfused kernel stores it) then a
//!   double-precision x W^T;
//! - the residual add + RMS norm in the QKV / gate_up projections (`gemv1_add_norm` /
//!   `gemv2_add_norm`), against the rounded sum, its norm in f64 rounded to the dtype, then
//!   x W^T; the new residual stream must equal the rounded sum exactly.

use super::compare::Check;
use super::gemv_cases::reference_linear;
use super::suite::Suite;
use super::timing::time_us;
use crate::backend::cuda::gemv_norm::AddNormInput;
use crate::backend::cuda::{reference, CudaTensor, DType};
use anyhow::{ensure, Result};

/// `(inter, hidden, model)`: the down projection's in and out features.
const DOWN_SHAPES: [(usize, usize, &str); 2] =
    [(14_336, 4096, "llama-8b"), (4864, 896, "qwen-0.5b")];

/// `(hidden, out features, layer)`: projections behind a norm.
const NORM_SHAPES: [(usize, usize, &str); 3] = [
    (4096, 6144, "llama-8b qkv"),
    (4096, 28_672, "llama-8b gate_up"),
    (896, 1152, "qwen-0.5b qkv"),
];

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    silu_cases(s, dtype)?;
    add_norm_cases(s, dtype)
}

fn silu_cases(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let dev = s.dev;
    for (inter, n, model) in DOWN_SHAPES {
        let w_host = s.random(n * inter, 1.0, dtype);
        let w = CudaTensor::from_f32(dev, dtype, &[n, inter], &w_host)?;
        for m in [1, 2] {
            let gu_host = s.random(m * 2 * inter, 4.0, dtype);
            let h_host: Vec<f32> = reference::silu_mul(&gu_host, inter)
                .into_iter()
                .map(|v| dtype.round(v))
                .collect();
            let expected = reference_linear(&h_host, &w_host, inter);
            let gate_up = CudaTensor::from_f32(dev, dtype, &[m, 2 * inter], &gu_host)?;
            let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
            let fused = dev.silu_mul_gemv(&gate_up, &w, None, &mut y)?;
            ensure!(
                fused,
                "the fused GEMV declined m={m} I={inter} n={n} (KILN_GEMV=0?)"
            );
            let row = s.check(
                "gemv_silu",
                format!("m={m} I={inter} n={n} ({model} down)"),
                dtype,
                Check::Reduction,
                &y.to_f32(dev)?,
                &expected,
            );
            let iters = s.sizes.timing_iters * 5;
            let us = time_us(dev, iters, || {
                dev.silu_mul_gemv(&gate_up, &w, None, &mut y).map(|_| ())
            })?;
            let mut h = CudaTensor::zeros(dev, dtype, &[m, inter])?;
            let unfused_us = time_us(dev, iters, || {
                dev.silu_mul(&gate_up, &mut h)?;
                dev.gemv(&h, &w, None, &mut y)
            })?;
            note_times(s, row, us, "silu_mul + gemv", unfused_us);
        }
    }
    Ok(())
}

fn add_norm_cases(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let dev = s.dev;
    let eps = 1e-5f32;
    for (k, n, layer) in NORM_SHAPES {
        let w_host = s.random(n * k, 1.0, dtype);
        let norm_host = s.random(k, 1.5, dtype);
        let w = CudaTensor::from_f32(dev, dtype, &[n, k], &w_host)?;
        let norm_w = CudaTensor::from_f32(dev, dtype, &[k], &norm_host)?;
        for m in [1, 2] {
            let x_host = s.random(m * k, 2.0, dtype);
            let r_host = s.random(m * k, 2.0, dtype);
            let sum_host: Vec<f32> = x_host
                .iter()
                .zip(&r_host)
                .map(|(a, b)| dtype.round(a + b))
                .collect();
            let normed: Vec<f32> = sum_host
                .chunks(k)
                .flat_map(|row| {
                    let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                    let inv = 1.0 / (ss / k as f64 + f64::from(eps)).sqrt();
                    row.iter()
                        .zip(&norm_host)
                        .map(move |(&v, &g)| dtype.round((f64::from(v) * inv) as f32 * g))
                })
                .collect();
            let expected = reference_linear(&normed, &w_host, k);
            let x = CudaTensor::from_f32(dev, dtype, &[m, k], &x_host)?;
            let residual = CudaTensor::from_f32(dev, dtype, &[m, k], &r_host)?;
            let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
            let mut sum = CudaTensor::zeros(dev, dtype, &[m, k])?;
            let input = AddNormInput {
                x: &x,
                residual: &residual,
                norm_weight: &norm_w,
                eps,
            };
            let fused = dev.add_norm_gemv(&input, &w, None, &mut y, &mut sum)?;
            ensure!(
                fused,
                "the fused GEMV declined m={m} k={k} n={n} (KILN_GEMV=0?)"
            );
            let label = format!("m={m} k={k} n={n} ({layer})");
            s.check(
                "gemv_add_norm(residual)",
                label.clone(),
                dtype,
                Check::Exact,
                &sum.to_f32(dev)?,
                &sum_host,
            );
            let row = s.check(
                "gemv_add_norm",
                label,
                dtype,
                Check::Reduction,
                &y.to_f32(dev)?,
                &expected,
            );
            let iters = s.sizes.timing_iters * 5;
            let us = time_us(dev, iters, || {
                dev.add_norm_gemv(&input, &w, None, &mut y, &mut sum)
                    .map(|_| ())
            })?;
            // The unfused pair works in place (values drift over the iterations; the time
            // does not depend on them).
            let mut hx = CudaTensor::from_f32(dev, dtype, &[m, k], &x_host)?;
            let mut hr = CudaTensor::from_f32(dev, dtype, &[m, k], &r_host)?;
            let unfused_us = time_us(dev, iters, || {
                dev.fused_add_rms_norm(&mut hx, &mut hr, &norm_w, eps)?;
                dev.gemv(&hx, &w, None, &mut y)
            })?;
            note_times(s, row, us, "fused_add_rms_norm + gemv", unfused_us);
        }
    }
    Ok(())
}

/// The fused kernel's time on its row, with the unfused launches' time and the ratio.
fn note_times(s: &mut Suite<'_>, row: usize, us: f64, unfused: &str, unfused_us: f64) {
    s.rows[row].us_per_call = Some(us);
    s.rows[row].note = format!(
        "{unfused} {unfused_us:.1} us: fused/unfused time {:.2}",
        us / unfused_us
    );
}
