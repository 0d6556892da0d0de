//! `kiln bench serve`: an HTTP load generator for kiln or any OpenAI-compatible streaming
//! server, reporting the metrics of vLLM's `bench serve` (TTFT, TPOT, ITL, E2EL,
//! throughputs, goodput) so numbers compare across engines.
//!
//! Requests are built up front (`dataset`), sent at seeded arrival times (`arrivals`),
//! optionally capped in flight by a semaphore, timed one by one (`client`), then summarised
//! (`metrics`) into a table and a JSON document (`report`) and optionally a PNG (`plot`).

pub mod arrivals;
pub mod client;
pub mod dataset;
pub mod metrics;
pub mod plot;
pub mod report;
mod sse;
pub mod stats;
pub mod timeline;

use anyhow::{bail, ensure, Context, Result};
use arrivals::RequestRate;
use client::{Endpoint, RequestOutcome, Target};
use dataset::{BenchRequest, RandomSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metrics::Slo;
use report::ServeReport;
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// Where prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    /// Random prompts of `--input-len` tokens (spread by `--range-ratio`).
    Random,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeBenchArgs {
    /// Root URL of the server (a trailing `/v1` is accepted).
    #[arg(
        long,
        env = "KILN_BENCH_SERVE_BASE_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub base_url: String,
    /// Model name sent with each request; when absent, the first of `GET /v1/models`.
    #[arg(long, env = "KILN_BENCH_SERVE_MODEL")]
    pub model: Option<String>,
    /// Which API to call.
    #[arg(long, value_enum, env = "KILN_BENCH_SERVE_ENDPOINT", default_value_t = Endpoint::Completions)]
    pub endpoint: Endpoint,
    #[arg(long, value_enum, env = "KILN_BENCH_SERVE_DATASET", default_value_t = Dataset::Random)]
    pub dataset: Dataset,
    /// Prompt length in tokens.
    #[arg(long, env = "KILN_BENCH_SERVE_INPUT_LEN", default_value_t = 1024)]
    pub input_len: usize,
    /// Output length in tokens (`max_tokens`).
    #[arg(long, env = "KILN_BENCH_SERVE_OUTPUT_LEN", default_value_t = 128)]
    pub output_len: usize,
    /// Lengths are drawn uniformly from `[len * (1 - R), len * (1 + R)]`.
    #[arg(long, env = "KILN_BENCH_SERVE_RANGE_RATIO", default_value_t = 0.0)]
    pub range_ratio: f64,
    #[arg(long, env = "KILN_BENCH_SERVE_NUM_PROMPTS", default_value_t = 1000)]
    pub num_prompts: usize,
    /// Requests per second (`inf`: all at once). Finite rates draw gamma-distributed gaps.
    #[arg(long, env = "KILN_BENCH_SERVE_REQUEST_RATE", default_value = "inf")]
    pub request_rate: RequestRate,
    /// Gamma shape of the arrival gaps: 1 is Poisson, < 1 burstier, > 1 more even.
    #[arg(long, env = "KILN_BENCH_SERVE_BURSTINESS", default_value_t = 1.0)]
    pub burstiness: f64,
    /// At most this many requests in flight.
    #[arg(long, env = "KILN_BENCH_SERVE_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,
    /// Seeds prompts and arrival times.
    #[arg(long, env = "KILN_BENCH_SERVE_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Ask the server to generate exactly `max_tokens` (the vLLM `ignore_eos` extension).
    #[arg(long, env = "KILN_BENCH_SERVE_IGNORE_EOS")]
    pub ignore_eos: bool,
    /// SLOs for goodput, in ms: e.g. `ttft:500,tpot:50,e2el:5000` (any subset).
    #[arg(long, env = "KILN_BENCH_SERVE_GOODPUT")]
    pub goodput: Option<Slo>,
    /// Percentiles reported for every latency metric.
    #[arg(long, env = "KILN_BENCH_SERVE_PERCENTILES", default_value = "50,90,99")]
    pub metric_percentiles: String,
    /// Write configuration, aggregates and every request as JSON here.
    #[arg(long, env = "KILN_BENCH_SERVE_RESULT_JSON")]
    pub result_json: Option<PathBuf>,
    /// Draw TTFT / TPOT histograms and output tokens/s over time into this PNG.
    #[arg(long, env = "KILN_BENCH_SERVE_PLOT")]
    pub plot: Option<PathBuf>,
    /// Bearer token for the server.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Tokenizer folder (tokenizer.json) for exact prompt lengths; without it prompts are
    /// built from words and the server's usage gives the token counts.
    #[arg(long, env = "KILN_BENCH_SERVE_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// Give up on one request after this many seconds.
    #[arg(
        long,
        env = "KILN_BENCH_SERVE_REQUEST_TIMEOUT",
        default_value_t = 3600.0
    )]
    pub request_timeout: f64,
    /// No progress bar.
    #[arg(long, env = "KILN_BENCH_SERVE_NO_PROGRESS")]
    pub no_progress: bool,
}

/// Runs the benchmark from the command line: table on stdout, JSON and plot when asked.
/// Fails (after writing the results) when no request succeeded.
pub fn run(args: ServeBenchArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        eprintln!("interrupted: writing the results of the requests that finished");
    };
    let report = runtime.block_on(run_benchmark(&args, interrupted))?;
    print!("{}", report.table());
    write_outputs(&args, &report)?;
    if report.aggregates.completed == 0 {
        let first = report
            .outcomes
            .iter()
            .find_map(|o| o.error.clone())
            .unwrap_or_default();
        bail!(
            "all {} requests failed; the first: {first}",
            report.outcomes.len()
        );
    }
    Ok(())
}

/// Writes `--result-json` and `--plot` when given.
pub fn write_outputs(args: &ServeBenchArgs, report: &ServeReport) -> Result<()> {
    if let Some(path) = &args.result_json {
        crate::bench::write_json(path, &report.to_json())?;
        eprintln!("results written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::draw(path, report).with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// Sends every request and summarises them. Failed requests are outcomes, not errors; when
/// `stop` resolves first, the unfinished requests are counted as failed.
pub async fn run_benchmark(
    args: &ServeBenchArgs,
    stop: impl Future<Output = ()>,
) -> Result<ServeReport> {
    ensure!(args.num_prompts > 0, "--num-prompts must be at least 1");
    ensure!(
        args.max_concurrency != Some(0),
        "--max-concurrency must be at least 1"
    );
    ensure!(
        args.request_timeout.is_finite() && args.request_timeout > 0.0,
        "--request-timeout must be a positive number of seconds"
    );
    let percentiles = stats::parse_percentiles(&args.metric_percentiles)?;
    let requests = build_requests(args)?;
    let offsets = arrivals::send_offsets(
        requests.len(),
        args.request_rate,
        args.burstiness,
        args.seed,
    )?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.request_timeout))
        .build()
        .context("building the HTTP client")?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => discover_model(&client, &args.base_url).await?,
    };
    let target = Target::new(
        &args.base_url,
        model,
        args.endpoint,
        args.api_key.clone(),
        args.ignore_eos,
    );
    let progress = progress_bar(requests.len() as u64, args.no_progress);
    let start = Instant::now();
    let outcomes = send_all(
        &client,
        &target,
        requests,
        offsets,
        args.max_concurrency,
        start,
        &progress,
        stop,
    )
    .await;
    let duration_s = start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let aggregates = metrics::aggregate(&outcomes, duration_s, &percentiles, args.goodput.as_ref());
    Ok(ServeReport {
        config: config_json(args, &target.model, &percentiles),
        aggregates,
        outcomes,
    })
}

fn build_requests(args: &ServeBenchArgs) -> Result<Vec<BenchRequest>> {
    let tokenizer = args
        .tokenizer
        .as_deref()
        .map(dataset::load_tokenizer)
        .transpose()?;
    let spec = RandomSpec {
        num_prompts: args.num_prompts,
        input_len: args.input_len,
        output_len: args.output_len,
        range_ratio: args.range_ratio,
        seed: args.seed,
    };
    match args.dataset {
        Dataset::Random => dataset::random_requests(&spec, tokenizer.as_ref()),
    }
}

/// Sends each request at its offset (and once a concurrency slot is free) and returns the
/// outcomes in request order.
#[allow(clippy::too_many_arguments)]
async fn send_all(
    client: &reqwest::Client,
    target: &Target,
    requests: Vec<BenchRequest>,
    offsets: Vec<Duration>,
    max_concurrency: Option<usize>,
    start: Instant,
    progress: &ProgressBar,
    stop: impl Future<Output = ()>,
) -> Vec<RequestOutcome> {
    let count = requests.len();
    let slots = max_concurrency.map(|c| Arc::new(Semaphore::new(c)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(count);
    for (index, (request, offset)) in requests.into_iter().zip(offsets).enumerate() {
        let (client, target, slots, tx) =
            (client.clone(), target.clone(), slots.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + offset).await;
            // The clock of a request starts once it may go, as in vLLM.
            let _slot = match &slots {
                Some(s) => Some(s.acquire().await.expect("the semaphore is never closed")),
                None => None,
            };
            let outcome = client::send(&client, &target, &request, index, start).await;
            let _ = tx.send(outcome);
        }));
    }
    drop(tx);
    let mut outcomes: Vec<Option<RequestOutcome>> = vec![None; count];
    let collect = async {
        while let Some(outcome) = rx.recv().await {
            if !outcome.success {
                progress.set_message(format!(
                    "{} failed",
                    outcomes.iter().flatten().filter(|o| !o.success).count() + 1
                ));
            }
            let index = outcome.index;
            outcomes[index] = Some(outcome);
            progress.inc(1);
        }
    };
    tokio::select! {
        _ = collect => {}
        _ = stop => {}
    }
    for task in &tasks {
        task.abort();
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            outcome.unwrap_or_else(|| {
                RequestOutcome::unfinished(index, "not finished: the run was interrupted")
            })
        })
        .collect()
}

/// Asks the server which model it serves.
async fn discover_model(client: &reqwest::Client, base_url: &str) -> Result<String> {
    let base = base_url.trim_end_matches('/');
    let url = format!("{}/v1/models", base.strip_suffix("/v1").unwrap_or(base));
    let models: serde_json::Value = client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("asking {url} for the model name (or pass --model)"))?
        .json()
        .await
        .with_context(|| format!("reading the model list from {url}"))?;
    models["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{url} lists no model; pass --model"))
}

fn progress_bar(len: u64, hidden: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} requests {msg} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The configuration recorded in the JSON (never the API key).
fn config_json(args: &ServeBenchArgs, model: &str, percentiles: &[f64]) -> serde_json::Value {
    json!({
        "base_url": args.base_url,
        "model": model,
        "endpoint": args.endpoint,
        "dataset": "random",
        "input_len": args.input_len,
        "output_len": args.output_len,
        "range_ratio": args.range_ratio,
        "num_prompts": args.num_prompts,
        "request_rate": args.request_rate.to_string(),
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "seed": args.seed,
        "ignore_eos": args.ignore_eos,
        "goodput": args.goodput,
        "percentiles": percentiles,
        "tokenizer": args.tokenizer,
        "kiln_version": crate::version(),
    })
}
