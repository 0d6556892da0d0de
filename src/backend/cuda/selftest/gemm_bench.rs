//! cuBLAS bf16 GEMM timings at the decode shapes of Llama-3.1-8B (batch 1 and 32):
//! `y[m, n] = x[m, k] * w[n, k]^T`; batch-1 decode is bound by reading the weights, so the
//! figure of merit is achieved GB/s.

use super::report::Row;
use super::suite::Suite;
use crate::backend::cuda::{CudaTensor, DType};
use anyhow::Result;

/// `(k, n)`: in and out features.
const SHAPES: [(usize, usize); 3] = [(4096, 4096), (4096, 14336), (14336, 4096)];

pub fn run(s: &mut Suite<'_>) -> Result<()> {
    let dtype = DType::BF16;
    let dev = s.dev;
    // One random weight buffer serves every shape (all have at most 14336 * 4096 values).
    let max_weights = SHAPES.iter().map(|(k, n)| k * n).max().unwrap_or(0);
    let weights = s.random(max_weights, 0.05, dtype);
    for (k, n) in SHAPES {
        let w = CudaTensor::from_f32(dev, dtype, &[n, k], &weights[..n * k])?;
        for m in [1usize, 32] {
            let x = CudaTensor::from_f32(dev, dtype, &[m, k], &weights[..m * k])?;
            let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
            let iters = s.sizes.timing_iters * 5;
            let us = super::timing::time_us(dev, iters, || dev.blas().linear(&x, &w, &mut y))?;
            let bytes = ((n * k + m * k + m * n) * dtype.size_in_bytes()) as f64;
            let mut row =
                Row::checked("gemm bench", format!("m={m} k={k} n={n}"), "bf16", 0.0, 0.0);
            row.us_per_call = Some(us);
            row.note = format!("{:.0} GB/s", bytes / (us * 1e-6) / 1e9);
            s.rows.push(row);
        }
    }
    Ok(())
}
