//! Sequence classifiers (`*ForSequenceClassification`: a decoder with a score head) against
//! transformers' logits on the qwen3_classifier fixture: through the engine (one rank and
//! sharded) and over HTTP (`POST /classify`, vLLM's endpoint); generation is refused.

mod common;
mod server_support;

use common::{engine_args, fixture, max_abs_diff, run_all};
use kiln::engine::params::Pooling;
use kiln::engine::SamplingParams;
use kiln::launch::build_engine;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Reference {
    labels: Vec<String>,
    prompts: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    logits: Vec<f32>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixture("qwen3_classifier").join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn scores() -> SamplingParams {
    SamplingParams {
        pooling: Some(Pooling {
            dimensions: None,
            normalize: false,
        }),
        ..SamplingParams::default()
    }
}

#[test]
fn classifier_logits_match_transformers_on_one_rank_and_sharded() {
    let r = reference();
    let dir = fixture("qwen3_classifier");
    for world in ["1", "2"] {
        let args = engine_args(&[
            "--model",
            dir.to_str().unwrap(),
            "--dtype",
            "float32",
            "--tensor-parallel-size",
            world,
        ]);
        let (mut engine, _) = build_engine(&args).unwrap();
        assert_eq!(engine.classifier().unwrap().labels, r.labels);
        let requests = r
            .prompts
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, c.prompt_ids.clone(), scores()))
            .collect();
        let outs = run_all(&mut engine, requests);
        for (i, case) in r.prompts.iter().enumerate() {
            let got = outs[&(i as u64)].embedding.clone().unwrap();
            let diff = max_abs_diff(&got, &case.logits);
            assert!(diff < 1e-4, "TP={world} prompt {i}: {diff}");
        }
        let err = engine
            .add_request(9, vec![3, 4], common::greedy(2))
            .unwrap_err();
        assert!(format!("{err}").contains("classifier"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_endpoint_returns_transformers_probabilities() {
    let r = reference();
    let dir = fixture("qwen3_classifier");
    let server = server_support::Server::start(&[
        "--model",
        dir.to_str().unwrap(),
        "--dtype",
        "float32",
        "--served-model-name",
        "judge",
    ]);
    let client = reqwest::Client::new();
    let ids: Vec<Value> = r.prompts.iter().map(|c| json!(c.prompt_ids)).collect();
    let resp = client
        .post(server.url("/classify"))
        .json(&json!({"model": "judge", "input": ids}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    for (i, case) in r.prompts.iter().enumerate() {
        let row = &body["data"][i];
        let max = case.logits.iter().copied().fold(f32::MIN, f32::max);
        let exps: Vec<f32> = case.logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let best = (0..exps.len())
            .max_by(|&a, &b| exps[a].total_cmp(&exps[b]))
            .unwrap();
        for (got, e) in row["probs"].as_array().unwrap().iter().zip(&exps) {
            assert!(
                (got.as_f64().unwrap() as f32 - e / sum).abs() < 1e-4,
                "{row}"
            );
        }
        assert_eq!(row["label"], r.labels[best].as_str());
        assert_eq!(row["num_classes"], 3);
    }
    let total: usize = r.prompts.iter().map(|c| c.prompt_ids.len()).sum();
    assert_eq!(body["usage"]["prompt_tokens"], total);
    // A classifier neither generates nor embeds; a generator does not classify.
    for (path, body) in [
        ("/v1/completions", json!({"model": "judge", "prompt": "x"})),
        ("/v1/embeddings", json!({"model": "judge", "input": "x"})),
    ] {
        let r = client
            .post(server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
    drop(server);
    let llama = fixture("llama");
    let generator = server_support::Server::start(&["--model", llama.to_str().unwrap()]);
    let r = client
        .post(generator.url("/classify"))
        .json(&json!({"model": "llama", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
