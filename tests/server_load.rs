//! Many clients at once: 256 concurrent streams all complete with the same greedy text as
//! one at a time, and clients that disconnect mid-stream leave no KV blocks behind.

mod server_support;

use futures_util::future::join_all;
use reqwest::Client;
use serde_json::{json, Value};
use server_support::{metric, sse_events, Server, MODEL};
use std::time::{Duration, Instant};

const PROMPTS: [&str; 8] = [
    "The cat",
    "A river town",
    "What is a kiln?",
    "The night sky",
    "Bread is",
    "The weather today",
    "A potter",
    "Hello",
];

fn body(i: usize, stream: bool) -> Value {
    json!({
        "model": MODEL,
        // Distinct prompts per request so prefix caching does not make them identical work.
        "prompt": format!("{} {i}", PROMPTS[i % PROMPTS.len()]),
        "temperature": 0,
        "max_tokens": 8,
        "stream": stream,
    })
}

async fn streamed_text(client: &Client, url: &str, body: Value) -> String {
    let response = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let chunks = sse_events(response).await;
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
    chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_equal_sequential_greedy_outputs() {
    const CLIENTS: usize = 256;
    let server = Server::start(&[]);
    // One connection per request, as independent clients would have.
    let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let url = server.url("/v1/completions");
    let mut alone = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let r: Value = client
            .post(&url)
            .json(&body(i, false))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        alone.push(r["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let together =
        join_all((0..CLIENTS).map(|i| streamed_text(&client, &url, body(i, true)))).await;
    for i in 0..CLIENTS {
        assert_eq!(together[i], alone[i], "request {i}");
    }
}

async fn metrics(client: &Client, server: &Server) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_clients_free_their_kv_blocks() {
    const CLIENTS: usize = 50;
    let server = Server::start(&[]);
    let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // Completions: their first chunk carries the first token (chat's is the role alone).
    let url = server.url("/v1/completions");
    let long = |i: usize| {
        json!({
            "model": MODEL,
            "prompt": format!("Tell me about the cat {i}"),
            "max_tokens": 1500, "ignore_eos": true, "stream": true,
        })
    };
    let mut streams = join_all((0..CLIENTS).map(|i| client.post(&url).json(&long(i)).send())).await;
    // Each client reads its first chunk, so its request is generating, then hangs up.
    for r in streams.iter_mut() {
        let r = r.as_mut().unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.chunk().await.unwrap().is_some());
    }
    let busy = metrics(&client, &server).await;
    assert!(metric(&busy, "kiln:kv_cache_usage_perc") > 0.0, "{busy}");
    drop(streams);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = metrics(&client, &server).await;
        let idle = metric(&m, "kiln:kv_cache_usage_perc") == 0.0
            && metric(&m, "kiln:num_requests_running") == 0.0
            && metric(&m, "kiln:num_requests_waiting") == 0.0;
        if idle {
            // Cancelled, not run to the end: far fewer tokens than 50 x 1500.
            assert!(metric(&m, "kiln:generation_tokens_total") < (CLIENTS * 1500) as f64);
            // The engine thread's time by phase: every phase ran, and the forward passes
            // are the model's share, not the host's.
            let phase = |p: &str| {
                metric(
                    &m,
                    &format!("kiln:engine_loop_seconds_total{{phase=\"{p}\"}}"),
                )
            };
            for p in ["commands", "host", "model", "deliver"] {
                assert!(phase(p) > 0.0, "{p}: {m}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "KV blocks still in use:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
