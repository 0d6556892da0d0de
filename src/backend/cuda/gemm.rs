//! Linear layers through cuBLAS: `y[m, n] = x[m, k] * w[n, k]^T` with row-major
//! activations and HF-layout weights, f32 accumulation for every dtype.

use super::gemm_lt::GemmLt;
use super::tensor::CudaTensor;
use crate::backend::DType;
use anyhow::{bail, Context, Result};
use cudarc::cublas::{result as cublas_result, sys as cublas_sys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::ffi::c_int;
use std::sync::{Arc, OnceLock};

/// A cuBLAS handle bound to the device's stream.
pub struct Blas {
    handle: CudaBlas,
    /// cuBLASLt (`gemm_lt.rs`), made on first use: at start-up unless `KILN_CUBLASLT=0`,
    /// else only if the selftest asks. Dropped before the workspace it uses.
    lt: OnceLock<Result<GemmLt, String>>,
    stream: Arc<CudaStream>,
    /// cuBLAS's workspace, ours rather than one it allocates: a GEMM recorded into a CUDA
    /// graph must not allocate, and must find the same workspace on every replay. `None`
    /// with `KILN_CUBLAS_WORKSPACE=0` (cuBLAS's own; for A/B timing only: recordings of
    /// steps whose GEMMs need a workspace may then fail and run eagerly). cuBLASLt uses
    /// it too (same stream, so their uses never overlap).
    workspace: Option<CudaSlice<u8>>,
}

/// Workspace for cuBLAS's split-K and other algorithms (NVIDIA suggests 32 MiB on Hopper).
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

impl Blas {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        // SAFETY: only tries to open the shared library.
        if !unsafe { cublas_sys::is_culib_present() } {
            bail!("cuBLAS (libcublas.so) not found: install the CUDA runtime libraries");
        }
        let handle = std::panic::catch_unwind(|| CudaBlas::new(stream.clone()))
            .map_err(|_| anyhow::anyhow!("libcublas was found but lacks an expected symbol"))?
            .map_err(|e| anyhow::anyhow!("creating a cuBLAS handle: {e:?}"))?;
        if std::env::var("KILN_CUBLAS_WORKSPACE").is_ok_and(|v| v == "0") {
            tracing::warn!("KILN_CUBLAS_WORKSPACE=0: cuBLAS uses its own workspace");
            return Ok(Self {
                handle,
                lt: OnceLock::new(),
                stream,
                workspace: None,
            });
        }
        let mut workspace = stream
            .alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)
            .context("allocating cuBLAS's workspace")?;
        {
            let (ptr, _sync) = workspace.device_ptr_mut(&stream);
            // SAFETY: the handle is live and the buffer outlives it (both fields of self; the
            // handle is dropped first, as fields drop in declaration order).
            let status = unsafe {
                cublas_sys::cublasSetWorkspace_v2(
                    *handle.handle(),
                    ptr as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE_BYTES,
                )
            };
            if status != cublas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                bail!("cublasSetWorkspace: {status:?}");
            }
        }
        Ok(Self {
            handle,
            lt: OnceLock::new(),
            stream,
            workspace: Some(workspace),
        })
    }

    /// The cuBLAS handle, for the other GEMM shapes (`gemm_batched.rs`).
    pub(super) fn handle(&self) -> &CudaBlas {
        &self.handle
    }

    /// The cuBLASLt linear (`gemm_lt.rs`) on cuBLAS's workspace, made on the first call;
    /// an error says why cuBLASLt is unavailable (no libcublasLt, a missing symbol).
    pub fn lt(&self) -> Result<&GemmLt> {
        self.lt
            .get_or_init(|| {
                let workspace = self.workspace.as_ref().map_or((0, 0), |w| {
                    let (ptr, _sync) = w.device_ptr(&self.stream);
                    (ptr, w.len())
                });
                GemmLt::new(self.stream.clone(), workspace).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The stream the handle is bound to.
    pub(super) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `out[m, n] = x[m, k] * w[n, k]^T`; all three share one dtype.
    pub fn linear(&self, x: &CudaTensor, w: &CudaTensor, out: &mut CudaTensor) -> Result<()> {
        let (m, k, n) = checked_linear_dims(x, w, None, out, "linear")?;
        let dtype = out.dtype();
        let (x_ptr, _x_sync) = x.data().device_ptr(&self.stream);
        let (w_ptr, _w_sync) = w.data().device_ptr(&self.stream);
        let (y_ptr, _y_sync) = out.data_mut().device_ptr_mut(&self.stream);
        // SAFETY: the pointers come from live buffers whose sizes were checked above.
        unsafe { self.gemm_at(x_ptr, w_ptr, y_ptr, (m, k, n), dtype, false) }.context("linear")
    }

    /// `out[m, n] = x[m, k] * w[n, k]^T` with `x` and `w` in one dtype and `out` in f32
    /// (cuBLAS accumulates in f32 either way; here nothing rounds the result).
    pub fn linear_f32_out(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let (m, k, n) = gemm_dims(x.shape(), w.shape())?;
        if x.dtype() != w.dtype() || out.dtype() != DType::F32 || out.shape() != [m, n] {
            bail!(
                "linear_f32_out: x {:?} {}, w {:?} {}, out {:?} {} do not fit",
                x.shape(),
                x.dtype(),
                w.shape(),
                w.dtype(),
                out.shape(),
                out.dtype()
            );
        }
        let (x_ptr, _x_sync) = x.data().device_ptr(&self.stream);
        let (w_ptr, _w_sync) = w.data().device_ptr(&self.stream);
        let (y_ptr, _y_sync) = out.data_mut().device_ptr_mut(&self.stream);
        let types = (x.dtype(), DType::F32);
        // SAFETY: the pointers come from live buffers whose sizes were checked above.
        unsafe { self.gemm_typed(x_ptr, w_ptr, y_ptr, (m, k, n), types, false) }
            .context("linear with f32 output")
    }

    /// `out[o0 + i] = x[x0 + i] * w^T` for `i < rows`: the linear layer on a block of rows
    /// of `x` (`[_, k]`) into a block of rows of `out` (`[_, n]`). Row blocks are contiguous
    /// in the row-major layout, so this is the same GEMM at offset addresses (the
    /// mixture-of-experts prefill runs each expert on its rows of one gathered buffer).
    /// `accumulate`: add to what the rows of `out` hold (gpt-oss's experts hold their bias
    /// there), in the GEMM's f32 epilogue, rounded once.
    #[allow(clippy::too_many_arguments)] // two row blocks and the weight between them
    pub fn linear_row_block(
        &self,
        x: &CudaTensor,
        x0: usize,
        w: &CudaTensor,
        out: &mut CudaTensor,
        o0: usize,
        rows: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (&[x_rows, k], &[n, k2], &[out_rows, n2]) = (x.shape(), w.shape(), out.shape()) else {
            bail!(
                "linear_row_block: x {:?}, w {:?}, out {:?} must be 2-d",
                x.shape(),
                w.shape(),
                out.shape()
            );
        };
        let dtype = out.dtype();
        if k != k2 || n != n2 || x.dtype() != dtype || w.dtype() != dtype {
            bail!(
                "linear_row_block: x {:?} {}, w {:?} {}, out {:?} {dtype} do not fit",
                x.shape(),
                x.dtype(),
                w.shape(),
                w.dtype(),
                out.shape()
            );
        }
        if x0 + rows > x_rows || o0 + rows > out_rows {
            bail!("linear_row_block: rows {x0}+{rows} of {x_rows} into {o0}+{rows} of {out_rows}");
        }
        if rows == 0 {
            return Ok(());
        }
        let elem = dtype.size_in_bytes() as u64;
        let (x_ptr, _x_sync) = x.data().device_ptr(&self.stream);
        let (w_ptr, _w_sync) = w.data().device_ptr(&self.stream);
        let (y_ptr, _y_sync) = out.data_mut().device_ptr_mut(&self.stream);
        let (x_at, y_at) = (
            x_ptr + (x0 * k) as u64 * elem,
            y_ptr + (o0 * n) as u64 * elem,
        );
        // SAFETY: rows x0 .. x0 + rows of x and o0 .. o0 + rows of out lie inside their
        // buffers (checked above), and w is whole.
        unsafe { self.gemm_at(x_at, w_ptr, y_at, (rows, k, n), dtype, accumulate) }
            .context("linear on a row block")
    }

    /// cublasGemmEx of `y[m, n] = x[m, k] * w[n, k]^T` (`+ y` when `accumulate`) at raw
    /// device addresses.
    ///
    /// # Safety
    /// `x`, `w` and `y` address at least `m * k`, `n * k` and `m * n` values of `dtype`.
    unsafe fn gemm_at(
        &self,
        x_ptr: u64,
        w_ptr: u64,
        y_ptr: u64,
        dims: (usize, usize, usize),
        dtype: DType,
        accumulate: bool,
    ) -> Result<()> {
        // SAFETY: as this function's.
        unsafe { self.gemm_typed(x_ptr, w_ptr, y_ptr, dims, (dtype, dtype), accumulate) }
    }

    /// [`Self::gemm_at`] with the inputs in `in_dtype` and `y` in `out_dtype`.
    ///
    /// # Safety
    /// `x` and `w` address at least `m * k` and `n * k` values of `in_dtype`, `y` `m * n`
    /// of `out_dtype`.
    unsafe fn gemm_typed(
        &self,
        x_ptr: u64,
        w_ptr: u64,
        y_ptr: u64,
        (m, k, n): (usize, usize, usize),
        (in_dtype, out_dtype): (DType, DType),
        accumulate: bool,
    ) -> Result<()> {
        let (data_type, out_type) = (cuda_data_type(in_dtype), cuda_data_type(out_dtype));
        let dtype = in_dtype;
        let (m_i, n_i, k_i) = (to_c_int(m, "m")?, to_c_int(n, "n")?, to_c_int(k, "k")?);
        let alpha: f32 = 1.0;
        let beta: f32 = if accumulate { 1.0 } else { 0.0 };
        // cuBLAS is column-major: row-major y[m, n] is column-major y^T[n, m] = W x^T, where
        // row-major w[n, k] read column-major with ld = k is w^T, hence transa = T.
        // SAFETY: the caller guarantees the extents.
        unsafe {
            cublas_result::gemm_ex(
                *self.handle.handle(),
                cublas_sys::cublasOperation_t::CUBLAS_OP_T,
                cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                n_i,
                m_i,
                k_i,
                (&alpha) as *const f32 as *const _,
                w_ptr as *const _,
                data_type,
                k_i,
                x_ptr as *const _,
                data_type,
                k_i,
                (&beta) as *const f32 as *const _,
                y_ptr as *mut _,
                out_type,
                n_i,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow::anyhow!("cublasGemmEx m={m} n={n} k={k} {dtype}: {e:?}"))
    }
}

/// `(m, k, n)` of `x[m, k] * w[n, k]^T`, or why the shapes do not fit.
pub fn gemm_dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    match (x, w) {
        ([m, k], [n, k2]) if k == k2 => Ok((*m, *k, *n)),
        _ => bail!("linear: x {x:?} and w {w:?} are not [m, k] and [n, k]"),
    }
}

/// `(m, k, n)` of a linear layer after checking its operands fit: x [m, k], w [n, k],
/// out [m, n] and bias [n], all of out's dtype. `op` names the caller in errors.
pub fn checked_linear_dims(
    x: &CudaTensor,
    w: &CudaTensor,
    bias: Option<&CudaTensor>,
    out: &CudaTensor,
    op: &str,
) -> Result<(usize, usize, usize)> {
    // Messages are formatted only on failure: this runs for every linear layer.
    let (m, k, n) = gemm_dims(x.shape(), w.shape())?;
    if out.shape() != [m, n] {
        bail!(
            "{op} output: expected shape {:?}, got {:?}",
            [m, n],
            out.shape()
        );
    }
    if let Some(b) = bias.filter(|b| b.shape() != [n]) {
        bail!("{op} bias: expected shape [{n}], got {:?}", b.shape());
    }
    let dtype = out.dtype();
    let operands = [(x, "input"), (w, "weight")].into_iter();
    for (t, what) in operands.chain(bias.map(|b| (b, "bias"))) {
        if t.dtype() != dtype {
            bail!("{op} {what}: expected dtype {dtype}, got {}", t.dtype());
        }
    }
    Ok((m, k, n))
}

pub(super) fn cuda_data_type(dtype: DType) -> cublas_sys::cudaDataType {
    match dtype {
        DType::F32 => cublas_sys::cudaDataType::CUDA_R_32F,
        DType::F16 => cublas_sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => cublas_sys::cudaDataType::CUDA_R_16BF,
    }
}

fn to_c_int(v: usize, what: &str) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| anyhow::anyhow!("GEMM dimension {what} = {v} too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_dims_match_hf_layout() {
        assert_eq!(
            gemm_dims(&[32, 4096], &[14336, 4096]).unwrap(),
            (32, 4096, 14336)
        );
        assert!(gemm_dims(&[32, 4096], &[4096, 14336]).is_err());
        assert!(gemm_dims(&[4096], &[4096, 4096]).is_err());
    }
}
