//! vLLM's request extras over HTTP on the demo model: `allowed_token_ids`, `bad_words`,
//! `truncate_prompt_tokens`, `cache_salt`, `priority` (with `--scheduling-policy priority`)
//! and `return_tokens_as_token_ids`, in completions and chat, with the errors vLLM gives for
//! values it refuses. (The priority order itself is tested in the scheduler's unit tests.)

mod server_support;

use reqwest::Client;
use serde_json::{json, Value};
use server_support::{parse_sse, post_json, Server, MODEL};

const PROMPT: &str = "The river town kept its kiln burning through the winter";

async fn complete(client: &Client, server: &Server, extra: Value) -> (u16, Value) {
    let mut body = json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post_json(client, &server.url("/v1/completions"), &body).await
}

/// The generated token ids, read from logprobs named `token_id:<id>`.
fn ids_of(tokens: &Value) -> Vec<u32> {
    tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t.as_str().unwrap();
            let id = name
                .strip_prefix("token_id:")
                .unwrap_or_else(|| panic!("{name}"));
            id.parse().unwrap()
        })
        .collect()
}

async fn completion_ids(client: &Client, server: &Server, extra: Value) -> Vec<u32> {
    let mut extra = extra;
    let fields = extra.as_object_mut().unwrap();
    fields.insert("logprobs".into(), json!(0));
    fields.insert("return_tokens_as_token_ids".into(), json!(true));
    let (status, r) = complete(client, server, extra).await;
    assert_eq!(status, 200, "{r}");
    ids_of(&r["choices"][0]["logprobs"]["tokens"])
}

async fn tokenize(client: &Client, server: &Server, text: &str) -> Vec<u32> {
    let body = json!({"model": MODEL, "prompt": text, "add_special_tokens": false});
    let (status, r) = post_json(client, &server.url("/tokenize"), &body).await;
    assert_eq!(status, 200, "{r}");
    serde_json::from_value(r["tokens"].clone()).unwrap()
}

fn error_param(r: &Value) -> &str {
    r["error"]["param"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_tokens_and_bad_words_shape_the_output() {
    let server = Server::start(&[]);
    let client = Client::new();
    let free = completion_ids(&client, &server, json!({})).await;
    assert_eq!(free.len(), 12);

    // Only two tokens allowed, neither of them the model's first choice.
    let allowed: Vec<u32> = (0..400u32).filter(|t| !free.contains(t)).take(2).collect();
    let got = completion_ids(&client, &server, json!({"allowed_token_ids": allowed})).await;
    assert!(
        !got.is_empty() && got.iter().all(|t| allowed.contains(t)),
        "{got:?}"
    );
    let (status, r) = complete(&client, &server, json!({"allowed_token_ids": [10_000_000]})).await;
    assert_eq!((status, error_param(&r)), (400, "allowed_token_ids"), "{r}");
    let (status, r) = complete(&client, &server, json!({"allowed_token_ids": []})).await;
    assert_eq!((status, error_param(&r)), (400, "allowed_token_ids"), "{r}");

    // Ban the text of the free output's third and fourth tokens: neither its form at the
    // start of a text nor after a space may appear in the new output.
    let (_, r) = post_json(
        &client,
        &server.url("/detokenize"),
        &json!({"model": MODEL, "tokens": &free[2..4]}),
    )
    .await;
    let word = r["prompt"].as_str().unwrap().trim().to_string();
    assert!(!word.is_empty(), "{r}");
    let banned = [
        tokenize(&client, &server, &word).await,
        tokenize(&client, &server, &format!(" {word}")).await,
    ];
    let got = completion_ids(&client, &server, json!({"bad_words": [word]})).await;
    for seq in &banned {
        assert!(
            !got.windows(seq.len()).any(|w| w == seq.as_slice()),
            "{got:?} contains {seq:?}"
        );
    }
    assert_ne!(got, free, "the ban changed nothing");
    let (status, r) = complete(&client, &server, json!({"bad_words": ["  "]})).await;
    assert_eq!((status, error_param(&r)), (400, "bad_words"), "{r}");

    // The same in chat, and streamed.
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8, "temperature": 0, "allowed_token_ids": allowed, "logprobs": true,
        "return_tokens_as_token_ids": true});
    let (status, r) = post_json(&client, &server.url("/v1/chat/completions"), &chat).await;
    assert_eq!(status, 200, "{r}");
    let tokens: Vec<Value> = r["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token"].clone())
        .collect();
    let chat_ids = ids_of(&Value::Array(tokens));
    assert!(chat_ids.iter().all(|t| allowed.contains(t)), "{chat_ids:?}");
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let (status, r) = post_json(&client, &server.url("/v1/chat/completions"), &streamed).await;
    assert_eq!(status, 200);
    let stream_ids: Vec<u32> = parse_sse(r.as_str().unwrap())
        .iter()
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|e| ids_of(&json!([e["token"]]))[0])
        .collect();
    assert_eq!(stream_ids, chat_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_are_cut_to_their_last_tokens() {
    let server = Server::start(&["--max-model-len", "256"]);
    let client = Client::new();
    let prompt_ids = tokenize(&client, &server, PROMPT).await;
    assert!(prompt_ids.len() > 6);
    let (status, r) = complete(&client, &server, json!({"truncate_prompt_tokens": 5})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], 5);
    // The same as sending the last five ids (BOS included in the count, as vLLM does).
    let full = {
        let body = json!({"model": MODEL, "prompt": PROMPT, "max_tokens": 1});
        post_json(&client, &server.url("/v1/completions"), &body)
            .await
            .1
    };
    let full_len = full["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let with_special = {
        let body = json!({"model": MODEL, "prompt": PROMPT, "add_special_tokens": true});
        post_json(&client, &server.url("/tokenize"), &body).await.1
    };
    let all: Vec<u32> = serde_json::from_value(with_special["tokens"].clone()).unwrap();
    assert_eq!(all.len(), full_len);
    let tail = &all[all.len() - 5..];
    let (status, direct) = complete(&client, &server, json!({"prompt": tail})).await;
    assert_eq!(status, 200);
    assert_eq!(r["choices"][0]["text"], direct["choices"][0]["text"]);
    // Longer than the prompt: nothing cut. -1: as much as leaves room for max_tokens.
    let (_, r) = complete(&client, &server, json!({"truncate_prompt_tokens": 200})).await;
    assert_eq!(
        r["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        full_len
    );
    let long = PROMPT.repeat(40);
    let (status, r) = complete(
        &client,
        &server,
        json!({"prompt": long, "truncate_prompt_tokens": -1, "max_tokens": 16}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], 240);
    // Chat: the rendered prompt is cut.
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": long}],
        "max_tokens": 4, "truncate_prompt_tokens": 30});
    let (status, r) = post_json(&client, &server.url("/v1/chat/completions"), &chat).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], 30);
    for bad in [json!(0), json!(-2), json!(257)] {
        let (status, r) = complete(&client, &server, json!({"truncate_prompt_tokens": bad})).await;
        assert_eq!(
            (status, error_param(&r)),
            (400, "truncate_prompt_tokens"),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_salts_keep_prefix_caches_apart() {
    let server = Server::start(&["--block-size", "4"]);
    let client = Client::new();
    let cached = |r: &Value| {
        r["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    let long = PROMPT.repeat(3);
    let run = |salt: Option<&str>| {
        let mut extra = json!({"prompt": long, "max_tokens": 2});
        if let Some(salt) = salt {
            extra["cache_salt"] = json!(salt);
        }
        extra
    };
    let (_, first) = complete(&client, &server, run(Some("alice"))).await;
    assert_eq!(cached(&first), 0);
    let (_, again) = complete(&client, &server, run(Some("alice"))).await;
    assert!(cached(&again) > 0, "{again}");
    // Another salt, and no salt, share nothing with alice's blocks.
    let (_, other) = complete(&client, &server, run(Some("bob"))).await;
    assert_eq!(cached(&other), 0, "{other}");
    let (_, plain) = complete(&client, &server, run(None)).await;
    assert_eq!(cached(&plain), 0, "{plain}");
    assert_eq!(first["choices"][0]["text"], other["choices"][0]["text"]);
    let (status, r) = complete(&client, &server, json!({"cache_salt": ""})).await;
    assert_eq!((status, error_param(&r)), (400, "cache_salt"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_other_than_zero_are_refused_and_token_ids_name_logprobs() {
    let server = Server::start(&[]);
    let client = Client::new();
    let (status, _) = complete(&client, &server, json!({"priority": 0})).await;
    assert_eq!(status, 200);
    let (status, r) = complete(&client, &server, json!({"priority": 5})).await;
    assert_eq!((status, error_param(&r)), (400, "priority"), "{r}");
    let prioritised = Server::start(&["--scheduling-policy", "priority"]);
    for priority in [5, -3] {
        let (status, r) = complete(&client, &prioritised, json!({"priority": priority})).await;
        assert_eq!(status, 200, "{r}");
    }
    // Token ids as names: the same tokens, and offsets that still count the text.
    let logprobs = json!({"logprobs": 2, "echo": true});
    let (_, by_text) = complete(&client, &server, logprobs.clone()).await;
    let mut by_id_req = logprobs;
    by_id_req["return_tokens_as_token_ids"] = json!(true);
    let (_, by_id) = complete(&client, &server, by_id_req).await;
    let (a, b) = (
        &by_text["choices"][0]["logprobs"],
        &by_id["choices"][0]["logprobs"],
    );
    assert_eq!(a["text_offset"], b["text_offset"]);
    assert_eq!(a["token_logprobs"], b["token_logprobs"]);
    let ids = ids_of(&b["tokens"]);
    let texts = a["tokens"].as_array().unwrap();
    for (id, text) in ids.iter().zip(texts) {
        let (_, r) = post_json(
            &client,
            &server.url("/detokenize"),
            &json!({"model": MODEL, "tokens": [id]}),
        )
        .await;
        assert_eq!(&r["prompt"], text);
    }
    let top = b["top_logprobs"][3].as_object().unwrap();
    assert!(top.keys().all(|k| k.starts_with("token_id:")), "{top:?}");
}
