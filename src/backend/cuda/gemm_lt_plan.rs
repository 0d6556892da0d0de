//! What a cuBLASLt linear layer asks the library for, as plain values: the matrix layouts
//! of `y[m, n] = x[m, k] * w[n, k]^T (+ bias[n])`, the epilogue, the operand alignment the
//! algorithm may assume, and the key its cached plan is found under. No CUDA here, so all of
//! it is unit-tested on machines without a GPU; `gemm_lt.rs` turns it into descriptors.

use crate::backend::DType;

/// What cuBLASLt does to the product before it stores D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LtEpilogue {
    /// D = A B.
    Plain,
    /// D = A B + bias broadcast along D's columns (`CUBLASLT_EPILOGUE_BIAS`).
    Bias,
}

/// The fused bias when the layer has one: cuBLASLt adds `bias[r]` to every element of row
/// `r` of the column-major D, whose rows are kiln's output features (see [`lt_problem`]),
/// so Qwen2's qkv bias `[n]` is exactly its bias vector, with no add_bias kernel after.
pub fn choose_epilogue(has_bias: bool) -> LtEpilogue {
    if has_bias {
        LtEpilogue::Bias
    } else {
        LtEpilogue::Plain
    }
}

/// Largest alignment cuBLASLt's heuristic asks about (its default assumption).
pub const MAX_ALIGNMENT: u32 = 256;

/// Bytes `addr` is aligned to: the largest power of two dividing it, at most
/// [`MAX_ALIGNMENT`]. The heuristic assumes 256-byte operands unless told otherwise, and an
/// algorithm picked under that assumption may refuse (or misread) a less aligned pointer.
pub fn pointer_alignment(addr: u64) -> u32 {
    if addr == 0 {
        return MAX_ALIGNMENT;
    }
    (1u64 << addr.trailing_zeros()).min(MAX_ALIGNMENT as u64) as u32
}

/// Everything an algorithm choice depends on: one cached plan per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanKey {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dtype: DType,
    pub epilogue: LtEpilogue,
    /// Alignment in bytes every operand (x, w, y and the bias) has.
    pub alignment: u32,
}

impl PlanKey {
    /// The key of one call: `addrs` are the device addresses of its operands.
    pub fn new(m: usize, n: usize, k: usize, dtype: DType, has_bias: bool, addrs: &[u64]) -> Self {
        let alignment = addrs
            .iter()
            .map(|&a| pointer_alignment(a))
            .min()
            .unwrap_or(MAX_ALIGNMENT);
        Self {
            m,
            n,
            k,
            dtype,
            epilogue: choose_epilogue(has_bias),
            alignment,
        }
    }
}

/// One operand as cuBLASLt stores it: column-major, `rows x cols`, leading dimension `ld`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LtMatrix {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
}

/// The column-major product cuBLASLt computes, D = op(A) op(B), for a linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LtProblem {
    /// The weight w[n, k]: row-major, so column-major it is `k x n` with ld = k.
    pub a: LtMatrix,
    /// A is used transposed (`CUBLAS_OP_T`), giving op(A) = `n x k`.
    pub transa: bool,
    /// The activations x[m, k]: column-major `k x m` with ld = k, used as stored.
    pub b: LtMatrix,
    pub transb: bool,
    /// The output y[m, n]: column-major `n x m` with ld = n. C (beta = 0) shares it.
    pub d: LtMatrix,
}

/// The layouts of `y[m, n] = x[m, k] * w[n, k]^T`, transposed as in `gemm.rs`: row-major
/// y is column-major y^T = W x^T, i.e. D[n, m] = op(A) B with A = w read as `k x n`. D's
/// rows are the output features, which is why the bias epilogue wants `bias[n]`.
pub fn lt_problem(m: usize, n: usize, k: usize) -> LtProblem {
    let (m, n, k) = (m as u64, n as u64, k as u64);
    LtProblem {
        a: LtMatrix {
            rows: k,
            cols: n,
            ld: k as i64,
        },
        transa: true,
        b: LtMatrix {
            rows: k,
            cols: m,
            ld: k as i64,
        },
        transb: false,
        d: LtMatrix {
            rows: n,
            cols: m,
            ld: n as i64,
        },
    }
}

/// The linear layers the GEMV does not take run through cuBLASLt unless `KILN_CUBLASLT=0`
/// (then cublasGemmEx, for A/B runs). Default since the tenth GPU run (H100): every
/// selftest shape passed, the fixtures' tokens matched, and it was as fast or faster at
/// every 8B shape (the o projection at 8 and 32 rows in 0.81-0.85 of GemmEx's time).
pub fn lt_switch_on(value: Option<&str>) -> bool {
    value.map(str::trim) != Some("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_the_transposed_row_major_product() {
        // Llama-3.1-8B's down projection at a 32-token step.
        let p = lt_problem(32, 4096, 14336);
        assert_eq!(
            p.a,
            LtMatrix {
                rows: 14336,
                cols: 4096,
                ld: 14336
            }
        );
        assert!(p.transa && !p.transb);
        assert_eq!(
            p.b,
            LtMatrix {
                rows: 14336,
                cols: 32,
                ld: 14336
            }
        );
        assert_eq!(
            p.d,
            LtMatrix {
                rows: 4096,
                cols: 32,
                ld: 4096
            }
        );
        // op(A) is n x k, B is k x m, D is n x m: the inner dimensions agree.
        let op_a = if p.transa {
            (p.a.cols, p.a.rows)
        } else {
            (p.a.rows, p.a.cols)
        };
        assert_eq!(op_a.1, p.b.rows);
        assert_eq!((op_a.0, p.b.cols), (p.d.rows, p.d.cols));
    }

    #[test]
    fn d_rows_are_output_features_so_the_bias_is_per_n() {
        // Element (row r, column c) of column-major D lives at c * ld + r, which is
        // row-major y[c, r]: r runs over the n output features.
        let (m, n) = (3usize, 5usize);
        let p = lt_problem(m, n, 8);
        assert_eq!(p.d.rows as usize, n);
        let (c, r) = (2usize, 4usize);
        assert_eq!(c * p.d.ld as usize + r, c * n + r);
        assert_eq!(choose_epilogue(true), LtEpilogue::Bias);
        assert_eq!(choose_epilogue(false), LtEpilogue::Plain);
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(pointer_alignment(0x7f00_0000_0000), 256);
        assert_eq!(pointer_alignment(0x7f00_0000_0100), 256);
        assert_eq!(pointer_alignment(0x7f00_0000_0080), 128);
        assert_eq!(pointer_alignment(0x7f00_0000_0010), 16);
        assert_eq!(pointer_alignment(0x7f00_0000_0002), 2);
        assert_eq!(pointer_alignment(0x7f00_0000_0001), 1);
        assert_eq!(pointer_alignment(0), 256);
    }

    #[test]
    fn keys_tell_apart_everything_the_algorithm_depends_on() {
        let aligned = [0x1000u64, 0x2000, 0x3000];
        let base = PlanKey::new(8, 6144, 4096, DType::BF16, false, &aligned);
        assert_eq!(base.alignment, 256);
        assert_eq!(base.epilogue, LtEpilogue::Plain);
        assert_eq!(
            base,
            PlanKey::new(8, 6144, 4096, DType::BF16, false, &aligned)
        );
        let with_bias = PlanKey::new(
            8,
            6144,
            4096,
            DType::BF16,
            true,
            &[0x1000, 0x2000, 0x3000, 0x4000],
        );
        assert_eq!(with_bias.epilogue, LtEpilogue::Bias);
        let others = [
            PlanKey::new(9, 6144, 4096, DType::BF16, false, &aligned),
            PlanKey::new(8, 4096, 4096, DType::BF16, false, &aligned),
            PlanKey::new(8, 6144, 14336, DType::BF16, false, &aligned),
            PlanKey::new(8, 6144, 4096, DType::F16, false, &aligned),
            with_bias,
            // One operand (here a bias at an odd offset) lowers the whole key's alignment.
            PlanKey::new(8, 6144, 4096, DType::BF16, false, &[0x1000, 0x2002, 0x3000]),
        ];
        for other in others {
            assert_ne!(base, other);
        }
        assert_eq!(
            PlanKey::new(
                8,
                6144,
                4096,
                DType::BF16,
                true,
                &[0x1000, 0x2000, 0x3000, 0x4008]
            )
            .alignment,
            8
        );
    }

    #[test]
    fn only_one_turns_it_on() {
        assert!(lt_switch_on(Some("1")));
        assert!(lt_switch_on(None));
        assert!(lt_switch_on(Some("")));
        assert!(!lt_switch_on(Some("0")));
        assert!(!lt_switch_on(Some(" 0 ")));
    }
}
