//! Embedding requests: a prompt's final hidden state at its last token, the way decoder
//! embedding models (Qwen3-Embedding, e5-mistral, gte-Qwen2) are served. Nothing is
//! generated, so they do not go through the scheduler: between generation steps, waiting
//! ones run in prefill-only batches (within the step's token budget) on KV blocks borrowed
//! from the cache for the forward pass and given back right after it.

use super::block_manager::BlockManager;
use super::output::{FinishReason, RequestOutput};
use super::params::{Pooling, SamplingParams};
use super::runner::{Runner, StepInput};
use super::scheduler::ScheduledSeq;
use super::sequence::Sequence;
use anyhow::Result;
use std::collections::VecDeque;

/// Waiting embedding requests, oldest first.
#[derive(Default)]
pub struct EmbeddingQueue {
    waiting: VecDeque<Sequence>,
}

impl EmbeddingQueue {
    pub fn push(&mut self, id: u64, prompt: Vec<u32>, params: SamplingParams) {
        let len = prompt.len();
        self.waiting
            .push_back(Sequence::new(id, prompt, params, len));
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Drops a waiting request; whether it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|s| s.id != id);
        self.waiting.len() != before
    }

    /// Runs the oldest waiting requests that fit in `token_budget` tokens (at least one)
    /// and in the free blocks; their outputs, or nothing when the first does not fit yet.
    pub fn run(
        &mut self,
        runner: &mut dyn Runner,
        blocks: &mut BlockManager,
        token_budget: usize,
    ) -> Result<Vec<(u64, RequestOutput)>> {
        let mut batch: Vec<Sequence> = Vec::new();
        let (mut tokens, mut needed) = (0, 0);
        while let Some(seq) = self.waiting.front() {
            let n = seq.tokens.len();
            let b = blocks.blocks_for(n);
            if (!batch.is_empty() && tokens + n > token_budget) || needed + b > blocks.num_free() {
                break;
            }
            tokens += n;
            needed += b;
            batch.extend(self.waiting.pop_front());
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for seq in &mut batch {
            let n = blocks.blocks_for(seq.tokens.len());
            seq.block_table = blocks.allocate(n).expect("free blocks counted above");
        }
        let hidden = forward(runner, &batch, blocks.block_size(), token_budget);
        for seq in &batch {
            blocks.release(&seq.block_table);
        }
        let hidden = hidden?;
        let width = hidden.len() / batch.len();
        anyhow::ensure!(
            width > 0 && width * batch.len() == hidden.len(),
            "the runner returned {} hidden values for {} rows",
            hidden.len(),
            batch.len()
        );
        Ok(batch
            .iter()
            .zip(hidden.chunks_exact(width))
            .map(|(seq, row)| {
                let pooling = seq.params.pooling.unwrap_or(Pooling {
                    dimensions: None,
                    normalize: true,
                });
                let out = RequestOutput {
                    embedding: Some(pool(row, pooling)),
                    finish_reason: Some(FinishReason::Stop),
                    prompt_tokens: seq.num_prompt,
                    queue_time: Some(seq.arrival.elapsed()),
                    ..Default::default()
                };
                (seq.id, out)
            })
            .collect())
    }
}

/// The batch's last-token hidden states, in one forward pass; a lone prompt longer than the
/// step's token budget runs in chunks of the budget, as its prefill would (the earlier
/// chunks only write their KV), so no pass holds more activations than a generation step.
fn forward(
    runner: &mut dyn Runner,
    batch: &[Sequence],
    block_size: usize,
    token_budget: usize,
) -> Result<Vec<f32>> {
    let chunk = match batch {
        [seq] if seq.tokens.len() > token_budget => token_budget.max(1),
        _ => usize::MAX,
    };
    let mut start = 0;
    loop {
        let mut last = true;
        let work: Vec<(&Sequence, ScheduledSeq)> = batch
            .iter()
            .map(|seq| {
                let len = chunk.min(seq.tokens.len() - start);
                last &= start + len == seq.tokens.len();
                let step = ScheduledSeq {
                    id: seq.id,
                    start,
                    len,
                    samples: start + len == seq.tokens.len(),
                };
                (seq, step)
            })
            .collect();
        let hidden = runner.hidden_rows(&StepInput::build(&work, block_size))?;
        if last {
            return Ok(hidden);
        }
        start += chunk;
    }
}

/// A hidden state as the request asked: its first `dimensions` values, L2-normalised.
pub fn pool(hidden: &[f32], pooling: Pooling) -> Vec<f32> {
    let keep = pooling.dimensions.unwrap_or(hidden.len()).min(hidden.len());
    let mut v = hidden[..keep].to_vec();
    if pooling.normalize {
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            for x in &mut v {
                *x = (*x as f64 / norm) as f32;
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_cuts_then_normalises() {
        let p = |dimensions, normalize| Pooling {
            dimensions,
            normalize,
        };
        assert_eq!(pool(&[3.0, 4.0, 12.0], p(Some(2), true)), [0.6, 0.8]);
        assert_eq!(pool(&[3.0, 4.0], p(None, false)), [3.0, 4.0]);
        assert_eq!(pool(&[0.0, 0.0], p(Some(9), true)), [0.0, 0.0]);
    }
}
