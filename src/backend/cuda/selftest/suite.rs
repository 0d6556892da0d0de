//! Shared state of a selftest run: the device, a seeded RNG, the sizes and the rows.

use super::compare::{max_abs_error, tolerance, Check};
use super::report::Row;
use super::timing::time_us;
use crate::backend::cuda::{CudaDevice, DType};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Model shapes the selftest uses (Llama-3.1-8B unless `--quick`).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub hidden: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub prefill_tokens: usize,
    pub max_context: usize,
    pub block_size: usize,
    pub timing_iters: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        Self {
            hidden: 4096,
            q_heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 14336,
            vocab: 128_256,
            prefill_tokens: if quick { 128 } else { 512 },
            max_context: if quick { 600 } else { 2000 },
            block_size: 16,
            timing_iters: if quick { 3 } else { 20 },
        }
    }
}

pub struct Suite<'a> {
    pub dev: &'a CudaDevice,
    pub sizes: Sizes,
    pub rng: ChaCha8Rng,
    pub rows: Vec<Row>,
}

impl<'a> Suite<'a> {
    pub fn new(dev: &'a CudaDevice, quick: bool) -> Self {
        Self {
            dev,
            sizes: Sizes::new(quick),
            rng: ChaCha8Rng::seed_from_u64(0x6b696c6e),
            rows: Vec::new(),
        }
    }

    /// `n` values uniform in `[-scale, scale)`, already rounded to `dtype`.
    pub fn random(&mut self, n: usize, scale: f32, dtype: DType) -> Vec<f32> {
        (0..n)
            .map(|_| dtype.round((self.rng.random::<f32>() * 2.0 - 1.0) * scale))
            .collect()
    }

    /// Compares and records a row; returns its index (to attach a timing later).
    pub fn check(
        &mut self,
        op: &str,
        shape: String,
        dtype: DType,
        check: Check,
        gpu: &[f32],
        reference: &[f32],
    ) -> usize {
        let (err, max_ref) = max_abs_error(gpu, reference);
        let tol = tolerance(check, dtype, max_ref);
        self.rows
            .push(Row::checked(op, shape, dtype.kernel_suffix(), err, tol));
        self.rows.len() - 1
    }

    /// Times `f` and stores the result in row `row`.
    pub fn time(&mut self, row: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
        let us = time_us(self.dev, self.sizes.timing_iters, f)?;
        self.rows[row].us_per_call = Some(us);
        Ok(us)
    }

    /// Records an op that could not run at all (an error is a failure, not an abort).
    pub fn error(&mut self, op: &str, dtype: DType, err: &anyhow::Error) {
        let mut row = Row::checked(op, "-".into(), dtype.kernel_suffix(), f64::INFINITY, 0.0);
        row.note = format!("error: {err:#}");
        self.rows.push(row);
    }
}
