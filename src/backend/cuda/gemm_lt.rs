//! Linear layers through cuBLASLt: `y[m, n] = x[m, k] * w[n, k]^T (+ bias[n])`, f32
//! accumulation (`CUBLAS_COMPUTE_32F`) for f32, f16 and bf16, the bias fused as the
//! `CUBLASLT_EPILOGUE_BIAS` epilogue. Opt-in with `KILN_CUBLASLT=1` until a GPU run has
//! checked it (`kiln selftest` runs it at the Llama-3.1-8B shapes whatever the switch).
//!
//! Why: cublasGemmEx picks its algorithm on every call and cannot fuse the bias; cuBLASLt
//! lets kiln pick once per shape (`cublasLtMatmulAlgoGetHeuristic`) and add the bias in
//! the GEMM's epilogue, which drops one kernel per biased layer.
//!
//! The layouts and keys are pure (`gemm_lt_plan.rs`). A [`Plan`] (matmul descriptor,
//! layouts, chosen algorithm) is made the first time a [`PlanKey`] is seen and cached in
//! [`GemmLt`], never in global state. Plans are made outside CUDA graph capture, and this
//! is enforced: a recorded decode step first runs eagerly with the same shapes
//! (`decode_replay.rs`), which makes its plans; a key first seen while the stream captures
//! is an error, so that recording falls back to eager instead of calling the heuristic
//! mid-capture. Replays find the same workspace: cuBLAS's, owned by [`super::gemm::Blas`]
//! for the device's life (the two libraries share it safely because both queue their work
//! on the device's one stream).

use super::device::CudaDevice;
use super::gemm::gemm_dims;
use super::gemm_lt_plan::{lt_problem, LtEpilogue, LtMatrix, PlanKey};
use super::tensor::CudaTensor;
use crate::backend::DType;
use anyhow::{bail, Context, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::sys::{CUdeviceptr, CUstreamCaptureStatus};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
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
        // SAFETY: only tries to open the shared library.
        if !unsafe { lt_sys::is_culib_present() } {
            bail!("cuBLASLt (libcublasLt.so) not found: install the CUDA runtime libraries");
        }
        if let Some(name) = first_missing_symbol() {
            bail!("libcublasLt was found but lacks {name} (older than the CUDA 13 bindings?)");
        }
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
        let (m, k, n) = gemm_dims(x.shape(), w.shape())?;
        out.expect_shape(&[m, n], "cuBLASLt linear output")?;
        let dtype = out.dtype();
        x.expect_dtype(dtype, "cuBLASLt linear input")?;
        w.expect_dtype(dtype, "cuBLASLt linear weight")?;
        if let Some(b) = bias {
            b.expect_shape(&[n], "cuBLASLt linear bias")?;
            b.expect_dtype(dtype, "cuBLASLt linear bias")?;
        }
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
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                if self.capturing()? {
                    bail!("cuBLASLt: no plan yet for {key:?} while recording a CUDA graph");
                }
                slot.insert(Plan::new(self.handle.0, key, self.workspace.1)?)
            }
        };
        if let Some((ptr, _)) = &bias_ptr {
            // SAFETY: the descriptor is live and only used under the lock held here.
            unsafe { plan.desc.set(BIAS_POINTER, ptr) }?;
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

    /// Plans made so far (for the selftest's notes).
    pub fn plan_count(&self) -> usize {
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn capturing(&self) -> Result<bool> {
        let status = self
            .stream
            .capture_status()
            .context("querying the stream's capture status")?;
        Ok(status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }
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

/// cuBLASLt's types for a dtype: inputs and output share it; products accumulate and
/// alpha/beta are given in f32 for all three (the f32 models included: no TF32, as in
/// `gemm.rs`).
fn lt_data_type(dtype: DType) -> lt_sys::cudaDataType {
    match dtype {
        DType::F32 => lt_sys::cudaDataType::CUDA_R_32F,
        DType::F16 => lt_sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => lt_sys::cudaDataType::CUDA_R_16BF,
    }
}

const COMPUTE: lt_sys::cublasComputeType_t = lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
const SCALE: lt_sys::cudaDataType = lt_sys::cudaDataType::CUDA_R_32F;

use lt_sys::cublasLtMatmulDescAttributes_t::{
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE as BIAS_DATA_TYPE,
    CUBLASLT_MATMUL_DESC_BIAS_POINTER as BIAS_POINTER,
    CUBLASLT_MATMUL_DESC_EPILOGUE as EPILOGUE, CUBLASLT_MATMUL_DESC_TRANSA as TRANSA,
    CUBLASLT_MATMUL_DESC_TRANSB as TRANSB,
};
use lt_sys::cublasLtMatmulPreferenceAttributes_t::{
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES as MAX_WORKSPACE,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES as ALIGN_A,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES as ALIGN_B,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES as ALIGN_C,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES as ALIGN_D,
};

/// One shape's descriptors and algorithm, made once and reused by every call.
struct Plan {
    desc: Desc,
    a: Layout,
    b: Layout,
    /// C and D: one buffer (beta = 0), one layout.
    d: Layout,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl Plan {
    fn new(handle: lt_sys::cublasLtHandle_t, key: PlanKey, workspace_bytes: usize) -> Result<Self> {
        let data_type = lt_data_type(key.dtype);
        let problem = lt_problem(key.m, key.n, key.k);
        let err = |what: &str, e: lt::CublasError| anyhow::anyhow!("cuBLASLt {what} for {key:?}: {e:?}");
        let desc = Desc(lt::create_matmul_desc(COMPUTE, SCALE).map_err(|e| err("matmul desc", e))?);
        let op = |t: bool| -> i32 {
            if t {
                cublasOperation_t::CUBLAS_OP_T as i32
            } else {
                cublasOperation_t::CUBLAS_OP_N as i32
            }
        };
        // SAFETY: desc is live; each value has the size and type cuBLASLt documents for
        // its attribute (cublasOperation_t and cudaDataType are int32, the epilogue uint32).
        unsafe {
            desc.set(TRANSA, &op(problem.transa))?;
            desc.set(TRANSB, &op(problem.transb))?;
            if key.epilogue == LtEpilogue::Bias {
                desc.set(EPILOGUE, &(lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32))?;
                // The bias has the output's type (also cuBLASLt's default, made explicit).
                desc.set(BIAS_DATA_TYPE, &(data_type as i32))?;
            }
        }
        let layout = |m: LtMatrix| {
            lt::create_matrix_layout(data_type, m.rows, m.cols, m.ld)
                .map(Layout)
                .map_err(|e| err("matrix layout", e))
        };
        let (a, b, d) = (layout(problem.a)?, layout(problem.b)?, layout(problem.d)?);
        let pref = Pref(lt::create_matmul_pref().map_err(|e| err("preference", e))?);
        let max_workspace = workspace_bytes as u64;
        // SAFETY: pref is live; MAX_WORKSPACE is uint64, the alignments uint32.
        unsafe {
            pref.set(MAX_WORKSPACE, &max_workspace)?;
            for attr in [ALIGN_A, ALIGN_B, ALIGN_C, ALIGN_D] {
                pref.set(attr, &key.alignment)?;
            }
        }
        // SAFETY: every descriptor is live; the layouts match the plan's shapes.
        let heuristic = unsafe {
            lt::get_matmul_algo_heuristic(handle, desc.0, a.0, b.0, d.0, d.0, pref.0)
        }
        .map_err(|e| err("algorithm heuristic (no algorithm fits)", e))?;
        Ok(Self {
            desc,
            a,
            b,
            d,
            algo: heuristic.algo,
        })
    }
}

/// The handle, destroyed on drop.
struct Handle(lt_sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle is not tied to the thread that made it; kiln uses it only under
// `GemmLt::plans`' lock.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: made by cublasLtCreate, destroyed once. An error at teardown is ignored.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

struct Desc(lt_sys::cublasLtMatmulDesc_t);

impl Desc {
    /// # Safety
    /// `T` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<T>(&self, attr: lt_sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
        lt::set_matmul_desc_attribute(self.0, attr, value as *const T as *const c_void, size_of::<T>())
            .map_err(|e| anyhow::anyhow!("cuBLASLt matmul attribute {attr:?}: {e:?}"))
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: made by cublasLtMatmulDescCreate, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

struct Layout(lt_sys::cublasLtMatrixLayout_t);

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: made by cublasLtMatrixLayoutCreate, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

struct Pref(lt_sys::cublasLtMatmulPreference_t);

impl Pref {
    /// # Safety
    /// `T` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<T>(&self, attr: lt_sys::cublasLtMatmulPreferenceAttributes_t, value: &T) -> Result<()> {
        lt::set_matmul_pref_attribute(self.0, attr, value as *const T as *const c_void, size_of::<T>())
            .map_err(|e| anyhow::anyhow!("cuBLASLt preference {attr:?}: {e:?}"))
    }
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: made by cublasLtMatmulPreferenceCreate, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

// SAFETY: descriptors are host objects not tied to a thread; kiln touches a plan only
// under `GemmLt::plans`' lock.
unsafe impl Send for Plan {}

impl CudaDevice {
    /// A linear layer the GEMV does not take: cuBLASLt with the bias fused when
    /// `KILN_CUBLASLT=1` (and the library loaded), else cublasGemmEx then `add_bias`.
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
    fn every_dtype_maps_to_its_own_type_with_f32_accumulation() {
        assert_eq!(lt_data_type(DType::F32), lt_sys::cudaDataType::CUDA_R_32F);
        assert_eq!(lt_data_type(DType::F16), lt_sys::cudaDataType::CUDA_R_16F);
        assert_eq!(lt_data_type(DType::BF16), lt_sys::cudaDataType::CUDA_R_16BF);
        assert_eq!(COMPUTE, lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F);
        assert_eq!(SCALE, lt_sys::cudaDataType::CUDA_R_32F);
    }

    #[test]
    fn the_symbol_list_has_no_duplicates() {
        let mut names = SYMBOLS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SYMBOLS.len());
    }
}
