//! Linear layers of a few rows (decode): `y[m, n] = x[m, k] * w[n, k]^T (+ bias)` through
//! our GEMV kernel (`kernels/gemv.cu`) instead of cuBLAS, and the routing between the two.
//!
//! Why: at batch 1 a linear layer reads each weight once and is bound by memory bandwidth;
//! cuBLAS's GEMM tiles reach 50-84% of it on the Llama-3.1-8B decode shapes (split-K plus a
//! reduce kernel for the narrow ones), the GEMV streams the weights with 16-byte loads from
//! every SM. Routing ([`choose_linear`]) is pure; `KILN_GEMV=0` turns the GEMV off.

use super::device::CudaDevice;
use super::launch::as_i32;
use super::tensor::CudaTensor;
use crate::backend::DType;
use anyhow::{bail, Context, Result};
use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

/// Most rows of x routed to the GEMV, from `kiln selftest` on an H200 (bf16, time of the
/// GEMV over cuBLAS's at qkv / gate_up / down / lm head): M = 1: 0.73 / 0.98 / 1.03 / 0.97;
/// M = 2: 0.90 / 1.02 / 1.10 / 0.98; M = 4: 1.28 / 1.18 / 1.32 / 1.10. At M = 4 the kernel
/// turns ALU-bound (per weight value 1 unpack + M/2 x unpacks + M FMAs, against ~14 FP32 ops
/// of headroom per value streamed at 4.8 TB/s), so it serves one or two rows.
pub const GEMV_MAX_ROWS: usize = 2;

/// Most rows any GEMV kernel serves (`gemv8`).
pub const GEMV_KERNEL_MAX_ROWS: usize = 8;

/// K must be a multiple of this (one 16-byte vector of 16-bit values; two of f32).
pub const GEMV_K_MULTIPLE: usize = 8;

/// Threads per block: `GEMV_THREADS` in kernels/gemv.cu.
pub const GEMV_THREADS: u32 = 128;

/// Output columns (weight rows) per block: `GEMV_WARPS * GEMV_ROWS_PER_WARP`.
pub const GEMV_ROWS_PER_BLOCK: usize = 8;

/// Which implementation runs a linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearPath {
    Gemv,
    Cublas,
}

/// What the routing looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of x (tokens).
    pub rows: usize,
    /// In features.
    pub k: usize,
    /// Out features.
    pub n: usize,
    /// x and w start on 16-byte boundaries.
    pub aligned: bool,
}

/// The GEMV for 1..=[`GEMV_MAX_ROWS`] rows when enabled and the shape fits its kernel
/// (K a multiple of 8, 16-byte aligned operands, sizes that fit its `int` arguments);
/// cuBLAS otherwise.
pub fn choose_linear(enabled: bool, s: LinearShape) -> LinearPath {
    let fits = s.rows >= 1
        && s.rows <= GEMV_MAX_ROWS
        && s.k > 0
        && s.k.is_multiple_of(GEMV_K_MULTIPLE)
        && s.n > 0
        && s.aligned
        && i32::try_from(s.k).is_ok()
        && i32::try_from(s.n).is_ok();
    if enabled && fits {
        LinearPath::Gemv
    } else {
        LinearPath::Cublas
    }
}

/// The kernel serving `rows` rows of x: the smallest of gemv1/2/4/8 that holds them.
pub fn gemv_op(rows: usize) -> Option<&'static str> {
    match rows {
        1 => Some("gemv1"),
        2 => Some("gemv2"),
        3..=4 => Some("gemv4"),
        5..=8 => Some("gemv8"),
        _ => None,
    }
}

/// One block per [`GEMV_ROWS_PER_BLOCK`] output columns.
pub fn gemv_launch(n: usize) -> Result<LaunchConfig> {
    let blocks = n.div_ceil(GEMV_ROWS_PER_BLOCK);
    if blocks == 0 || blocks > i32::MAX as usize {
        bail!("gemv: {n} output columns give an empty or oversized grid");
    }
    Ok(LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (GEMV_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `KILN_GEMV=0` (read once) routes every linear layer to cuBLAS, for A/B runs.
pub fn gemv_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| env_enables(std::env::var("KILN_GEMV").ok().as_deref()))
}

/// Anything but `0` (or unset) keeps the GEMV on.
fn env_enables(value: Option<&str>) -> bool {
    value.map(str::trim) != Some("0")
}

/// The extra operands of the `_add_norm` GEMVs (kernels/gemv.cu `KILN_GEMV_NORM_PARAMS`).
pub struct GemvNormOperands<'a> {
    /// Where block 0 stores x + residual.
    pub res_out: &'a mut CudaTensor,
    pub res_in: &'a CudaTensor,
    pub norm_w: &'a CudaTensor,
    pub eps: f32,
}

impl CudaDevice {
    /// `out[m, n] = x[m, k] * w[n, k]^T (+ bias[n])` through the GEMV kernel, for
    /// 1..=8 rows; errors (never panics) when the shape does not fit the kernel.
    pub fn gemv(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let (m, k, n) = super::gemm::checked_linear_dims(x, w, bias, out, "gemv")?;
        let Some(op) = gemv_op(m) else {
            bail!("gemv: {m} rows (the kernels serve 1 to {GEMV_KERNEL_MAX_ROWS})");
        };
        if k == 0 || !k.is_multiple_of(GEMV_K_MULTIPLE) {
            bail!("gemv: K = {k} is not a positive multiple of {GEMV_K_MULTIPLE}");
        }
        if !self.aligned16(x) || !self.aligned16(w) {
            bail!("gemv: x or w is not 16-byte aligned");
        }
        // SAFETY: shapes, K % 8 and alignment checked above.
        unsafe { self.launch_gemv(op, x, w, bias, out, (m, n, k), None) }
    }

    /// Queues GEMV kernel `op` (of the dtype of `out`) on `(m, n, k)`.
    ///
    /// # Safety
    /// The caller has checked what the kernel assumes: `out` is `[m, n]`, `w` `[n, k]`, `x`
    /// `[m, k]` (`[m, 2k]` for the `_silu` kernels), the bias `[n]`, one dtype, K a multiple
    /// of 8, x and w 16-byte aligned, `m` within the kernel's rows; `norm` given exactly for
    /// the `_add_norm` kernels, its tensors `[m, k]` / `[k]` and aligned, `res_out` not
    /// aliasing `res_in`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn launch_gemv(
        &self,
        op: &str,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
        (m, n, k): (usize, usize, usize),
        norm: Option<GemvNormOperands>,
    ) -> Result<()> {
        let (m_i, n_i, k_i) = (
            as_i32(m, "gemv rows")?,
            as_i32(n, "gemv N")?,
            as_i32(k, "gemv K")?,
        );
        let has_bias = i32::from(bias.is_some());
        let f = self.kernels().get(op, out.dtype())?;
        let mut args = self.stream().launch_builder(f);
        // Without a bias the kernel never reads its pointer; w stands in.
        let bias_data = bias.map_or(w.data(), |b| b.data());
        args.arg(out.data_mut())
            .arg(x.data())
            .arg(w.data())
            .arg(bias_data)
            .arg(&m_i)
            .arg(&n_i)
            .arg(&k_i)
            .arg(&has_bias);
        let eps = norm.as_ref().map_or(0.0, |nm| nm.eps);
        if let Some(nm) = norm {
            args.arg(nm.res_out.data_mut())
                .arg(nm.res_in.data())
                .arg(nm.norm_w.data())
                .arg(&eps);
        }
        // SAFETY: matches kernels/gemv.cu; the caller checked its assumptions.
        unsafe { args.launch(gemv_launch(n)?) }.context("gemv launch")?;
        Ok(())
    }

    /// A linear layer through whichever of the GEMV and cuBLAS [`choose_linear`] picks;
    /// the bias is fused into the GEMV (and cuBLASLt's epilogue, `gemm_lt.rs`), added by a
    /// kernel after cublasGemmEx.
    pub fn linear_routed(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let (rows, k, n) = super::gemm::gemm_dims(x.shape(), w.shape())?;
        let same_dtype = x.dtype() == w.dtype() && bias.is_none_or(|b| b.dtype() == w.dtype());
        let shape = LinearShape {
            rows,
            k,
            n,
            aligned: same_dtype && self.aligned16(x) && self.aligned16(w),
        };
        match choose_linear(gemv_enabled(), shape) {
            LinearPath::Gemv => self.gemv(x, w, bias, out),
            LinearPath::Cublas => self.linear_cublas(x, w, bias, out),
        }
    }

    pub(super) fn aligned16(&self, t: &CudaTensor) -> bool {
        let (ptr, _sync) = t.data().device_ptr(self.stream());
        ptr % 16 == 0
    }
}

/// Bytes a GEMV moves at least (weights, x, y): the figure of merit for GB/s.
pub fn gemv_bytes(m: usize, k: usize, n: usize, dtype: DType) -> usize {
    (n * k + m * k + m * n) * dtype.size_in_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rows: usize, k: usize, n: usize) -> LinearShape {
        LinearShape {
            rows,
            k,
            n,
            aligned: true,
        }
    }

    #[test]
    fn decode_shapes_of_llama_go_to_the_gemv() {
        for (k, n) in [(4096, 6144), (4096, 28672), (14336, 4096), (4096, 128_256)] {
            for rows in 1..=GEMV_MAX_ROWS {
                assert_eq!(choose_linear(true, shape(rows, k, n)), LinearPath::Gemv);
            }
        }
    }

    #[test]
    fn larger_batches_odd_k_misalignment_and_the_switch_go_to_cublas() {
        let ok = shape(1, 4096, 4096);
        assert_eq!(choose_linear(false, ok), LinearPath::Cublas);
        assert_eq!(
            choose_linear(true, shape(GEMV_MAX_ROWS + 1, 4096, 4096)),
            LinearPath::Cublas
        );
        assert_eq!(
            choose_linear(true, shape(32, 4096, 4096)),
            LinearPath::Cublas
        );
        assert_eq!(
            choose_linear(true, shape(0, 4096, 4096)),
            LinearPath::Cublas
        );
        assert_eq!(
            choose_linear(true, shape(1, 4100, 4096)),
            LinearPath::Cublas
        );
        assert_eq!(choose_linear(true, shape(1, 0, 4096)), LinearPath::Cublas);
        assert_eq!(choose_linear(true, shape(1, 4096, 0)), LinearPath::Cublas);
        assert_eq!(
            choose_linear(true, shape(1, 1 << 32, 8)),
            LinearPath::Cublas
        );
        let unaligned = LinearShape {
            aligned: false,
            ..ok
        };
        assert_eq!(choose_linear(true, unaligned), LinearPath::Cublas);
        // Small K that is a multiple of 8 is fine (one vector per row).
        assert_eq!(choose_linear(true, shape(1, 8, 3)), LinearPath::Gemv);
    }

    #[test]
    fn every_row_count_has_the_smallest_kernel_that_holds_it() {
        assert_eq!(gemv_op(0), None);
        assert_eq!(gemv_op(1), Some("gemv1"));
        assert_eq!(gemv_op(2), Some("gemv2"));
        assert_eq!(gemv_op(3), Some("gemv4"));
        assert_eq!(gemv_op(4), Some("gemv4"));
        assert_eq!(gemv_op(5), Some("gemv8"));
        assert_eq!(gemv_op(8), Some("gemv8"));
        assert_eq!(gemv_op(9), None);
        // The routed range is served by some kernel.
        for rows in 1..=GEMV_MAX_ROWS {
            assert!(gemv_op(rows).is_some());
        }
        const { assert!(GEMV_MAX_ROWS <= GEMV_KERNEL_MAX_ROWS) };
    }

    #[test]
    fn grid_covers_every_output_column() {
        assert_eq!(gemv_launch(1).unwrap().grid_dim, (1, 1, 1));
        assert_eq!(gemv_launch(8).unwrap().grid_dim, (1, 1, 1));
        assert_eq!(gemv_launch(9).unwrap().grid_dim, (2, 1, 1));
        assert_eq!(gemv_launch(4096).unwrap().grid_dim, (512, 1, 1));
        assert_eq!(gemv_launch(128_256).unwrap().grid_dim, (16_032, 1, 1));
        assert!(gemv_launch(0).is_err());
        assert_eq!(gemv_launch(5).unwrap().block_dim, (GEMV_THREADS, 1, 1));
    }

    #[test]
    fn kernel_constants_match_the_host() {
        let src = include_str!("../../../kernels/gemv.cu");
        assert!(src.contains(&format!("#define GEMV_THREADS {GEMV_THREADS}\n")));
        assert!(src.contains("#define GEMV_WARPS (GEMV_THREADS / 32)"));
        let per_warp = GEMV_ROWS_PER_BLOCK / (GEMV_THREADS as usize / 32);
        assert!(src.contains(&format!("#define GEMV_ROWS_PER_WARP {per_warp}\n")));
    }

    #[test]
    fn only_zero_turns_it_off() {
        assert!(env_enables(None));
        assert!(env_enables(Some("1")));
        assert!(env_enables(Some("")));
        assert!(!env_enables(Some("0")));
        assert!(!env_enables(Some(" 0 ")));
    }

    #[test]
    fn bytes_count_weights_and_activations() {
        assert_eq!(
            gemv_bytes(1, 4096, 4096, DType::BF16),
            (4096 * 4096 + 8192) * 2
        );
    }
}
