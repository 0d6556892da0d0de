//! How a GPU result is judged against the f32 reference. Inputs are rounded to the dtype
//! before both run, so the error measured is the kernel's own: f32 arithmetic differences
//! plus the final rounding of the output to the dtype.

use crate::backend::cuda::DType;

/// What kind of computation produced the compared values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Copies (embedding, KV write, argmax indices): must match bit for bit.
    Exact,
    /// One rounding of an f32 expression per element (add, silu_mul, rope).
    Elementwise,
    /// Reductions (norms, attention, GEMM), then rounding to the dtype.
    Reduction,
    /// f32 outputs of reductions over rounded inputs (softmax, log-softmax).
    F32Output,
}

/// Allowed max abs error, relative to the largest reference magnitude: a few units of the
/// dtype's last place at that magnitude. Indexing or layout bugs give errors of order 1.
pub fn tolerance(check: Check, dtype: DType, reference_max_abs: f64) -> f64 {
    let relative = match (check, dtype) {
        (Check::Exact, _) => 0.0,
        (Check::F32Output, _) => 2e-5,
        (Check::Elementwise, DType::F32) => 1e-5,
        (Check::Elementwise, DType::F16) => 2f64.powi(-10),
        (Check::Elementwise, DType::BF16) => 2f64.powi(-7),
        (Check::Reduction, DType::F32) => 2e-5,
        (Check::Reduction, DType::F16) => 2f64.powi(-9),
        (Check::Reduction, DType::BF16) => 2f64.powi(-6),
    };
    relative * reference_max_abs.max(1e-30)
}

/// Largest |a - b| (NaN counts as infinite) and largest |reference|.
pub fn max_abs_error(gpu: &[f32], reference: &[f32]) -> (f64, f64) {
    if gpu.len() != reference.len() {
        return (f64::INFINITY, 0.0);
    }
    let mut err = 0.0f64;
    let mut max_ref = 0.0f64;
    for (&g, &r) in gpu.iter().zip(reference) {
        let d = (g as f64 - r as f64).abs();
        err = if d.is_nan() {
            f64::INFINITY
        } else {
            err.max(d)
        };
        max_ref = max_ref.max((r as f64).abs());
    }
    (err, max_ref)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_nan() {
        assert_eq!(max_abs_error(&[1.0, 2.0], &[1.5, -2.0]), (4.0, 2.0));
        assert_eq!(max_abs_error(&[f32::NAN], &[1.0]).0, f64::INFINITY);
        assert_eq!(max_abs_error(&[1.0], &[1.0, 2.0]).0, f64::INFINITY);
    }

    #[test]
    fn tolerance_scales_with_magnitude_and_dtype() {
        assert_eq!(tolerance(Check::Exact, DType::BF16, 10.0), 0.0);
        let bf = tolerance(Check::Elementwise, DType::BF16, 4.0);
        let f16 = tolerance(Check::Elementwise, DType::F16, 4.0);
        let f32 = tolerance(Check::Elementwise, DType::F32, 4.0);
        assert!(bf > f16 && f16 > f32 && f32 > 0.0);
        // One bf16 rounding of a value of magnitude 4 (half ulp = 2^-7) must pass.
        assert!(bf >= 4.0 * 2f64.powi(-8));
    }
}
