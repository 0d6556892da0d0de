//! `kiln bench serve` against fake OpenAI servers whose streams have known timing, so every
//! metric has an exact expected value. The tokio clock is paused: time only moves when every
//! task waits on a timer, so the fake server's sleeps are the only time that passes and the
//! measured latencies are exact (and the tests take no real time).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use kiln::bench::serve::{run_benchmark, ServeBenchArgs};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Stream timing of the fake server: the first chunk after `FAST_TTFT` (even requests) or
/// `SLOW_TTFT` (odd ones), then one chunk every `GAP`.
const FAST_TTFT: u64 = 50;
const SLOW_TTFT: u64 = 150;
const GAP: u64 = 10;
const PROMPT_TOKENS: usize = 7;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ServeBenchArgs,
}

fn args(base: &str, extra: &[&str]) -> ServeBenchArgs {
    let mut argv = vec![
        "bench",
        "--base-url",
        base,
        "--model",
        "fake",
        "--no-progress",
    ];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

#[derive(Clone, Default)]
struct Fake {
    arrivals: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
enum Style {
    /// Text chunks, then a usage chunk, then `[DONE]`.
    WithUsage,
    /// Two-token chunks and no usage.
    NoUsage,
    /// Chat deltas, led by a role-only chunk sent at once.
    Chat,
    /// Three chunks, then the connection breaks.
    Broken,
}

fn event(payload: &Value) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

/// A body that sends `events` one after another, each after its delay.
fn timed_body(events: Vec<(u64, Result<Bytes, std::io::Error>)>) -> Body {
    let stream = futures_util::stream::unfold(events.into_iter(), |mut rest| async move {
        let (delay_ms, item) = rest.next()?;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        Some((item, rest))
    });
    Body::from_stream(stream)
}

fn stream(fake: &Fake, body: &Value, style: Style) -> Response {
    let arrival = fake.arrivals.fetch_add(1, Ordering::SeqCst);
    let first = if arrival.is_multiple_of(2) {
        FAST_TTFT
    } else {
        SLOW_TTFT
    };
    let chunks = body["max_tokens"]
        .as_u64()
        .or(body["max_completion_tokens"].as_u64())
        .unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    let mut events: Vec<(u64, Result<Bytes, std::io::Error>)> = Vec::new();
    if let Style::Chat = style {
        events.push((
            0,
            Ok(event(
                &json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
            )),
        ));
    }
    for i in 0..chunks {
        let delay = if i == 0 { first } else { GAP };
        let payload = match style {
            Style::Chat => json!({"choices": [{"index": 0, "delta": {"content": "tok"}}]}),
            _ => json!({"choices": [{"index": 0, "text": " tok"}]}),
        };
        events.push((delay, Ok(event(&payload))));
        if matches!(style, Style::Broken) && i == 2 {
            events.push((GAP, Err(std::io::Error::other("server fell over"))));
            return Response::new(timed_body(events));
        }
    }
    if !matches!(style, Style::NoUsage) {
        let usage = json!({"choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": chunks}});
        events.push((0, Ok(event(&usage))));
    }
    events.push((0, Ok(Bytes::from_static(b"data: [DONE]\n\n"))));
    let mut response = Response::new(timed_body(events));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
}

async fn with_usage(State(f): State<Fake>, Json(b): Json<Value>) -> Response {
    stream(&f, &b, Style::WithUsage)
}
async fn no_usage(State(f): State<Fake>, Json(b): Json<Value>) -> Response {
    stream(&f, &b, Style::NoUsage)
}
async fn chat(State(f): State<Fake>, Json(b): Json<Value>) -> Response {
    stream(&f, &b, Style::Chat)
}
async fn broken(State(f): State<Fake>, Json(b): Json<Value>) -> Response {
    stream(&f, &b, Style::Broken)
}
/// Every other request is refused with a 500.
async fn flaky(State(f): State<Fake>, Json(b): Json<Value>) -> Response {
    if !f.arrivals.load(Ordering::SeqCst).is_multiple_of(2) {
        f.arrivals.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::INTERNAL_SERVER_ERROR, "overloaded").into_response();
    }
    stream(&f, &b, Style::WithUsage)
}
/// Ignores `stream` and answers with one JSON document.
async fn plain(Json(_): Json<Value>) -> Response {
    Json(json!({"choices": [{"text": "all at once"}], "usage": {"prompt_tokens": 1, "completion_tokens": 3}})).into_response()
}

/// Starts the fake server on a free port; returns its address.
async fn fake_server() -> String {
    let app = Router::new()
        .route("/usage/v1/completions", post(with_usage))
        .route("/nousage/v1/completions", post(no_usage))
        .route("/chat/v1/chat/completions", post(chat))
        .route("/broken/v1/completions", post(broken))
        .route("/flaky/v1/completions", post(flaky))
        .route("/plain/v1/completions", post(plain))
        .with_state(Fake::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() < 0.5,
        "{what}: {actual} != {expected}"
    );
}

#[tokio::test(start_paused = true)]
async fn every_metric_matches_the_known_stream_timing() {
    let base = fake_server().await;
    // 10 requests of 10 chunks: half with TTFT 50 ms, half 150 ms, then 9 gaps of 10 ms.
    let a = args(
        &format!("{base}/usage"),
        &[
            "--num-prompts",
            "10",
            "--input-len",
            "4",
            "--output-len",
            "10",
            "--goodput",
            "ttft:100",
            "--metric-percentiles",
            "50,90,99",
        ],
    );
    let report = run_benchmark(&a, std::future::pending()).await.unwrap();
    let m = &report.aggregates;
    assert_eq!((m.completed, m.failed), (10, 0));
    assert_eq!(m.total_output_tokens, 100);
    assert_eq!(
        m.total_input_tokens,
        10 * PROMPT_TOKENS,
        "prompt tokens come from usage"
    );
    // All requests go at once, so the run lasts as long as the slowest: 150 + 9 * 10 ms.
    close(m.duration_s * 1000.0, 240.0, "duration");
    close(m.ttft.mean_ms, 100.0, "mean TTFT");
    close(m.ttft.median_ms, 100.0, "median TTFT");
    close(m.ttft.std_ms, 50.0, "std TTFT");
    close(m.ttft.percentile(90.0).unwrap(), 150.0, "p90 TTFT");
    close(m.ttft.percentile(99.0).unwrap(), 150.0, "p99 TTFT");
    // TPOT = (E2EL - TTFT) / (10 - 1) = 90 / 9 ms for every request.
    close(m.tpot.mean_ms, 10.0, "mean TPOT");
    close(m.tpot.std_ms, 0.0, "std TPOT");
    close(m.itl.mean_ms, 10.0, "mean ITL");
    close(m.itl.percentile(99.0).unwrap(), 10.0, "p99 ITL");
    assert_eq!(
        report.outcomes.iter().map(|o| o.itl_s.len()).sum::<usize>(),
        90,
        "ITLs pooled"
    );
    close(m.e2el.mean_ms, 190.0, "mean E2EL");
    close(m.e2el.percentile(50.0).unwrap(), 190.0, "p50 E2EL");
    close(m.e2el.percentile(90.0).unwrap(), 240.0, "p90 E2EL");
    let per_s = |x: f64| x / 0.240;
    assert!(
        (m.request_throughput - per_s(10.0)).abs() < 0.1,
        "{}",
        m.request_throughput
    );
    assert!(
        (m.output_throughput - per_s(100.0)).abs() < 1.0,
        "{}",
        m.output_throughput
    );
    assert!((m.total_token_throughput - per_s(170.0)).abs() < 1.0);
    // Goodput: only the five fast requests meet TTFT <= 100 ms.
    assert_eq!(m.good_requests, Some(5));
    assert!((m.request_goodput.unwrap() - per_s(5.0)).abs() < 0.1);
}

#[tokio::test(start_paused = true)]
async fn concurrency_cap_and_poisson_arrivals_shape_the_run() {
    let base = fake_server().await;
    // Requests reusing a pooled connection can leave the runtime idle for a moment while
    // bytes are in flight; a paused clock would then leap to the next timer (the request
    // timeout). A 1 ms heartbeat bounds such leaps to 1 ms.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // Two at a time: four requests take two rounds, 140 ms (fast pair) + 240 ms (slow pair).
    let capped = args(
        &format!("{base}/usage"),
        &[
            "--num-prompts",
            "4",
            "--output-len",
            "10",
            "--max-concurrency",
            "2",
        ],
    );
    let report = run_benchmark(&capped, std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        report.aggregates.completed,
        4,
        "{:?}",
        report.error_counts()
    );
    let durations: Vec<f64> = report.outcomes.iter().map(|o| o.start_s * 1000.0).collect();
    assert!(
        report.aggregates.duration_s * 1000.0 >= 140.0 + 140.0 - 0.5,
        "{durations:?}"
    );
    // A finite rate starts requests at the seeded gamma offsets, not all at once.
    let offsets =
        kiln::bench::serve::arrivals::send_offsets(4, "20".parse().unwrap(), 1.0, 3).unwrap();
    let paced = args(
        &format!("{base}/usage"),
        &[
            "--num-prompts",
            "4",
            "--output-len",
            "2",
            "--request-rate",
            "20",
            "--seed",
            "3",
        ],
    );
    let report = run_benchmark(&paced, std::future::pending()).await.unwrap();
    for (outcome, offset) in report.outcomes.iter().zip(offsets) {
        // tokio timers have millisecond resolution and round up.
        let (at, planned) = (outcome.start_s * 1000.0, offset.as_secs_f64() * 1000.0);
        assert!(
            at >= planned && at < planned + 1.5,
            "started at {at} ms, planned {planned} ms"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn chunk_counts_stand_in_for_missing_usage_and_chat_role_chunks_are_not_tokens() {
    let base = fake_server().await;
    let a = args(
        &format!("{base}/nousage"),
        &[
            "--num-prompts",
            "2",
            "--input-len",
            "5",
            "--output-len",
            "4",
        ],
    );
    let m = run_benchmark(&a, std::future::pending())
        .await
        .unwrap()
        .aggregates;
    assert_eq!(
        m.total_output_tokens, 8,
        "one token per chunk without usage"
    );
    assert_eq!(
        m.total_input_tokens, 10,
        "the dataset's prompt length without usage"
    );
    let a = args(
        &format!("{base}/chat"),
        &[
            "--endpoint",
            "chat",
            "--num-prompts",
            "2",
            "--output-len",
            "4",
        ],
    );
    let m = run_benchmark(&a, std::future::pending())
        .await
        .unwrap()
        .aggregates;
    close(
        m.ttft.mean_ms,
        100.0,
        "TTFT waits for content, not the role chunk",
    );
    close(m.itl.mean_ms, 10.0, "chat ITL");
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_counted_and_reported_not_dropped() {
    let base = fake_server().await;
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out/result.json");
    let a = args(
        &format!("{base}/flaky"),
        &[
            "--num-prompts",
            "6",
            "--output-len",
            "3",
            "--result-json",
            json_path.to_str().unwrap(),
        ],
    );
    let report = run_benchmark(&a, std::future::pending()).await.unwrap();
    assert_eq!(
        (report.aggregates.completed, report.aggregates.failed),
        (3, 3)
    );
    assert_eq!(
        report
            .error_counts()
            .get("HTTP 500 Internal Server Error: overloaded"),
        Some(&3)
    );
    assert!(report.table().contains("Failed requests:"));
    kiln::bench::serve::write_outputs(&a, &report).unwrap();
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(written["failed"], 3);
    assert_eq!(written["requests"].as_array().unwrap().len(), 6);
    assert_eq!(written["config"]["num_prompts"], 6);
    assert!(written["p99_ttft_ms"].as_f64().unwrap() > 0.0);

    let a = args(
        &format!("{base}/broken"),
        &["--num-prompts", "2", "--output-len", "8"],
    );
    let report = run_benchmark(&a, std::future::pending()).await.unwrap();
    assert_eq!(report.aggregates.failed, 2);
    let error = report.outcomes[0].error.as_deref().unwrap();
    assert!(
        error.contains("broke off after 3 content chunks"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_does_not_stream_fails_every_request_with_a_clear_message() {
    let base = fake_server().await;
    let a = args(
        &format!("{base}/plain"),
        &["--num-prompts", "3", "--output-len", "3"],
    );
    let report = run_benchmark(&a, std::future::pending()).await.unwrap();
    assert_eq!(
        (report.aggregates.completed, report.aggregates.failed),
        (0, 3)
    );
    let error = report.outcomes[0].error.as_deref().unwrap();
    assert!(
        error.contains("did not stream") && error.contains("application/json"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_server_counts_failures_and_still_writes_the_json() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("result.json");
    let plot_path = dir.path().join("plot.png");
    let a = args(
        &format!("http://127.0.0.1:{port}"),
        &[
            "--num-prompts",
            "4",
            "--result-json",
            json_path.to_str().unwrap(),
            "--plot",
            plot_path.to_str().unwrap(),
        ],
    );
    let report = run_benchmark(&a, std::future::pending()).await.unwrap();
    assert_eq!(report.aggregates.failed, 4);
    let error = report.outcomes[0].error.as_deref().unwrap();
    assert!(
        error.contains(&format!("127.0.0.1:{port}")) && error.to_lowercase().contains("connect"),
        "{error}"
    );
    kiln::bench::serve::write_outputs(&a, &report).unwrap();
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(
        (written["completed"].as_u64(), written["failed"].as_u64()),
        (Some(0), Some(4))
    );
    assert!(
        std::fs::metadata(&plot_path).unwrap().len() > 0,
        "an empty plot is still drawn"
    );
}
