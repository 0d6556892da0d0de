//! One request's state inside the engine.

use super::params::SamplingParams;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
}

#[derive(Debug)]
pub struct Sequence {
    pub id: u64,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    pub num_prompt: usize,
    /// Leading tokens whose K/V are in the cache (computed or found in the prefix cache).
    pub num_computed: usize,
    /// Prompt tokens found in the prefix cache when first scheduled (for usage reports).
    pub num_cached_prompt: usize,
    pub block_table: Vec<u32>,
    /// Which recurrent-state slot the sequence holds while it runs (recurrent mixers keep one
    /// state per running sequence); the scheduler assigns it.
    pub state_slot: u32,
    /// Hashes of the leading full blocks registered for prefix reuse.
    pub block_hashes: Vec<u64>,
    pub params: SamplingParams,
    pub status: SeqStatus,
    pub arrival: Instant,
    pub first_scheduled: Option<Instant>,
    /// Hard cap on `tokens.len()`: the smaller of the model length and prompt + max_tokens.
    pub max_len: usize,
}

impl Sequence {
    pub fn new(id: u64, prompt: Vec<u32>, params: SamplingParams, max_model_len: usize) -> Self {
        let num_prompt = prompt.len();
        let max_len = match params.max_tokens {
            Some(m) => num_prompt.saturating_add(m).min(max_model_len),
            None => max_model_len,
        };
        Sequence {
            id,
            tokens: prompt,
            num_prompt,
            num_computed: 0,
            num_cached_prompt: 0,
            block_table: Vec::new(),
            state_slot: 0,
            block_hashes: Vec::new(),
            params,
            status: SeqStatus::Waiting,
            arrival: Instant::now(),
            first_scheduled: None,
            max_len,
        }
    }

    pub fn output_tokens(&self) -> &[u32] {
        &self.tokens[self.num_prompt..]
    }

    pub fn num_output(&self) -> usize {
        self.tokens.len() - self.num_prompt
    }

    /// Tokens still to run through the model before the next token can be sampled.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_max_tokens_caps_at_the_model_length_instead_of_overflowing() {
        let params = SamplingParams {
            max_tokens: Some(usize::MAX),
            ..SamplingParams::greedy()
        };
        let seq = Sequence::new(1, vec![1, 2, 3], params, 64);
        assert_eq!(seq.max_len, 64);
    }
}
