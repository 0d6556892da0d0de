//! Launching `kernels/sampling_draw.cu`: one token per row of logits, drawn on the device
//! with the host sampler's semantics (rows packed by [`super::sampling_draw_rows`]).

use super::device::CudaDevice;
use super::launch::{self, as_i32, VOCAB_THREADS};
use super::ops::dims2;
use super::sampling_draw_rows::PackedDrawRows;
use super::tensor::CudaTensor;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};

/// Vocabularies from this size on are refused (kernels/sampling_draw.cu: fixed-point masses).
pub const MAX_VOCAB: usize = 1 << 19;

impl CudaDevice {
    /// Samples one token per row of `logits[rows, vocab]` into `out[..rows]`.
    pub fn sampling_draw(
        &self,
        logits: &CudaTensor,
        rows: &PackedDrawRows,
        out: &mut CudaSlice<u32>,
    ) -> Result<()> {
        let [n, vocab] = dims2(logits, "sampling logits")?;
        if rows.rows() != n {
            bail!(
                "sampling: {} packed rows for {n} rows of logits",
                rows.rows()
            );
        }
        if out.len() < n {
            bail!("sampling: output holds {} of {n} rows", out.len());
        }
        if n == 0 || vocab == 0 {
            return Ok(());
        }
        // The kernel's fixed-point masses (weight * 2^24) of a row must stay below 2^43.
        if vocab >= MAX_VOCAB {
            bail!("sampling: a vocabulary of {vocab} is beyond the device sampler's {MAX_VOCAB}");
        }
        let vocab_i = as_i32(vocab, "vocab")?;
        let row_f = self.upload(&rows.row_f)?;
        let row_i = self.upload(&rows.row_i)?;
        // The kernel reads no edit of a row without edits, but the pointers must be valid.
        let (tokens, values) = if rows.edit_token.is_empty() {
            (vec![0], vec![1.0, 0.0])
        } else {
            (rows.edit_token.clone(), rows.edit_value.clone())
        };
        let edit_token = self.upload(&tokens)?;
        let edit_value = self.upload(&values)?;
        // SAFETY: the kernel writes every element of its row before reading it.
        let mut scratch = unsafe { self.stream().alloc::<f32>(n * vocab) }
            .context("allocating the sampling scratch buffer")?;
        let f = self.kernels().get("sampling_draw", logits.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out)
            .arg(logits.data())
            .arg(&vocab_i)
            .arg(&row_f)
            .arg(&row_i)
            .arg(&edit_token)
            .arg(&edit_value)
            .arg(&mut scratch);
        // SAFETY: matches kernels/sampling_draw.cu (1024 threads, its __launch_bounds__);
        // shapes and row count checked above, edit ranges built by pack_draw_rows over tokens
        // inside the vocabulary.
        unsafe { args.launch(launch::per_row(n, VOCAB_THREADS)?) }
            .context("sampling_draw launch")?;
        Ok(())
    }
}
