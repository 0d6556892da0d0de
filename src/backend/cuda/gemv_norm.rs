//! A linear layer fused with the residual add + RMS norm in front of it, for decode steps of
//! one or two rows: `gemv1_add_norm` / `gemv2_add_norm` (kernels/gemv.cu) compute each row's
//! rms in every block (x and the residual are a few KB, read from L2), stage the normalised
//! values into the GEMV's shared memory, and block 0 stores the new residual stream. That
//! removes the norm launch in front of the QKV and gate_up projections of every layer.
//! `gemv1_add_norm_swiglu` / `gemv2_add_norm_swiglu` also end the gate_up projection with
//! the SwiGLU (each warp pairs gate row c with up row c + I and writes `silu(g) * u`), which
//! removes the `silu_mul` launch and its `[m, 2I]` round trip as well. Where the norm in
//! every block costs more than it saves, `gemv1_swiglu` / `gemv2_swiglu` keep the SwiGLU
//! epilogue after a separate norm launch.

use super::device::CudaDevice;
use super::gemv::{
    choose_linear, gemv_enabled, GemvNormOperands, LinearPath, LinearShape, GEMV_MAX_ROWS,
};
use super::tensor::CudaTensor;
use anyhow::Result;

/// What the fused GEMV writes after the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvEpilogue {
    /// `y [m, n]`, the projection itself.
    Plain,
    /// `y [m, n / 2] = silu(gate) * up` of the projection's two halves (the MLP's gate_up).
    SwiGlu,
}

/// Most `rows * k` values whose norm every block recomputes before its first weight load
/// and still gains. The 8B's projections (k = 4096) at one row took 1.01x the time of the
/// norm kernel + GEMV on an H100 and 1.11x on an H200 (at two rows 1.17-1.58x), while
/// Qwen2.5-0.5B's (k = 896) took 0.58-0.84x on both. Between the two nothing is measured;
/// `KILN_ADD_NORM_GEMV_MAX_VALUES` overrides the limit for A/B runs.
pub const ADD_NORM_MAX_VALUES: usize = 2048;

/// The limit on `rows * k` for the norm-fused GEMV: `KILN_ADD_NORM_GEMV_MAX_VALUES`, or
/// [`ADD_NORM_MAX_VALUES`].
pub fn add_norm_max_values_from_env() -> usize {
    std::env::var("KILN_ADD_NORM_GEMV_MAX_VALUES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(ADD_NORM_MAX_VALUES)
}

/// Whether the norm-fused GEMV beats the norm kernel + GEMV for `rows` rows of `k` values,
/// with `max_values` the limit on `rows * k`.
pub fn add_norm_fusion_pays(rows: usize, k: usize, max_values: usize) -> bool {
    (1..=GEMV_MAX_ROWS).contains(&rows) && rows * k <= max_values
}

/// The plain GEMV with the SwiGLU epilogue for `rows` rows, if one exists.
pub fn gemv_swiglu_op(rows: usize) -> Option<&'static str> {
    match rows {
        1 => Some("gemv1_swiglu"),
        2 => Some("gemv2_swiglu"),
        _ => None,
    }
}

/// The fused kernel for `rows` rows, if one exists.
pub fn gemv_add_norm_op(rows: usize, epilogue: GemvEpilogue) -> Option<&'static str> {
    match (rows, epilogue) {
        (1, GemvEpilogue::Plain) => Some("gemv1_add_norm"),
        (2, GemvEpilogue::Plain) => Some("gemv2_add_norm"),
        (1, GemvEpilogue::SwiGlu) => Some("gemv1_add_norm_swiglu"),
        (2, GemvEpilogue::SwiGlu) => Some("gemv2_add_norm_swiglu"),
        _ => None,
    }
}

/// The operands of one fused call besides the weight and the outputs.
pub struct AddNormInput<'a> {
    /// The layer's input `[m, k]` before the residual add.
    pub x: &'a CudaTensor,
    /// The residual stream `[m, k]` (read only; the sum goes to a new tensor).
    pub residual: &'a CudaTensor,
    /// The norm's weight `[k]`.
    pub norm_weight: &'a CudaTensor,
    pub eps: f32,
}

impl CudaDevice {
    /// `out = (rms_norm(x + residual) * norm_weight) w^T (+ bias)`, with `epilogue` applied,
    /// and `residual_out = x + residual` (rounded to the dtype), when the fused GEMV serves
    /// the shape; `Ok(false)` (nothing queued) when it does not, and the caller runs the
    /// norm, the linear layer (and the SwiGLU) itself.
    pub fn add_norm_gemv(
        &self,
        input: &AddNormInput,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        epilogue: GemvEpilogue,
        out: &mut CudaTensor,
        residual_out: &mut CudaTensor,
    ) -> Result<bool> {
        let (x, residual, norm_w) = (input.x, input.residual, input.norm_weight);
        let (&[m, k], &[n, k_w]) = (x.shape(), w.shape()) else {
            return Ok(false);
        };
        let Some(op) = gemv_add_norm_op(m, epilogue) else {
            return Ok(false);
        };
        let out_cols = match epilogue {
            GemvEpilogue::Plain => n,
            GemvEpilogue::SwiGlu if n % 2 == 0 => n / 2,
            GemvEpilogue::SwiGlu => return Ok(false),
        };
        let dtype = out.dtype();
        let fits = k_w == k
            && residual.shape() == [m, k]
            && norm_w.shape() == [k]
            && out.shape() == [m, out_cols]
            && residual_out.shape() == [m, k]
            && [x, residual, norm_w, w, &*residual_out]
                .iter()
                .all(|t| t.dtype() == dtype)
            && bias.is_none_or(|b| b.dtype() == dtype && b.shape() == [n])
            && [x, residual, norm_w, &*residual_out]
                .iter()
                .all(|t| self.aligned16(t));
        let shape = LinearShape {
            rows: m,
            k,
            n,
            aligned: fits && self.aligned16(w),
        };
        if !fits || choose_linear(gemv_enabled(), shape) != LinearPath::Gemv {
            return Ok(false);
        }
        let norm = GemvNormOperands {
            res_out: residual_out,
            res_in: residual,
            norm_w,
            eps: input.eps,
        };
        // SAFETY: shapes, dtypes, K % 8 and 16-byte alignment checked above (choose_linear
        // and `fits`); residual_out is a tensor of its own, so block 0's stores never race
        // the other blocks' reads of the residual. The SwiGLU kernel reads w's n rows and
        // writes n / 2 columns per row of out, on the same grid (one block per 8 rows of w).
        unsafe { self.launch_gemv(op, x, w, bias, out, (m, n, k), Some(norm))? };
        Ok(true)
    }

    /// `out [m, n / 2] = silu(gate) * up` of `x w^T (+ bias)` (w's rows `[gate | up]`), the
    /// MLP's gate_up projection with its SwiGLU, when the GEMV serves the shape; `Ok(false)`
    /// (nothing queued) when it does not, and the caller runs the linear layer and
    /// `silu_mul`.
    pub fn gemv_swiglu(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
    ) -> Result<bool> {
        let (&[m, k], &[n, k_w]) = (x.shape(), w.shape()) else {
            return Ok(false);
        };
        let Some(op) = gemv_swiglu_op(m) else {
            return Ok(false);
        };
        let dtype = out.dtype();
        let fits = k_w == k
            && n % 2 == 0
            && out.shape() == [m, n / 2]
            && x.dtype() == dtype
            && w.dtype() == dtype
            && bias.is_none_or(|b| b.dtype() == dtype && b.shape() == [n])
            && self.aligned16(x);
        let shape = LinearShape {
            rows: m,
            k,
            n,
            aligned: fits && self.aligned16(w),
        };
        if !fits || choose_linear(gemv_enabled(), shape) != LinearPath::Gemv {
            return Ok(false);
        }
        // SAFETY: shapes, dtypes, K % 8 and 16-byte alignment checked above (choose_linear
        // and `fits`); the kernel reads w's n rows and writes n / 2 columns per row of out,
        // on the plain kernel's grid (one block per 8 rows of w).
        unsafe { self.launch_gemv(op, x, w, bias, out, (m, n, k), None)? };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::{
        add_norm_fusion_pays, gemv_add_norm_op, gemv_swiglu_op, GemvEpilogue, ADD_NORM_MAX_VALUES,
    };

    #[test]
    fn the_fusion_runs_where_it_measured_faster() {
        let pays = |rows, k| add_norm_fusion_pays(rows, k, ADD_NORM_MAX_VALUES);
        // Llama-3.1-8B (hidden 4096): neither one row nor two (slower on an H200);
        // Qwen2.5-0.5B (896): one and two rows.
        assert!(!pays(1, 4096) && !pays(2, 4096));
        assert!(pays(1, 896) && pays(2, 896));
        assert!(!pays(0, 896) && !pays(3, 896));
        // The A/B override reaches the old limit.
        assert!(add_norm_fusion_pays(1, 4096, 4096));
    }

    #[test]
    fn the_swiglu_epilogue_serves_one_or_two_rows() {
        assert_eq!(gemv_swiglu_op(1), Some("gemv1_swiglu"));
        assert_eq!(gemv_swiglu_op(2), Some("gemv2_swiglu"));
        assert_eq!(gemv_swiglu_op(0), None);
        assert_eq!(gemv_swiglu_op(3), None);
    }

    #[test]
    fn one_or_two_rows_have_a_kernel() {
        use GemvEpilogue::{Plain, SwiGlu};
        assert_eq!(gemv_add_norm_op(1, Plain), Some("gemv1_add_norm"));
        assert_eq!(gemv_add_norm_op(2, Plain), Some("gemv2_add_norm"));
        assert_eq!(gemv_add_norm_op(1, SwiGlu), Some("gemv1_add_norm_swiglu"));
        assert_eq!(gemv_add_norm_op(2, SwiGlu), Some("gemv2_add_norm_swiglu"));
        for epilogue in [Plain, SwiGlu] {
            assert_eq!(gemv_add_norm_op(0, epilogue), None);
            assert_eq!(gemv_add_norm_op(3, epilogue), None);
        }
    }
}
