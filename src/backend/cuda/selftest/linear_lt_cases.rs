//! The cuBLASLt linear (`gemm_lt.rs`) at the Llama-3.1-8B shapes (qkv, o, gate_up, down,
//! lm head) for M = 1, 8, 32, 512 and 1024, without and with the fused bias, checked
//! against the CPU backend and timed next to cublasGemmEx (+ the add_bias kernel) at the
//! same shape. It runs whatever `KILN_CUBLASLT` says; the note says which path `linear`
//! takes now.
//!
//! Cost: the CPU computes a sample of rows ([`sampled_rows`]: the first eight, a stride
//! and every M's last) rather than 1024 lm-head rows, and the weights tile a block of
//! random values, both so a run stays within seconds; an index or layout bug still moves
//! every sampled row.

use super::compare::Check;
use super::suite::Suite;
use super::timing::time_us;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::gemv::{choose_linear, gemv_enabled, LinearPath, LinearShape};
use crate::backend::cuda::{CudaDevice, CudaTensor, DType};
use crate::backend::Backend;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// `(k, n, layer)`: in and out features of the 8B's linear layers.
const SHAPES: [(usize, usize, &str); 5] = [
    (4096, 6144, "qkv"),
    (4096, 4096, "o"),
    (4096, 28_672, "gate_up"),
    (14_336, 4096, "down"),
    (4096, 128_256, "lm_head"),
];

/// Rows of x (decode batches 1, 8, 32; prefills of 512 and 1024 tokens). Every M uses a
/// prefix of the same x, so one reference serves them all.
const ROWS: [usize; 5] = [1, 8, 32, 512, 1024];

/// Random values the weights repeat: a prime count, so no two rows of w (K a multiple of
/// 8) start at the same place in it.
const WEIGHT_BLOCK: usize = 1_048_573;

pub fn run(s: &mut Suite<'_>, dtype: DType) {
    // One row saying why, not one per shape, when cuBLASLt cannot be loaded.
    if let Err(err) = s.dev.blas().lt() {
        s.error("linear(cuBLASLt)", dtype, &err);
        return;
    }
    // `--quick` keeps the 1 GB lm head to bf16, as the GEMV cases do.
    let quick = s.sizes.timing_iters < 10;
    let max_rows = ROWS[ROWS.len() - 1];
    let max_k = SHAPES.iter().map(|&(k, _, _)| k).max().unwrap_or(0);
    let block = s.random(WEIGHT_BLOCK, 1.0, dtype);
    let x_host = s.random(max_rows * max_k, 1.0, dtype);
    for (k, n, layer) in SHAPES {
        if quick && layer == "lm_head" && dtype != DType::BF16 {
            continue;
        }
        let bias_host = s.random(n, 4.0, dtype);
        let case = Case {
            k,
            n,
            layer,
            w_host: tiled(&block, n * k),
            x_host: &x_host[..max_rows * k],
            bias_host,
        };
        if let Err(err) = case.run(s, dtype) {
            s.error(&format!("linear(cuBLASLt) {layer}"), dtype, &err);
        }
    }
}

/// One layer's shape and host values.
struct Case<'a> {
    k: usize,
    n: usize,
    layer: &'static str,
    w_host: Vec<f32>,
    /// `ROWS`' largest M rows of x.
    x_host: &'a [f32],
    bias_host: Vec<f32>,
}

impl Case<'_> {
    fn run(&self, s: &mut Suite<'_>, dtype: DType) -> Result<()> {
        let (k, n) = (self.k, self.n);
        let dev = s.dev;
        let lt = dev.blas().lt()?;
        let sampled = sampled_rows(&ROWS);
        let reference = self.cpu_reference(&sampled)?;
        let w = CudaTensor::from_f32(dev, dtype, &[n, k], &self.w_host)?;
        let bias = CudaTensor::from_f32(dev, dtype, &[n], &self.bias_host)?;
        for m in ROWS {
            let x = CudaTensor::from_f32(dev, dtype, &[m, k], &self.x_host[..m * k])?;
            let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
            for b in [None, Some(&bias)] {
                lt.linear(&x, &w, b, &mut y)?;
                let all = y.to_f32(dev)?;
                let (mut got, mut want) = (Vec::new(), Vec::new());
                for (i, &r) in sampled.iter().enumerate().filter(|(_, r)| **r < m) {
                    got.extend_from_slice(&all[r * n..(r + 1) * n]);
                    let row = &reference[i * n..(i + 1) * n];
                    match b {
                        Some(_) => want.extend(row.iter().zip(&self.bias_host).map(|(y, b)| y + b)),
                        None => want.extend_from_slice(row),
                    }
                }
                let op = if b.is_some() {
                    "linear(cuBLASLt)+bias"
                } else {
                    "linear(cuBLASLt)"
                };
                let shape = format!("m={m} k={k} n={n} ({})", self.layer);
                let row = s.check(op, shape, dtype, Check::Reduction, &got, &want);
                let iters = s.sizes.timing_iters;
                let lt_us = time_us(dev, iters, || lt.linear(&x, &w, b, &mut y))?;
                let ex_us = time_us(dev, iters, || dev.linear_gemm_ex(&x, &w, b, &mut y))?;
                let tflops = 2.0 * (m * n * k) as f64 / (lt_us * 1e-6) / 1e12;
                s.rows[row].us_per_call = Some(lt_us);
                s.rows[row].note = format!(
                    "cublasGemmEx{} {ex_us:.1} us; Lt/GemmEx time {:.2}; {tflops:.1} TFLOP/s; \
                     linear -> {}",
                    if b.is_some() { "+add_bias" } else { "" },
                    lt_us / ex_us,
                    routed_path(dev, m, k, n)
                );
            }
        }
        Ok(())
    }

    /// The CPU backend's `x W^T` (f32) for the `sampled` rows of x, `[sampled.len(), n]`.
    fn cpu_reference(&self, sampled: &[usize]) -> Result<Vec<f32>> {
        let k = self.k;
        let rows: Vec<f32> = sampled
            .iter()
            .flat_map(|&r| self.x_host[r * k..(r + 1) * k].iter().copied())
            .collect();
        let x = Tensor::from_vec(rows, (sampled.len(), k), &Device::Cpu)?;
        let w = Tensor::from_slice(&self.w_host, (self.n, k), &Device::Cpu)?;
        let y = CpuBackend::new().linear(&x, &w, None)?;
        Ok(y.flatten_all()?.to_vec1()?)
    }
}

/// What `CudaBackend::linear` runs for this shape with the current switches.
fn routed_path(dev: &CudaDevice, m: usize, k: usize, n: usize) -> &'static str {
    let shape = LinearShape {
        rows: m,
        k,
        n,
        aligned: true,
    };
    match choose_linear(gemv_enabled(), shape) {
        LinearPath::Gemv => "gemv",
        LinearPath::Cublas if dev.cublaslt() => "cuBLASLt",
        LinearPath::Cublas => "cublasGemmEx",
    }
}

/// Rows of x the CPU checks, sorted: the first eight (every decode M's own rows), every
/// 97th, and the last row of each M (where a tile edge falls).
fn sampled_rows(rows: &[usize]) -> Vec<usize> {
    let max = rows.iter().copied().max().unwrap_or(0);
    let mut out: Vec<usize> = (0..max.min(8))
        .chain((0..max).step_by(97))
        .chain(rows.iter().filter(|&&m| m > 0).map(|m| m - 1))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `len` values repeating `block`.
fn tiled(block: &[f32], len: usize) -> Vec<f32> {
    block.iter().copied().cycle().take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_rows_cover_each_m_and_stay_in_range() {
        let rows = sampled_rows(&ROWS);
        assert!(rows.windows(2).all(|p| p[0] < p[1]));
        assert!(rows.iter().all(|&r| r < 1024));
        for m in ROWS {
            assert!(rows.contains(&(m - 1)));
        }
        assert!((0..8).all(|r| rows.contains(&r)));
        // Enough rows to see a layout bug, few enough for the lm head on the CPU.
        assert!(rows.len() >= 16 && rows.len() <= 32, "{}", rows.len());
        assert_eq!(sampled_rows(&[1]), vec![0]);
    }

    #[test]
    fn tiled_weights_differ_from_row_to_row() {
        let block: Vec<f32> = (0..WEIGHT_BLOCK).map(|i| i as f32).collect();
        let w = tiled(&block, 3 * WEIGHT_BLOCK / 2);
        assert_eq!(w.len(), 3 * WEIGHT_BLOCK / 2);
        assert_eq!(w[WEIGHT_BLOCK], 0.0);
        // WEIGHT_BLOCK is prime: rows r1 != r2 of w start at the same place in the block
        // only if (r1 - r2) * K is a multiple of it, impossible for N and K below it.
        assert!((2..1024).all(|d| !WEIGHT_BLOCK.is_multiple_of(d)));
        assert!(SHAPES
            .iter()
            .all(|&(k, n, _)| k < WEIGHT_BLOCK && n < WEIGHT_BLOCK));
    }
}
