//! Prometheus metrics (`GET /metrics`), with vLLM's names under the `kiln:` prefix.
//! Gauges and token counters are read from the engine's live stats at scrape time; the
//! latency histograms are observed by the server as outputs stream through it.

use crate::engine::handle::EngineStats;
use crate::engine::loop_times::LoopPhase;
use crate::engine::RequestOutput;
use crate::gpu::metrics::GpuGauges;
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0,
];
const TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5,
];

pub struct ServerMetrics {
    registry: Registry,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    preemptions: IntCounter,
    draft_tokens: IntCounter,
    accepted_draft_tokens: IntCounter,
    /// vLLM's `lora_requests_info`: one series naming the adapters in use.
    lora_info: GaugeVec,
    /// The engine thread's time by phase (`engine::loop_times`).
    loop_seconds: CounterVec,
    /// Serialises copying the engine's monotonic counters into ours.
    sync: Mutex<()>,
    success: IntCounterVec,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    /// Per-GPU NVML gauges, set by the server's GPU watch (none on the CPU).
    pub gpu: GpuGauges,
    /// Image generation (`kiln:image_*`), on a server that serves a diffusers pipeline.
    pub images: super::image_metrics::ImageMetrics,
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("static histogram options")
}

impl ServerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gpu = GpuGauges::register(&registry).expect("GPU metric names are unique");
        let images = super::image_metrics::ImageMetrics::register(&registry)
            .expect("image metric names are unique");
        let m = ServerMetrics {
            registry,
            gpu,
            images,
            running: IntGauge::new("kiln:num_requests_running", "Requests being generated")
                .expect("static"),
            waiting: IntGauge::new("kiln:num_requests_waiting", "Requests queued").expect("static"),
            kv_usage: Gauge::new(
                "kiln:kv_cache_usage_perc",
                "Fraction of KV-cache blocks in use (1 = full)",
            )
            .expect("static"),
            prompt_tokens: IntCounter::new("kiln:prompt_tokens_total", "Prompt tokens accepted")
                .expect("static"),
            generation_tokens: IntCounter::new("kiln:generation_tokens_total", "Tokens generated")
                .expect("static"),
            preemptions: IntCounter::new(
                "kiln:num_preemptions_total",
                "Sequences preempted for KV space",
            )
            .expect("static"),
            draft_tokens: IntCounter::new(
                "kiln:spec_decode_num_draft_tokens_total",
                "Tokens drafted by speculative decoding",
            )
            .expect("static"),
            accepted_draft_tokens: IntCounter::new(
                "kiln:spec_decode_num_accepted_tokens_total",
                "Drafted tokens the model confirmed",
            )
            .expect("static"),
            lora_info: GaugeVec::new(
                Opts::new(
                    "kiln:lora_requests_info",
                    "LoRA adapters in use by running and waiting requests (value: scrape time)",
                ),
                &["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
            )
            .expect("static"),
            loop_seconds: CounterVec::new(
                Opts::new(
                    "kiln:engine_loop_seconds_total",
                    "Engine thread time by phase: commands, host (scheduling, sampling, \
                     detokenizing), model (forward pass), deliver (outputs to requests)",
                ),
                &["phase"],
            )
            .expect("static"),
            sync: Mutex::new(()),
            success: IntCounterVec::new(
                Opts::new("kiln:request_success_total", "Finished requests"),
                &["finished_reason"],
            )
            .expect("static"),
            ttft: histogram(
                "kiln:time_to_first_token_seconds",
                "Arrival to first token",
                LATENCY_BUCKETS,
            ),
            itl: histogram(
                "kiln:inter_token_latency_seconds",
                "Time between output tokens",
                TOKEN_LATENCY_BUCKETS,
            ),
            e2e: histogram(
                "kiln:e2e_request_latency_seconds",
                "Arrival to last token",
                LATENCY_BUCKETS,
            ),
            queue: histogram(
                "kiln:request_queue_time_seconds",
                "Arrival to first scheduling",
                LATENCY_BUCKETS,
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.running.clone()),
            Box::new(m.waiting.clone()),
            Box::new(m.kv_usage.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.generation_tokens.clone()),
            Box::new(m.preemptions.clone()),
            Box::new(m.draft_tokens.clone()),
            Box::new(m.accepted_draft_tokens.clone()),
            Box::new(m.lora_info.clone()),
            Box::new(m.loop_seconds.clone()),
            Box::new(m.success.clone()),
            Box::new(m.ttft.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.e2e.clone()),
            Box::new(m.queue.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// The Prometheus text exposition, with the engine's gauges read now; `adapters` names
    /// the LoRA adapter slots (`(slot, name)`) for `kiln:lora_requests_info`.
    pub fn render(&self, stats: Option<&EngineStats>, adapters: &[(usize, String)]) -> String {
        if let Some(s) = stats {
            self.set_lora_info(s, adapters);
            self.running.set(s.running.load(Ordering::Relaxed) as i64);
            self.waiting.set(s.waiting.load(Ordering::Relaxed) as i64);
            self.kv_usage.set(s.kv_usage());
            if let Ok(_guard) = self.sync.lock() {
                catch_up(&self.prompt_tokens, s.prompt_tokens.load(Ordering::Relaxed));
                catch_up(
                    &self.generation_tokens,
                    s.generation_tokens.load(Ordering::Relaxed),
                );
                catch_up(&self.preemptions, s.preemptions.load(Ordering::Relaxed));
                catch_up(&self.draft_tokens, s.draft_tokens.load(Ordering::Relaxed));
                catch_up(
                    &self.accepted_draft_tokens,
                    s.accepted_draft_tokens.load(Ordering::Relaxed),
                );
                for phase in LoopPhase::ALL {
                    let counter = self.loop_seconds.with_label_values(&[phase.name()]);
                    let behind = s.loop_times.get(phase).as_secs_f64() - counter.get();
                    if behind > 0.0 {
                        counter.inc_by(behind);
                    }
                }
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl ServerMetrics {
    /// One `kiln:lora_requests_info` series: the names of the adapters running and waiting
    /// requests use, and how many adapters are loaded; its value the time of the scrape
    /// (vLLM's form).
    fn set_lora_info(&self, stats: &EngineStats, adapters: &[(usize, String)]) {
        let Ok(in_use) = stats.adapters_in_use.lock().map(|u| u.clone()) else {
            return;
        };
        let names = |slots: &[usize]| {
            slots
                .iter()
                .filter_map(|s| adapters.iter().find(|(slot, _)| slot == s))
                .map(|(_, name)| name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let (running, waiting) = (names(&in_use.0), names(&in_use.1));
        let loaded = adapters.len().to_string();
        self.lora_info.reset();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.lora_info
            .with_label_values(&[running.as_str(), waiting.as_str(), loaded.as_str()])
            .set(now);
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Advances a counter to the engine's value (engine counters only grow).
fn catch_up(counter: &IntCounter, engine_value: u64) {
    let ours = counter.get();
    if engine_value > ours {
        counter.inc_by(engine_value - ours);
    }
}

/// Latency bookkeeping of one choice as its outputs pass through the server.
pub struct RequestTimer {
    arrival: Instant,
    last_token: Option<Instant>,
}

impl RequestTimer {
    pub fn start(arrival: Instant) -> Self {
        RequestTimer {
            arrival,
            last_token: None,
        }
    }

    pub fn observe(&mut self, metrics: &ServerMetrics, out: &RequestOutput) {
        let now = Instant::now();
        if let Some(q) = out.queue_time {
            metrics.queue.observe(q.as_secs_f64());
        }
        let tokens = out.token_ids.len();
        if tokens > 0 {
            match self.last_token {
                None => {
                    metrics.ttft.observe((now - self.arrival).as_secs_f64());
                    // The first token's latency is TTFT; the rest of this increment came
                    // in the same step.
                    for _ in 1..tokens {
                        metrics.itl.observe(0.0);
                    }
                }
                Some(prev) => {
                    let gap = (now - prev).as_secs_f64() / tokens as f64;
                    for _ in 0..tokens {
                        metrics.itl.observe(gap);
                    }
                }
            }
            self.last_token = Some(now);
        }
        if let Some(reason) = out.finish_reason {
            metrics.e2e.observe((now - self.arrival).as_secs_f64());
            metrics.success.with_label_values(&[reason.as_str()]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FinishReason;

    #[test]
    fn renders_the_issue_names_and_counts_finishes() {
        let m = ServerMetrics::new();
        let stats = EngineStats::default();
        stats.prompt_tokens.store(12, Ordering::Relaxed);
        let mut timer = RequestTimer::start(Instant::now());
        timer.observe(
            &m,
            &RequestOutput {
                token_ids: vec![1, 2],
                finish_reason: Some(FinishReason::Length),
                ..Default::default()
            },
        );
        let text = m.render(Some(&stats), &[]);
        for name in [
            "kiln:num_requests_running",
            "kiln:num_requests_waiting",
            "kiln:kv_cache_usage_perc",
            "kiln:generation_tokens_total",
            "kiln:time_to_first_token_seconds_bucket",
            "kiln:inter_token_latency_seconds_count 1",
            "kiln:e2e_request_latency_seconds_count 1",
            "kiln:request_queue_time_seconds",
            "kiln:prompt_tokens_total 12",
            "kiln:request_success_total{finished_reason=\"length\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn lora_info_names_the_adapters_in_use_and_only_them() {
        let m = ServerMetrics::new();
        let stats = EngineStats::default();
        *stats.adapters_in_use.lock().unwrap() = (vec![0, 2], vec![1]);
        let adapters = [
            (0, "sql".to_string()),
            (1, "chat".into()),
            (2, "code".into()),
        ];
        let text = m.render(Some(&stats), &adapters);
        let series = "kiln:lora_requests_info{max_lora=\"3\",running_lora_adapters=\"sql,code\",\
                      waiting_lora_adapters=\"chat\"}";
        assert!(text.contains(series), "{text}");
        // The next scrape replaces the series rather than adding one.
        *stats.adapters_in_use.lock().unwrap() = (vec![], vec![]);
        let text = m.render(Some(&stats), &adapters);
        assert_eq!(
            text.matches("kiln:lora_requests_info{").count(),
            1,
            "{text}"
        );
        assert!(text.contains("running_lora_adapters=\"\""), "{text}");
    }
}
