//! SIGTERM while requests stream: they finish, new ones are refused, the exit code is 0.

mod server_support;

use futures_util::future::join_all;
use reqwest::Client;
use serde_json::json;
use server_support::{parse_sse, Server, MODEL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    const CLIENTS: usize = 16;
    const TOKENS: usize = 300;
    let server = Server::start(&["--shutdown-timeout", "120"]);
    let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let url = server.url("/v1/completions");
    let body = json!({
        "model": MODEL, "prompt": "The cat", "max_tokens": TOKENS, "ignore_eos": true,
        "stream": true, "stream_options": {"include_usage": true},
    });
    let mut responses = join_all((0..CLIENTS).map(|_| client.post(&url).json(&body).send())).await;
    let mut first_chunks = Vec::new();
    for r in responses.iter_mut() {
        let r = r.as_mut().unwrap();
        assert_eq!(r.status(), 200);
        first_chunks.push(r.chunk().await.unwrap().expect("first chunk"));
    }
    server.signal("TERM");

    // New connections are refused (or, if one slipped in before the listener closed,
    // answered 503) while the streams run on.
    let mut refused = false;
    for _ in 0..200 {
        match client.post(&url).json(&body).send().await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(r) if r.status() == 503 => {
                refused = true;
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "new requests were still accepted after SIGTERM");

    for (r, first) in responses.into_iter().zip(first_chunks) {
        let rest = r.unwrap().text().await.expect("the stream completes");
        let chunks = parse_sse(&(String::from_utf8_lossy(&first).into_owned() + &rest));
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["completion_tokens"], TOKENS, "stream ran to its end");
    }
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{status}");
}
