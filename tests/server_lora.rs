//! LoRA adapters over HTTP: listed by /v1/models with their base as `parent`, chosen by a
//! request's `model`, each answering as PEFT computes it; embeddings stay with the base.

mod server_support;

use reqwest::Client;
use serde_json::{json, Value};
use server_support::Server;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// PEFT's outputs for the fixture adapters.
fn lora_reference() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/lora/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_name_adapters_as_their_model() {
    let (fixtures, reference) = (FIXTURES, lora_reference());
    let base = format!("{fixtures}/llama");
    let adapter = format!("sql={fixtures}/lora/llama_all");
    let server = Server::start(&[
        "--model",
        &base,
        "--dtype",
        "float32",
        "--served-model-name",
        "base",
        "--lora-modules",
        &adapter,
    ]);
    let client = Client::new();
    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["base", "sql"]);
    assert_eq!(models["data"][1]["parent"], "base");
    assert!(models["data"][0].get("parent").is_none());

    let prompt = &reference["llama_all"]["prompts"][1];
    let (adapted, plain) = (
        completion_text(&client, &server, "sql", prompt).await,
        completion_text(&client, &server, "base", prompt).await,
    );
    assert_ne!(adapted, plain, "the adapter changes the answer");
    // The adapter's text is that of PEFT's greedy tokens.
    let want_ids = &prompt["greedy_ids"].as_array().unwrap()[..6];
    let detok: Value = client
        .post(server.url("/detokenize"))
        .json(&json!({"tokens": want_ids}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(adapted, detok["prompt"].as_str().unwrap());

    // /metrics has vLLM's adapter info series, naming how many adapters are loaded.
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kiln:lora_requests_info{max_lora=\"1\""),
        "{metrics}"
    );

    // Embeddings come from the base model; unknown names are 404 as before.
    for (path, body, status) in [
        ("/v1/embeddings", json!({"model": "sql", "input": "x"}), 400),
        (
            "/v1/completions",
            json!({"model": "nope", "prompt": "x"}),
            404,
        ),
    ] {
        let r = client
            .post(server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
}

/// Six greedy tokens of a completion of `prompt`'s ids by `model`, as text.
async fn completion_text(client: &Client, server: &Server, model: &str, prompt: &Value) -> String {
    let body = json!({"model": model, "prompt": prompt["prompt_ids"], "max_tokens": 6,
        "temperature": 0});
    let r = client
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], model);
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

async fn post_text(client: &Client, server: &Server, path: &str, body: Value) -> (u16, String) {
    let r = client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// With `--allow-runtime-lora-updating`, adapters come and go over HTTP (vLLM's endpoints
/// and answers); without it the endpoints say how to turn them on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_load_and_unload_over_http() {
    let (fixtures, reference) = (FIXTURES, lora_reference());
    let base = format!("{fixtures}/llama");
    let path = format!("{fixtures}/lora/llama_all");
    let client = Client::new();

    let locked = Server::start(&["--model", &base, "--served-model-name", "base"]);
    let (status, text) = post_text(
        &client,
        &locked,
        "/v1/load_lora_adapter",
        json!({"lora_name": "sql", "lora_path": path}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(text.contains("--allow-runtime-lora-updating"), "{text}");
    drop(locked);

    let server = Server::start(&[
        "--model",
        &base,
        "--dtype",
        "float32",
        "--served-model-name",
        "base",
        "--allow-runtime-lora-updating",
    ]);
    let load = json!({"lora_name": "sql", "lora_path": path});
    let (status, text) = post_text(&client, &server, "/v1/load_lora_adapter", load.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "Success: LoRA adapter 'sql' added successfully.");
    let (status, _) = post_text(&client, &server, "/v1/load_lora_adapter", load).await;
    assert_eq!(status, 400, "loaded twice");
    let (status, text) = post_text(
        &client,
        &server,
        "/v1/load_lora_adapter",
        json!({"lora_name": "gone", "lora_path": "/nonexistent/adapter"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("lora_path"), "{text}");

    let prompt = &reference["llama_all"]["prompts"][1];
    let adapted = completion_text(&client, &server, "sql", prompt).await;
    assert_ne!(
        adapted,
        completion_text(&client, &server, "base", prompt).await
    );
    let (status, text) = post_text(
        &client,
        &server,
        "/v1/unload_lora_adapter",
        json!({"lora_name": "sql"}),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (200, "Success: LoRA adapter 'sql' removed successfully.")
    );
    let r = client
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "sql", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "an unloaded adapter is no longer served");
    let (status, _) = post_text(
        &client,
        &server,
        "/v1/unload_lora_adapter",
        json!({"lora_name": "sql"}),
    )
    .await;
    assert_eq!(status, 404);
    // Loaded again, it answers as before.
    let (status, _) = post_text(
        &client,
        &server,
        "/v1/load_lora_adapter",
        json!({"lora_name": "sql", "lora_path": path}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        completion_text(&client, &server, "sql", prompt).await,
        adapted
    );
}
