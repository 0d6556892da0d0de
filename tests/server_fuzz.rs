//! Mutated request bodies against a live server: every answer must be a success or a clean
//! OpenAI error (400 / 404 / 413 / 429 with the error JSON), never a 5xx, a dropped
//! connection or a dead engine. Seeded, so a failure replays. (This found an engine panic:
//! echo + logprobs requests preempted after their prompt scores were sent.)

mod server_support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Client;
use serde_json::{json, Value};
use server_support::{Server, MODEL};

const REQUESTS_PER_SEED: usize = 300;

fn seeds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/chat/completions",
            json!({"model": MODEL,
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0.5,
            "top_p": 0.9, "n": 1, "stop": ["x"], "logprobs": true, "top_logprobs": 2, "seed": 3,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "response_format": {"type": "json_object"}, "logit_bias": {"5": 1}}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "The cat", "max_tokens": 4,
            "echo": true, "logprobs": 2, "n": 2, "stop": "x", "best_of": 2,
            "guided_regex": "[a-z]+"}),
        ),
        (
            "/v1/responses",
            json!({"model": MODEL,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "instructions": "be", "max_output_tokens": 4, "temperature": 0.3,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "include": ["message.output_text.logprobs"], "top_logprobs": 1}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "The cat", "max_tokens": 3, "n": 2,
            "use_beam_search": true, "length_penalty": 0.7, "ignore_eos": true, "logprobs": 1}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 3, "n": 1, "best_of": 3,
            "temperature": 0.8, "prompt_logprobs": 2, "return_tokens_as_token_ids": true}),
        ),
        ("/tokenize", json!({"model": MODEL, "prompt": "hello"})),
        ("/detokenize", json!({"model": MODEL, "tokens": [1, 2, 3]})),
    ]
}

fn weird(rng: &mut StdRng) -> Value {
    let long = "x".repeat(1000);
    let choices = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(""),
        json!(long),
        json!("\u{0}"),
        json!("😀"),
        json!([]),
        json!([null]),
        json!([[]]),
        json!({}),
        json!({"a": {}}),
        json!([1, 2, 3]),
        json!("NaN"),
        json!(1e-300),
        json!(4096),
        json!(1_000_000_000),
        json!(vec!["x"; 100]),
    ];
    choices[rng.random_range(0..choices.len())].clone()
}

fn mutate(v: &Value, rng: &mut StdRng, depth: usize) -> Value {
    if rng.random_bool(0.25) || depth > 4 {
        return weird(rng);
    }
    match v {
        Value::Object(map) => {
            let mut map = map.clone();
            if !map.is_empty() && rng.random_bool(0.3) {
                let key = map
                    .keys()
                    .nth(rng.random_range(0..map.len()))
                    .unwrap()
                    .clone();
                map.remove(&key);
            }
            if !map.is_empty() {
                let key = map
                    .keys()
                    .nth(rng.random_range(0..map.len()))
                    .unwrap()
                    .clone();
                let new = mutate(&map[&key], rng, depth + 1);
                map.insert(key, new);
            }
            if rng.random_bool(0.1) {
                let keys = ["extra", "role", "type", "content", "n", "stream"];
                map.insert(keys[rng.random_range(0..keys.len())].into(), weird(rng));
            }
            Value::Object(map)
        }
        Value::Array(items) => {
            let mut items = items.clone();
            if !items.is_empty() {
                let i = rng.random_range(0..items.len());
                items[i] = mutate(&items[i], rng, depth + 1);
            }
            if rng.random_bool(0.2) {
                let times = rng.random_range(0..6);
                items = std::iter::repeat_n(items, times).flatten().collect();
            }
            Value::Array(items)
        }
        _ => weird(rng),
    }
}

/// Why an answer is not acceptable, if it is not.
fn problem(status: u16, text: &str) -> Option<String> {
    if ![200, 400, 404, 413, 429].contains(&status) {
        return Some(format!("status {status}"));
    }
    if status != 200 {
        let error: Value = serde_json::from_str(text).ok()?;
        let error = &error["error"];
        if !error["message"].is_string() || !error["type"].is_string() {
            return Some("not OpenAI's error JSON".into());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_get_answers_or_clean_errors() {
    let server = Server::start(&["--tool-call-parser", "hermes", "--max-num-seqs", "8"]);
    let client = Client::new();
    let seeds = seeds();
    let mut failures = Vec::new();
    // KILN_FUZZ_SEEDS=N runs seeds 0..N (3 in CI; more for a deeper local search).
    let num_seeds = std::env::var("KILN_FUZZ_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3u64);
    for seed in 0..num_seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        for i in 0..REQUESTS_PER_SEED {
            let (path, base) = &seeds[rng.random_range(0..seeds.len())];
            let mut body = mutate(base, &mut rng, 0);
            if rng.random_bool(0.15) {
                if let Some(map) = body.as_object_mut() {
                    map.insert("stream".into(), json!(true));
                }
            }
            let sent = client.post(server.url(path)).json(&body).send().await;
            let (status, text) = match sent {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.text().await.unwrap_or_else(|e| format!("<{e}>")))
                }
                Err(e) => (0, format!("<{e}>")),
            };
            if let Some(why) = problem(status, &text) {
                failures.push(format!(
                    "seed {seed} #{i} {path} {body}: {why}: {text:.300}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let health = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the engine survived");
}
