//! The `random` dataset: prompts of a chosen token length with uniformly spread lengths,
//! unique per request so prefix caching cannot make requests cheaper than they look.
//!
//! With a tokenizer the prompt is built from random token ids (decoded, re-encoded and cut
//! back to the exact length, since decode/encode does not round-trip exactly). Without one
//! it is built from short common words, each close to one token for BPE vocabularies; the
//! server's reported `prompt_tokens` then gives the true count.

use crate::model::tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// One request of the benchmark: what is sent and how long it is expected to be.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    pub prompt: String,
    /// Prompt tokens as the dataset counts them (exact with a tokenizer, estimated without).
    pub prompt_len: usize,
    pub output_len: usize,
}

/// The shape of the random dataset.
#[derive(Debug, Clone, Copy)]
pub struct RandomSpec {
    pub num_prompts: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// Lengths are uniform in `[len * (1 - r), len * (1 + r)]`.
    pub range_ratio: f64,
    pub seed: u64,
}

/// Words that are a single token in common BPE vocabularies when preceded by a space.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "water", "house",
    "river", "stone", "light", "bread", "fire", "day", "night", "city", "road", "tree", "book",
    "hand", "world", "year", "work", "life", "man", "place", "home", "long", "small", "old", "new",
    "good", "high", "great", "first", "last", "right", "left", "open", "clay", "kiln",
];

/// Builds the requests, deterministic for a given spec (and tokenizer).
pub fn random_requests(
    spec: &RandomSpec,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<BenchRequest>> {
    ensure!(
        (0.0..1.0).contains(&spec.range_ratio),
        "--range-ratio must be in [0, 1), got {}",
        spec.range_ratio
    );
    ensure!(spec.output_len >= 1, "--output-len must be at least 1");
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    (0..spec.num_prompts)
        .map(|_| {
            let input_len = sample_len(&mut rng, spec.input_len, spec.range_ratio).max(1);
            let output_len = sample_len(&mut rng, spec.output_len, spec.range_ratio).max(1);
            let (prompt, prompt_len) = match tokenizer {
                Some(t) => token_prompt(&mut rng, t, input_len)?,
                None => (word_prompt(&mut rng, input_len), input_len),
            };
            Ok(BenchRequest {
                prompt,
                prompt_len,
                output_len,
            })
        })
        .collect()
}

/// A length uniform in `[len * (1 - r), len * (1 + r)]`, inclusive, as vLLM draws them.
fn sample_len(rng: &mut impl Rng, len: usize, ratio: f64) -> usize {
    let low = (len as f64 * (1.0 - ratio)).floor() as usize;
    let high = (len as f64 * (1.0 + ratio)).floor() as usize;
    rng.random_range(low..=high.max(low))
}

fn word_prompt(rng: &mut impl Rng, len: usize) -> String {
    let words: Vec<&str> = (0..len)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    words.join(" ")
}

/// Random ordinary tokens, decoded, then re-encoded and trimmed to exactly `len` tokens
/// where the round trip allows it; returns the text and its true token count.
fn token_prompt(rng: &mut impl Rng, tokenizer: &Tokenizer, len: usize) -> Result<(String, usize)> {
    let vocab = tokenizer.vocab_size() as u32;
    ensure!(vocab > 0, "the tokenizer has an empty vocabulary");
    let special = tokenizer.eos_token_ids();
    let ids: Vec<u32> = std::iter::repeat_with(|| rng.random_range(0..vocab))
        .filter(|id| !special.contains(id))
        .take(len)
        .collect();
    let text = tokenizer
        .decode(&ids, true)
        .context("decoding a random prompt")?;
    let mut encoded = tokenizer
        .encode(&text, false)
        .context("encoding a random prompt")?;
    encoded.truncate(len);
    let text = tokenizer
        .decode(&encoded, true)
        .context("decoding a random prompt")?;
    let count = tokenizer.encode(&text, false)?.len();
    Ok((text, count))
}

/// Loads the tokenizer named by `--tokenizer`.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    Tokenizer::from_dir(dir).with_context(|| format!("loading the tokenizer in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ratio: f64) -> RandomSpec {
        RandomSpec {
            num_prompts: 200,
            input_len: 100,
            output_len: 20,
            range_ratio: ratio,
            seed: 7,
        }
    }

    #[test]
    fn lengths_are_fixed_without_a_range_and_spread_within_it_with_one() {
        let fixed = random_requests(&spec(0.0), None).unwrap();
        assert!(fixed
            .iter()
            .all(|r| r.prompt_len == 100 && r.output_len == 20));
        assert!(fixed.iter().all(|r| r.prompt.split(' ').count() == 100));
        let spread = random_requests(&spec(0.5), None).unwrap();
        assert!(spread.iter().all(|r| (50..=150).contains(&r.prompt_len)));
        assert!(spread.iter().all(|r| (10..=30).contains(&r.output_len)));
        let lens: std::collections::HashSet<_> = spread.iter().map(|r| r.prompt_len).collect();
        assert!(lens.len() > 20, "lengths vary");
    }

    #[test]
    fn prompts_are_seeded_and_distinct() {
        let a = random_requests(&spec(0.0), None).unwrap();
        let b = random_requests(&spec(0.0), None).unwrap();
        assert_eq!(a[3].prompt, b[3].prompt);
        assert_ne!(a[3].prompt, a[4].prompt);
        let other = random_requests(
            &RandomSpec {
                seed: 8,
                ..spec(0.0)
            },
            None,
        )
        .unwrap();
        assert_ne!(a[3].prompt, other[3].prompt);
    }

    #[test]
    fn bad_ratio_is_rejected() {
        assert!(random_requests(&spec(1.5), None).is_err());
    }
}
