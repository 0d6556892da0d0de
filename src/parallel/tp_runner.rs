//! The tensor-parallel [`Runner`]: one worker thread per rank, each owning its backend
//! (device context and stream), its shard of the weights and its KV cache. The engine's
//! single scheduler hands a step to [`TpRunner::execute`], which sends it to every rank; the
//! ranks run the same forward pass in lock-step, meeting in the communicator's all-reduces,
//! and each returns the logits of its vocabulary rows, which are stitched into full rows here.
//!
//! Start-up has two phases so the KV cache can be sized from every rank's free memory: all
//! ranks load their shards (in parallel), report, and then allocate the number of blocks
//! the caller decided from the reports.

use super::communicator::Communicator;
use super::shard::Shard;
use crate::backend::cuda::pool::PoolStats;
use crate::backend::{Backend, DType};
use crate::engine::runner::{Runner, StepInput, StepOutput};
use crate::model::config::ModelConfig;
use crate::model::llama::LlamaModel;
use crate::model::lora::{load_adapter, AdapterSpec};
use crate::model::weights::WeightSource;
use anyhow::{anyhow, Context, Result};
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a rank reports once its shard is loaded.
#[derive(Clone, Debug)]
pub struct RankLoaded {
    pub rank: usize,
    /// `(free, total)` device bytes once every rank has loaded its shard, where the device
    /// has its own memory.
    pub memory: Option<(usize, usize)>,
    /// KV-cache bytes one block of `block_size` tokens takes on this rank.
    pub kv_bytes_per_block: usize,
    /// Bytes of one of this rank's recurrent-state slots (its share of one sequence's mixer
    /// states), held beside the blocks.
    pub state_bytes_per_slot: usize,
    pub backend_name: String,
}

/// What each rank allocates once the shards are loaded: KV blocks, and recurrent-state
/// slots where fewer than [`TpSpec::state_slots`] fit (`None`: the spec's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CachePlan {
    pub blocks: usize,
    pub state_slots: Option<usize>,
}

impl From<usize> for CachePlan {
    fn from(blocks: usize) -> Self {
        CachePlan {
            blocks,
            state_slots: None,
        }
    }
}

/// How to start a group: the model, the ranks' backends and communicators.
pub struct TpSpec<B: Backend> {
    pub config: ModelConfig,
    pub dtype: DType,
    pub weights: Arc<dyn WeightSource + Send + Sync>,
    pub block_size: usize,
    /// Recurrent-state slots each rank keeps (`--max-num-seqs`; used by models with
    /// recurrent mixers only), unless the [`CachePlan`] asks for fewer.
    pub state_slots: usize,
    /// Opens rank `r`'s backend, on the rank's own thread (a GPU context is bound there).
    pub open_backend: Arc<dyn Fn(usize) -> Result<B> + Send + Sync>,
    /// One communicator per rank, in rank order.
    pub communicators: Vec<Box<dyn Communicator<B>>>,
    /// Called by each rank after each layer it loads (progress).
    pub on_layer: Arc<dyn Fn(usize, usize) + Send + Sync>,
    /// LoRA adapters every rank loads (its part of each), and the largest rank allowed.
    pub adapters: Arc<[AdapterSpec]>,
    pub max_lora_rank: usize,
}

enum Command {
    MeasureMemory,
    /// Load this adapter into this slot.
    LoadAdapter(Arc<AdapterSpec>, usize, usize),
    UnloadAdapter(usize),
    /// KV blocks and recurrent-state slots.
    Allocate(usize, usize),
    Step(Arc<StepInput>, Rows),
    AllocatorStats,
}

/// What a step returns for its logits rows.
#[derive(Clone, Copy)]
enum Rows {
    /// The rank's vocabulary slice of the logits.
    Logits,
    /// The final hidden states (embedding requests): whole on every rank.
    Hidden,
}

enum Reply {
    Loaded(RankLoaded),
    Memory(Option<(usize, usize)>),
    Ready,
    Logits(Vec<f32>),
    Stats(Option<PoolStats>),
}

struct Worker {
    commands: Sender<Command>,
    replies: Receiver<Result<Reply>>,
    thread: Option<JoinHandle<()>>,
}

/// A model sharded over several ranks, driven as one [`Runner`].
pub struct TpRunner {
    workers: Vec<Worker>,
    /// Each rank's vocabulary rows (the columns of its logits).
    vocab: Vec<Range<usize>>,
    config: ModelConfig,
    dtype: DType,
    description: String,
    /// Per adapter slot, whether every rank holds it loaded.
    adapters: Vec<bool>,
    /// The recurrent-state slots each rank allocated: the most sequences that can run.
    state_slots: usize,
}

impl TpRunner {
    /// Starts one worker per communicator, loads every shard, then lets `decide_cache`
    /// pick the KV-cache size (and the state slots, where fewer fit) from the ranks' reports
    /// and allocates it on every rank. Returns the runner and its blocks.
    pub fn start<B, P>(
        spec: TpSpec<B>,
        decide_cache: impl FnOnce(&[RankLoaded]) -> Result<P>,
    ) -> Result<(TpRunner, usize)>
    where
        B: Backend + 'static,
        P: Into<CachePlan>,
    {
        let world = spec.communicators.len();
        let mut workers = Vec::with_capacity(world);
        for (rank, comm) in spec.communicators.into_iter().enumerate() {
            let (commands, command_rx) = channel();
            let (reply_tx, replies) = channel();
            let job = RankJob {
                shard: Shard { rank, world },
                config: spec.config.clone(),
                dtype: spec.dtype,
                weights: spec.weights.clone(),
                block_size: spec.block_size,
                open_backend: spec.open_backend.clone(),
                on_layer: spec.on_layer.clone(),
                adapters: spec.adapters.clone(),
                max_lora_rank: spec.max_lora_rank,
                comm,
            };
            let thread = std::thread::Builder::new()
                .name(format!("kiln-tp-rank-{rank}"))
                .spawn(move || job.run(command_rx, reply_tx))
                .context("starting a tensor-parallel worker thread")?;
            workers.push(Worker {
                commands,
                replies,
                thread: Some(thread),
            });
        }
        let mut runner = TpRunner {
            workers,
            vocab: Vec::new(),
            config: spec.config,
            dtype: spec.dtype,
            description: String::new(),
            adapters: vec![true; spec.adapters.len()],
            state_slots: spec.state_slots,
        };
        let mut loaded: Vec<RankLoaded> = runner
            .collect(|r| match r {
                Reply::Loaded(l) => Ok(l),
                _ => Err(anyhow!("unexpected reply while loading")),
            })
            .context("loading the tensor-parallel shards")?;
        // Measured only now: ranks sharing a GPU must all see every shard in place.
        runner.broadcast(|| Command::MeasureMemory)?;
        let memory = runner.collect(|r| match r {
            Reply::Memory(m) => Ok(m),
            _ => Err(anyhow!("unexpected reply to a memory query")),
        })?;
        for (l, m) in loaded.iter_mut().zip(memory) {
            l.memory = m;
        }
        let plan: CachePlan = decide_cache(&loaded)?.into();
        let num_blocks = plan.blocks;
        runner.state_slots = plan.state_slots.unwrap_or(runner.state_slots);
        let slots = runner.state_slots;
        runner.broadcast(|| Command::Allocate(num_blocks, slots))?;
        runner
            .collect(|r| match r {
                Reply::Ready => Ok(()),
                _ => Err(anyhow!("unexpected reply while allocating")),
            })
            .context("allocating the tensor-parallel KV caches")?;
        runner.vocab = (0..world)
            .map(|rank| {
                super::shard::ShardLayout::new(&runner.config, Shard { rank, world })
                    .map(|l| l.vocab)
            })
            .collect::<Result<_>>()?;
        let names: Vec<_> = loaded.iter().map(|l| l.backend_name.clone()).collect();
        runner.description = format!(
            "{:?} on {world} ranks [{}] ({})",
            runner.config.architecture,
            names.join(", "),
            runner.dtype
        );
        Ok((runner, num_blocks))
    }

    /// The recurrent-state slots each rank holds: the most sequences that can run at once.
    pub fn state_slots(&self) -> usize {
        self.state_slots
    }

    fn broadcast(&self, command: impl Fn() -> Command) -> Result<()> {
        for (rank, w) in self.workers.iter().enumerate() {
            w.commands
                .send(command())
                .map_err(|_| anyhow!("tensor-parallel rank {rank} has stopped"))?;
        }
        Ok(())
    }

    /// One reply from every rank. With failures, the error of the rank that failed first is
    /// returned (the others only report that the group was aborted).
    fn collect<T>(&self, mut accept: impl FnMut(Reply) -> Result<T>) -> Result<Vec<T>> {
        let mut values = Vec::with_capacity(self.workers.len());
        let mut errors = Vec::new();
        for (rank, w) in self.workers.iter().enumerate() {
            match w.replies.recv() {
                Ok(Ok(reply)) => match accept(reply) {
                    Ok(v) => values.push(v),
                    Err(e) => errors.push(e.context(format!("tensor-parallel rank {rank}"))),
                },
                Ok(Err(e)) => errors.push(e.context(format!("tensor-parallel rank {rank}"))),
                Err(_) => errors.push(anyhow!("tensor-parallel rank {rank} stopped unexpectedly")),
            }
        }
        if errors.is_empty() {
            return Ok(values);
        }
        let root = errors
            .iter()
            .position(|e| !format!("{e:#}").contains("tensor-parallel group failed"))
            .unwrap_or(0);
        Err(errors.swap_remove(root))
    }
}

impl Runner for TpRunner {
    /// Every row comes back as logits: the argmax of a split vocabulary needs every
    /// rank's slice (picking on the ranks is left for later).
    fn execute(&mut self, input: &StepInput) -> Result<StepOutput> {
        // The step is shared by reference count, not copied per rank.
        let shared = Arc::new(input.clone());
        self.broadcast(|| Command::Step(shared.clone(), Rows::Logits))?;
        let parts = self.collect(|r| match r {
            Reply::Logits(l) => Ok(l),
            _ => Err(anyhow!("unexpected reply to a step")),
        })?;
        let logits = gather_vocab(&parts, &self.vocab, self.config.vocab_size)?;
        Ok(StepOutput::all_logits(
            input.layout.logits_rows.len(),
            logits,
        ))
    }

    /// Every rank computes the whole rows (the layers' outputs are all-reduced); rank 0's
    /// are returned.
    fn hidden_rows(&mut self, input: &StepInput) -> Result<Vec<f32>> {
        let shared = Arc::new(input.clone());
        self.broadcast(|| Command::Step(shared.clone(), Rows::Hidden))?;
        let mut rows = self.collect(|r| match r {
            Reply::Logits(h) => Ok(h),
            _ => Err(anyhow!("unexpected reply to a hidden-state step")),
        })?;
        Ok(rows.swap_remove(0))
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn classifier(&self) -> Option<&crate::model::config::ClassifierConfig> {
        self.config.classifier.as_ref()
    }

    fn keeps_recurrent_state(&self) -> bool {
        self.config.keeps_recurrent_state()
    }

    fn has_adapter(&self, slot: usize) -> bool {
        self.adapters.get(slot).copied().unwrap_or(false)
    }

    /// Every rank loads its part into the next slot; if any fails, the others free theirs
    /// and the slot is left unused.
    fn load_adapter(&mut self, spec: &AdapterSpec, max_rank: usize) -> Result<usize> {
        let slot = self.adapters.len();
        self.adapters.push(false);
        let shared = Arc::new(spec.clone());
        self.broadcast(|| Command::LoadAdapter(shared.clone(), slot, max_rank))?;
        let loaded = self.collect(|r| match r {
            Reply::Ready => Ok(()),
            _ => Err(anyhow!("unexpected reply to loading an adapter")),
        });
        if let Err(e) = loaded {
            let _ = self.broadcast(|| Command::UnloadAdapter(slot));
            let _ = self.collect(|_| Ok(()));
            return Err(e);
        }
        self.adapters[slot] = true;
        Ok(slot)
    }

    fn unload_adapter(&mut self, slot: usize) -> Result<()> {
        anyhow::ensure!(
            self.has_adapter(slot),
            "no adapter is loaded in slot {slot}"
        );
        self.adapters[slot] = false;
        self.broadcast(|| Command::UnloadAdapter(slot))?;
        self.collect(|r| match r {
            Reply::Ready => Ok(()),
            _ => Err(anyhow!("unexpected reply to unloading an adapter")),
        })?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn weight_bytes(&self) -> u64 {
        // Per rank, a step reads about 1/world of the weights; ranks read in parallel.
        self.config.active_parameters() * self.dtype.size_in_bytes() as u64
            / self.workers.len() as u64
    }

    fn allocator_stats(&self) -> Option<PoolStats> {
        self.broadcast(|| Command::AllocatorStats).ok()?;
        let stats = self
            .collect(|r| match r {
                Reply::Stats(s) => Ok(s),
                _ => Err(anyhow!("unexpected reply to a stats query")),
            })
            .ok()?;
        stats
            .into_iter()
            .try_fold(PoolStats::default(), |sum, s| s.map(|s| sum.plus(s)))
    }
}

impl Drop for TpRunner {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the command channel ends the worker's loop.
            let (closed, _) = channel();
            drop(std::mem::replace(&mut w.commands, closed));
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Full logit rows from each rank's columns: rank `r` holds `vocab[r]` of every row.
pub fn gather_vocab(parts: &[Vec<f32>], vocab: &[Range<usize>], full: usize) -> Result<Vec<f32>> {
    let rows = match (parts.first(), vocab.first()) {
        (Some(p), Some(v)) if !v.is_empty() => p.len() / v.len(),
        _ => 0,
    };
    let mut out = vec![0.0f32; rows * full];
    for (part, cols) in parts.iter().zip(vocab) {
        anyhow::ensure!(
            part.len() == rows * cols.len(),
            "a rank returned {} logits for {rows} rows of {} columns",
            part.len(),
            cols.len()
        );
        for (row, values) in part.chunks_exact(cols.len().max(1)).enumerate() {
            out[row * full + cols.start..row * full + cols.end].copy_from_slice(values);
        }
    }
    Ok(out)
}

/// Everything one rank's thread needs.
struct RankJob<B: Backend> {
    shard: Shard,
    config: ModelConfig,
    dtype: DType,
    weights: Arc<dyn WeightSource + Send + Sync>,
    block_size: usize,
    open_backend: Arc<dyn Fn(usize) -> Result<B> + Send + Sync>,
    on_layer: Arc<dyn Fn(usize, usize) + Send + Sync>,
    adapters: Arc<[AdapterSpec]>,
    max_lora_rank: usize,
    comm: Box<dyn Communicator<B>>,
}

impl<B: Backend> RankJob<B> {
    fn run(self, commands: Receiver<Command>, replies: Sender<Result<Reply>>) {
        let rank = self.shard.rank;
        let loaded = self.guarded(|| self.load());
        let (be, mut model) = match loaded {
            Ok(v) => v,
            Err(e) => {
                let _ = replies.send(Err(e));
                return;
            }
        };
        let spec = model.kv_cache_spec(1, self.block_size, 1);
        let info = RankLoaded {
            rank,
            memory: None,
            kv_bytes_per_block: spec.bytes_per_block(),
            state_bytes_per_slot: spec.state_bytes(),
            backend_name: be.name(),
        };
        if replies.send(Ok(Reply::Loaded(info))).is_err() {
            return;
        }
        let mut cache = None;
        while let Ok(command) = commands.recv() {
            let reply = match command {
                Command::MeasureMemory => be.memory_info().transpose().map(Reply::Memory),
                Command::Allocate(blocks, slots) => self
                    .guarded(|| {
                        let spec = model.kv_cache_spec(blocks, self.block_size, slots);
                        be.new_kv_cache(&spec)
                    })
                    .map(|c| {
                        cache = Some(c);
                        Reply::Ready
                    }),
                Command::Step(input, rows) => match cache.as_mut() {
                    None => Err(anyhow!("step before the KV cache was allocated")),
                    Some(cache) => self
                        .guarded(|| {
                            let (tokens, layout, comm) =
                                (&input.tokens, &input.layout, self.comm.as_ref());
                            match rows {
                                Rows::Logits => model.forward(&be, tokens, layout, cache, comm),
                                Rows::Hidden => model.hidden_rows(&be, tokens, layout, cache, comm),
                            }
                        })
                        .map(Reply::Logits),
                },
                Command::AllocatorStats => Ok(Reply::Stats(be.allocator_stats())),
                // Adapter loads are not collectives: a failing rank reports without aborting
                // the group (the coordinator frees the slot on the others).
                Command::LoadAdapter(spec, slot, max_rank) => {
                    let (c, layout) = (&model.config, &model.layout);
                    load_adapter(&be, c, layout, self.dtype, &spec, max_rank)
                        .and_then(|adapter| model.place_adapter(slot, adapter))
                        .map(|()| Reply::Ready)
                }
                Command::UnloadAdapter(slot) => {
                    let _ = model.remove_adapter(slot);
                    Ok(Reply::Ready)
                }
            };
            if replies.send(reply).is_err() {
                return;
            }
        }
    }

    fn load(&self) -> Result<(B, LlamaModel<B>)> {
        let rank = self.shard.rank;
        let be = (self.open_backend)(rank)?;
        let mut model = LlamaModel::load_shard(
            &be,
            self.config.clone(),
            self.weights.as_ref(),
            self.dtype,
            self.shard,
            |layer| (self.on_layer)(rank, layer),
        )
        .with_context(|| {
            format!(
                "loading shard {rank}/{} onto {}",
                self.shard.world,
                be.name()
            )
        })?;
        for spec in self.adapters.iter() {
            let (c, layout) = (&model.config, &model.layout);
            let adapter = load_adapter(&be, c, layout, self.dtype, spec, self.max_lora_rank)
                .with_context(|| format!("loading LoRA adapter {} on rank {rank}", spec.name))?;
            model.add_adapter(adapter)?;
        }
        Ok((be, model))
    }

    /// Runs `f`, turning a panic into an error; either way a failure aborts the group so
    /// no other rank waits for this one in a collective.
    fn guarded<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let result = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(anyhow!("panicked: {what}"))
        });
        if let Err(e) = &result {
            self.comm
                .abort(&format!("rank {} failed: {e:#}", self.shard.rank));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_stitches_uneven_vocab_slices_into_full_rows() {
        let vocab = [0..3, 3..5];
        let parts = [
            vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0],
            vec![3.0, 4.0, 13.0, 14.0],
        ];
        let full = gather_vocab(&parts, &vocab, 5).unwrap();
        assert_eq!(
            full,
            [0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0, 13.0, 14.0]
        );
        assert!(gather_vocab(&[vec![0.0; 6], vec![0.0; 3]], &vocab, 5).is_err());
    }
}
