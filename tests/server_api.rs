//! `kiln serve` over real HTTP on the demo model: every endpoint, both completion
//! endpoints streamed and not, and OpenAI's error shapes and status codes.

mod server_support;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use server_support::{metric, sse_events, Server, MODEL};

async fn post(client: &Client, url: String, body: Value) -> (StatusCode, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// The SSE payloads of `body` sent with `"stream": true`.
async fn streamed(client: &Client, url: String, body: &Value) -> Vec<Value> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    sse_events(client.post(url).json(&body).send().await.unwrap()).await
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is a kiln?"}],
        "temperature": 0,
        "max_tokens": 12,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_endpoints_answer() {
    let server = Server::start(&[]);
    let client = Client::new();
    let get = |path: &str| client.get(server.url(path)).send();

    let models: Value = get("/v1/models").await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    let card = get(&format!("/v1/models/{MODEL}")).await.unwrap();
    assert_eq!(card.status(), 200);
    assert_eq!(card.json::<Value>().await.unwrap(), models["data"][0]);
    // Names may hold slashes (`org/model`): the whole rest of the path is the name.
    let missing = get("/v1/models/org/no-such-model").await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "model_not_found", "{missing}");

    let version: Value = get("/version").await.unwrap().json().await.unwrap();
    assert_eq!(version["version"], kiln::version());

    let (status, tokens) = post(
        &client,
        server.url("/tokenize"),
        json!({"prompt": "The cat sat"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(tokens["count"], tokens["tokens"].as_array().unwrap().len());
    let (_, text) = post(
        &client,
        server.url("/detokenize"),
        json!({"tokens": tokens["tokens"]}),
    )
    .await;
    assert_eq!(text["prompt"], "The cat sat");
    let (_, chat_tokens) = post(
        &client,
        server.url("/tokenize"),
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert!(
        chat_tokens["count"].as_u64().unwrap() > 3,
        "template applied"
    );

    let spec: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} in openapi.json");
    }
    assert!(spec["components"]["schemas"]["ChatCompletionRequest"].is_object());

    let request_id = get("/version").await.unwrap();
    assert!(request_id.headers().contains_key("x-request-id"));
    let echoed = client
        .get(server.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");

    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "kiln:num_requests_running",
        "kiln:num_requests_waiting",
        "kiln:kv_cache_usage_perc",
        "kiln:prompt_tokens_total",
        "kiln:generation_tokens_total",
        "kiln:time_to_first_token_seconds_bucket",
        "kiln:inter_token_latency_seconds_bucket",
        "kiln:e2e_request_latency_seconds_bucket",
        "kiln:request_queue_time_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_follows_openai_schema() {
    let server = Server::start(&[]);
    let client = Client::new();
    let url = server.url("/v1/chat/completions");
    let (status, r) = post(&client, url.clone(), chat_body(json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], MODEL);
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    // The demo model knows this answer (models/demo/README.md).
    assert!(
        choice["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("A kiln is"),
        "{choice}"
    );
    assert_eq!(choice["finish_reason"], "length");
    let usage = &r["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + 12)
    );
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());

    // n = 2 with a seed: two choices, usage counts the prompt once.
    let (_, two) = post(
        &client,
        url.clone(),
        chat_body(json!({"n": 2, "temperature": 1.0, "seed": 5})),
    )
    .await;
    assert_eq!(two["choices"].as_array().unwrap().len(), 2);
    assert_eq!(two["choices"][1]["index"], 1);
    assert_eq!(two["usage"]["prompt_tokens"], usage["prompt_tokens"]);
    assert_eq!(two["usage"]["completion_tokens"], 24);
    let (_, again) = post(
        &client,
        url.clone(),
        chat_body(json!({"n": 2, "temperature": 1.0, "seed": 5})),
    )
    .await;
    assert_eq!(two["choices"], again["choices"], "seeded sampling repeats");

    // A stop string ends the choice with "stop" and is not included.
    let (_, stopped) = post(&client, url.clone(), chat_body(json!({"stop": [" hot"]}))).await;
    assert_eq!(stopped["choices"][0]["message"]["content"], "A kiln is a");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

    let (_, lp) = post(
        &client,
        url.clone(),
        chat_body(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 4})),
    )
    .await;
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content[0]["token"], "A");
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(content[0]["bytes"].is_array());
}

/// Clients send content as OpenAI's list of parts and system prompts as `developer`
/// messages; the demo's template takes strings and knows no developer role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_parts_and_developer_messages_work_with_a_string_template() {
    let server = Server::start(&[]);
    let client = Client::new();
    let url = server.url("/v1/chat/completions");
    let plain = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is a kiln?"}
    ]);
    let parts = json!([
        {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is a kiln?"}]}
    ]);
    let (status, a) = post(&client, url.clone(), chat_body(json!({"messages": plain}))).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = post(&client, url.clone(), chat_body(json!({"messages": parts}))).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["usage"]["prompt_tokens"], b["usage"]["prompt_tokens"]);

    // An assistant turn that only called a tool has null content.
    let tool_turn = json!([
        {"role": "user", "content": "What is a kiln?"},
        {"role": "assistant", "content": null,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "look_up", "arguments": "{}"}}]},
        {"role": "user", "content": "Go on."}
    ]);
    let (status, r) = post(
        &client,
        url.clone(),
        chat_body(json!({"messages": tool_turn})),
    )
    .await;
    assert_eq!(status, 200, "{r}");

    let image = json!([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/kiln.png"}}
    ]}]);
    let (status, error) = post(&client, url, chat_body(json!({"messages": image}))).await;
    assert_eq!(status, 400, "{error}");
    assert_openai_error(&error, "invalid_request_error", Some("messages"));
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("image_url"), "{message}");
}

/// A prefilled assistant message is continued, not answered: the prompt ends with its text
/// (no end of turn) and the model goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_final_message_continues_the_prefilled_answer() {
    let server = Server::start(&[]);
    let client = Client::new();
    let messages = json!([
        {"role": "user", "content": "What is a kiln?"},
        {"role": "assistant", "content": "A kiln is"}
    ]);
    let (status, open) = post(
        &client,
        server.url("/tokenize"),
        json!({"messages": messages, "continue_final_message": true,
               "add_generation_prompt": false}),
    )
    .await;
    assert_eq!(status, 200, "{open}");
    let ids: Vec<u32> = serde_json::from_value(open["tokens"].clone()).unwrap();
    let (_, text) = post(&client, server.url("/detokenize"), json!({"tokens": ids})).await;
    assert!(
        text["prompt"]
            .as_str()
            .unwrap()
            .ends_with("assistant\nA kiln is"),
        "{text}"
    );

    let body = chat_body(json!({"messages": messages, "continue_final_message": true,
                                "add_generation_prompt": false}));
    let (status, r) = post(&client, server.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 200, "{r}");
    let answer = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        !answer.is_empty() && !answer.starts_with("A kiln"),
        "{answer:?}"
    );

    let both = chat_body(json!({"messages": messages, "continue_final_message": true,
                                "add_generation_prompt": true}));
    let (status, error) = post(&client, server.url("/v1/chat/completions"), both).await;
    assert_eq!(status, 400);
    assert_openai_error(
        &error,
        "invalid_request_error",
        Some("continue_final_message"),
    );
}

/// vLLM's `continuous_usage_stats`: every chunk of generated text carries usage so far.
/// How many chunks there are depends on timing (a producer that falls behind the engine
/// merges increments, down to one chunk on a loaded machine), so each chunk's usage is
/// checked against the tokens delivered so far, counted by their logprobs entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_usage_stats_put_usage_on_every_chunk() {
    let server = Server::start(&[]);
    let client = Client::new();
    let chat_tokens = |c: &Value| {
        c["choices"][0]["logprobs"]["content"]
            .as_array()
            .map(Vec::len)
    };
    let text_tokens = |c: &Value| {
        c["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .map(Vec::len)
    };
    type Count = fn(&Value) -> Option<usize>;
    for (path, body, tokens_of) in [
        (
            "/v1/chat/completions",
            chat_body(json!({"logprobs": true})),
            chat_tokens as Count,
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "The cat", "max_tokens": 12, "temperature": 0,
                   "logprobs": 0}),
            text_tokens as Count,
        ),
    ] {
        let mut body = body;
        body["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
        let chunks = streamed(&client, server.url(path), &body).await;
        let mut delivered = 0;
        let mut text_chunks = 0;
        for chunk in chunks
            .iter()
            .filter(|c| !c["choices"].as_array().unwrap().is_empty())
            // The chat stream's opening role chunk comes before any output.
            .filter(|c| c["choices"][0]["delta"]["role"].is_null())
        {
            delivered += tokens_of(chunk).unwrap_or(0);
            text_chunks += 1;
            assert_eq!(
                chunk["usage"]["completion_tokens"].as_u64(),
                Some(delivered as u64),
                "{path}: {chunk}"
            );
        }
        assert!(text_chunks >= 1, "{path}");
        assert_eq!(delivered, 12, "{path}");
        let last = chunks.last().unwrap();
        assert_eq!(
            last["usage"]["completion_tokens"], 12,
            "the final usage chunk stays"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_forces_and_bans_tokens_and_bad_biases_are_400() {
    let server = Server::start(&[]);
    let client = Client::new();
    let url = server.url("/v1/completions");
    let body = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": "The cat", "max_tokens": 3,
                           "temperature": 0});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let (_, forced) = post(
        &client,
        url.clone(),
        body(json!({"logit_bias": {"100": 100}})),
    )
    .await;
    let (_, expected) = post(
        &client,
        server.url("/detokenize"),
        json!({"model": MODEL, "tokens": [100, 100, 100]}),
    )
    .await;
    assert_eq!(forced["choices"][0]["text"], expected["prompt"], "{forced}");

    let (_, plain) = post(&client, url.clone(), body(json!({"max_tokens": 1}))).await;
    let first = plain["choices"][0]["text"].as_str().unwrap().to_string();
    let (_, ids) = post(
        &client,
        server.url("/tokenize"),
        json!({"model": MODEL, "prompt": first}),
    )
    .await;
    let argmax = ids["tokens"][0].as_u64().unwrap();
    let (_, banned) = post(
        &client,
        url.clone(),
        body(json!({"max_tokens": 1, "logit_bias": {argmax.to_string(): -100}})),
    )
    .await;
    assert_ne!(banned["choices"][0]["text"], plain["choices"][0]["text"]);

    let chat = server.url("/v1/chat/completions");
    let (status, r) = post(
        &client,
        chat,
        chat_body(json!({"logit_bias": {"100": 100}})),
    )
    .await;
    assert_eq!(status, 200, "{r}");

    for bad in [
        json!({"logit_bias": {"cat": 1}}),
        json!({"logit_bias": {"100": 150}}),
        json!({"logit_bias": {"100": "high"}}),
        json!({"logit_bias": {"99999999": 1}}),
    ] {
        let (status, error) = post(&client, url.clone(), body(bad.clone())).await;
        assert_eq!(status, 400, "{bad} -> {error}");
        assert_openai_error(&error, "invalid_request_error", Some("logit_bias"));
    }
}

/// With tools offered and a tool-call parser on, an answer without call blocks comes back
/// as plain content, streamed or not (the demo model never writes `<tool_call>` by itself);
/// `tool_choice` `required` or a named function makes it write one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offered_tools_leave_plain_answers_as_content_and_forced_ones_are_calls() {
    for parser in [
        "hermes",
        "llama3_json",
        "qwen3_coder",
        "seed_oss",
        "glm45",
        "deepseek_v3",
        "deepseek_v31",
        "kimi_k2",
    ] {
        check_tools(parser).await;
    }
}

/// The checks above with one tool-call format.
async fn check_tools(parser: &str) {
    let server = Server::start(&["--tool-call-parser", parser]);
    let client = Client::new();
    let url = server.url("/v1/chat/completions");
    let tools = json!([{"type": "function", "function": {
        "name": "look_up", "description": "Looks a word up",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}]);
    let body = chat_body(json!({"tools": tools, "max_tokens": 16}));
    let (status, whole) = post(&client, url.clone(), body.clone()).await;
    assert_eq!(status, 200, "{whole}");
    let message = &whole["choices"][0]["message"];
    let content = message["content"].as_str().unwrap();
    assert!(!content.is_empty());
    assert!(message.get("tool_calls").is_none(), "{message}");
    assert_eq!(whole["choices"][0]["finish_reason"], "length");

    let chunks = streamed(&client, url.clone(), &body).await;
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content);
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    let last = &chunks.last().unwrap()["choices"][0];
    assert_eq!(last["finish_reason"], "length");

    // Forced calls are generated under a grammar: the answer is a call, whatever the
    // model would rather say.
    let word_tool = json!([{"type": "function", "function": {
        "name": "look_up",
        "parameters": {"type": "object", "properties": {"word": {"enum": ["kiln", "clay"]}},
                       "required": ["word"], "additionalProperties": false}}}]);
    for forced in [
        json!("required"),
        json!({"type": "function", "function": {"name": "look_up"}}),
    ] {
        let body = chat_body(json!({"tools": word_tool, "tool_choice": forced,
                                    "max_tokens": 256, "parallel_tool_calls": false}));
        let (status, r) = post(&client, url.clone(), body.clone()).await;
        assert_eq!(status, 200, "{r}");
        let choice = &r["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
        assert!(choice["message"]["content"].is_null(), "{r}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "look_up");
        // Kimi's template writes a call's id as `functions.NAME:INDEX` when it comes back.
        if parser == "kimi_k2" {
            assert_eq!(call["id"], "functions.look_up:0", "{r}");
        }
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(
            ["kiln", "clay"].contains(&args["word"].as_str().unwrap()),
            "{args}"
        );

        let chunks = streamed(&client, url.clone(), &body).await;
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(calls.len(), 1, "{chunks:?}");
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(
            calls[0]["function"]["arguments"],
            call["function"]["arguments"]
        );
        let last = &chunks.last().unwrap()["choices"][0];
        assert_eq!(last["finish_reason"], "tool_calls");
    }
    for (bad_tools, choice) in [
        (json!([]), json!("required")),
        (
            word_tool.clone(),
            json!({"type": "function", "function": {"name": "nope"}}),
        ),
    ] {
        let (status, error) = post(
            &client,
            url.clone(),
            chat_body(json!({"tools": bad_tools, "tool_choice": choice})),
        )
        .await;
        assert_eq!(status, 400, "{error}");
        assert_openai_error(&error, "invalid_request_error", Some("tool_choice"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_take_every_prompt_form() {
    let server = Server::start(&[]);
    let client = Client::new();
    let url = server.url("/v1/completions");
    let base = json!({"model": MODEL, "temperature": 0, "max_tokens": 5});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let (status, text) = post(&client, url.clone(), with(json!({"prompt": "The cat"}))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text["object"], "text_completion");
    let completion = text["choices"][0]["text"].as_str().unwrap().to_string();

    let (_, ids) = post(
        &client,
        server.url("/tokenize"),
        json!({"prompt": "The cat"}),
    )
    .await;
    let (_, by_ids) = post(&client, url.clone(), with(json!({"prompt": ids["tokens"]}))).await;
    assert_eq!(by_ids["choices"][0]["text"], completion.as_str());

    let (_, many) = post(
        &client,
        url.clone(),
        with(json!({"prompt": ["The cat", "A river"], "n": 2})),
    )
    .await;
    let choices = many["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    assert_eq!(
        choices[1]["text"],
        completion.as_str(),
        "greedy choices agree"
    );
    assert_eq!(many["usage"]["completion_tokens"], 20);

    let (_, echoed) = post(
        &client,
        url.clone(),
        with(json!({"prompt": "The cat", "echo": true})),
    )
    .await;
    assert_eq!(
        echoed["choices"][0]["text"],
        format!("The cat{completion}").as_str()
    );

    let (_, lp) = post(
        &client,
        url.clone(),
        with(json!({"prompt": "The cat", "logprobs": 2})),
    )
    .await;
    let logprobs = &lp["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 5);
    assert_eq!(logprobs["text_offset"][0], 0);
    assert!(logprobs["top_logprobs"][0].as_object().unwrap().len() <= 2);
    let joined: String = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(joined, completion);

    // echo + logprobs, as evaluation harnesses score a text: the prompt's tokens come first,
    // the first without a logprob; the generated token's entry equals the plain request's.
    let scored = with(json!({"prompt": "The cat", "max_tokens": 1, "echo": true, "logprobs": 1}));
    let (status, echoed) = post(&client, url.clone(), scored.clone()).await;
    assert_eq!(status, 200, "{echoed}");
    let prompt_len = ids["tokens"].as_array().unwrap().len();
    let lp = &echoed["choices"][0]["logprobs"];
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_logprobs.len(), prompt_len + 1);
    assert!(token_logprobs[0].is_null() && lp["top_logprobs"][0].is_null());
    for v in &token_logprobs[1..] {
        assert!(v.as_f64().unwrap() <= 0.0, "{lp}");
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert_eq!(
        token_logprobs[prompt_len], logprobs["token_logprobs"][0],
        "the generated token scores as without echo"
    );
    let chunks = streamed(&client, url.clone(), &scored).await;
    let first = &chunks[0]["choices"][0]["logprobs"];
    assert_eq!(first["token_logprobs"], lp["token_logprobs"]);

    let (_, long) = post(
        &client,
        url.clone(),
        with(json!({"prompt": "The cat", "max_tokens": 40, "ignore_eos": true})),
    )
    .await;
    assert_eq!(long["usage"]["completion_tokens"], 40);
    assert_eq!(long["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_match_the_non_streamed_answers() {
    let server = Server::start(&[]);
    let client = Client::new();
    let chat_url = server.url("/v1/chat/completions");
    let (_, whole) = post(&client, chat_url.clone(), chat_body(json!({"n": 2}))).await;
    let response = client
        .post(chat_url)
        .json(&chat_body(json!({
            "n": 2, "stream": true, "stream_options": {"include_usage": true}
        })))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let chunks = sse_events(response).await;
    let mut texts = [String::new(), String::new()];
    let mut finishes = [None, None];
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk["usage"].is_null(), "usage only on the last chunk");
        let choice = &chunk["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        texts[i].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        if let Some(f) = choice["finish_reason"].as_str() {
            finishes[i] = Some(f.to_string());
        }
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for i in 0..2 {
        assert_eq!(
            texts[i],
            whole["choices"][i]["message"]["content"].as_str().unwrap()
        );
        assert_eq!(finishes[i].as_deref(), Some("length"));
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    // Equal but for cached_tokens: the streamed request found the first one's prefix.
    for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(last["usage"][key], whole["usage"][key], "{key}");
    }

    // Completions stream, without usage: no `usage` key at all.
    let body = json!({"model": MODEL, "prompt": "The cat", "temperature": 0, "max_tokens": 6});
    let (_, whole) = post(&client, server.url("/v1/completions"), body.clone()).await;
    let chunks = streamed(&client, server.url("/v1/completions"), &body).await;
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

fn assert_openai_error(body: &Value, kind: &str, param: Option<&str>) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["param"].as_str(), param, "{body}");
    assert!(error.get("code").is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let server = Server::start(&["--max-request-body-bytes", "4096"]);
    let client = Client::new();
    let url = server.url("/v1/chat/completions");
    let cases = [
        (
            chat_body(json!({"temperature": "hot"})),
            Some("temperature"),
        ),
        (chat_body(json!({"temperature": -1})), Some("temperature")),
        (chat_body(json!({"top_p": 1.5})), Some("top_p")),
        (chat_body(json!({"max_tokens": -3})), Some("max_tokens")),
        (chat_body(json!({"n": 0})), Some("n")),
        (
            chat_body(json!({"top_logprobs": 30, "logprobs": true})),
            Some("top_logprobs"),
        ),
        (
            chat_body(json!({"no_such_field": 1})),
            Some("no_such_field"),
        ),
        (chat_body(json!({"messages": []})), Some("messages")),
        (chat_body(json!({"max_tokens": 5000})), None),
        (json!({"model": MODEL}), None),
    ];
    for (body, param) in cases {
        let (status, error) = post(&client, url.clone(), body.clone()).await;
        assert_eq!(status, 400, "{body} -> {error}");
        if param.is_some() {
            assert_openai_error(&error, "invalid_request_error", param);
        }
    }
    let broken = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);
    assert_openai_error(&broken.json().await.unwrap(), "invalid_request_error", None);

    let (status, error) = post(&client, url.clone(), chat_body(json!({"model": "gpt-4"}))).await;
    assert_eq!(status, 404);
    assert_openai_error(&error, "invalid_request_error", Some("model"));
    assert_eq!(error["error"]["code"], "model_not_found");

    let huge = "x".repeat(8192);
    let (status, error) = post(
        &client,
        url.clone(),
        chat_body(json!({"messages": [{"role": "user", "content": huge}]})),
    )
    .await;
    assert_eq!(status, 413);
    assert_openai_error(&error, "invalid_request_error", None);

    let missing = client.get(server.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // The server still answers after all that.
    let (status, _) = post(&client, url, chat_body(json!({}))).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_only() {
    let server = Server::start(&["--api-key", "sk-test"]);
    let client = Client::new();
    let url = server.url("/v1/models");
    for auth in [None, Some("Bearer wrong"), Some("sk-test")] {
        let mut request = client.get(&url);
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let ok = client
        .get(&url)
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let health = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "health needs no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&["--max-num-seqs", "1", "--max-queued-requests", "1"]);
    let client = Client::new();
    // Three choices are submitted back to back: at most one runs and one waits, so the
    // third finds the queue full whatever the engine thread did in between.
    let (status, body) = post(
        &client,
        server.url("/v1/completions"),
        json!({"model": MODEL, "prompt": "The cat", "max_tokens": 2000, "n": 3}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_openai_error(&body, "rate_limit_error", None);
    let response = client
        .post(server.url("/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "The cat", "max_tokens": 2000, "n": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    // The refused request's accepted choices were cancelled: the engine drains.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = client.get(server.url("/metrics")).send().await.unwrap();
        let text = text.text().await.unwrap();
        if metric(&text, "kiln:num_requests_running") + metric(&text, "kiln:num_requests_waiting")
            == 0.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cancelled choices still queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, _) = post(
        &client,
        server.url("/v1/completions"),
        json!({"model": MODEL, "prompt": "The cat", "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200);
}

/// `reasoning_effort` reaches the chat template as the variable gpt-oss's template reads
/// (an explicit `chat_template_kwargs` entry wins), and unknown efforts are 400s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_effort_reaches_the_chat_template() {
    let template = "{% if reasoning_effort == 'high' %}Think long and hard first. {% endif %}\
                    {% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
                    {% endfor %}<|im_start|>assistant\n";
    let server = Server::start(&["--chat-template", template]);
    let client = Client::new();
    let url = server.url("/v1/chat/completions");
    let messages = json!([{"role": "user", "content": "What is a kiln?"}]);
    let prompt_tokens = |r: &Value| r["usage"]["prompt_tokens"].as_u64().unwrap();
    let mut counts = Vec::new();
    for extra in [
        json!({}),
        json!({"reasoning_effort": "low"}),
        json!({"reasoning_effort": "high"}),
        json!({"reasoning_effort": "high", "chat_template_kwargs": {"reasoning_effort": "low"}}),
    ] {
        let mut body = json!({"messages": messages, "max_tokens": 1});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, r) = post(&client, url.clone(), chat_body(body)).await;
        assert_eq!(status, 200, "{r}");
        counts.push(prompt_tokens(&r));
    }
    assert_eq!(counts[0], counts[1]);
    assert!(counts[2] > counts[1], "{counts:?}");
    assert_eq!(counts[3], counts[1], "the template kwarg wins");

    let body = chat_body(json!({"messages": messages, "reasoning_effort": "extreme"}));
    let (status, error) = post(&client, url, body).await;
    assert_eq!(status, 400, "{error}");
    assert_openai_error(&error, "invalid_request_error", Some("reasoning_effort"));
}

/// `--speculative-config`: the same greedy completion as without it, streamed or not, and
/// the drafts counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_decoding_serves_the_same_text() {
    let ngram = r#"{"method": "ngram", "num_speculative_tokens": 3}"#;
    let plain = Server::start(&[]);
    let spec = Server::start(&["--speculative-config", ngram]);
    let client = Client::new();
    // The demo model's own answer, then its first words again: what follows them in the
    // prompt is what the model says next, so drafts from the prompt are kept.
    let body = json!({"model": MODEL,
                      "prompt": "A kiln is a hot oven for clay. The potter shapes a bowl on the wheel. A kiln is",
                      "temperature": 0, "max_tokens": 24, "ignore_eos": true});
    let (status, a) = post(&client, plain.url("/v1/completions"), body.clone()).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = post(&client, spec.url("/v1/completions"), body.clone()).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_eq!(b["usage"]["completion_tokens"], 24);
    let chunks = streamed(&client, spec.url("/v1/completions"), &body).await;
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, a["choices"][0]["text"].as_str().unwrap());
    let metrics = client.get(spec.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metric(&metrics, "kiln:spec_decode_num_draft_tokens_total") > 0.0);
    let accepted = metric(&metrics, "kiln:spec_decode_num_accepted_tokens_total");
    assert!(accepted > 0.0, "no draft was kept: {metrics}");
    // A bad config is refused at startup, not at the first request.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--speculative-config", r#"{"method": "medusa"}"#])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("medusa"));
}
