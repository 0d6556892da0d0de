//! The model runner: turns a scheduled step into one forward pass on a backend.

use super::scheduler::ScheduledSeq;
use super::sequence::Sequence;
use crate::backend::{Backend, BatchLayout};
use crate::model::config::ClassifierConfig;
use crate::model::llama::LlamaModel;
use crate::model::lora::{load_adapter, AdapterSpec};
use anyhow::Result;

/// Tokens and layout of one step, built from the scheduler's choice.
#[derive(Clone, Debug, Default)]
pub struct StepInput {
    pub tokens: Vec<u32>,
    pub layout: BatchLayout,
    /// Per logits row: the engine takes the raw argmax, so the runner may pick it on the
    /// device and send back the token instead of the row's logits. Empty: no row.
    pub pick_argmax: Vec<bool>,
    /// Per logits row: sample it on the device with these parameters, where the runner can
    /// (rows it cannot come back as logits). Empty: no row.
    pub device_draws: Vec<Option<super::device_draw::DeviceDraw>>,
}

impl StepInput {
    /// Whether logits row `row` may be picked on the device.
    pub fn picks(&self, row: usize) -> bool {
        self.pick_argmax.get(row).copied().unwrap_or(false)
    }
}

/// What a step produced for its sampling rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    /// Per logits row: the token the runner picked (argmax), or `None` when the row's
    /// logits are in `logits`.
    pub picked: Vec<Option<u32>>,
    /// The logits of the rows without a pick, in row order, `[rows, vocab]` row-major.
    pub logits: Vec<f32>,
}

impl StepOutput {
    /// Every row as logits (a runner that picks nothing).
    pub fn all_logits(rows: usize, logits: Vec<f32>) -> StepOutput {
        StepOutput {
            picked: vec![None; rows],
            logits,
        }
    }
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
            layout.state_slots.push(seq.state_slot);
            if s.samples {
                layout.logits_rows.push(tokens.len() - 1);
            }
        }
        if work
            .iter()
            .any(|(seq, _)| seq.params.lora_adapter.is_some())
        {
            layout.adapters = work
                .iter()
                .map(|(seq, _)| seq.params.lora_adapter.map_or(0, |a| a as u32 + 1))
                .collect();
        }
        StepInput {
            tokens,
            layout,
            pick_argmax: Vec::new(),
            device_draws: Vec::new(),
        }
    }
}

/// Runs forward passes; the engine needs nothing else from the model side.
pub trait Runner: Send {
    /// The step's sampling rows: picked tokens where `input.pick_argmax` allows and the
    /// runner can, logits for the rest.
    fn execute(&mut self, input: &StepInput) -> Result<StepOutput>;
    fn vocab_size(&self) -> usize;
    fn describe(&self) -> String;
    /// A classifier model's labels: its pooled rows are their logits, and it generates
    /// nothing.
    fn classifier(&self) -> Option<&ClassifierConfig> {
        None
    }
    /// Whether the model keeps a recurrent state per running sequence (Mamba or gated delta rule mixers),
    /// which a cached prefix cannot restore: such models run without prefix caching.
    fn keeps_recurrent_state(&self) -> bool {
        false
    }
    /// Whether a LoRA adapter is loaded in `slot` (`SamplingParams::lora_adapter`).
    fn has_adapter(&self, _slot: usize) -> bool {
        false
    }
    /// Loads a LoRA adapter into a new slot (on every rank); returns the slot.
    fn load_adapter(&mut self, spec: &AdapterSpec, _max_rank: usize) -> Result<usize> {
        anyhow::bail!("{} cannot load LoRA adapter {}", self.describe(), spec.name)
    }
    /// Frees adapter `slot` (its requests must have finished).
    fn unload_adapter(&mut self, slot: usize) -> Result<()> {
        anyhow::bail!("{} has no adapter in slot {slot}", self.describe())
    }
    /// Bytes of weights a batch-1 forward pass reads (for bandwidth rooflines; a
    /// mixture-of-experts model reads only the chosen experts).
    fn weight_bytes(&self) -> u64;
    /// The device allocator's counters, where the backend has one (GPUs).
    fn allocator_stats(&self) -> Option<crate::backend::cuda::pool::PoolStats> {
        None
    }
    /// The final hidden state of each logits row of `input` (f32 `[rows, hidden]`), for
    /// embedding requests; the KV it writes is scratch.
    fn hidden_rows(&mut self, _input: &StepInput) -> Result<Vec<f32>> {
        anyhow::bail!("{} returns no hidden states", self.describe())
    }
    /// Whether the forward pass runs on rayon threads of this process (the CPU backend), so
    /// the engine loop should run on one of them (see `EngineHandle::spawn`).
    fn computes_on_host(&self) -> bool {
        false
    }
}

/// A model and its KV cache on one backend.
pub struct ModelRunner<B: Backend> {
    backend: B,
    model: LlamaModel<B>,
    cache: B::KvCache,
}

impl<B: Backend> ModelRunner<B> {
    /// A runner whose cache has `num_blocks` blocks of `block_size` tokens and recurrent
    /// states (for recurrent mixers) for `max_num_seqs` running sequences.
    pub fn new(
        backend: B,
        model: LlamaModel<B>,
        (num_blocks, block_size): (usize, usize),
        max_num_seqs: usize,
    ) -> Result<Self> {
        let spec = model.kv_cache_spec(num_blocks, block_size, max_num_seqs);
        let cache = backend.new_kv_cache(&spec)?;
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
    fn execute(&mut self, input: &StepInput) -> Result<StepOutput> {
        self.model.forward_picking(
            &self.backend,
            &input.tokens,
            &input.layout,
            &mut self.cache,
            &input.pick_argmax,
            &input.device_draws,
        )
    }

    fn hidden_rows(&mut self, input: &StepInput) -> Result<Vec<f32>> {
        self.model.hidden_rows(
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

    fn has_adapter(&self, slot: usize) -> bool {
        self.model.has_adapter(slot)
    }

    fn classifier(&self) -> Option<&ClassifierConfig> {
        self.model.config.classifier.as_ref()
    }

    fn load_adapter(&mut self, spec: &AdapterSpec, max_rank: usize) -> Result<usize> {
        let m = &self.model;
        let adapter = load_adapter(&self.backend, &m.config, &m.layout, m.dtype, spec, max_rank)?;
        self.model.add_adapter(adapter)
    }

    fn unload_adapter(&mut self, slot: usize) -> Result<()> {
        self.model.remove_adapter(slot)
    }

    fn weight_bytes(&self) -> u64 {
        self.model.config.active_parameters() * self.model.dtype.size_in_bytes() as u64
    }

    fn keeps_recurrent_state(&self) -> bool {
        self.model.config.keeps_recurrent_state()
    }

    fn allocator_stats(&self) -> Option<crate::backend::cuda::pool::PoolStats> {
        self.backend.allocator_stats()
    }

    fn computes_on_host(&self) -> bool {
        self.backend.computes_on_host()
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
