//! Random prompts of exact token lengths, reproducible from a seed (as vLLM's random dataset).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `count` prompts of `len` token ids drawn uniformly from the vocabulary.
pub fn random_prompts(count: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn prompts_are_reproducible_and_in_range() {
        let a = super::random_prompts(3, 7, 50, 1);
        assert_eq!(a, super::random_prompts(3, 7, 50, 1));
        assert!(a.iter().all(|p| p.len() == 7 && p.iter().all(|&t| t < 50)));
        assert_ne!(a[0], a[1]);
    }
}
