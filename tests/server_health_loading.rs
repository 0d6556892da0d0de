//! `/health` is 503 while the model loads and 200 once it serves (what load balancers and
//! Kubernetes readiness probes rely on).

mod server_support;

use server_support::{raw_http, Server};
use std::time::{Duration, Instant};

#[test]
fn health_is_503_while_loading_then_200() {
    // A 0.5B-parameter model with dummy weights takes seconds to build on the CPU, and the
    // port opens before loading starts.
    let server = Server::spawn(&[
        "--model",
        "qwen2.5-0.5b",
        "--load-format",
        "dummy",
        "--device",
        "cpu",
        "--max-model-len",
        "256",
        "--kv-cache-memory-gb",
        "0.1",
    ]);
    let first = raw_http::get_status(&server.url("/health"));
    assert_eq!(first.ok(), Some(503), "health must be 503 while loading");
    let deadline = Instant::now() + Duration::from_secs(120);
    while raw_http::get_status(&server.url("/health")).ok() != Some(200) {
        assert!(Instant::now() < deadline, "never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And then it serves.
    assert_eq!(
        raw_http::get_status(&server.url("/v1/models")).ok(),
        Some(200)
    );
}
