//! The engine on its own thread, behind a channel. Requests go in, outputs stream back on a
//! per-request channel; dropping a [`RequestStream`] before it finishes cancels the request.

use super::llm_engine::{compile_structure, validate_request, LlmEngine, RequestError};
use super::loop_times::{LoopPhase, LoopTimes};
use super::output::{RequestEvent, RequestOutput};
use super::params::SamplingParams;
use crate::model::grammar::Constraint;
use crate::model::lora::AdapterSpec;
use crate::model::tokenizer::Tokenizer;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

enum Command {
    Add {
        id: u64,
        prompt: Vec<u32>,
        // Boxed: the parameters and a grammar's matcher are most of the command's size.
        params: Box<SamplingParams>,
        constraint: Option<Box<Constraint>>,
        out: UnboundedSender<RequestEvent>,
    },
    Abort(u64),
    /// Load a LoRA adapter between steps; the reply is its slot.
    LoadAdapter {
        spec: AdapterSpec,
        max_rank: usize,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Free adapter `slot` (refused while requests use it).
    UnloadAdapter {
        slot: usize,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Shutdown,
}

/// Live counters the server exports; written by the engine thread only.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    /// KV-cache usage in parts per million (atomics hold no floats).
    pub kv_usage_ppm: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    /// Speculative decoding: tokens drafted, and drafted tokens kept.
    pub draft_tokens: AtomicU64,
    pub accepted_draft_tokens: AtomicU64,
    pub steps: AtomicU64,
    /// The engine thread's time by phase (idle waits for work not counted).
    pub loop_times: LoopTimes,
    /// LoRA adapter slots of the running and of the waiting requests, after the last step.
    pub adapters_in_use: Mutex<(Vec<usize>, Vec<usize>)>,
    pub failed: AtomicBool,
    pub failure: Mutex<Option<String>>,
}

impl EngineStats {
    pub fn kv_usage(&self) -> f64 {
        self.kv_usage_ppm.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn failure(&self) -> Option<String> {
        if self.failed.load(Ordering::Acquire) {
            Some(
                self.failure
                    .lock()
                    .map(|f| f.clone().unwrap_or_default())
                    .unwrap_or_default(),
            )
        } else {
            None
        }
    }
}

/// Facts about the served model that callers need without asking the engine thread.
#[derive(Clone)]
pub struct ModelInfo {
    pub tokenizer: Arc<Tokenizer>,
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub description: String,
    /// A classifier model's labels (see `LlmEngine::classifier`).
    pub classifier: Option<crate::model::config::ClassifierConfig>,
    pub scheduling_policy: super::scheduler::SchedulingPolicy,
    /// The model's EOS token ids.
    pub eos: Vec<u32>,
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Command>,
    next_id: Arc<AtomicU64>,
    stats: Arc<EngineStats>,
    info: Arc<ModelInfo>,
    max_queued: usize,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// A request's output stream.
pub struct RequestStream {
    pub id: u64,
    rx: UnboundedReceiver<RequestEvent>,
    tx: Sender<Command>,
    done: bool,
}

impl RequestStream {
    fn note(&mut self, ev: &Option<RequestEvent>) {
        match ev {
            Some(Ok(o)) if o.finish_reason.is_none() => {}
            _ => self.done = true,
        }
    }

    pub async fn next(&mut self) -> Option<RequestEvent> {
        let ev = self.rx.recv().await;
        self.note(&ev);
        ev
    }

    /// The next increment if one is already waiting; never blocks.
    pub fn try_next(&mut self) -> Option<RequestEvent> {
        let ev = self.rx.try_recv().ok();
        if ev.is_some() {
            self.note(&ev);
        }
        ev
    }

    /// For callers outside an async runtime (CLI, tests).
    pub fn blocking_next(&mut self) -> Option<RequestEvent> {
        let ev = self.rx.blocking_recv();
        self.note(&ev);
        ev
    }

    /// Collects the whole output (blocking): all increments merged into one.
    pub fn collect_blocking(mut self) -> Result<RequestOutput, String> {
        let mut all = RequestOutput::default();
        while let Some(ev) = self.blocking_next() {
            merge(&mut all, ev?);
            if all.finish_reason.is_some() {
                return Ok(all);
            }
        }
        Err("the engine stopped before the request finished".into())
    }
}

/// Appends an increment to an accumulated output.
pub fn merge(all: &mut RequestOutput, o: RequestOutput) {
    all.token_ids.extend(o.token_ids);
    all.text.push_str(&o.text);
    all.logprobs.extend(o.logprobs);
    all.finish_reason = o.finish_reason;
    all.stop_reason = o.stop_reason.or(all.stop_reason.take());
    all.prompt_tokens = o.prompt_tokens;
    all.completion_tokens = o.completion_tokens;
    all.cached_tokens = o.cached_tokens;
    all.queue_time = all.queue_time.or(o.queue_time);
    all.prompt_logprobs = all.prompt_logprobs.take().or(o.prompt_logprobs);
    all.embedding = o.embedding.or(all.embedding.take());
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(Command::Abort(self.id));
        }
    }
}

impl EngineHandle {
    /// Starts the engine thread. `max_queued` bounds the waiting queue (0: unbounded).
    pub fn spawn(engine: LlmEngine, max_queued: usize) -> EngineHandle {
        let info = Arc::new(ModelInfo {
            tokenizer: engine.tokenizer().clone(),
            max_model_len: engine.config().max_model_len,
            vocab_size: engine.vocab_size(),
            description: engine.describe(),
            classifier: engine.classifier().cloned(),
            scheduling_policy: engine.config().scheduling_policy,
            eos: engine.eos_tokens().to_vec(),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(EngineStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn(move || run_engine_loop(engine, rx, thread_stats))
            .expect("spawning the engine thread");
        EngineHandle {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            stats,
            info,
            max_queued,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.info.tokenizer
    }

    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Validates and enqueues a request.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<RequestStream, RequestError> {
        if let Some(why) = self.stats.failure() {
            return Err(RequestError::EngineDown(why));
        }
        validate_request(
            &prompt,
            &params,
            (self.info.max_model_len, self.info.vocab_size),
            self.info.scheduling_policy,
        )?;
        // Compiled here, on the caller's thread: an error is the caller's, reported now, and
        // the engine loop never stalls on a grammar.
        let constraint = compile_structure(&self.info.tokenizer, &params, self.info.vocab_size)?;
        let waiting = self.stats.waiting.load(Ordering::Relaxed);
        if self.max_queued > 0 && waiting >= self.max_queued {
            return Err(RequestError::QueueFull(waiting));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (out, rx) = unbounded_channel();
        // Counted as waiting right away so bursts see the queue fill up.
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Command::Add {
                id,
                prompt,
                params: Box::new(params),
                constraint: constraint.map(Box::new),
                out,
            })
            .map_err(|_| RequestError::EngineDown("engine thread has exited".into()))?;
        Ok(RequestStream {
            id,
            rx,
            tx: self.tx.clone(),
            done: false,
        })
    }

    /// A stream that yields `out` (a final output, produced outside the engine loop: a
    /// beam search's beam) and ends; dropping it cancels nothing.
    pub fn finished_stream(&self, out: RequestOutput) -> RequestStream {
        let (tx, rx) = unbounded_channel();
        let _ = tx.send(Ok(out));
        RequestStream {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            rx,
            tx: self.tx.clone(),
            done: true,
        }
    }

    /// Asks the engine to load a LoRA adapter between steps (it answers with the slot
    /// requests name it by, or why not). Loading reads and uploads the weights, so running
    /// requests pause for it.
    pub fn load_adapter(
        &self,
        spec: AdapterSpec,
        max_rank: usize,
    ) -> oneshot::Receiver<Result<usize, String>> {
        let (reply, rx) = oneshot::channel();
        let command = Command::LoadAdapter {
            spec,
            max_rank,
            reply,
        };
        if let Err(crossbeam_channel::SendError(Command::LoadAdapter { reply, .. })) =
            self.tx.send(command)
        {
            let _ = reply.send(Err("the engine thread has exited".into()));
        }
        rx
    }

    /// Asks the engine to free adapter `slot` (refused while requests use it).
    pub fn unload_adapter(&self, slot: usize) -> oneshot::Receiver<Result<(), String>> {
        let (reply, rx) = oneshot::channel();
        if let Err(crossbeam_channel::SendError(Command::UnloadAdapter { reply, .. })) =
            self.tx.send(Command::UnloadAdapter { slot, reply })
        {
            let _ = reply.send(Err("the engine thread has exited".into()));
        }
        rx
    }

    /// Asks the engine to finish what it has and stop; waits for it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// Runs [`engine_loop`] on this thread, or, when the model computes on the CPU, on a worker
/// of a rayon pool of its own. Called from outside a pool, every parallel op of a CPU
/// forward pass (tens per step) hands its work to the pool's threads and sleeps until they
/// finish: a futex wake and wait per op, and one thread more than there are cores. Inside
/// the pool the loop's thread is one of the workers and takes part in the work itself. The
/// pool is the engine's own, so nothing else blocks its workers, and the loop never waits on
/// another pool job (tensor-parallel ranks keep their own threads).
fn run_engine_loop(engine: LlmEngine, rx: Receiver<Command>, stats: Arc<EngineStats>) {
    if !engine.computes_on_host() {
        return engine_loop(engine, rx, stats);
    }
    let threads = candle_core::utils::get_num_threads();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kiln-cpu-{i}"))
        .build()
    {
        Ok(pool) => pool.install(move || engine_loop(engine, rx, stats)),
        Err(e) => {
            tracing::warn!("no CPU thread pool for the engine ({e}); running without one");
            engine_loop(engine, rx, stats)
        }
    }
}

fn engine_loop(mut engine: LlmEngine, rx: Receiver<Command>, stats: Arc<EngineStats>) {
    let mut senders: HashMap<u64, UnboundedSender<RequestEvent>> = HashMap::new();
    let mut shutting_down = false;
    loop {
        if !engine.has_work() {
            if shutting_down {
                break;
            }
            match rx.recv() {
                Ok(cmd) => apply(cmd, &mut engine, &mut senders, &stats, &mut shutting_down),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        while let Ok(cmd) = rx.try_recv() {
            apply(cmd, &mut engine, &mut senders, &stats, &mut shutting_down);
        }
        let stepping = Instant::now();
        stats
            .loop_times
            .add(LoopPhase::Commands, stepping - started);
        let model_before = engine.model_time();
        // A panic inside a step (a bug, a backend fault) must not leave a dead engine behind
        // a healthy-looking server: it is treated like a step error.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.step()))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(anyhow::anyhow!("engine step panicked: {what}"))
            });
        let delivering = Instant::now();
        let model = engine.model_time().saturating_sub(model_before);
        stats.loop_times.add(LoopPhase::Model, model);
        stats.loop_times.add(
            LoopPhase::Host,
            (delivering - stepping).saturating_sub(model),
        );
        match step {
            Ok(outputs) => {
                for (id, out) in outputs {
                    stats
                        .generation_tokens
                        .fetch_add(out.token_ids.len() as u64, Ordering::Relaxed);
                    let finished = out.finish_reason.is_some();
                    let delivered = senders.get(&id).is_some_and(|s| s.send(Ok(out)).is_ok());
                    if finished {
                        senders.remove(&id);
                    } else if !delivered {
                        // The client went away: free its blocks now.
                        engine.abort(id);
                        senders.remove(&id);
                    }
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!("engine step failed: {msg}");
                if let Ok(mut f) = stats.failure.lock() {
                    *f = Some(msg.clone());
                }
                stats.failed.store(true, Ordering::Release);
                for (_, s) in senders.drain() {
                    let _ = s.send(Err(format!("engine failure: {msg}")));
                }
                break;
            }
        }
        stats.running.store(engine.num_running(), Ordering::Relaxed);
        stats.waiting.store(engine.num_waiting(), Ordering::Relaxed);
        stats
            .kv_usage_ppm
            .store((engine.kv_usage() * 1e6) as u64, Ordering::Relaxed);
        stats
            .preemptions
            .store(engine.num_preemptions(), Ordering::Relaxed);
        let (drafted, accepted) = engine.speculation_counts();
        stats.draft_tokens.store(drafted, Ordering::Relaxed);
        stats
            .accepted_draft_tokens
            .store(accepted, Ordering::Relaxed);
        stats.steps.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut in_use) = stats.adapters_in_use.lock() {
            *in_use = engine.adapters_in_use();
        }
        stats
            .loop_times
            .add(LoopPhase::Deliver, delivering.elapsed());
    }
    stats.running.store(0, Ordering::Relaxed);
    stats.waiting.store(0, Ordering::Relaxed);
}

fn apply(
    cmd: Command,
    engine: &mut LlmEngine,
    senders: &mut HashMap<u64, UnboundedSender<RequestEvent>>,
    stats: &EngineStats,
    shutting_down: &mut bool,
) {
    match cmd {
        Command::Add {
            id,
            prompt,
            params,
            constraint,
            out,
        } => {
            let n = prompt.len() as u64;
            match engine.add_compiled_request(id, prompt, *params, constraint.map(|c| *c)) {
                Ok(()) => {
                    stats.prompt_tokens.fetch_add(n, Ordering::Relaxed);
                    senders.insert(id, out);
                }
                Err(e) => {
                    let _ = out.send(Err(e.to_string()));
                }
            }
        }
        Command::Abort(id) => {
            engine.abort(id);
            senders.remove(&id);
        }
        Command::LoadAdapter {
            spec,
            max_rank,
            reply,
        } => {
            let loaded = engine.load_adapter(&spec, max_rank);
            match &loaded {
                Ok(slot) => tracing::info!("LoRA adapter {} loaded (slot {slot})", spec.name),
                Err(e) => tracing::warn!("LoRA adapter {} not loaded: {e:#}", spec.name),
            }
            let _ = reply.send(loaded.map_err(|e| format!("{e:#}")));
        }
        Command::UnloadAdapter { slot, reply } => {
            let _ = reply.send(engine.unload_adapter(slot).map_err(|e| format!("{e:#}")));
        }
        Command::Shutdown => *shutting_down = true,
    }
}
