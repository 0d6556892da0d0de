//! The GEMV (`kernels/gemv.cu`) at the Llama-3.1-8B decode shapes, M = 1, 2, 4, 8, checked
//! against a double-precision host x W^T and timed next to cuBLAS at the same shape. The
//! note carries both timings and achieved GB/s (weights + x + y once), and which of the two
//! `linear` picks for that shape ([`choose_linear`], `KILN_GEMV`).

use super::compare::Check;
use super::suite::Suite;
use super::timing::time_us;
use crate::backend::cuda::gemv::{
    choose_linear, gemv_bytes, gemv_enabled, LinearPath, LinearShape,
};
use crate::backend::cuda::{CudaTensor, DType};
use anyhow::Result;
use rayon::prelude::*;

/// `(k, n, layer)`: in and out features of the decode GEMMs (qkv, gate_up fused, down, lm head).
const SHAPES: [(usize, usize, &str); 4] = [
    (4096, 6144, "qkv"),
    (4096, 28_672, "gate_up"),
    (14_336, 4096, "down"),
    (4096, 128_256, "lm_head"),
];

/// Rows of x; the reference is computed once for the largest, the others are its prefix.
const ROWS: [usize; 4] = [1, 2, 4, 8];

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    // `--quick` keeps the 1 GB lm head to bf16, the dtype models run in.
    let quick = s.sizes.timing_iters < 10;
    let shapes: Vec<_> = SHAPES
        .iter()
        .copied()
        .filter(|&(_, _, layer)| !(quick && layer == "lm_head" && dtype != DType::BF16))
        .collect();
    let max_weights = shapes.iter().map(|(k, n, _)| k * n).max().unwrap_or(0);
    let max_rows = ROWS[ROWS.len() - 1];
    let weights = s.random(max_weights, 1.0, dtype);
    let dev = s.dev;
    for (k, n, layer) in shapes {
        let w_host = &weights[..n * k];
        let x_host = s.random(max_rows * k, 1.0, dtype);
        let reference = reference_linear(&x_host, w_host, k);
        let w = CudaTensor::from_f32(dev, dtype, &[n, k], w_host)?;
        for m in ROWS {
            let x = CudaTensor::from_f32(dev, dtype, &[m, k], &x_host[..m * k])?;
            let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
            dev.gemv(&x, &w, None, &mut y)?;
            let row = s.check(
                "gemv",
                format!("m={m} k={k} n={n} ({layer})"),
                dtype,
                Check::Reduction,
                &y.to_f32(dev)?,
                &reference[..m * n],
            );
            let iters = s.sizes.timing_iters * 5;
            let us = time_us(dev, iters, || dev.gemv(&x, &w, None, &mut y))?;
            let blas_us = time_us(dev, iters, || dev.blas().linear(&x, &w, &mut y))?;
            let gbs = |us: f64| gemv_bytes(m, k, n, dtype) as f64 / (us * 1e-6) / 1e9;
            let routed = choose_linear(
                gemv_enabled(),
                LinearShape {
                    rows: m,
                    k,
                    n,
                    aligned: true,
                },
            );
            s.rows[row].us_per_call = Some(us);
            s.rows[row].note = format!(
                "{:.0} GB/s; cuBLAS {blas_us:.1} us {:.0} GB/s; gemv/cuBLAS time {:.2}; linear -> {}",
                gbs(us),
                gbs(blas_us),
                us / blas_us,
                if routed == LinearPath::Gemv { "gemv" } else { "cuBLAS" }
            );
        }
        if layer == "qkv" {
            bias_case(s, dtype, &w, &x_host, &reference, k, n)?;
        }
    }
    Ok(())
}

/// The fused bias (Qwen2's qkv) at M = 1, through the routed entry point `linear` uses.
fn bias_case(
    s: &mut Suite<'_>,
    dtype: DType,
    w: &CudaTensor,
    x_host: &[f32],
    reference: &[f32],
    k: usize,
    n: usize,
) -> Result<()> {
    let dev = s.dev;
    let bias_host = s.random(n, 4.0, dtype);
    let x = CudaTensor::from_f32(dev, dtype, &[1, k], &x_host[..k])?;
    let bias = CudaTensor::from_f32(dev, dtype, &[n], &bias_host)?;
    let mut y = CudaTensor::zeros(dev, dtype, &[1, n])?;
    dev.gemv(&x, w, Some(&bias), &mut y)?;
    let expected: Vec<f32> = reference[..n]
        .iter()
        .zip(&bias_host)
        .map(|(a, b)| a + b)
        .collect();
    let row = s.check(
        "gemv+bias",
        format!("m=1 k={k} n={n}"),
        dtype,
        Check::Reduction,
        &y.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.gemv(&x, w, Some(&bias), &mut y))?;
    // The routed path `CudaBackend::linear` takes must agree too (GEMV or cuBLAS + bias).
    let mut routed = CudaTensor::zeros(dev, dtype, &[1, n])?;
    dev.linear_routed(&x, w, Some(&bias), &mut routed)?;
    s.check(
        "linear(routed)+bias",
        format!("m=1 k={k} n={n}"),
        dtype,
        Check::Reduction,
        &routed.to_f32(dev)?,
        &expected,
    );
    Ok(())
}

/// `y[m, n] = x[m, k] * w[n, k]^T` in f64, parallel over the rows of w (an lm head is half
/// a billion products per row of x).
pub(super) fn reference_linear(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let m = x.len() / k;
    let n = w.len() / k;
    let per_row: Vec<Vec<f64>> = w
        .par_chunks(k)
        .map(|w_row| {
            x.chunks(k)
                .map(|x_row| {
                    x_row
                        .iter()
                        .zip(w_row)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                })
                .collect()
        })
        .collect();
    let mut out = vec![0.0f32; m * n];
    for (j, col) in per_row.iter().enumerate() {
        for (i, v) in col.iter().enumerate() {
            out[i * n + j] = *v as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_x_times_w_transposed() {
        // x [2, 2], w [3, 2]
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        assert_eq!(
            reference_linear(&x, &w, 2),
            vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]
        );
    }
}
