//! cuBLASLt's descriptors for one linear-layer shape, owned and destroyed on drop: a
//! [`Plan`] turns a [`PlanKey`] (`gemm_lt_plan.rs`) into a matmul descriptor, the matrix
//! layouts and the algorithm `cublasLtMatmulAlgoGetHeuristic` picks, once per key. All of it
//! is host-side; `gemm_lt.rs` makes plans outside CUDA graph capture and caches them.

use super::gemm_lt_plan::{lt_problem, LtEpilogue, LtMatrix, PlanKey};
use crate::backend::DType;
use anyhow::Result;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::sys::CUdeviceptr;
use lt_sys::cublasLtMatmulDescAttributes_t::{
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE as BIAS_DATA_TYPE,
    CUBLASLT_MATMUL_DESC_BIAS_POINTER as BIAS_POINTER, CUBLASLT_MATMUL_DESC_EPILOGUE as EPILOGUE,
    CUBLASLT_MATMUL_DESC_TRANSA as TRANSA, CUBLASLT_MATMUL_DESC_TRANSB as TRANSB,
};
use lt_sys::cublasLtMatmulPreferenceAttributes_t::{
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES as MAX_WORKSPACE,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES as ALIGN_A,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES as ALIGN_B,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES as ALIGN_C,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES as ALIGN_D,
};
use std::ffi::c_void;

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

/// One shape's descriptors and algorithm, made once and reused by every call.
pub struct Plan {
    pub desc: Desc,
    pub a: Layout,
    pub b: Layout,
    /// C and D: one buffer (beta = 0), one layout.
    pub d: Layout,
    pub algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl Plan {
    pub fn new(handle: &Handle, key: PlanKey, workspace_bytes: usize) -> Result<Self> {
        let data_type = lt_data_type(key.dtype);
        let problem = lt_problem(key.m, key.n, key.k);
        let err =
            |what: &str, e: lt::CublasError| anyhow::anyhow!("cuBLASLt {what} for {key:?}: {e:?}");
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
                desc.set(
                    EPILOGUE,
                    &(lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32),
                )?;
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
        let heuristic =
            unsafe { lt::get_matmul_algo_heuristic(handle.0, desc.0, a.0, b.0, d.0, d.0, pref.0) }
                .map_err(|e| err("algorithm heuristic", e))?;
        Ok(Self {
            desc,
            a,
            b,
            d,
            algo: heuristic.algo,
        })
    }

    /// Points the bias epilogue at `bias` for the next call. The caller holds the lock
    /// that serialises every use of this plan.
    pub fn set_bias(&self, bias: CUdeviceptr) -> Result<()> {
        // SAFETY: the descriptor is live; BIAS_POINTER is a device pointer (8 bytes).
        unsafe { self.desc.set(BIAS_POINTER, &bias) }
    }
}

/// The handle, destroyed on drop.
pub struct Handle(pub lt_sys::cublasLtHandle_t);

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

pub struct Desc(pub lt_sys::cublasLtMatmulDesc_t);

impl Desc {
    /// # Safety
    /// `T` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<T>(&self, attr: lt_sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
        lt::set_matmul_desc_attribute(
            self.0,
            attr,
            value as *const T as *const c_void,
            size_of::<T>(),
        )
        .map_err(|e| anyhow::anyhow!("cuBLASLt matmul attribute {attr:?}: {e:?}"))
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: made by cublasLtMatmulDescCreate, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

pub struct Layout(pub lt_sys::cublasLtMatrixLayout_t);

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: made by cublasLtMatrixLayoutCreate, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

pub struct Pref(lt_sys::cublasLtMatmulPreference_t);

impl Pref {
    /// # Safety
    /// `T` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<T>(
        &self,
        attr: lt_sys::cublasLtMatmulPreferenceAttributes_t,
        value: &T,
    ) -> Result<()> {
        lt::set_matmul_pref_attribute(
            self.0,
            attr,
            value as *const T as *const c_void,
            size_of::<T>(),
        )
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
}
