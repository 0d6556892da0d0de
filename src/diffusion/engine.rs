//! The image engine: one thread per pipeline replica (one per GPU), all taking batches off
//! one shared queue of requests that share size, steps and guidance, each answering its
//! requests on their tickets. A replica takes only the batch it runs next, so an idle
//! replica picks up the following one at once instead of it waiting behind a busy one.
//! It knows nothing of HTTP; [`super::handle::ImageHandle`] is its only door.

use super::batch::generate_batch;
use super::handle::{ImageOutput, ImageStats, Job};
use super::pipeline::Pipeline;
use super::queue::take_batch;
use crate::backend::image_ops::ImageOps;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineConfig {
    pub max_batch_images: usize,
}

/// The requests waiting for a replica, and whether the engine is shutting down.
#[derive(Default)]
pub(crate) struct SharedQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    shutting_down: bool,
    /// Replica threads still running; none left means requests would wait forever.
    live_replicas: usize,
}

impl SharedQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding the lock, so the state is consistent either way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn with_replicas(replicas: usize) -> Self {
        SharedQueue {
            state: Mutex::new(QueueState {
                live_replicas: replicas,
                ..Default::default()
            }),
            changed: Condvar::new(),
        }
    }

    /// Queues a request; false (and the request dropped) if no replica is left to run it.
    #[must_use]
    pub fn push(&self, job: Job) -> bool {
        let mut state = self.lock();
        if state.live_replicas == 0 {
            return false;
        }
        state.jobs.push_back(job);
        drop(state);
        self.changed.notify_one();
        true
    }

    /// Lets the replicas finish what is queued, then stop.
    pub fn shut_down(&self) {
        self.lock().shutting_down = true;
        self.changed.notify_all();
    }

    /// The next batch to run, waiting for one; `None` once shut down and drained.
    fn next_batch(&self, max_images: usize) -> Option<Vec<Job>> {
        let mut state = self.lock();
        loop {
            // Requests whose clients left while queued are dropped here, unrun.
            state.jobs.retain(|job| !job.is_cancelled());
            if !state.jobs.is_empty() {
                let batch = take_batch(&mut state.jobs, max_images);
                if !state.jobs.is_empty() {
                    // More is waiting: another idle replica may take it.
                    self.changed.notify_one();
                }
                return Some(batch);
            }
            if state.shutting_down {
                return None;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn replica_exited(&self) {
        self.lock().live_replicas -= 1;
    }
}

/// One replica's thread: runs batches until the queue is shut down and drained.
pub(crate) fn replica_loop<B: ImageOps>(
    replica: usize,
    pipeline: Pipeline<B>,
    queue: Arc<SharedQueue>,
    stats: Arc<ImageStats>,
    config: EngineConfig,
) {
    /// Counts the replica out however its thread ends.
    struct Exit(Arc<SharedQueue>);
    impl Drop for Exit {
        fn drop(&mut self) {
            self.0.replica_exited();
        }
    }
    let _exit = Exit(queue.clone());
    while let Some(batch) = queue.next_batch(config.max_batch_images) {
        let batch: Vec<Job> = batch.into_iter().filter(Job::start).collect();
        if !batch.is_empty() {
            stats.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
            run_batch(replica, &pipeline, batch, &stats);
        }
    }
}

/// Runs one batch and answers its requests. A failure (or a panic: a bug, a backend fault)
/// fails this batch's requests only; the pipeline is read-only, so the next batch is sound.
fn run_batch<B: ImageOps>(
    replica: usize,
    pipeline: &Pipeline<B>,
    batch: Vec<Job>,
    stats: &ImageStats,
) {
    let started = Instant::now();
    let members = batch.len();
    stats.running.fetch_add(members, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .batched_requests
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let requests: Vec<_> = batch.iter().map(|job| &job.request).collect();
    let mut last_step_member = usize::MAX;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        generate_batch(pipeline, &requests, &mut |member| {
            // Asked once per live member before each step: count a step at the first.
            if member <= last_step_member {
                stats.steps.fetch_add(1, Ordering::Relaxed);
            }
            last_step_member = member;
            batch[member].is_cancelled()
        })
    }));
    let outcome = match run {
        Ok(Ok(images)) => Ok(images),
        Ok(Err(e)) => Err(format!("image generation failed: {e:#}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("image generation panicked: {what}"))
        }
    };
    // Counted out before anyone is answered: a client that has its images must not still
    // see its request as running.
    stats.running.fetch_sub(members, Ordering::Relaxed);
    match outcome {
        Ok(images) => {
            for (job, generated) in batch.into_iter().zip(images) {
                // None: cancelled mid-batch; its ticket has already counted it.
                let Some(generated) = generated else { continue };
                stats
                    .images
                    .fetch_add(generated.count as u64, Ordering::Relaxed);
                let output = ImageOutput {
                    width: generated.width,
                    height: generated.height,
                    images: (0..generated.count).map(|i| generated.rgb8(i)).collect(),
                    seed: job.request.seed,
                    queue_time: started.saturating_duration_since(job.arrival),
                    replica,
                };
                job.finish(Ok(output));
            }
        }
        Err(message) => {
            tracing::error!(replica, "{message}");
            for job in batch {
                job.finish(Err(message.clone()));
            }
        }
    }
}
