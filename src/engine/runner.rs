//! The model runner: turns a scheduled step into one forward pass on a backend.

use super::scheduler::ScheduledSeq;
use super::sequence::Sequence;
use crate::backend::{Backend, BatchLayout};
use crate::model::llama::LlamaModel;
use anyhow::Result;

/// Tokens and layout of one step, built from the scheduler's choice.
pub struct StepInput {
    pub tokens: Vec<u32>,
    pub layout: BatchLayout,
}

impl StepInput {
    pub fn build(work: &[(&Sequence, ScheduledSeq)], block_size: usize) -> StepInput {
        let mut layout = BatchLayout {
            block_size,
            query_start: vec![0],
            ..Default::default()
        };
        let mut tokens = Vec::new();
        for (seq, s) in work {
            for pos in s.start..s.start + s.len {
                tokens.push(seq.tokens[pos]);
                layout.positions.push(pos as u32);
                let block = seq.block_table[pos / block_size] as i64;
                layout
                    .slots
                    .push(block * block_size as i64 + (pos % block_size) as i64);
            }
            layout.query_start.push(tokens.len());
            layout.context_lens.push(s.start + s.len);
            layout.block_tables.push(seq.block_table.clone());
            if s.samples {
                layout.logits_rows.push(tokens.len() - 1);
            }
        }
        StepInput { tokens, layout }
    }
}

/// Runs forward passes; the engine needs nothing else from the model side.
pub trait Runner: Send {
    /// Logits (`[sampling sequences, vocab]`, row-major) of the step.
    fn execute(&mut self, input: &StepInput) -> Result<Vec<f32>>;
    fn vocab_size(&self) -> usize;
    fn describe(&self) -> String;
    /// Bytes of weights one forward pass reads (for bandwidth rooflines).
    fn weight_bytes(&self) -> u64;
    /// The device allocator's counters, where the backend has one (GPUs).
    fn allocator_stats(&self) -> Option<crate::backend::cuda::pool::PoolStats> {
        None
    }
}

/// A model and its KV cache on one backend.
pub struct ModelRunner<B: Backend> {
    backend: B,
    model: LlamaModel<B>,
    cache: B::KvCache,
}

impl<B: Backend> ModelRunner<B> {
    pub fn new(
        backend: B,
        model: LlamaModel<B>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self> {
        let cache = backend.new_kv_cache(&model.kv_cache_spec(num_blocks, block_size))?;
        Ok(ModelRunner {
            backend,
            model,
            cache,
        })
    }
}

impl<B: Backend + 'static> Runner for ModelRunner<B>
where
    B::Tensor: 'static,
{
    fn execute(&mut self, input: &StepInput) -> Result<Vec<f32>> {
        self.model.forward(
            &self.backend,
            &input.tokens,
            &input.layout,
            &mut self.cache,
            &crate::parallel::SingleRank,
        )
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn weight_bytes(&self) -> u64 {
        self.model.config.num_parameters() * self.model.dtype.size_in_bytes() as u64
    }

    fn allocator_stats(&self) -> Option<crate::backend::cuda::pool::PoolStats> {
        self.backend.allocator_stats()
    }

    fn describe(&self) -> String {
        format!(
            "{:?} on {} ({})",
            self.model.config.architecture,
            self.backend.name(),
            self.model.dtype
        )
    }
}
