//! `--reasoning-parser think` over HTTP: a chat template that opens the thinking block
//! makes the demo model's whole answer reasoning (it never writes `</think>`), returned as
//! `reasoning_content` with no content, whole and streamed.

mod server_support;

use reqwest::Client;
use serde_json::{json, Value};
use server_support::{parse_sse, post_json, Server, MODEL};

/// ChatML that opens a thinking block after the generation prompt, as DeepSeek-R1's does.
const THINKING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n<think>\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_comes_back_as_reasoning_content() {
    let split = Server::start(&[
        "--chat-template",
        THINKING_TEMPLATE,
        "--reasoning-parser",
        "think",
    ]);
    let plain = Server::start(&["--chat-template", THINKING_TEMPLATE]);
    let client = Client::new();
    let body = json!({
        "model": MODEL, "messages": [{"role": "user", "content": "What is a kiln?"}],
        "max_tokens": 16, "temperature": 0,
    });
    let url = |s: &Server| s.url("/v1/chat/completions");
    let (status, unsplit) = post_json(&client, &url(&plain), &body).await;
    assert_eq!(status, 200, "{unsplit}");
    let thinking = unsplit["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(!thinking.is_empty());
    assert!(unsplit["choices"][0]["message"]
        .get("reasoning_content")
        .is_none());

    let (status, r) = post_json(&client, &url(&split), &body).await;
    assert_eq!(status, 200, "{r}");
    let message = &r["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], thinking, "{r}");
    assert!(message["content"].is_null(), "{r}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, text) = post_json(&client, &url(&split), &streamed).await;
    let chunks: Vec<Value> = parse_sse(text.as_str().unwrap());
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, thinking);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "", "only the role chunk's empty content");
}

/// `--reasoning-parser harmony` on a model that does not write harmony (the demo model
/// answers in plain text): the output is decoded with its special tokens for the parser,
/// finds no channel, and comes back whole as the answer, as without the parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harmony_parsing_leaves_plain_output_as_the_answer() {
    let harmony = Server::start(&["--reasoning-parser", "harmony"]);
    let plain = Server::start(&[]);
    let client = Client::new();
    let body = json!({
        "model": MODEL, "messages": [{"role": "user", "content": "What is a kiln?"}],
        "max_tokens": 24, "temperature": 0,
    });
    let url = |s: &Server| s.url("/v1/chat/completions");
    let (status, want) = post_json(&client, &url(&plain), &body).await;
    assert_eq!(status, 200, "{want}");
    let (status, got) = post_json(&client, &url(&harmony), &body).await;
    assert_eq!(status, 200, "{got}");
    let answer = want["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!answer.is_empty());
    assert_eq!(got["choices"][0]["message"]["content"], answer, "{got}");
    assert!(got["choices"][0]["message"]["reasoning_content"].is_null());

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, text) = post_json(&client, &url(&harmony), &streamed).await;
    let chunks: Vec<Value> = parse_sse(text.as_str().unwrap());
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, answer);
}
