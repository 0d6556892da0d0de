//! HTTP streaming throughput vs the engine in process, on the built-in demo model:
//! the same 64 concurrent greedy requests, timed end to end both ways.
//! `cargo bench --bench http_vs_engine` (prints tokens/s and the ratio; target >= 0.9).
//! The HTTP client runs on the same machine, so its cost is counted against HTTP.
//! Under `cargo test --all-targets` (no `--bench` argument) it runs one short round as a
//! smoke test.
//!
//! Rounds last at least [`MIN_ROUND`] in process: the output length grows (up to the demo
//! model's context) until they do. With 256 tokens a round took 0.11 s on an H100, where
//! the 64 requests' HTTP start-up alone is a visible share of it, so the ratio measured
//! that latency rather than streaming throughput.
//!
//! `-- --simulated-step-us N` swaps the demo model for a runner that waits N us per step
//! and picks tokens without computing (the engine, tokenizer, server and client are the
//! real ones). It shows whether the server keeps up with an engine whose steps leave the
//! CPU free, as a GPU's do, on a machine without one: the demo model on two cores says
//! only how much the server's work slows CPU compute sharing its cores.

use clap::Parser;
use futures_util::future::join_all;
#[path = "support/picking_runner.rs"]
mod picking_runner;

use kiln::engine::loop_times::LoopPhase;
use kiln::engine::{EngineConfig, EngineHandle, LlmEngine, SamplingParams};
use kiln::launch::{build_engine, EngineArgs};
use kiln::model::tokenizer::Tokenizer;
use kiln::server::state::{AppState, Served};
use kiln::server::{serve, ServeOptions};
use picking_runner::PickingRunner;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the `kiln` binary runs with (src/main.rs says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 64;
/// The shortest in-process round the full benchmark sizes its output length for.
const MIN_ROUND: Duration = Duration::from_secs(1);
/// Room the prompt and the stop token need in the demo model's context.
const PROMPT_ROOM: usize = 32;

/// (output tokens, rounds): the full benchmark, or a smoke run under `cargo test`.
fn shape() -> (usize, usize) {
    if std::env::args().any(|a| a == "--bench") {
        (256, 5)
    } else {
        (8, 1)
    }
}

/// Output tokens per request so that a round at `rate` tok/s lasts at least [`MIN_ROUND`],
/// never fewer than `at_least` and never past the model's `max_model_len`.
fn sized_output(rate: f64, at_least: usize, max_model_len: usize) -> usize {
    let wanted = (rate * MIN_ROUND.as_secs_f64() / CONCURRENCY as f64).ceil() as usize;
    wanted
        .max(at_least)
        .min(max_model_len.saturating_sub(PROMPT_ROOM).max(at_least))
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: EngineArgs,
}

/// The demo model's engine, or with `--simulated-step-us` one on a [`PickingRunner`] that waits each step.
fn engine() -> EngineHandle {
    let engine = match simulated_step() {
        None => {
            build_engine(&Wrapper::parse_from(["kiln"]).args)
                .expect("demo model")
                .0
        }
        Some(step) => simulated_engine(step),
    };
    EngineHandle::spawn(engine, 0)
}

/// `--simulated-step-us N` (or `=N`) from the command line.
fn simulated_step() -> Option<Duration> {
    let args: Vec<String> = std::env::args().collect();
    let value = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--simulated-step-us=")
            .map(str::to_string)
            .or_else(|| (a == "--simulated-step-us").then(|| args.get(i + 1).cloned())?)
    })?;
    let us: u64 = value
        .parse()
        .expect("--simulated-step-us takes microseconds");
    Some(Duration::from_micros(us))
}

/// An engine with the demo model's limits (64 sequences, 2048 tokens) on a [`PickingRunner`] that waits each step
/// and the fixture tokenizer (byte-level BPE, as real models have).
fn simulated_engine(step: Duration) -> LlmEngine {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let tokenizer = Arc::new(Tokenizer::from_dir(&dir).expect("fixture tokenizer"));
    let config = EngineConfig {
        max_model_len: 2048,
        max_num_seqs: CONCURRENCY,
        max_num_batched_tokens: 8192,
        block_size: 16,
        num_blocks: CONCURRENCY * 2048 / 16,
        enable_prefix_caching: true,
        seed: 0,
        scheduling_policy: Default::default(),
    };
    LlmEngine::new(config, Box::new(PickingRunner { step }), tokenizer, vec![])
        .expect("simulated engine")
}

fn prompt(i: usize) -> String {
    format!("The cat number {i} sat on the")
}

fn params(tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(tokens),
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

/// Runs each consumer as its own task and sums what they count. Tasks, not one joined
/// future: joined, every consumer runs on the thread that awaits the join, and on a machine
/// where the engine outruns one core's worth of client work (a GPU host) that thread,
/// not the server, sets the HTTP rate.
async fn spawned_sum<F>(consumers: impl Iterator<Item = F>) -> usize
where
    F: std::future::Future<Output = usize> + Send + 'static,
{
    let tasks: Vec<_> = consumers.map(tokio::spawn).collect();
    join_all(tasks).await.into_iter().map(|n| n.unwrap()).sum()
}

/// Generated tokens per second with every request submitted at once, in process.
async fn in_process(handle: &EngineHandle, tokens: usize) -> f64 {
    let start = Instant::now();
    let streams: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let ids = handle.tokenizer().encode(&prompt(i), true).unwrap();
            handle.submit(ids, params(tokens)).unwrap()
        })
        .collect();
    let tokens = spawned_sum(streams.into_iter().map(|mut s| async move {
        let mut n = 0;
        while let Some(Ok(out)) = s.next().await {
            n += out.token_ids.len();
            if out.finish_reason.is_some() {
                break;
            }
        }
        n
    }))
    .await;
    tokens as f64 / start.elapsed().as_secs_f64()
}

/// The same over HTTP: streamed completions, reading every chunk.
async fn over_http(client: &reqwest::Client, base: &str, tokens: usize) -> f64 {
    let start = Instant::now();
    let tokens = spawned_sum((0..CONCURRENCY).map(|i| {
        let (client, base) = (client.clone(), base.to_string());
        async move {
            let body = serde_json::json!({
                "model": "kiln-demo", "prompt": prompt(i), "max_tokens": tokens,
                "temperature": 0, "ignore_eos": true, "stream": true,
                "stream_options": {"include_usage": true},
            });
            let text = client
                .post(format!("{base}/v1/completions"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let last = text.rsplit("data: ").nth(1).unwrap().trim();
            let usage: serde_json::Value = serde_json::from_str(last).unwrap();
            usage["usage"]["completion_tokens"].as_u64().unwrap() as usize
        }
    }))
    .await;
    tokens as f64 / start.elapsed().as_secs_f64()
}

/// CPU time this process has used (user + system), from /proc (Linux; zero elsewhere).
/// Per token it shows each path's cost even when other work shares the cores.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    ticks / 100.0 // USER_HZ is 100 on every Linux we run on
}

/// CPU time, engine steps, the engine thread's time by loop phase, and wall time over one
/// phase's rounds.
struct Phase {
    cpu: f64,
    steps: u64,
    loop_times: [Duration; 4],
    wall: f64,
    started: Instant,
}

impl Phase {
    fn start(handle: &EngineHandle) -> Phase {
        Phase {
            cpu: cpu_seconds(),
            steps: handle.stats().steps.load(Ordering::Relaxed),
            loop_times: handle.stats().loop_times.snapshot(),
            wall: 0.0,
            started: Instant::now(),
        }
    }

    fn end(self, handle: &EngineHandle) -> Phase {
        let now = handle.stats().loop_times.snapshot();
        Phase {
            cpu: cpu_seconds() - self.cpu,
            steps: handle.stats().steps.load(Ordering::Relaxed) - self.steps,
            loop_times: std::array::from_fn(|i| now[i].saturating_sub(self.loop_times[i])),
            wall: self.started.elapsed().as_secs_f64(),
            started: self.started,
        }
    }

    /// Microseconds per step in each loop phase, and what is left of the wall time (the
    /// engine thread idle between rounds, or waiting for work).
    fn per_step(&self) -> String {
        let steps = self.steps.max(1) as f64;
        let mut parts: Vec<String> = LoopPhase::ALL
            .iter()
            .zip(&self.loop_times)
            .map(|(p, t)| format!("{} {:.1}", p.name(), t.as_secs_f64() / steps * 1e6))
            .collect();
        let busy: f64 = self.loop_times.iter().map(Duration::as_secs_f64).sum();
        parts.push(format!("other {:.1}", (self.wall - busy) / steps * 1e6));
        parts.join(", ")
    }
}

fn best(samples: &[f64]) -> f64 {
    samples.iter().cloned().fold(0.0, f64::max)
}

fn main() {
    kiln::backend::cpu::pin_thread_count();
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let handle = engine();
        let (at_least, rounds) = shape();
        let warm_rate = in_process(&handle, at_least).await; // warm-up
        let tokens = if rounds > 1 {
            sized_output(warm_rate, at_least, handle.info().max_model_len)
        } else {
            at_least
        };
        let mut engine_rates = Vec::new();
        let engine_phase = Phase::start(&handle);
        for _ in 0..rounds {
            engine_rates.push(in_process(&handle, tokens).await);
        }
        let engine_phase = engine_phase.end(&handle);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(AppState::new(None));
        let served = Served {
            engine: handle.clone(),
            names: vec!["kiln-demo".into()],
            root: "kiln-demo".into(),
            adapters: Default::default(),
            runtime_lora_max_rank: None,
            lora_updates: Default::default(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let options = ServeOptions {
            max_request_body_bytes: 1 << 20,
            shutdown_timeout: Duration::from_secs(5),
        };
        let server = tokio::spawn(serve(
            listener,
            state.clone(),
            async move { Ok(served) },
            async move {
                let _ = stop_rx.await;
            },
            options,
        ));
        while state.served().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let client = reqwest::Client::new();
        over_http(&client, &base, tokens).await; // warm-up
        let mut http_rates = Vec::new();
        let http_phase = Phase::start(&handle);
        for _ in 0..rounds {
            http_rates.push(over_http(&client, &base, tokens).await);
        }
        let http_phase = http_phase.end(&handle);
        let _ = stop_tx.send(());
        let _ = server.await;

        let (e, h) = (best(&engine_rates), best(&http_rates));
        println!(
            "{CONCURRENCY} concurrent x {tokens} tokens, best of {rounds}: \
             engine {e:.0} tok/s, HTTP streaming {h:.0} tok/s, ratio {:.3}",
            h / e
        );
        println!("engine samples {engine_rates:.0?}, HTTP samples {http_rates:.0?}");
        let tokens = (CONCURRENCY * tokens * rounds) as f64;
        println!(
            "CPU time per token (server, engine and client together): engine {:.1} us, \
             HTTP {:.1} us",
            engine_phase.cpu / tokens * 1e6,
            http_phase.cpu / tokens * 1e6
        );
        // Whether HTTP slows the engine's steps or shrinks its batches: a slower step
        // rate at the same tokens per step points at work on the engine thread, and its
        // loop phases say which (model, host work, delivery) grew.
        for (name, p) in [("engine", &engine_phase), ("HTTP", &http_phase)] {
            println!(
                "{name}: {} engine steps, {:.0} steps/s, {:.1} tokens per step; \
                 us per step: {}",
                p.steps,
                p.steps as f64 / p.wall,
                tokens / p.steps.max(1) as f64,
                p.per_step()
            );
        }
    });
}
