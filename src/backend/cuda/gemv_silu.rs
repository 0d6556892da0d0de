//! The MLP's SwiGLU fused into its down projection for decode steps of one or two rows:
//! `gemv1_silu` / `gemv2_silu` (kernels/gemv.cu) stage `silu(g) * u` from the gate_up rows
//! straight into the GEMV's shared memory, so the `silu_mul` launch and its `[m, I]`
//! round trip disappear. Same roundings as `silu_mul` then the GEMV; shapes the GEMV does not
//! take (more rows, unaligned, `KILN_GEMV=0`) keep the two-step path.

use super::device::CudaDevice;
use super::gemv::{choose_linear, gemv_enabled, LinearPath, LinearShape};
use super::tensor::CudaTensor;
use anyhow::{bail, Result};

/// The fused kernel for `rows` rows of gate_up, if one exists.
pub fn gemv_silu_op(rows: usize) -> Option<&'static str> {
    match rows {
        1 => Some("gemv1_silu"),
        2 => Some("gemv2_silu"),
        _ => None,
    }
}

/// `(rows, inter)` of `gate_up [rows, 2 * inter]` against `w [n, inter]`, or why not.
pub fn gated_dims(gate_up: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    match (gate_up, w) {
        ([m, two_i], [n, i]) if *two_i == 2 * i => Ok((*m, *i, *n)),
        _ => bail!("silu_mul_linear: gate_up {gate_up:?} is not [m, 2 I] for w {w:?} = [n, I]"),
    }
}

impl CudaDevice {
    /// `out[m, n] = (silu(g) * u) w^T (+ bias)` with `gate_up [m, 2I] = [g | u]` and `w
    /// [n, I]`, through the fused GEMV when it serves the shape: `Ok(false)` (nothing queued)
    /// when it does not, and the caller runs `silu_mul` and the linear layer.
    pub fn silu_mul_gemv(
        &self,
        gate_up: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
    ) -> Result<bool> {
        let (m, k, n) = gated_dims(gate_up.shape(), w.shape())?;
        out.expect_shape(&[m, n], "silu_mul_linear output")?;
        let dtype = out.dtype();
        let same_dtype = gate_up.dtype() == dtype
            && w.dtype() == dtype
            && bias.is_none_or(|b| b.dtype() == dtype && b.shape() == [n]);
        let shape = LinearShape {
            rows: m,
            k,
            n,
            aligned: same_dtype && self.aligned16(gate_up) && self.aligned16(w),
        };
        let Some(op) = gemv_silu_op(m) else {
            return Ok(false);
        };
        if choose_linear(gemv_enabled(), shape) != LinearPath::Gemv {
            return Ok(false);
        }
        // SAFETY: choose_linear checked K % 8, alignment and the int ranges; the dims and
        // dtypes are checked above, and u starts K values (a multiple of 16 bytes) into a row.
        unsafe { self.launch_gemv(op, gate_up, w, bias, out, (m, n, k), None)? };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gated_shapes_and_kernels() {
        // Llama-3.1-8B's down projection at batch 1.
        assert_eq!(
            gated_dims(&[1, 28672], &[4096, 14336]).unwrap(),
            (1, 14336, 4096)
        );
        assert!(gated_dims(&[1, 14336], &[4096, 14336]).is_err());
        assert!(gated_dims(&[1, 28672, 1], &[4096, 14336]).is_err());
        assert_eq!(gemv_silu_op(1), Some("gemv1_silu"));
        assert_eq!(gemv_silu_op(2), Some("gemv2_silu"));
        assert_eq!(gemv_silu_op(3), None);
        assert_eq!(gemv_silu_op(0), None);
    }
}
