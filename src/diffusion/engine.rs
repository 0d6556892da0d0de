//! The image engine thread: owns the pipeline, queues requests, runs them in batches of
//! requests that share size, steps and guidance, and answers each on its ticket.
//! It knows nothing of HTTP; [`super::handle::ImageHandle`] is its only door.

use super::batch::generate_batch;
use super::handle::{ImageOutput, ImageStats, Job};
use super::pipeline::Pipeline;
use super::queue::take_batch;
use crate::backend::image_ops::ImageOps;
use crossbeam_channel::Receiver;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub(crate) enum Command {
    Submit(Job),
    /// Finish what is queued, then stop.
    Shutdown,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineConfig {
    pub max_batch_images: usize,
}

pub(crate) fn engine_loop<B: ImageOps>(
    pipeline: Pipeline<B>,
    rx: Receiver<Command>,
    stats: Arc<ImageStats>,
    config: EngineConfig,
) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut shutting_down = false;
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(cmd) => shutting_down |= apply(cmd, &mut queue),
                Err(_) => break,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            shutting_down |= apply(cmd, &mut queue);
        }
        // Requests whose clients left while queued are dropped here, unrun.
        queue.retain(|job| !job.is_cancelled());
        let batch: Vec<Job> = take_batch(&mut queue, config.max_batch_images)
            .into_iter()
            .filter(Job::start)
            .collect();
        if !batch.is_empty() {
            stats.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
            run_batch(&pipeline, batch, &stats);
        }
        if queue.is_empty() && shutting_down && rx.is_empty() {
            break;
        }
    }
}

/// Queues a request; true for the shutdown command.
fn apply(cmd: Command, queue: &mut VecDeque<Job>) -> bool {
    match cmd {
        Command::Submit(job) => {
            queue.push_back(job);
            false
        }
        Command::Shutdown => true,
    }
}

/// Runs one batch and answers its requests. A failure (or a panic: a bug, a backend fault)
/// fails this batch's requests only; the pipeline is read-only, so the next batch is sound.
fn run_batch<B: ImageOps>(pipeline: &Pipeline<B>, batch: Vec<Job>, stats: &ImageStats) {
    let started = Instant::now();
    stats.running.store(batch.len(), Ordering::Relaxed);
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
                };
                job.finish(Ok(output));
            }
        }
        Err(message) => {
            tracing::error!("{message}");
            for job in batch {
                job.finish(Err(message.clone()));
            }
        }
    }
    stats.running.store(0, Ordering::Relaxed);
}
