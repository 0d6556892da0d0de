//! The GEMVs with a fused prologue at the Llama-3.1-8B and Qwen2.5-0.5B decode shapes, one
//! and two rows, each timed next to the unfused launches it replaces:
//! - the residual add + RMS norm in the QKV / gate_up projections (`gemv1_add_norm` /
//!   `gemv2_add_norm`), against the rounded sum, its norm in f64 rounded to the dtype, then
//!   x W^T; the new residual stream must equal the rounded sum exactly;
//! - the same with the SwiGLU as the gate_up projection's epilogue (`gemv1_add_norm_swiglu`
//!   / `gemv2_add_norm_swiglu`), against that reference rounded to the dtype, then the
//!   reference's `silu_mul` rounded as the unfused kernel stores it;
//! - the SwiGLU epilogue alone (`gemv1_swiglu` / `gemv2_swiglu`) on the normalised rows,
//!   against the same reference, timed next to the GEMV + `silu_mul`.

use super::compare::Check;
use super::gemv_cases::reference_linear;
use super::suite::Suite;
use super::timing::time_us;
use crate::backend::cuda::gemv_norm::{AddNormInput, GemvEpilogue};
use crate::backend::cuda::{reference, CudaTensor, DType};
use anyhow::{ensure, Result};

/// `(hidden, out features, layer)`: projections behind a norm.
const NORM_SHAPES: [(usize, usize, &str); 3] = [
    (4096, 6144, "llama-8b qkv"),
    (4096, 28_672, "llama-8b gate_up"),
    (896, 1152, "qwen-0.5b qkv"),
];

/// `(hidden, 2 * inter, model)`: gate_up projections, whose SwiGLU the epilogue computes.
const GATE_UP_SHAPES: [(usize, usize, &str); 2] =
    [(4096, 28_672, "llama-8b"), (896, 9728, "qwen-0.5b")];

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    add_norm_cases(s, dtype)?;
    swiglu_cases(s, dtype)
}

/// `(x + residual rounded, rms_norm of it * weight rounded)`, row by row, the norm in f64.
fn norm_reference(
    x: &[f32],
    r: &[f32],
    norm_w: &[f32],
    eps: f32,
    dtype: DType,
) -> (Vec<f32>, Vec<f32>) {
    let k = norm_w.len();
    let sum: Vec<f32> = x.iter().zip(r).map(|(a, b)| dtype.round(a + b)).collect();
    let normed = sum
        .chunks(k)
        .flat_map(|row| {
            let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let inv = 1.0 / (ss / k as f64 + f64::from(eps)).sqrt();
            row.iter()
                .zip(norm_w)
                .map(move |(&v, &g)| dtype.round((f64::from(v) * inv) as f32 * g))
        })
        .collect();
    (sum, normed)
}

/// One case's input rows and residual on the device, and a zeroed buffer for their sum.
fn add_norm_buffers(
    s: &Suite<'_>,
    dtype: DType,
    m: usize,
    k: usize,
    x_host: &[f32],
    r_host: &[f32],
) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
    Ok((
        CudaTensor::from_f32(s.dev, dtype, &[m, k], x_host)?,
        CudaTensor::from_f32(s.dev, dtype, &[m, k], r_host)?,
        CudaTensor::zeros(s.dev, dtype, &[m, k])?,
    ))
}

fn swiglu_cases(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let dev = s.dev;
    let eps = 1e-5f32;
    for (k, n, model) in GATE_UP_SHAPES {
        let inter = n / 2;
        let w_host = s.random(n * k, 1.0, dtype);
        let norm_host = s.random(k, 1.5, dtype);
        let w = CudaTensor::from_f32(dev, dtype, &[n, k], &w_host)?;
        let norm_w = CudaTensor::from_f32(dev, dtype, &[k], &norm_host)?;
        for m in [1, 2] {
            let x_host = s.random(m * k, 2.0, dtype);
            let r_host = s.random(m * k, 2.0, dtype);
            let (sum_host, normed) = norm_reference(&x_host, &r_host, &norm_host, eps, dtype);
            let gate_up: Vec<f32> = reference_linear(&normed, &w_host, k)
                .into_iter()
                .map(|v| dtype.round(v))
                .collect();
            let expected: Vec<f32> = reference::silu_mul(&gate_up, inter)
                .into_iter()
                .map(|v| dtype.round(v))
                .collect();
            let (x, residual, mut sum) = add_norm_buffers(s, dtype, m, k, &x_host, &r_host)?;
            let mut act = CudaTensor::zeros(dev, dtype, &[m, inter])?;
            let input = AddNormInput {
                x: &x,
                residual: &residual,
                norm_weight: &norm_w,
                eps,
            };
            let swiglu = GemvEpilogue::SwiGlu;
            let fused = dev.add_norm_gemv(&input, &w, None, swiglu, &mut act, &mut sum)?;
            ensure!(
                fused,
                "the fused GEMV declined m={m} k={k} n={n} (KILN_GEMV=0?)"
            );
            let label = format!("m={m} k={k} I={inter} ({model} gate_up)");
            let outputs = [(&sum, &sum_host[..]), (&act, &expected[..])];
            let row = check_outputs(s, "gemv_add_norm_swiglu", label, dtype, outputs)?;
            let iters = s.sizes.timing_iters * 5;
            let us = time_us(dev, iters, || {
                dev.add_norm_gemv(&input, &w, None, swiglu, &mut act, &mut sum)
                    .map(|_| ())
            })?;
            let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
            let plain = GemvEpilogue::Plain;
            let unfused_us = time_us(dev, iters, || {
                dev.add_norm_gemv(&input, &w, None, plain, &mut y, &mut sum)?;
                dev.silu_mul(&y, &mut act)
            })?;
            note_times(s, row, us, "gemv_add_norm + silu_mul", unfused_us);
            plain_swiglu_case(s, (&w, n), &normed, &expected, dtype)?;
        }
    }
    Ok(())
}

/// `gemv<m>_swiglu` on the normalised rows `normed` against `expected` (the reference's
/// SwiGLU), timed next to the plain GEMV + `silu_mul` it replaces.
fn plain_swiglu_case(
    s: &mut Suite<'_>,
    (w, n): (&CudaTensor, usize),
    normed: &[f32],
    expected: &[f32],
    dtype: DType,
) -> Result<()> {
    let dev = s.dev;
    let (inter, m) = (n / 2, expected.len() / (n / 2));
    let k = normed.len() / m;
    let x = CudaTensor::from_f32(dev, dtype, &[m, k], normed)?;
    let mut act = CudaTensor::zeros(dev, dtype, &[m, inter])?;
    ensure!(
        dev.gemv_swiglu(&x, w, None, &mut act)?,
        "the SwiGLU GEMV declined m={m} k={k} n={n} (KILN_GEMV=0?)"
    );
    let label = format!("m={m} k={k} I={inter} (gate_up)");
    let got = act.to_f32(dev)?;
    let row = s.check(
        "gemv_swiglu",
        label,
        dtype,
        Check::Reduction,
        &got,
        expected,
    );
    let iters = s.sizes.timing_iters * 5;
    let us = time_us(dev, iters, || {
        dev.gemv_swiglu(&x, w, None, &mut act).map(|_| ())
    })?;
    let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
    let unfused_us = time_us(dev, iters, || {
        dev.gemv(&x, w, None, &mut y)?;
        dev.silu_mul(&y, &mut act)
    })?;
    note_times(s, row, us, "gemv + silu_mul", unfused_us);
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
            let (sum_host, normed) = norm_reference(&x_host, &r_host, &norm_host, eps, dtype);
            let expected = reference_linear(&normed, &w_host, k);
            let (x, residual, mut sum) = add_norm_buffers(s, dtype, m, k, &x_host, &r_host)?;
            let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
            let input = AddNormInput {
                x: &x,
                residual: &residual,
                norm_weight: &norm_w,
                eps,
            };
            let plain = GemvEpilogue::Plain;
            let fused = dev.add_norm_gemv(&input, &w, None, plain, &mut y, &mut sum)?;
            ensure!(
                fused,
                "the fused GEMV declined m={m} k={k} n={n} (KILN_GEMV=0?)"
            );
            let label = format!("m={m} k={k} n={n} ({layer})");
            let outputs = [(&sum, &sum_host[..]), (&y, &expected[..])];
            let row = check_outputs(s, "gemv_add_norm", label, dtype, outputs)?;
            let iters = s.sizes.timing_iters * 5;
            let us = time_us(dev, iters, || {
                dev.add_norm_gemv(&input, &w, None, plain, &mut y, &mut sum)
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

/// The norm-fused kernel's two outputs against their references: the new residual stream
/// exactly (row `op(residual)`), the projection as a reduction (row `op`, whose index is
/// returned for the timing note).
fn check_outputs(
    s: &mut Suite<'_>,
    op: &str,
    label: String,
    dtype: DType,
    [(sum, sum_want), (out, out_want)]: [(&CudaTensor, &[f32]); 2],
) -> Result<usize> {
    let dev = s.dev;
    let residual_op = format!("{op}(residual)");
    s.check(
        &residual_op,
        label.clone(),
        dtype,
        Check::Exact,
        &sum.to_f32(dev)?,
        sum_want,
    );
    Ok(s.check(
        op,
        label,
        dtype,
        Check::Reduction,
        &out.to_f32(dev)?,
        out_want,
    ))
}

/// The fused kernel's time on its row, with the unfused launches' time and the ratio.
fn note_times(s: &mut Suite<'_>, row: usize, us: f64, unfused: &str, unfused_us: f64) {
    s.rows[row].us_per_call = Some(us);
    s.rows[row].note = format!(
        "{unfused} {unfused_us:.1} us: fused/unfused time {:.2}",
        us / unfused_us
    );
}
