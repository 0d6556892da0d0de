//! Ops that only move data: column blocks (the q, k and v parts of a fused QKV output) and
//! row gathers (the rows whose logits are wanted).

use super::device::CudaDevice;
use super::launch::{self, as_i32};
use super::ops::dims2;
use super::tensor::CudaTensor;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};

impl CudaDevice {
    /// `out[n, w] = x[n, offset .. offset + w]`.
    pub fn copy_columns(&self, x: &CudaTensor, offset: usize, out: &mut CudaTensor) -> Result<()> {
        let [n, in_width] = dims2(x, "copy_columns input")?;
        let [out_n, out_width] = dims2(out, "copy_columns output")?;
        out.expect_dtype(x.dtype(), "copy_columns output")?;
        if out_n != n || offset + out_width > in_width {
            bail!(
                "copy_columns: columns {offset}..{} of {:?} into {:?}",
                offset + out_width,
                x.shape(),
                out.shape()
            );
        }
        let total = (n * out_width) as i64;
        if total == 0 {
            return Ok(());
        }
        let ints = [
            as_i32(out_width, "output width")?,
            as_i32(in_width, "input width")?,
            as_i32(offset, "column offset")?,
        ];
        let f = self.kernels().get("copy_columns", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut()).arg(x.data()).arg(&total);
        for value in &ints {
            args.arg(value);
        }
        // SAFETY: matches kernels/elementwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }
            .context("copy_columns launch")?;
        Ok(())
    }

    /// `out[r, h, :] = [shared[r, :], own[r, h, :]]` for each row `r` and head `h`
    /// ([`crate::backend::Backend::join_heads`]).
    pub fn join_heads(
        &self,
        shared: &CudaTensor,
        own: &CudaTensor,
        heads: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let [n, shared_width] = dims2(shared, "join_heads shared part")?;
        let [own_n, own_width] = dims2(own, "join_heads own parts")?;
        let [out_n, out_width] = dims2(out, "join_heads output")?;
        own.expect_dtype(shared.dtype(), "join_heads own parts")?;
        out.expect_dtype(shared.dtype(), "join_heads output")?;
        if heads == 0
            || own_n != n
            || out_n != n
            || own_width % heads != 0
            || out_width != heads * shared_width + own_width
        {
            bail!(
                "join_heads: {:?} shared and {:?} over {heads} heads into {:?}",
                shared.shape(),
                own.shape(),
                out.shape()
            );
        }
        let total = (n * out_width) as i64;
        if total == 0 {
            return Ok(());
        }
        let ints = [
            as_i32(heads, "heads")?,
            as_i32(shared_width, "shared width")?,
            as_i32(own_width / heads, "own width")?,
        ];
        let f = self.kernels().get("join_heads", shared.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(shared.data())
            .arg(own.data())
            .arg(&total);
        for value in &ints {
            args.arg(value);
        }
        // SAFETY: matches kernels/elementwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("join_heads launch")?;
        Ok(())
    }

    /// `out[i, :] = x[rows[i], :]` for the first `n` of `rows` (the embedding gather, with
    /// row indices as ids). Rows must be in range: out-of-range ones would silently give zeros.
    pub fn gather_rows(
        &self,
        x: &CudaTensor,
        rows: &CudaSlice<u32>,
        n: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.embedding(x, rows, n, out).context("gather_rows")
    }
}
