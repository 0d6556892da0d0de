//! `POST /v1/embeddings` over HTTP on the qwen3 fixture, against transformers' vectors.

mod server_support;

use base64::Engine as _;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use server_support::Server;

async fn post(client: &Client, url: String, body: Value) -> (StatusCode, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_endpoint_serves_transformers_vectors() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/qwen3");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/embeddings.json")).unwrap())
            .unwrap();
    let cases = reference["prompts"].as_array().unwrap();
    let server = Server::start(&["--model", dir, "--dtype", "float32"]);
    let model = "qwen3";
    let client = Client::new();
    let url = server.url("/v1/embeddings");
    let ids: Vec<Value> = cases.iter().map(|c| c["prompt_ids"].clone()).collect();
    let (status, r) = post(&client, url.clone(), json!({"model": model, "input": ids})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "list");
    let total: usize = cases
        .iter()
        .map(|c| c["prompt_ids"].as_array().unwrap().len())
        .sum();
    assert_eq!(r["usage"]["prompt_tokens"], total);
    for (i, case) in cases.iter().enumerate() {
        let got = floats(&r["data"][i]["embedding"]);
        let want = floats(&case["embedding"]);
        assert_eq!(r["data"][i]["index"], i);
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "input {i}: {diff}");
    }
    // base64: the same vector's little-endian f32 bytes; dimensions cut then normalise.
    let (status, b) = post(
        &client,
        url.clone(),
        json!({"model": model, "input": ids[0], "encoding_format": "base64", "dimensions": 16}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let got: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want = floats(&cases[0]["embedding_16"]);
    assert_eq!(got.len(), 16);
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4));
    // Bad input: OpenAI's error shape, the offending parameter named.
    for (body, param) in [
        (json!({"model": model, "input": []}), "input"),
        (
            json!({"model": model, "input": "x", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (
            json!({"model": model, "input": "x", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": model, "input": "x", "dimensions": 4096}),
            "dimensions",
        ),
        (json!({"model": model, "input": [[99999]]}), "input"),
        (json!({"model": model, "input": "x", "bogus": 1}), "bogus"),
    ] {
        let (status, e) = post(&client, url.clone(), body.clone()).await;
        assert_eq!(status, 400, "{body} -> {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        let named = e["error"]["param"].as_str().unwrap_or_default();
        assert!(
            named.contains(param) || e["error"]["message"].as_str().unwrap().contains(param),
            "{body} -> {e}"
        );
    }
    let (status, _) = post(&client, url, json!({"model": "other", "input": "x"})).await;
    assert_eq!(status, 404);
}
