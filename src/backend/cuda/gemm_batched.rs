//! Strided-batched GEMMs through cuBLAS on operands anywhere inside a tensor (a head of
//! `[b, n, heads, d]` attention inputs, one image of a batch), for the image ops: conv2d
//! (im2col times weights) and dense attention (q k^T, then probabilities times v).
//!
//! A [`StridedGemm`] is cuBLAS's column-major contract, spelled out so that the plans built
//! from it can be checked on the host ([`StridedGemm::run_on_host`]) without a GPU.

use super::gemm::{cuda_data_type, Blas};
use super::tensor::CudaTensor;
use crate::backend::DType;
use anyhow::{bail, ensure, Context, Result};
use cudarc::cublas::{result as cublas_result, sys as cublas_sys};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use std::ffi::{c_int, c_longlong};

/// For each batch entry `i`: `C_i = alpha op(A_i) op(B_i)`, column-major, where
/// `X_i = X + i * stride_x` (elements), `op(A)` is `m x k`, `op(B)` is `k x n`, `C` is `m x n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StridedGemm {
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub alpha: f32,
}

/// One operand: a tensor's buffer from element `offset` on.
pub struct Operand<'a> {
    pub tensor: &'a CudaTensor,
    pub offset: usize,
}

/// The output operand.
pub struct OperandMut<'a> {
    pub tensor: &'a mut CudaTensor,
    pub offset: usize,
}

/// Elements a column-major `rows x cols` matrix with leading dimension `ld` spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (cols - 1) * ld + rows
    }
}

impl StridedGemm {
    /// `y[rows, n] = x[rows, k] w[n, k]^T` with row-major x and y and HF-layout w, as
    /// gemm.rs's `linear` computes it: A = w, B = x, C = y.
    pub fn linear(rows: usize, k: usize, n: usize) -> StridedGemm {
        StridedGemm {
            transa: true,
            transb: false,
            m: n,
            n: rows,
            k,
            lda: k,
            ldb: k,
            ldc: n,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            batch: 1,
            alpha: 1.0,
        }
    }

    /// `(rows, cols)` of A and B as stored (before `op`).
    fn stored_a(&self) -> (usize, usize) {
        if self.transa {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }

    fn stored_b(&self) -> (usize, usize) {
        if self.transb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }

    /// Elements past its offset that each operand must hold: `(a, b, c)`.
    pub fn extents(&self) -> (usize, usize, usize) {
        let last = self.batch.saturating_sub(1);
        let (ar, ac) = self.stored_a();
        let (br, bc) = self.stored_b();
        (
            last * self.stride_a + span(ar, ac, self.lda),
            last * self.stride_b + span(br, bc, self.ldb),
            last * self.stride_c + span(self.m, self.n, self.ldc),
        )
    }

    /// Fails unless every leading dimension covers its matrix's rows and the sizes are
    /// non-zero and fit cuBLAS's ints.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.m > 0 && self.n > 0 && self.k > 0 && self.batch > 0,
            "empty GEMM {self:?}"
        );
        ensure!(
            self.lda >= self.stored_a().0 && self.ldb >= self.stored_b().0 && self.ldc >= self.m,
            "GEMM leading dimensions too small: {self:?}"
        );
        for (v, what) in [
            (self.m, "m"),
            (self.n, "n"),
            (self.k, "k"),
            (self.lda, "lda"),
            (self.ldb, "ldb"),
            (self.ldc, "ldc"),
            (self.batch, "batch"),
        ] {
            c_int::try_from(v).map_err(|_| anyhow::anyhow!("GEMM {what} = {v} too large"))?;
        }
        Ok(())
    }

    /// The same computation on host slices (each from its operand's offset on), in f32:
    /// the contract the GPU plans are tested against.
    #[cfg(test)]
    pub fn run_on_host(&self, a: &[f32], b: &[f32], c: &mut [f32]) {
        for e in 0..self.batch {
            let (a, b) = (&a[e * self.stride_a..], &b[e * self.stride_b..]);
            // op(A)[i, l] and op(B)[l, j], column-major.
            let op_a = |i: usize, l: usize| match self.transa {
                true => a[l + i * self.lda],
                false => a[i + l * self.lda],
            };
            let op_b = |l: usize, j: usize| match self.transb {
                true => b[j + l * self.ldb],
                false => b[l + j * self.ldb],
            };
            for j in 0..self.n {
                for i in 0..self.m {
                    let acc: f32 = (0..self.k).map(|l| op_a(i, l) * op_b(l, j)).sum();
                    c[e * self.stride_c + i + j * self.ldc] = self.alpha * acc;
                }
            }
        }
    }
}

fn operation(trans: bool) -> cublas_sys::cublasOperation_t {
    if trans {
        cublas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        cublas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

fn check_room(t: &CudaTensor, offset: usize, extent: usize, what: &str) -> Result<()> {
    if offset + extent > t.numel() {
        bail!(
            "GEMM operand {what}: elements {offset}..{} of a {:?} tensor",
            offset + extent,
            t.shape()
        );
    }
    Ok(())
}

impl Blas {
    /// Runs `g` with f32 accumulation. A and B share a dtype; C may be that dtype or f32
    /// (the scores of attention).
    pub fn gemm_strided(
        &self,
        g: &StridedGemm,
        a: Operand,
        b: Operand,
        c: OperandMut,
    ) -> Result<()> {
        g.validate()?;
        b.tensor.expect_dtype(a.tensor.dtype(), "GEMM operand B")?;
        let c_dtype = c.tensor.dtype();
        ensure!(
            c_dtype == a.tensor.dtype() || c_dtype == DType::F32,
            "GEMM: {} inputs cannot write a {c_dtype} output",
            a.tensor.dtype()
        );
        let (ea, eb, ec) = g.extents();
        check_room(a.tensor, a.offset, ea, "A")?;
        check_room(b.tensor, b.offset, eb, "B")?;
        check_room(c.tensor, c.offset, ec, "C")?;
        let (in_size, out_size) = (a.tensor.dtype().size_in_bytes(), c_dtype.size_in_bytes());
        let stream = self.stream();
        let (a_ptr, _a_sync) = a.tensor.data().device_ptr(stream);
        let (b_ptr, _b_sync) = b.tensor.data().device_ptr(stream);
        let (c_ptr, _c_sync) = c.tensor.data_mut().device_ptr_mut(stream);
        let beta = 0.0f32;
        let int = |v: usize| v as c_int; // validated above
        let long = |v: usize| v as c_longlong;
        // SAFETY: every operand's extent was checked against its tensor above; the pointers
        // come from live buffers; alpha and beta are f32 as CUBLAS_COMPUTE_32F requires.
        unsafe {
            cublas_result::gemm_strided_batched_ex(
                *self.handle().handle(),
                operation(g.transa),
                operation(g.transb),
                int(g.m),
                int(g.n),
                int(g.k),
                (&g.alpha) as *const f32 as *const _,
                (a_ptr + (a.offset * in_size) as u64) as *const _,
                cuda_data_type(a.tensor.dtype()),
                int(g.lda),
                long(g.stride_a),
                (b_ptr + (b.offset * in_size) as u64) as *const _,
                cuda_data_type(b.tensor.dtype()),
                int(g.ldb),
                long(g.stride_b),
                (&beta) as *const f32 as *const _,
                (c_ptr + (c.offset * out_size) as u64) as *mut _,
                cuda_data_type(c_dtype),
                int(g.ldc),
                long(g.stride_c),
                int(g.batch),
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow::anyhow!("cublasGemmStridedBatchedEx {g:?}: {e:?}"))
        .context("strided-batched GEMM")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y = x w^T` with row-major x [2, 3] and w [4, 3], as gemm.rs's linear sets it up.
    #[test]
    fn host_contract_is_column_major_like_cublas() {
        let x = [1., 2., 3., 4., 5., 6.];
        let w = [1., 0., 0., 0., 1., 0., 0., 0., 1., 1., 1., 1.];
        let g = StridedGemm {
            alpha: 2.0,
            ..StridedGemm::linear(2, 3, 4)
        };
        let mut y = [0.0; 8];
        g.run_on_host(&w, &x, &mut y);
        assert_eq!(y, [2., 4., 6., 12., 8., 10., 12., 30.]);
        assert_eq!(g.extents(), (12, 6, 8));
        g.validate().unwrap();
    }

    #[test]
    fn extents_cover_the_last_batch_entry_and_validation_catches_short_lds() {
        let g = StridedGemm {
            transa: false,
            transb: false,
            m: 5,
            n: 3,
            k: 2,
            lda: 8,
            ldb: 2,
            ldc: 5,
            stride_a: 5,
            stride_b: 0,
            stride_c: 15,
            batch: 3,
            alpha: 1.0,
        };
        // A: 2 entries of stride 5, then 5 rows x 2 cols with ld 8 -> 10 + 8 + 5.
        assert_eq!(g.extents(), (23, 6, 45));
        g.validate().unwrap();
        assert!(StridedGemm { lda: 4, ..g }.validate().is_err());
        assert!(StridedGemm { ldc: 4, ..g }.validate().is_err());
        assert!(StridedGemm { batch: 0, ..g }.validate().is_err());
    }
}
