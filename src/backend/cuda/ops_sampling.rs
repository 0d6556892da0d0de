//! Row-wise reductions over logits for sampling and log-probabilities (f32 results).

use super::device::CudaDevice;
use super::launch::{self, as_i32, VOCAB_THREADS};
use super::ops::dims2;
use super::tensor::CudaTensor;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};

impl CudaDevice {
    /// Greedy token per row of `logits[rows, vocab]` (lowest index on ties).
    pub fn argmax(&self, logits: &CudaTensor, out: &mut CudaSlice<u32>) -> Result<()> {
        let [rows, vocab] = dims2(logits, "argmax logits")?;
        if out.len() < rows {
            bail!("argmax: output holds {} of {rows} rows", out.len());
        }
        if rows == 0 || vocab == 0 {
            return Ok(());
        }
        let vocab_i = as_i32(vocab, "vocab")?;
        let f = self.kernels().get("argmax", logits.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out).arg(logits.data()).arg(&vocab_i);
        // SAFETY: matches kernels/sampling.cu; shapes checked above.
        unsafe { args.launch(launch::per_row(rows, VOCAB_THREADS)?) }.context("argmax launch")?;
        Ok(())
    }

    /// Row softmax (or log-softmax) of `logits[rows, vocab]` into f32 `out[rows * vocab]`.
    pub fn softmax(
        &self,
        logits: &CudaTensor,
        log_space: bool,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let [rows, vocab] = dims2(logits, "softmax logits")?;
        if out.len() < rows * vocab {
            bail!(
                "softmax: output holds {} of {} values",
                out.len(),
                rows * vocab
            );
        }
        if rows == 0 || vocab == 0 {
            return Ok(());
        }
        let vocab_i = as_i32(vocab, "vocab")?;
        let log_i = i32::from(log_space);
        let f = self.kernels().get("softmax", logits.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out).arg(logits.data()).arg(&vocab_i).arg(&log_i);
        // SAFETY: matches kernels/sampling.cu; shapes checked above.
        unsafe { args.launch(launch::per_row(rows, VOCAB_THREADS)?) }.context("softmax launch")?;
        Ok(())
    }
}
