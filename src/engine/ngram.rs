//! Drafts for speculative decoding by prompt lookup ("n-gram" speculation): when the last
//! few tokens of a sequence appeared before, in its prompt or its output, the tokens that
//! followed them then are a cheap guess at what follows now. Code edits, quoting, retrieval
//! answers and structured text repeat their context often enough that one forward pass over
//! the guesses (verification) replaces several single-token steps.
//!
//! The guesses only decide how many tokens a step computes; which tokens are kept is
//! decided by the model's own logits at each position, so the output is the one decoding
//! without speculation gives.

use anyhow::{Context, Result};
use serde::Deserialize;

/// `--speculative-config`, in vLLM's JSON: `{"method": "ngram", "num_speculative_tokens": 4,
/// "prompt_lookup_max": 4, "prompt_lookup_min": 1, "disable_by_batch_size": 8}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NgramConfig {
    /// Drafted tokens per step, at most.
    pub num_speculative_tokens: usize,
    /// The longest and shortest suffix looked up, longest first.
    #[serde(default = "default_max")]
    pub prompt_lookup_max: usize,
    #[serde(default = "default_min")]
    pub prompt_lookup_min: usize,
    /// No drafts while this many sequences or more are running (vLLM's name): at large
    /// batches a step is bound by compute more than by reading weights, and on a GPU a step
    /// with drafts is not replayed from a CUDA graph.
    #[serde(default)]
    pub disable_by_batch_size: Option<usize>,
}

fn default_max() -> usize {
    4
}

fn default_min() -> usize {
    1
}

#[derive(Deserialize)]
struct RawSpeculativeConfig {
    method: String,
    #[serde(flatten)]
    ngram: serde_json::Value,
}

impl NgramConfig {
    /// Parses `--speculative-config`; only the `ngram` method is implemented.
    pub fn from_json(text: &str) -> Result<NgramConfig> {
        let raw: RawSpeculativeConfig = serde_json::from_str(text)
            .context("--speculative-config must be a JSON object with a \"method\"")?;
        anyhow::ensure!(
            raw.method == "ngram",
            "--speculative-config method '{}' is not supported (kiln drafts by prompt lookup: \
             \"ngram\")",
            raw.method
        );
        let config: NgramConfig = serde_json::from_value(raw.ngram)
            .context("--speculative-config: ngram takes num_speculative_tokens, prompt_lookup_max and prompt_lookup_min")?;
        anyhow::ensure!(
            (1..=16).contains(&config.num_speculative_tokens),
            "num_speculative_tokens {} must be between 1 and 16",
            config.num_speculative_tokens
        );
        anyhow::ensure!(
            1 <= config.prompt_lookup_min && config.prompt_lookup_min <= config.prompt_lookup_max,
            "prompt_lookup_min {} and prompt_lookup_max {} must satisfy 1 <= min <= max",
            config.prompt_lookup_min,
            config.prompt_lookup_max
        );
        Ok(config)
    }
}

/// Up to `limit` (and the configured number of) tokens that followed the most recent earlier
/// occurrence of the longest suffix of `tokens` the config looks up; empty when none recurs.
pub fn propose(tokens: &[u32], config: &NgramConfig, limit: usize) -> Vec<u32> {
    let want = config.num_speculative_tokens.min(limit);
    if want == 0 {
        return Vec::new();
    }
    let len = tokens.len();
    for n in (config.prompt_lookup_min..=config.prompt_lookup_max).rev() {
        if len <= n {
            continue;
        }
        let suffix = &tokens[len - n..];
        // Occurrences ending before the suffix itself, latest first.
        if let Some(start) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix) {
            let follow = &tokens[start + n..len];
            return follow[..want.min(follow.len())].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(k: usize, min: usize, max: usize) -> NgramConfig {
        NgramConfig {
            num_speculative_tokens: k,
            prompt_lookup_max: max,
            prompt_lookup_min: min,
            disable_by_batch_size: None,
        }
    }

    #[test]
    fn the_longest_recurring_suffix_gives_what_followed_it_last() {
        // "1 2 3" recurs; what followed it most recently was "9 9" (then "1 2 3" again).
        let tokens = [1, 2, 3, 4, 5, 1, 2, 3, 9, 9, 1, 2, 3];
        assert_eq!(propose(&tokens, &config(2, 1, 3), 10), [9, 9]);
        // Longer drafts stop at the sequence's end.
        assert_eq!(propose(&tokens, &config(8, 1, 3), 10), [9, 9, 1, 2, 3]);
        // The limit (room left in the sequence) caps them.
        assert_eq!(propose(&tokens, &config(8, 1, 3), 1), [9]);
        // Only a 1-gram recurs: "7" followed by "8".
        assert_eq!(propose(&[7, 8, 5, 7], &config(3, 1, 3), 10), [8, 5, 7]);
        // Nothing recurs, or only suffixes shorter than the minimum do.
        assert!(propose(&[1, 2, 3, 4], &config(3, 1, 3), 10).is_empty());
        assert!(propose(&[7, 8, 5, 7], &config(3, 2, 3), 10).is_empty());
        assert!(propose(&[7], &config(3, 1, 3), 10).is_empty());
    }

    #[test]
    fn the_config_is_vllms_json() {
        let c = NgramConfig::from_json(
            r#"{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 3}"#,
        )
        .unwrap();
        assert_eq!(c, config(5, 1, 3));
        let c = NgramConfig::from_json(
            r#"{"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 8}"#,
        )
        .unwrap();
        assert_eq!(c.disable_by_batch_size, Some(8));
        for bad in [
            r#"{"method": "eagle", "num_speculative_tokens": 5}"#,
            r#"{"method": "ngram"}"#,
            r#"{"method": "ngram", "num_speculative_tokens": 0}"#,
            r#"{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 3, "prompt_lookup_max": 2}"#,
            r#"{"method": "ngram", "num_speculative_tokens": 2, "draft_model": "x"}"#,
            "ngram",
        ] {
            assert!(NgramConfig::from_json(bad).is_err(), "{bad}");
        }
    }
}
