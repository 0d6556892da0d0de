//! Linear layers through cuBLASLt: `y[m, n] = x[m, k] * w[n, k]^T (+ bias[n])`, f32
//! accumulation (`CUBLAS_COMPUTE_32F`) for f32, f16 and bf16, the bias fused as the
//! `CUBLASLT_EPILOGUE_BIAS` epilogue. The default since the tenth GPU run (H100) checked it;
//! `KILN_CUBLASLT=0` keeps cublasGemmEx (`kiln selftest` runs both at the 8B's shapes).
//!
//! Why: cublasGemmEx chooses its algorithm inside every call and cannot fuse the bias;
//! cuBLASLt lets kiln choose once per shape (`cublasLtMatmulAlgoGetHeuristic`, told the
//! operands' real alignment) and add the bias in the GEMM's epilogue, one kernel fewer per
//! biased layer (Qwen2's qkv).
//!
//! The layouts and keys are pure (`gemm_lt_plan.rs`). A [`Plan`] (matmul descriptor,
//! layouts, chosen algorithm: `gemm_lt_desc.rs`) is made the first time a [`PlanKey`] is seen and cached in
//! [`GemmLt`], never in global state. Plans are made outside CUDA graph capture, and this
//! is enforced: a recorded decode step first runs eagerly with the same shapes
//! (`decode_replay.rs`), which makes its plans; a key first seen while the stream captures
//! is an error, so that recording falls back to eager instead of calling the heuristic
//! mid-capture. Replays find the same workspace: cuBLAS's, owned by [`super::gemm::Blas`]
//! for the device's life (the two libraries share it safely because both queue their work
//! on the device's one stream).

use super::device::CudaDevice;
use super::gemm::checked_linear_dims;
use super::gemm_lt_desc::{Handle, Plan};
use super::gemm_lt_plan::PlanKey;
use super::tensor::CudaTensor;
use anyhow::{bail, Context, Result};
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::sys::{CUdeviceptr, CUstreamCaptureStatus};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Every cuBLASLt entry point kiln calls. cudarc resolves a symbol on its first call and
/// panics when it is missing, so all are looked up before the first call.
const SYMBOLS: [&str; 12] = [
    "cublasLtCreate",
    "cublasLtDestroy",
    "cublasLtMatmulDescCreate",
    "cublasLtMatmulDescDestroy",
    "cublasLtMatmulDescSetAttribute",
    "cublasLtMatrixLayoutCreate",
    "cublasLtMatrixLayoutDestroy",
    "cublasLtMatmulPreferenceCreate",
    "cublasLtMatmulPreferenceDestroy",
    "cublasLtMatmulPreferenceSetAttribute",
    "cublasLtMatmulAlgoGetHeuristic",
    "cublasLtMatmul",
];

/// A cuBLASLt handle and the plans of the shapes seen so far.
pub struct GemmLt {
    /// Plans by key. The mutex also serialises every use of the handle and of a plan's
    /// descriptor (the bias pointer is set on it right before each call).
    plans: Mutex<HashMap<PlanKey, Plan>>,
    handle: Handle,
    stream: Arc<CudaStream>,
    /// cuBLAS's workspace (address, bytes), or none (`KILN_CUBLAS_WORKSPACE=0`: then the
    /// heuristic only offers algorithms that need none).
    workspace: (CUdeviceptr, usize),
}

impl GemmLt {
    /// Opens libcublasLt and creates a handle; an error (never a panic) names what is
    /// missing. `workspace` must outlive the returned value.
    pub fn new(stream: Arc<CudaStream>, workspace: (CUdeviceptr, usize)) -> Result<Self> {
        check_library()?;
        let handle = std::panic::catch_unwind(lt::create_handle)
            .map_err(|_| anyhow::anyhow!("libcublasLt could not be loaded"))?
            .map_err(|e| anyhow::anyhow!("creating a cuBLASLt handle: {e:?}"))?;
        Ok(Self {
            plans: Mutex::new(HashMap::new()),
            handle: Handle(handle),
            stream,
            workspace,
        })
    }

    /// `out[m, n] = x[m, k] * w[n, k]^T + bias[n]`; all share one dtype.
    pub fn linear(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let (m, k, n) = checked_linear_dims(x, w, bias, out, "cuBLASLt linear")?;
        let dtype = out.dtype();
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            bail!("cuBLASLt linear: K = 0");
        }
        let stream = &self.stream;
        let (x_ptr, _x_sync) = x.data().device_ptr(stream);
        let (w_ptr, _w_sync) = w.data().device_ptr(stream);
        let bias_ptr = bias.map(|b| b.data().device_ptr(stream));
        let (y_ptr, _y_sync) = out.data_mut().device_ptr_mut(stream);
        let mut addrs = vec![x_ptr, w_ptr, y_ptr];
        addrs.extend(bias_ptr.as_ref().map(|(p, _)| *p));
        let key = PlanKey::new(m, n, k, dtype, bias.is_some(), &addrs);
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let plan = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(slot) => {
                if self.capturing()? {
                    bail!("cuBLASLt: no plan yet for {key:?} while recording a CUDA graph");
                }
                slot.insert(Plan::new(&self.handle, key, self.workspace.1)?)
            }
        };
        if let Some((ptr, _)) = &bias_ptr {
            plan.set_bias(*ptr)?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the pointers come from live buffers whose shapes were checked above; the
        // plan's layouts describe exactly those shapes; the workspace outlives the handle.
        unsafe {
            lt::matmul(
                self.handle.0,
                plan.desc.0,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                w_ptr as *const c_void,
                plan.a.0,
                x_ptr as *const c_void,
                plan.b.0,
                y_ptr as *const c_void,
                plan.d.0,
                y_ptr as *mut c_void,
                plan.d.0,
                &plan.algo,
                self.workspace.0 as *mut c_void,
                self.workspace.1,
                stream.cu_stream() as lt_sys::cudaStream_t,
            )
        }
        .map_err(|e| anyhow::anyhow!("cublasLtMatmul m={m} n={n} k={k} {dtype}: {e:?}"))
        .context("linear (cuBLASLt)")
    }

    fn capturing(&self) -> Result<bool> {
        let status = self
            .stream
            .capture_status()
            .context("querying the stream's capture status")?;
        Ok(status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }
}

/// Ok when libcublasLt loads and has every one of [`SYMBOLS`]: after that no call into it
/// can panic in cudarc's loader. Else an error naming what is missing.
fn check_library() -> Result<()> {
    // SAFETY: only tries to open the shared library.
    if !unsafe { lt_sys::is_culib_present() } {
        bail!("cuBLASLt (libcublasLt.so) not found: install the CUDA runtime libraries");
    }
    if let Some(name) = first_missing_symbol() {
        bail!("libcublasLt was found but lacks {name} (older than the CUDA 13 bindings?)");
    }
    Ok(())
}

/// The first of [`SYMBOLS`] the loaded libcublasLt lacks.
fn first_missing_symbol() -> Option<&'static str> {
    // SAFETY: the library is present (checked by the caller); looking a symbol up calls
    // nothing. `culib` panics only when no library loads, which catch_unwind turns into
    // "everything is missing".
    let lib = match std::panic::catch_unwind(|| unsafe { lt_sys::culib() }) {
        Ok(lib) => lib,
        Err(_) => return Some(SYMBOLS[0]),
    };
    SYMBOLS
        .into_iter()
        .find(|name| unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err())
}

impl CudaDevice {
    /// A linear layer the GEMV does not take: cuBLASLt with the bias fused unless
    /// `KILN_CUBLASLT=0` (or the library is missing), else cublasGemmEx then `add_bias`.
    pub fn linear_cublas(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        if self.cublaslt() {
            return self.blas().lt()?.linear(x, w, bias, out);
        }
        self.linear_gemm_ex(x, w, bias, out)
    }

    /// The default non-GEMV linear: cublasGemmEx, then the bias by its own kernel.
    pub fn linear_gemm_ex(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.blas().linear(x, w, out)?;
        if let Some(b) = bias {
            self.add_bias(out, b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_that_names_it() {
        // On CI (no CUDA libraries) this is the error path; with them, it must pass.
        if let Err(e) = check_library() {
            assert!(format!("{e}").contains("libcublasLt"), "{e}");
        }
    }

    #[test]
    fn the_symbol_list_has_no_duplicates() {
        let mut names = SYMBOLS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SYMBOLS.len());
    }
}
