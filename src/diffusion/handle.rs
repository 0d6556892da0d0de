//! The image engine's handle: requests are checked and enqueued here (synchronously, so a
//! bad or excess request is refused before it waits), answered on a per-request ticket.
//! Dropping a ticket before its images arrive cancels the request: a queued one never runs,
//! a running one leaves its batch before the next denoising step.

use super::batch::BatchKey;
use super::engine::{replica_loop, EngineConfig, SharedQueue};
use super::pipeline::{ImageRequest, Pipeline};
use super::queue::Batchable;
use super::scheduler::SchedulerConfig;
use crate::backend::image_ops::ImageOps;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The most images one request may ask for (OpenAI's limit for `n`).
pub const MAX_IMAGES_PER_REQUEST: usize = 10;
/// The most denoising steps one request may ask for.
pub const MAX_STEPS: usize = 500;
/// The largest guidance scale accepted (far above any useful one).
pub const MAX_GUIDANCE: f32 = 100.0;

/// One request as a client states it; `None` means "the model's default".
#[derive(Clone, Debug, Default)]
pub struct ImageParams {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub num_images: usize,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f32>,
    pub seed: Option<u64>,
}

/// Facts about the served pipeline, known without asking the engine thread.
#[derive(Clone, Debug)]
pub struct ImageModelInfo {
    /// The diffusers pipeline class, e.g. `StableDiffusionPipeline`.
    pub pipeline_class: String,
    /// The side the model was trained at, used when a request gives no size.
    pub default_size: usize,
    /// Width and height must be multiples of this.
    pub size_multiple: usize,
    /// The largest width or height accepted (twice the trained size).
    pub max_side: usize,
    pub default_steps: usize,
    pub default_guidance: f32,
    /// Prompt tokens the text encoder reads (longer prompts are cut).
    pub max_prompt_tokens: usize,
    scheduler: SchedulerConfig,
}

impl ImageModelInfo {
    pub fn of<B: ImageOps>(pipeline: &Pipeline<B>, pipeline_class: String) -> Self {
        let default_size = pipeline.default_size();
        let size_multiple = pipeline.size_multiple();
        ImageModelInfo {
            pipeline_class,
            default_size,
            size_multiple,
            max_side: (2 * default_size).max(size_multiple),
            default_steps: 25,
            default_guidance: 7.5,
            max_prompt_tokens: pipeline.tokenizer().max_length(),
            scheduler: pipeline.scheduler_config().clone(),
        }
    }

    /// The request the pipeline runs for `params`, or why it cannot run.
    pub fn resolve(&self, params: &ImageParams, seed: u64) -> Result<ImageRequest, RequestError> {
        let invalid = |param, message: String| RequestError::Invalid { param, message };
        let width = params.width.unwrap_or(self.default_size);
        let height = params.height.unwrap_or(self.default_size);
        let (m, max) = (self.size_multiple, self.max_side);
        let fits = |side: usize| side > 0 && side.is_multiple_of(m) && side <= max;
        if !fits(width) || !fits(height) {
            return Err(invalid(
                "size",
                format!(
                    "size {width}x{height} is not supported: width and height must be multiples \
                     of {m} between {m} and {max} for this model"
                ),
            ));
        }
        if !(1..=MAX_IMAGES_PER_REQUEST).contains(&params.num_images) {
            return Err(invalid(
                "n",
                format!(
                    "n must be between 1 and {MAX_IMAGES_PER_REQUEST}, not {}",
                    params.num_images
                ),
            ));
        }
        let steps = params.steps.unwrap_or(self.default_steps);
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(invalid(
                "num_inference_steps",
                format!("num_inference_steps must be between 1 and {MAX_STEPS}, not {steps}"),
            ));
        }
        if let Err(e) = self.scheduler.build(steps) {
            return Err(invalid("num_inference_steps", format!("{e:#}")));
        }
        let guidance_scale = params.guidance_scale.unwrap_or(self.default_guidance);
        if !(guidance_scale.is_finite() && (0.0..=MAX_GUIDANCE).contains(&guidance_scale)) {
            return Err(invalid(
                "guidance_scale",
                format!(
                    "guidance_scale must be between 0 and {MAX_GUIDANCE}, not {guidance_scale}"
                ),
            ));
        }
        Ok(ImageRequest {
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            steps,
            guidance_scale,
            width,
            height,
            num_images: params.num_images,
            seed,
            initial_latents: None,
        })
    }
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    #[error("{0} image requests are already waiting; try again later")]
    QueueFull(usize),
    #[error("the image engine is not accepting requests: {0}")]
    EngineDown(String),
}

/// Live counters the server exports; written by the engine thread and the tickets.
#[derive(Debug, Default)]
pub struct ImageStats {
    /// Requests accepted and not yet started (cancelled ones leave at once).
    pub waiting: AtomicUsize,
    /// Requests in the batches being denoised (all replicas together).
    pub running: AtomicUsize,
    pub batches: AtomicU64,
    /// Requests summed over batches (over `batches`: the mean batch size).
    pub batched_requests: AtomicU64,
    pub images: AtomicU64,
    pub steps: AtomicU64,
    /// Requests whose client went away before their images were ready.
    pub cancelled: AtomicU64,
}

/// A finished request: 8-bit RGB images, row-major.
#[derive(Clone, Debug)]
pub struct ImageOutput {
    pub width: usize,
    pub height: usize,
    pub images: Vec<Vec<u8>>,
    pub seed: u64,
    /// Arrival to the start of its batch.
    pub queue_time: Duration,
    /// Which pipeline replica (GPU) made the images.
    pub replica: usize,
}

/// A request's life: queued -> running -> done, or cancelled by its ticket on the way.
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const CANCELLED: u8 = 2;
const DONE: u8 = 3;

/// A request as the engine thread holds it.
pub(crate) struct Job {
    pub request: ImageRequest,
    pub arrival: Instant,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<ImageOutput, String>>,
}

impl Job {
    /// Queued -> running; false if its client has gone (then it must not run).
    pub fn start(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    /// Sends the answer, unless the client has gone.
    pub fn finish(self, result: Result<ImageOutput, String>) {
        let delivered = self
            .state
            .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if delivered {
            let _ = self.reply.send(result);
        }
    }
}

impl Batchable for Job {
    fn batch_key(&self) -> BatchKey {
        BatchKey::of(&self.request)
    }
    fn images(&self) -> usize {
        self.request.num_images
    }
}

/// The answer to one request, once its batch is done. Dropping it cancels the request.
pub struct ImageTicket {
    rx: oneshot::Receiver<Result<ImageOutput, String>>,
    state: Arc<AtomicU8>,
    stats: Arc<ImageStats>,
}

impl ImageTicket {
    /// Waits for the images; an error says why generation failed.
    pub async fn wait(mut self) -> Result<ImageOutput, String> {
        (&mut self.rx)
            .await
            .unwrap_or_else(|_| Err("the image engine stopped before the request finished".into()))
    }

    /// For callers outside an async runtime (CLI, tests).
    pub fn wait_blocking(mut self) -> Result<ImageOutput, String> {
        let rx = std::mem::replace(&mut self.rx, oneshot::channel().1);
        rx.blocking_recv()
            .unwrap_or_else(|_| Err("the image engine stopped before the request finished".into()))
    }
}

impl Drop for ImageTicket {
    fn drop(&mut self) {
        let state = &self.state;
        let cancel = |from| {
            state
                .compare_exchange(from, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        if cancel(QUEUED) {
            // It will never start: it stops counting as waiting now, not when the engine
            // thread next looks at its queue.
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        } else if cancel(RUNNING) {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Settings of the image engine.
#[derive(Clone, Copy, Debug)]
pub struct ImageEngineArgs {
    /// Requests allowed to wait before new ones are refused (0: unbounded).
    pub max_queued: usize,
    /// Images one UNet batch may hold (a single larger request still runs alone).
    pub max_batch_images: usize,
    /// Mixed with each request's id to seed requests that bring no seed.
    pub seed: u64,
}

#[derive(Clone)]
pub struct ImageHandle {
    queue: Arc<SharedQueue>,
    stats: Arc<ImageStats>,
    info: Arc<ImageModelInfo>,
    args: ImageEngineArgs,
    next_id: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    replicas: usize,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ImageHandle {
    /// Starts one engine thread per pipeline replica (each owns its replica from now on);
    /// the replicas share one queue. `info` describes them all (they are the same model).
    pub fn spawn<B>(
        replicas: Vec<Pipeline<B>>,
        info: ImageModelInfo,
        args: ImageEngineArgs,
    ) -> Result<ImageHandle>
    where
        B: ImageOps + Send + 'static,
    {
        anyhow::ensure!(!replicas.is_empty(), "an image engine needs a pipeline");
        let queue = Arc::new(SharedQueue::with_replicas(replicas.len()));
        let stats = Arc::new(ImageStats::default());
        let config = EngineConfig {
            max_batch_images: args.max_batch_images.max(1),
        };
        let handle = ImageHandle {
            queue: queue.clone(),
            stats: stats.clone(),
            info: Arc::new(info),
            args,
            next_id: Arc::new(AtomicU64::new(1)),
            closed: Arc::new(AtomicBool::new(false)),
            replicas: replicas.len(),
            threads: Arc::new(Mutex::new(Vec::new())),
        };
        for (replica, pipeline) in replicas.into_iter().enumerate() {
            let (queue, stats) = (queue.clone(), stats.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-images-{replica}"))
                .spawn(move || replica_loop(replica, pipeline, queue, stats, config));
            match spawned {
                Ok(thread) => lock(&handle.threads).push(thread),
                Err(e) => {
                    // Lets the replicas already started stop again.
                    handle.shutdown();
                    return Err(e).context("spawning an image engine thread");
                }
            }
        }
        Ok(handle)
    }

    pub fn info(&self) -> &ImageModelInfo {
        &self.info
    }

    pub fn stats(&self) -> &Arc<ImageStats> {
        &self.stats
    }

    /// Checks and enqueues a request.
    pub fn submit(&self, params: &ImageParams) -> Result<ImageTicket, RequestError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(RequestError::EngineDown("shutting down".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seed = params.seed.unwrap_or_else(|| mix(self.args.seed, id));
        let request = self.info.resolve(params, seed)?;
        let waiting = self.stats.waiting.load(Ordering::Relaxed);
        if self.args.max_queued > 0 && waiting >= self.args.max_queued {
            return Err(RequestError::QueueFull(waiting));
        }
        // Counted as waiting right away, so a burst sees the queue fill up.
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request,
            arrival: Instant::now(),
            state: state.clone(),
            reply,
        };
        let ticket = ImageTicket {
            rx,
            state,
            stats: self.stats.clone(),
        };
        if !self.queue.push(job) {
            ticket.state.store(DONE, Ordering::Release);
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(RequestError::EngineDown(
                "the image engine threads have exited".into(),
            ));
        }
        Ok(ticket)
    }

    /// Pipeline replicas serving requests.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Refuses new requests, lets the replicas finish the ones queued, waits for them.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.queue.shut_down();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A well-spread seed from the server's seed and a request id (SplitMix64's finaliser).
fn mix(seed: u64, id: u64) -> u64 {
    let mut z = seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
