//! Prometheus metrics of image generation (`kiln:image_*`): requests by outcome and
//! latency, observed by the handler; queue gauges and batch / image / step counters read
//! from the image engine's live stats at scrape time.

use crate::diffusion::handle::ImageStats;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

const SECONDS_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// How an image request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 4xx: bad parameters, unknown model.
    Invalid,
    /// 429: the queue was full.
    Rejected,
    /// The client went away first (counted by the engine).
    Cancelled,
    /// 5xx: generation failed, or the server was not ready.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Invalid => "invalid",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
        }
    }
}

pub struct ImageMetrics {
    requests: IntCounterVec,
    generation: Histogram,
    queue_time: Histogram,
    waiting: IntGauge,
    running: IntGauge,
    images: IntCounter,
    batches: IntCounter,
    batched_requests: IntCounter,
    steps: IntCounter,
    /// Serialises copying the engine's monotonic counters into ours.
    sync: Mutex<()>,
}

fn counter(name: &str, help: &str) -> prometheus::Result<IntCounter> {
    IntCounter::new(name, help)
}

impl ImageMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec()))
        };
        let m = ImageMetrics {
            requests: IntCounterVec::new(
                Opts::new("kiln:image_requests_total", "Image requests by outcome"),
                &["outcome"],
            )?,
            generation: histogram(
                "kiln:image_generation_seconds",
                "Arrival to encoded images, of successful image requests",
            )?,
            queue_time: histogram(
                "kiln:image_queue_time_seconds",
                "Arrival to the start of the request's batch",
            )?,
            waiting: IntGauge::new("kiln:image_requests_waiting", "Image requests queued")?,
            running: IntGauge::new(
                "kiln:image_requests_running",
                "Image requests in the batch being denoised",
            )?,
            images: counter("kiln:images_generated_total", "Images generated")?,
            batches: counter("kiln:image_batches_total", "UNet batches run")?,
            batched_requests: counter(
                "kiln:image_batched_requests_total",
                "Requests summed over batches (over kiln:image_batches_total: mean batch size)",
            )?,
            steps: counter(
                "kiln:image_denoising_steps_total",
                "Denoising steps run (one per batch step)",
            )?,
            sync: Mutex::new(()),
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.generation.clone()))?;
        registry.register(Box::new(m.queue_time.clone()))?;
        registry.register(Box::new(m.waiting.clone()))?;
        registry.register(Box::new(m.running.clone()))?;
        registry.register(Box::new(m.images.clone()))?;
        registry.register(Box::new(m.batches.clone()))?;
        registry.register(Box::new(m.batched_requests.clone()))?;
        registry.register(Box::new(m.steps.clone()))?;
        Ok(m)
    }

    pub fn record(&self, outcome: Outcome) {
        self.requests.with_label_values(&[outcome.label()]).inc();
    }

    /// A successful request's latency, end to end and in the queue.
    pub fn observe_success(&self, total_secs: f64, queue_secs: f64) {
        self.record(Outcome::Success);
        self.generation.observe(total_secs);
        self.queue_time.observe(queue_secs);
    }

    /// Brings gauges and engine counters up to the engine's values (before a scrape).
    pub fn sync(&self, stats: &ImageStats) {
        self.waiting
            .set(stats.waiting.load(Ordering::Relaxed) as i64);
        self.running
            .set(stats.running.load(Ordering::Relaxed) as i64);
        let Ok(_guard) = self.sync.lock() else { return };
        let cancelled = self
            .requests
            .with_label_values(&[Outcome::Cancelled.label()]);
        for (ours, engine) in [
            (&cancelled, &stats.cancelled),
            (&self.images, &stats.images),
            (&self.batches, &stats.batches),
            (&self.batched_requests, &stats.batched_requests),
            (&self.steps, &stats.steps),
        ] {
            let value = engine.load(Ordering::Relaxed);
            if value > ours.get() {
                ours.inc_by(value - ours.get());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn outcomes_and_engine_counters_are_exported() {
        let registry = Registry::new();
        let m = ImageMetrics::register(&registry).unwrap();
        m.observe_success(1.5, 0.2);
        m.record(Outcome::Invalid);
        let stats = ImageStats::default();
        stats.cancelled.store(2, Ordering::Relaxed);
        stats.waiting.store(3, Ordering::Relaxed);
        stats.images.store(7, Ordering::Relaxed);
        m.sync(&stats);
        m.sync(&stats);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "kiln:image_requests_total{outcome=\"success\"} 1",
            "kiln:image_requests_total{outcome=\"invalid\"} 1",
            "kiln:image_requests_total{outcome=\"cancelled\"} 2",
            "kiln:image_requests_waiting 3",
            "kiln:images_generated_total 7",
            "kiln:image_generation_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
