//! Deterministic test inputs for the host-side checks of the CUDA planning code.

/// `n` values spread over [-1, 1], a different sequence for each `seed` (a multiplicative
/// hash: no RNG state, so every test sees the same inputs).
pub fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761) ^ seed).wrapping_mul(40503) % 2001) as f32
                / 1000.0
                - 1.0
        })
        .collect()
}

/// The largest absolute difference between `got` and `want`; a NaN counts as infinite, so a
/// value a kernel never wrote cannot pass.
pub fn max_abs_error(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0.0f32,
            |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        )
}
