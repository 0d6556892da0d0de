//! Log-probability scoring over HTTP.
//! - vLLM's `use_beam_search`: the llama fixture's beams equal those of HF transformers' own
//!   beam search (tests/fixtures/llama/scoring_reference.json, written by
//!   scripts/scoring_reference.py), in order and with their cumulative log-probabilities;
//!   streamed and chat requests get the same beams; what a beam search would ignore is a 400.
//! - OpenAI's `best_of`: the `n` best per token of the `best_of` candidates that the same
//!   seed gives as `n = best_of` choices.
//! - vLLM's `prompt_logprobs`: each prompt token's logprob, rank and top alternatives equal
//!   transformers' (same reference file).

mod server_support;

use reqwest::Client;
use serde_json::{json, Value};
use server_support::{post_json, sse_events, Server};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama");

fn reference() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURE}/scoring_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn start() -> Server {
    Server::start(&[
        "--model",
        FIXTURE,
        "--dtype",
        "float32",
        "--served-model-name",
        "llama",
    ])
}

/// A choice's token ids (from `token_id:<id>` logprob names) and their summed logprobs.
fn beam_of(choice: &Value) -> (Vec<u64>, f64) {
    let logprobs = &choice["logprobs"];
    let ids = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t.as_str().unwrap();
            name.strip_prefix("token_id:").unwrap().parse().unwrap()
        })
        .collect();
    let total = logprobs["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_f64().unwrap())
        .sum();
    (ids, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beams_equal_transformers_beam_search() {
    let reference = reference();
    let width = reference["width"].as_u64().unwrap() as usize;
    let server = start();
    let client = Client::new();
    let url = server.url("/v1/completions");
    for case in reference["prompts"].as_array().unwrap() {
        let body = json!({
            "model": "llama", "prompt": case["prompt_ids"], "n": width,
            "use_beam_search": true, "max_tokens": reference["max_new_tokens"],
            "ignore_eos": true, "logprobs": 1, "return_tokens_as_token_ids": true,
        });
        let (status, r) = post_json(&client, &url, &body).await;
        assert_eq!(status, 200, "{r}");
        let choices = r["choices"].as_array().unwrap();
        assert_eq!(choices.len(), width);
        for (i, (choice, want)) in choices
            .iter()
            .zip(case["beams"].as_array().unwrap())
            .enumerate()
        {
            assert_eq!(choice["index"], i);
            let (ids, total) = beam_of(choice);
            let want_ids: Vec<u64> = want["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(ids, want_ids, "beam {i} of {}", case["prompt_ids"]);
            let want_total = want["cumulative_logprob"].as_f64().unwrap();
            assert!(
                (total - want_total).abs() < 1e-3,
                "beam {i}: {total} against {want_total}"
            );
            assert_eq!(choice["finish_reason"], "length");
        }
        let usage = &r["usage"];
        assert_eq!(usage["completion_tokens"], width * 8);
        assert_eq!(
            usage["prompt_tokens"].as_u64().unwrap() as usize,
            case["prompt_ids"].as_array().unwrap().len()
        );
    }

    // Streamed: each beam's whole text in one chunk, then its end.
    let case = &reference["prompts"][0];
    let body = |stream: bool| {
        json!({
            "model": "llama", "prompt": case["prompt_ids"], "n": 2,
            "use_beam_search": true, "max_tokens": 8, "ignore_eos": true, "stream": stream,
        })
    };
    let (_, whole) = post_json(&client, &url, &body(false)).await;
    let response = client.post(&url).json(&body(true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut texts = vec![String::new(); 2];
    for chunk in sse_events(response).await {
        for c in chunk["choices"].as_array().unwrap() {
            texts[c["index"].as_u64().unwrap() as usize] += c["text"].as_str().unwrap();
        }
    }
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, whole["choices"][i]["text"].as_str().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_beams_and_refusals() {
    let server = start();
    let client = Client::new();
    let chat = server.url("/v1/chat/completions");
    let body = json!({
        "model": "llama", "messages": [{"role": "user", "content": "The river town"}],
        "n": 3, "use_beam_search": true, "max_tokens": 5, "length_penalty": 0.5,
    });
    let (status, r) = post_json(&client, &chat, &body).await;
    assert_eq!(status, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap_or(""))
        .collect();
    assert!(
        texts[0] != texts[1] && texts[1] != texts[2],
        "distinct beams: {texts:?}"
    );

    let url = server.url("/v1/completions");
    for (extra, param) in [
        (json!({"n": 11}), "n"),
        (json!({"stop": ["x"]}), "stop"),
        (json!({"repetition_penalty": 1.3}), "repetition_penalty"),
        (json!({"logit_bias": {"5": 3}}), "logit_bias"),
    ] {
        let mut body = json!({
            "model": "llama", "prompt": "The river", "use_beam_search": true, "max_tokens": 4,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, r) = post_json(&client, &url, &body).await;
        assert_eq!(status, 400, "{extra}: {r}");
        assert_eq!(r["error"]["param"], param, "{r}");
    }
}

/// Mean logprob per token of a completion choice.
fn per_token(choice: &Value) -> f64 {
    let l = choice["logprobs"]["token_logprobs"].as_array().unwrap();
    l.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / l.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_of_returns_the_best_candidates_per_token() {
    let server = start();
    let client = Client::new();
    let url = server.url("/v1/completions");
    let body = |extra: Value| {
        let mut b = json!({
            "model": "llama", "prompt": "The river town", "max_tokens": 6, "ignore_eos": true,
            "temperature": 1.0, "seed": 11,
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // Choice i of a seeded request samples with seed + i, so these are best_of's candidates.
    let (status, all) = post_json(&client, &url, &body(json!({"n": 4, "logprobs": 0}))).await;
    assert_eq!(status, 200, "{all}");
    let mut ranked: Vec<(f64, String)> = all["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (per_token(c), c["text"].as_str().unwrap().to_string()))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert!(
        ranked[1].0 > ranked[2].0,
        "a tie would leave the pick open: {ranked:?}"
    );

    let (status, best) = post_json(&client, &url, &body(json!({"n": 2, "best_of": 4}))).await;
    assert_eq!(status, 200, "{best}");
    let choices = best["choices"].as_array().unwrap();
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, [ranked[0].1.as_str(), ranked[1].1.as_str()]);
    assert!(
        choices.iter().all(|c| c["logprobs"].is_null()),
        "not asked for"
    );
    assert_eq!(choices[1]["index"], 1);
    // All four candidates' tokens were generated.
    assert_eq!(best["usage"]["completion_tokens"], 24);

    for (extra, why) in [
        (json!({"n": 3, "best_of": 2}), "fewer than n"),
        (json!({"best_of": 3, "stream": true}), "streamed"),
        (json!({"best_of": 21}), "too many"),
    ] {
        let (status, r) = post_json(&client, &url, &body(extra)).await;
        assert_eq!(status, 400, "{why}: {r}");
        assert_eq!(r["error"]["param"], "best_of", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_logprobs_equal_transformers() {
    let reference = reference()["prompt_logprobs"].clone();
    let server = start();
    let client = Client::new();
    let url = server.url("/v1/completions");
    let body = json!({
        "model": "llama", "prompt": reference["prompt_ids"], "max_tokens": 1,
        "prompt_logprobs": reference["top"], "echo": true, "logprobs": 1,
    });
    let (status, r) = post_json(&client, &url, &body).await;
    assert_eq!(status, 200, "{r}");
    let scores = r["choices"][0]["prompt_logprobs"].as_array().unwrap();
    assert_eq!(
        scores.len(),
        reference["prompt_ids"].as_array().unwrap().len()
    );
    assert!(scores[0].is_null(), "nothing precedes the first token");
    for (got, want) in scores[1..]
        .iter()
        .zip(reference["scores"].as_array().unwrap())
    {
        let token = &got[want["token"].to_string()];
        let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4;
        assert!(
            close(&token["logprob"], &want["logprob"]),
            "{got} vs {want}"
        );
        assert_eq!(token["rank"], want["rank"], "{got} vs {want}");
        for (rank, alt) in want["top"].as_array().unwrap().iter().enumerate() {
            let entry = &got[alt[0].to_string()];
            assert!(close(&entry["logprob"], &alt[1]), "{got} vs {want}");
            assert_eq!(entry["rank"], rank + 1);
            assert!(entry["decoded_token"].is_string());
        }
    }
    // The echoed prompt's own logprobs keep `logprobs`' one alternative.
    let echoed = &r["choices"][0]["logprobs"]["top_logprobs"];
    assert!(echoed[1].as_object().unwrap().len() <= 1, "{echoed}");

    // Chat: the rendered prompt's scores, on the response.
    let chat = server.url("/v1/chat/completions");
    let body = json!({
        "model": "llama", "messages": [{"role": "user", "content": "The river town"}],
        "max_tokens": 1, "prompt_logprobs": 0,
    });
    let (status, r) = post_json(&client, &chat, &body).await;
    assert_eq!(status, 200, "{r}");
    let scores = r["prompt_logprobs"].as_array().unwrap();
    assert_eq!(
        scores.len() as u64,
        r["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        scores[1].as_object().unwrap().len(),
        1,
        "the prompt token alone"
    );

    // Not streamed, as vLLM has it.
    let streamed = json!({
        "model": "llama", "prompt": "The river", "prompt_logprobs": 1, "stream": true,
    });
    let (status, r) = post_json(&client, &url, &streamed).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "prompt_logprobs");
}
