//! The engine loop body: `step() = schedule -> run -> postprocess`. Knows nothing of HTTP.

use super::block_manager::BlockManager;
use super::device_draw::DeviceDraw;
use super::embedding::EmbeddingQueue;
use super::ngram::NgramConfig;
use super::output::{FinishReason, RequestOutput};
use super::params::{ParamError, SamplingParams};
use super::prompt_logprobs::PromptLogprobs;
use super::runner::{Runner, StepInput};
use super::sampler::{picks_argmax, sample, SampleContext, Sampled};
use super::scheduler::{ScheduledSeq, Scheduler, SchedulerConfig, SchedulingPolicy};
use super::sequence::Sequence;
use super::speculative::Drafts;
use super::text::OutputText;
use crate::model::grammar::{Constraint, TokenMask};
use crate::model::lora::AdapterSpec;
use crate::model::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_model_len: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub enable_prefix_caching: bool,
    /// Seeds the random streams of requests that bring no seed of their own.
    pub seed: u64,
    /// Which request runs next (`--scheduling-policy`).
    pub scheduling_policy: SchedulingPolicy,
}

/// Why a request was refused before it started.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid parameter {0}")]
    InvalidParam(#[from] ParamError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens; this model's maximum context length is {max} tokens, and at least one token must be generated")]
    PromptTooLong { prompt: usize, max: usize },
    #[error("token id {id} is outside the vocabulary ({vocab} tokens)")]
    InvalidToken { id: u32, vocab: usize },
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("the engine is not running: {0}")]
    EngineDown(String),
}

/// Checks a request against the engine's limits; shared by the engine and its handle.
pub fn validate_request(
    prompt: &[u32],
    params: &SamplingParams,
    (max_model_len, vocab): (usize, usize),
    policy: SchedulingPolicy,
) -> Result<(), RequestError> {
    params.validate()?;
    if params.priority != 0 && policy == SchedulingPolicy::Fcfs {
        return Err(RequestError::InvalidParam(ParamError {
            param: "priority",
            message: "priority scheduling is not enabled (start the server with \
                      --scheduling-policy priority); under first come, first served \
                      priority must be 0"
                .into(),
        }));
    }
    if prompt.is_empty() {
        return Err(RequestError::EmptyPrompt);
    }
    if prompt.len() >= max_model_len {
        return Err(RequestError::PromptTooLong {
            prompt: prompt.len(),
            max: max_model_len,
        });
    }
    if let Some(&id) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(RequestError::InvalidToken { id, vocab });
    }
    if let Some((id, _)) = params
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= vocab)
    {
        return Err(RequestError::InvalidParam(ParamError {
            param: "logit_bias",
            message: format!("token id {id} is outside the vocabulary ({vocab} tokens)"),
        }));
    }
    let allowed = params.allowed_token_ids.as_deref().unwrap_or_default();
    if let Some(id) = allowed.iter().find(|&&id| id as usize >= vocab) {
        return Err(RequestError::InvalidParam(ParamError {
            param: "allowed_token_ids",
            message: format!("token id {id} is outside the vocabulary ({vocab} tokens)"),
        }));
    }
    Ok(())
}

/// Per-request state the scheduler does not need.
struct RequestState {
    rng: ChaCha8Rng,
    text: OutputText,
    /// Queue time not yet reported.
    report_queue_time: bool,
    /// The prompt's scores, when asked for.
    prompt_logprobs: Option<PromptLogprobs>,
    /// Where the output stands in its structured-output grammar.
    constraint: Option<Constraint>,
}

pub struct LlmEngine {
    config: EngineConfig,
    scheduler: Scheduler,
    runner: Box<dyn Runner>,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    states: HashMap<u64, RequestState>,
    seeds: ChaCha8Rng,
    steps: u64,
    /// Sample rows on the runner's device where it can (`--gpu-sampling`).
    device_sampling: bool,
    /// Embedding requests waiting for their forward pass.
    embeddings: EmbeddingQueue,
    /// Prompt-lookup speculation (`--speculative-config`), and this step's drafts.
    speculation: Option<NgramConfig>,
    drafts: Drafts,
    /// Time spent inside the runner's forward passes (device work included), so the engine
    /// loop can tell its own host work apart from the model's.
    model_time: std::time::Duration,
}

impl LlmEngine {
    pub fn new(
        mut config: EngineConfig,
        runner: Box<dyn Runner>,
        tokenizer: Arc<Tokenizer>,
        eos: Vec<u32>,
    ) -> Result<Self> {
        anyhow::ensure!(
            config.block_size > 0 && config.num_blocks > 0,
            "the KV cache needs at least one block"
        );
        let capacity = config.num_blocks * config.block_size;
        if config.max_model_len > capacity {
            // A lone sequence must always fit, or preemption could never make progress.
            tracing::warn!(
                "max_model_len {} exceeds the KV cache ({capacity} tokens); lowering it to {capacity}",
                config.max_model_len
            );
            config.max_model_len = capacity;
        }
        config.max_num_batched_tokens = config.max_num_batched_tokens.max(1);
        let blocks = BlockManager::new(
            config.num_blocks,
            config.block_size,
            config.enable_prefix_caching,
        );
        let scheduler = Scheduler::new(
            SchedulerConfig {
                max_num_seqs: config.max_num_seqs.max(1),
                max_num_batched_tokens: config.max_num_batched_tokens,
                policy: config.scheduling_policy,
            },
            blocks,
        );
        let seeds = ChaCha8Rng::seed_from_u64(config.seed);
        Ok(LlmEngine {
            config,
            scheduler,
            runner,
            tokenizer,
            eos,
            states: HashMap::new(),
            device_sampling: false,
            embeddings: EmbeddingQueue::default(),
            speculation: None,
            drafts: Drafts::default(),
            seeds,
            steps: 0,
            model_time: std::time::Duration::ZERO,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The tokens that end a sequence unless `ignore_eos` (the model's EOS ids).
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.runner.vocab_size()
    }

    pub fn describe(&self) -> String {
        self.runner.describe()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.runner.weight_bytes()
    }

    /// Whether the forward pass runs on this process's rayon threads (the CPU backend).
    pub fn computes_on_host(&self) -> bool {
        self.runner.computes_on_host()
    }

    /// The device allocator's counters (driver allocations vs reuses); `None` on the CPU.
    pub fn allocator_stats(&self) -> Option<crate::backend::cuda::pool::PoolStats> {
        self.runner.allocator_stats()
    }

    pub fn has_work(&self) -> bool {
        self.scheduler.has_work() || !self.embeddings.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.scheduler.num_running()
    }

    pub fn num_waiting(&self) -> usize {
        self.scheduler.num_waiting() + self.embeddings.len()
    }

    pub fn kv_usage(&self) -> f64 {
        self.scheduler.blocks.usage()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.scheduler.blocks.num_free()
    }

    pub fn num_preemptions(&self) -> u64 {
        self.scheduler.num_preemptions()
    }

    /// Recurrent-state slots no running sequence holds (`max_num_seqs` when idle).
    pub fn num_free_state_slots(&self) -> usize {
        self.scheduler.num_free_state_slots()
    }

    pub fn add_request(
        &mut self,
        id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(), RequestError> {
        let constraint = compile_structure(&self.tokenizer, &params, self.runner.vocab_size())?;
        self.add_compiled_request(id, prompt, params, constraint)
    }

    /// `add_request` with the structured-output grammar already compiled (by the caller's
    /// thread, so the engine loop never spends a step's time on it).
    pub fn add_compiled_request(
        &mut self,
        id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
        constraint: Option<Constraint>,
    ) -> Result<(), RequestError> {
        validate_request(
            &prompt,
            &params,
            (self.config.max_model_len, self.runner.vocab_size()),
            self.config.scheduling_policy,
        )?;
        if let Some(adapter) = params.lora_adapter {
            let loaded = self.runner.has_adapter(adapter);
            if !loaded || params.pooling.is_some() {
                return Err(RequestError::InvalidParam(ParamError {
                    param: "model",
                    message: if !loaded {
                        format!("no LoRA adapter is loaded in slot {adapter}")
                    } else {
                        "embeddings come from the base model, not a LoRA adapter".into()
                    },
                }));
            }
        }
        if params.pooling.is_none() && self.runner.classifier().is_some() {
            return Err(RequestError::InvalidParam(ParamError {
                param: "model",
                message: "this model is a sequence classifier: it classifies (POST /classify) \
                          and does not generate"
                    .into(),
            }));
        }
        if params.pooling.is_some() && self.runner.keeps_recurrent_state() {
            // Its batches run beside the scheduler's sequences, whose state slots they would
            // share.
            return Err(RequestError::InvalidParam(ParamError {
                param: "model",
                message: "embeddings of models with recurrent mixers (Mamba, gated delta rule) are not supported".into(),
            }));
        }
        if params.pooling.is_some() {
            // Nothing to sample: the prompt's hidden state is the output.
            self.embeddings.push(id, prompt, params);
            return Ok(());
        }
        if params.structure.is_some() != constraint.is_some() {
            return Err(RequestError::InvalidParam(ParamError {
                param: "response_format",
                message: "the grammar was not compiled for this request".into(),
            }));
        }
        let seed = params
            .seed
            .unwrap_or_else(|| rand::Rng::random(&mut self.seeds));
        let text = OutputText::new(
            self.tokenizer.clone(),
            &prompt,
            params.stop.clone(),
            params.include_stop_str_in_output,
            params.skip_special_tokens,
        );
        self.states.insert(
            id,
            RequestState {
                rng: ChaCha8Rng::seed_from_u64(seed),
                text,
                report_queue_time: true,
                prompt_logprobs: params.prompt_logprobs.map(PromptLogprobs::new),
                constraint,
            },
        );
        self.scheduler
            .add(Sequence::new(id, prompt, params, self.config.max_model_len));
        Ok(())
    }

    /// Loads a LoRA adapter while serving (between steps); returns the slot requests name it
    /// by.
    pub fn load_adapter(&mut self, spec: &AdapterSpec, max_rank: usize) -> Result<usize> {
        self.runner.load_adapter(spec, max_rank)
    }

    /// A classifier model's labels (it answers pooling requests only).
    pub fn classifier(&self) -> Option<&crate::model::config::ClassifierConfig> {
        self.runner.classifier()
    }

    /// The adapter slots of running and of waiting requests (for `/metrics`).
    pub fn adapters_in_use(&self) -> (Vec<usize>, Vec<usize>) {
        self.scheduler.adapters_in_use()
    }

    /// Frees adapter `slot`; refused while requests use it.
    pub fn unload_adapter(&mut self, slot: usize) -> Result<()> {
        let users = self.scheduler.count_with_adapter(slot);
        anyhow::ensure!(users == 0, "{users} requests are using the adapter");
        self.runner.unload_adapter(slot)
    }

    /// Cancels a request, freeing its blocks at once. Returns its final output if it existed.
    pub fn abort(&mut self, id: u64) -> Option<RequestOutput> {
        if self.embeddings.remove(id) {
            return Some(RequestOutput {
                finish_reason: Some(FinishReason::Abort),
                ..Default::default()
            });
        }
        self.states.remove(&id);
        let seq = self.scheduler.remove(id)?;
        Some(RequestOutput {
            finish_reason: Some(FinishReason::Abort),
            prompt_tokens: seq.num_prompt,
            completion_tokens: seq.num_output(),
            cached_tokens: seq.num_cached_prompt,
            ..Default::default()
        })
    }

    /// Samples rows on the runner's device where it can, instead of sending their logits
    /// to the host (rows that want log-probabilities always go to the host).
    pub fn set_device_sampling(&mut self, on: bool) {
        self.device_sampling = on;
    }

    /// Drafts speculative tokens for greedy decoding sequences without a grammar
    /// (`--speculative-config`); `None` turns speculation off.
    pub fn set_speculation(&mut self, config: Option<NgramConfig>) {
        self.speculation = config;
    }

    /// Speculative decoding's totals: tokens drafted, and drafted tokens kept.
    /// Total time the runner has spent in forward passes (embedding batches and steps).
    pub fn model_time(&self) -> std::time::Duration {
        self.model_time
    }

    pub fn speculation_counts(&self) -> (u64, u64) {
        (self.drafts.drafted, self.drafts.accepted)
    }

    /// One engine iteration: a batch of waiting embedding requests, if any fits, then a
    /// generation step. Returns the outputs produced, by request id.
    pub fn step(&mut self) -> Result<Vec<(u64, RequestOutput)>> {
        let mut outputs = if self.embeddings.is_empty() {
            Vec::new()
        } else {
            let started = std::time::Instant::now();
            let done = self.embeddings.run(
                self.runner.as_mut(),
                &mut self.scheduler.blocks,
                self.config.max_num_batched_tokens,
            );
            self.model_time += started.elapsed();
            done?
        };
        outputs.extend(self.generation_step()?);
        Ok(outputs)
    }

    /// Schedules, runs and samples one step of the generating sequences.
    fn generation_step(&mut self) -> Result<Vec<(u64, RequestOutput)>> {
        if let Some(config) = &self.speculation {
            // A grammar's state cannot follow tokens that may be taken back.
            let eligible: Vec<u64> = self
                .scheduler
                .running_ids()
                .iter()
                .copied()
                .filter(|id| self.states.get(id).is_some_and(|s| s.constraint.is_none()))
                .collect();
            self.drafts.propose(
                &mut self.scheduler,
                config,
                self.config.max_num_batched_tokens,
                |id| eligible.contains(&id),
            );
        }
        let mut work = self.scheduler.schedule();
        if !self.drafts.is_empty() {
            self.drafts.settle(&mut self.scheduler, &mut work);
        }
        if work.is_empty() {
            return Ok(Vec::new());
        }
        self.steps += 1;
        let input = {
            let pairs: Vec<_> = work
                .iter()
                .map(|w| (self.scheduler.get(w.id).expect("scheduled"), *w))
                .collect();
            let mut input = StepInput::build(&pairs, self.config.block_size);
            // A speculating sequence is scored at its last computed token and at each
            // draft: the rows before its usual last row, in order.
            if !self.drafts.is_empty() {
                let mut sampling = pairs.iter().enumerate().filter(|(_, (_, w))| w.samples);
                input.layout.logits_rows = input
                    .layout
                    .logits_rows
                    .iter()
                    .flat_map(|&last| {
                        let (_, (_, w)) = sampling.next().expect("one row per sampling sequence");
                        (last - self.drafts.count(w.id))..=last
                    })
                    .collect();
            }
            // Each row's sampling context: the sequence's output up to the row's position.
            let row_contexts: Vec<(&Sequence, usize)> = pairs
                .iter()
                .filter(|(_, w)| w.samples)
                .flat_map(|(seq, w)| {
                    let drafts = self.drafts.count(w.id);
                    let end = seq.tokens.len();
                    ((end - drafts)..=end).map(move |upto| (*seq, upto))
                })
                .collect();
            input.pick_argmax = row_contexts
                .iter()
                .map(|&(seq, upto)| with_sample_context_upto(seq, &self.eos, upto, picks_argmax))
                .collect();
            if self.device_sampling {
                input.device_draws = row_contexts
                    .iter()
                    .zip(&input.pick_argmax)
                    .map(|(&(seq, upto), &argmax)| {
                        // A speculating sequence's rows are sampled on the host, in order,
                        // each with the next draw of its stream (`verify`).
                        if upto != seq.tokens.len() || self.drafts.count(seq.id) > 0 {
                            return None;
                        }
                        // Peeked, not taken: the stream moves on only if the row comes
                        // back sampled (below), so a host fallback draws the same `u`.
                        let u = self.states.get(&seq.id)?.rng.clone().random::<f32>();
                        let draw =
                            with_sample_context(seq, &self.eos, |ctx| DeviceDraw::for_row(ctx, u));
                        draw.filter(|_| !argmax)
                    })
                    .collect();
            }
            // Prompt-scoring rows go after every sampling row, so sampling rows keep their
            // indices (and the device's picks and draws theirs).
            let prompt_rows = self.add_prompt_rows(&pairs, &mut input);
            (input, prompt_rows)
        };
        let (input, prompt_rows) = input;
        let started = std::time::Instant::now();
        let result = self.runner.execute(&input);
        self.model_time += started.elapsed();
        let result = result?;
        let vocab = self.runner.vocab_size();
        let rows = input.layout.logits_rows.len();
        let unpicked = result.picked.iter().filter(|p| p.is_none()).count();
        anyhow::ensure!(
            result.picked.len() == rows && result.logits.len() == unpicked * vocab,
            "runner returned {} picks and {} logits for {rows} rows",
            result.picked.len(),
            result.logits.len()
        );

        // Rows the device drew from their stream: the stream moves past that draw.
        let row_owners = work
            .iter()
            .filter(|w| w.samples)
            .flat_map(|w| std::iter::repeat_n(w.id, 1 + self.drafts.count(w.id)));
        for (row, id) in row_owners.enumerate() {
            let drew = input.device_draws.get(row).and_then(|d| d.as_ref());
            if let (Some(d), Some(_)) = (drew, result.picked[row]) {
                if d.draws() {
                    if let Some(state) = self.states.get_mut(&id) {
                        state.rng.random::<f32>();
                    }
                }
            }
        }
        let mut picks = result.picked.iter();
        let mut logit_rows = result.logits.chunks_exact(vocab);
        let mut next_choice = || match picks.next().copied().flatten() {
            Some(token) => Choice::Picked(token),
            None => Choice::Logits(
                logit_rows
                    .next()
                    .expect("one row per unpicked sampling row")
                    .to_vec(),
            ),
        };
        let mut rows: Vec<(u64, Choice)> = Vec::new();
        let mut speculated: Vec<(u64, Vec<Choice>)> = Vec::new();
        for w in &work {
            let drafts = if w.samples {
                self.drafts.count(w.id)
            } else {
                0
            };
            if drafts > 0 {
                // Marked computed once verification knows how many drafts stand.
                let choices = (0..=drafts).map(|_| next_choice()).collect();
                speculated.push((w.id, choices));
                continue;
            }
            self.scheduler.mark_computed(w.id, w.len);
            if w.samples {
                rows.push((w.id, next_choice()));
            }
        }
        // The unpicked rows left are the prompt-scoring rows, in order.
        for ((id, position), logits) in prompt_rows.into_iter().zip(logit_rows) {
            let seq = self.scheduler.get(id).expect("scheduled");
            if let Some(p) = self
                .states
                .get_mut(&id)
                .and_then(|s| s.prompt_logprobs.as_mut())
            {
                p.record(position, &seq.tokens, logits);
            }
        }
        let sampled = self.sample_rows(rows);
        let mut outputs = Vec::with_capacity(sampled.len() + speculated.len());
        let verified: Vec<(u64, RequestOutput)> = speculated
            .into_iter()
            .map(|(id, choices)| Ok((id, self.verify(id, choices)?)))
            .collect::<Result<_>>()?;
        let sampled = sampled
            .into_iter()
            .map(|(id, s)| Ok((id, self.postprocess(id, s)?)))
            .collect::<Result<Vec<_>>>()?;
        for (id, mut out) in sampled.into_iter().chain(verified) {
            let num_prompt = out.prompt_tokens;
            if let Some(p) = self
                .states
                .get_mut(&id)
                .and_then(|s| s.prompt_logprobs.as_mut())
            {
                out.prompt_logprobs = p.take_complete(num_prompt);
            }
            if out.finish_reason.is_some() {
                self.scheduler.remove(id);
                self.states.remove(&id);
            }
            outputs.push((id, out));
        }
        Ok(outputs)
    }

    /// Appends a logits row for every position of this step that scores a prompt token of
    /// a request asking for prompt logprobs; returns (request, position) per added row.
    fn add_prompt_rows(
        &self,
        pairs: &[(&Sequence, ScheduledSeq)],
        input: &mut StepInput,
    ) -> Vec<(u64, usize)> {
        let mut added = Vec::new();
        for (i, (seq, w)) in pairs.iter().enumerate() {
            let Some(p) = self
                .states
                .get(&w.id)
                .and_then(|s| s.prompt_logprobs.as_ref())
            else {
                continue;
            };
            let first_row = input.layout.query_start[i];
            for position in p.wanted(seq.num_prompt, w.start..w.start + w.len) {
                input
                    .layout
                    .logits_rows
                    .push(first_row + position - w.start);
                input.pick_argmax.push(false);
                if self.device_sampling {
                    input.device_draws.push(None);
                }
                added.push((w.id, position));
            }
        }
        added
    }

    /// The next token of every sampling row. Rows with logits are sampled in parallel: a
    /// 128k vocabulary takes a millisecond or more per row on one core, which at batch 32
    /// would outlast a GPU step. Each request draws from its own random stream, so the
    /// result does not depend on the threads.
    fn sample_rows(&mut self, rows: Vec<(u64, Choice)>) -> Vec<(u64, Sampled)> {
        use rayon::prelude::*;
        type Job = (u64, Choice, Option<ChaCha8Rng>, Option<Constraint>);
        let mut jobs: Vec<Job> = rows
            .into_iter()
            .map(|(id, choice)| {
                let state = self.states.get_mut(&id);
                let (rng, constraint) = match (&choice, state) {
                    (Choice::Logits(_), Some(s)) => (
                        Some(std::mem::replace(&mut s.rng, ChaCha8Rng::seed_from_u64(0))),
                        s.constraint.take(),
                    ),
                    _ => (None, None),
                };
                (id, choice, rng, constraint)
            })
            .collect();
        let scheduler = &self.scheduler;
        let eos = &self.eos;
        let sampled: Vec<Sampled> = jobs
            .par_iter_mut()
            .map(|(id, choice, rng, constraint)| match (choice, rng) {
                // The runner took the argmax the sampler would have taken (picks_argmax).
                (Choice::Picked(token), _) => Sampled {
                    token: *token,
                    logprob: None,
                },
                (Choice::Logits(logits), Some(rng)) => {
                    let seq = scheduler.get(*id).expect("scheduled");
                    let allowed = constrained_mask(*id, constraint);
                    let s = with_sample_context(seq, eos, |ctx| {
                        let ctx = SampleContext {
                            allowed: allowed.as_ref(),
                            ..*ctx
                        };
                        sample(logits, &ctx, rng)
                    });
                    if let Some(c) = constraint.as_mut() {
                        if let Err(e) = c.advance(s.token) {
                            tracing::warn!("request {id}: {e:#}; its output ends here");
                        }
                    }
                    s
                }
                (Choice::Logits(_), None) => unreachable!("every sampled row has a state"),
            })
            .collect();
        jobs.into_iter()
            .zip(sampled)
            .map(|((id, _, rng, constraint), s)| {
                if let Some(state) = self.states.get_mut(&id) {
                    if let Some(rng) = rng {
                        state.rng = rng;
                    }
                    if constraint.is_some() {
                        state.constraint = constraint;
                    }
                }
                (id, s)
            })
            .collect()
    }

    /// Keeps a speculating sequence's drafts up to the first the model does not choose
    /// itself, and the model's own token after them. Each row's token is what decoding
    /// without drafts would take there: the same sampling context (the output so far) and,
    /// for sampled requests, the next draw of the request's own stream, one per emitted
    /// token as without drafts. So the output is the same, several tokens at a time; a
    /// draft is kept with exactly its probability, as speculative sampling with a one-hot
    /// draft distribution requires. The KV of the kept drafts stays; the rest is
    /// overwritten by later steps.
    fn verify(&mut self, id: u64, choices: Vec<Choice>) -> Result<RequestOutput> {
        let drafts = self.drafts.take(&mut self.scheduler, id);
        let mut merged: Option<RequestOutput> = None;
        let mut kept = 0;
        for (j, choice) in choices.into_iter().enumerate() {
            let sampled = match choice {
                Choice::Picked(token) => Sampled {
                    token,
                    logprob: None,
                },
                Choice::Logits(mut logits) => {
                    let seq = self.scheduler.get(id).expect("scheduled");
                    let state = self.states.get_mut(&id).expect("state exists");
                    with_sample_context(seq, &self.eos, |ctx| {
                        sample(&mut logits, ctx, &mut state.rng)
                    })
                }
            };
            let token = sampled.token;
            let out = self.postprocess(id, sampled)?;
            let finished = out.finish_reason.is_some();
            match merged.as_mut() {
                None => merged = Some(out),
                Some(m) => super::handle::merge(m, out),
            }
            if finished || drafts.get(j) != Some(&token) {
                break;
            }
            kept += 1;
        }
        self.drafts.accepted += kept as u64;
        // The last computed token and the kept drafts now have their KV in the cache.
        self.scheduler.mark_computed(id, 1 + kept);
        merged.context("a speculating sequence has at least one row")
    }

    /// Appends a sequence's next token and works out its text and whether it is finished.
    fn postprocess(&mut self, id: u64, sampled: Sampled) -> Result<RequestOutput> {
        let seq = self.scheduler.get(id).expect("scheduled");
        let state = self
            .states
            .get_mut(&id)
            .expect("state exists for every sequence");
        let p = &seq.params;
        let token = sampled.token;
        // A grammar that allows nothing more ends the output whatever ignore_eos says.
        let grammar_done = state.constraint.as_ref().is_some_and(Constraint::finished);
        let is_eos = (!p.ignore_eos || grammar_done) && self.eos.contains(&token);
        let is_stop_id = p.stop_token_ids.contains(&token);
        let queue_time = if state.report_queue_time {
            state.report_queue_time = false;
            seq.first_scheduled.map(|t| t.duration_since(seq.arrival))
        } else {
            None
        };

        let seq = self.scheduler.get_mut(id).expect("scheduled");
        seq.tokens.push(token);
        let mut out = RequestOutput {
            token_ids: vec![token],
            logprobs: sampled.logprob.into_iter().collect(),
            prompt_tokens: seq.num_prompt,
            completion_tokens: seq.num_output(),
            cached_tokens: seq.num_cached_prompt,
            queue_time,
            ..Default::default()
        };
        if is_eos || is_stop_id {
            out.finish_reason = Some(FinishReason::Stop);
            if is_stop_id && !is_eos {
                out.stop_reason = Some(token.to_string());
            }
        } else {
            let step = state.text.push(token)?;
            out.text = step.emit;
            if let Some(s) = step.stopped_by {
                out.finish_reason = Some(FinishReason::Stop);
                out.stop_reason = Some(s);
                return Ok(out);
            }
            if grammar_done {
                out.finish_reason = Some(FinishReason::Stop);
            } else if seq.tokens.len() >= seq.max_len {
                out.finish_reason = Some(FinishReason::Length);
            }
        }
        if out.finish_reason.is_some() {
            out.text.push_str(&state.text.finish()?);
        }
        Ok(out)
    }
}

/// Runs `f` on `seq`'s sampling context: its parameters, prompt and output so far, and the
/// tokens that end it (stop ids, plus EOS unless ignored).
fn with_sample_context<T>(seq: &Sequence, eos: &[u32], f: impl FnOnce(&SampleContext) -> T) -> T {
    with_sample_context_upto(seq, eos, seq.tokens.len(), f)
}

/// [`with_sample_context`] as of the sequence's first `upto` tokens (a draft's position).
fn with_sample_context_upto<T>(
    seq: &Sequence,
    eos: &[u32],
    upto: usize,
    f: impl FnOnce(&SampleContext) -> T,
) -> T {
    let p = &seq.params;
    let mut end_tokens = p.stop_token_ids.clone();
    if !p.ignore_eos {
        end_tokens.extend(eos);
    }
    f(&SampleContext {
        params: p,
        prompt: &seq.tokens[..seq.num_prompt],
        output: &seq.tokens[seq.num_prompt..upto],
        end_tokens: &end_tokens,
        allowed: None,
    })
}

/// The compiled grammar of a request that asks for structured output.
pub fn compile_structure(
    tokenizer: &Tokenizer,
    params: &SamplingParams,
    vocab_size: usize,
) -> Result<Option<Constraint>, RequestError> {
    let Some(structure) = &params.structure else {
        return Ok(None);
    };
    let invalid = |e: anyhow::Error| {
        RequestError::InvalidParam(ParamError {
            param: "response_format",
            message: format!("{e:#}"),
        })
    };
    let compiler = tokenizer.grammar_compiler(vocab_size).map_err(invalid)?;
    compiler.compile(structure).map(Some).map_err(invalid)
}

/// The tokens a constrained row may take now; `None` without a grammar. A grammar that
/// fails here no longer constrains the row (logged).
fn constrained_mask(id: u64, constraint: &mut Option<Constraint>) -> Option<TokenMask> {
    let c = constraint.as_mut()?;
    match c.mask() {
        Ok(mask) => Some(mask),
        Err(e) => {
            tracing::warn!("request {id}: {e:#}");
            None
        }
    }
}

/// A sampling row's result from the runner.
enum Choice {
    /// The token, picked on the device.
    Picked(u32),
    /// The row's logits, for the sampler.
    Logits(Vec<f32>),
}
