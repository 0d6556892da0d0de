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
