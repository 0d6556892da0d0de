//! `POST /v1/responses` over HTTP on the demo model: the same answer as the chat endpoint
//! for the same conversation, whole and as OpenAI's event stream, forced function calls as
//! `function_call` items, and 400s for what a stateless server cannot do.

mod server_support;

use reqwest::Client;
use serde_json::{json, Value};
use server_support::{post_json, Server, MODEL};

/// `event: name\ndata: {json}` pairs of a Responses stream (which has no `[DONE]`).
fn parse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("an event line and a data line");
            let name = name.strip_prefix("event: ").expect("an event line");
            let data = data.strip_prefix("data: ").expect("a data line");
            (name.to_string(), serde_json::from_str(data).expect("JSON"))
        })
        .collect()
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_answer_as_chat_does_whole_and_streamed() {
    let server = Server::start(&[]);
    let client = Client::new();
    let (status, chat) = post_json(
        &client,
        &server.url("/v1/chat/completions"),
        &json!({"model": MODEL, "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": "What is a kiln?"}]}),
    )
    .await;
    assert_eq!(status, 200, "{chat}");
    let expected = chat["choices"][0]["message"]["content"].as_str().unwrap();
    let body = json!({"model": MODEL, "instructions": "Answer briefly.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "What is a kiln?"}]}],
        "max_output_tokens": 12, "temperature": 0, "metadata": {"k": "v"}});
    let (status, r) = post_json(&client, &server.url("/v1/responses"), &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(output_text(&r), expected);
    assert_eq!(r["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
    assert_eq!(
        r["usage"]["output_tokens"],
        chat["usage"]["completion_tokens"]
    );
    assert_eq!(r["metadata"], json!({"k": "v"}));
    assert_eq!(r["store"], false);
    let cut_short = chat["choices"][0]["finish_reason"] == "length";
    assert_eq!(
        r["status"],
        if cut_short { "incomplete" } else { "completed" }
    );
    if cut_short {
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, text) = post_json(&client, &server.url("/v1/responses"), &streamed).await;
    assert_eq!(status, 200);
    let events = parse_events(text.as_str().unwrap());
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let last = if cut_short {
        "response.incomplete"
    } else {
        "response.completed"
    };
    assert_eq!(
        names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            last
        ]
    );
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, expected);
    let final_response = &events.last().unwrap().1["response"];
    assert_eq!(output_text(final_response), expected);
    assert_eq!(final_response["usage"], r["usage"]);
    assert_eq!(final_response["id"], events[0].1["response"]["id"]);
}

/// ChatML that shows calls and tool results (the demo model's own template has no `tool`
/// role).
const TOOL_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}{% for c in m.tool_calls or [] %}<tool_call>\n{{ c.function | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_calls_come_back_as_function_call_items() {
    let server = Server::start(&[
        "--tool-call-parser",
        "hermes",
        "--chat-template",
        TOOL_TEMPLATE,
    ]);
    let client = Client::new();
    let tools = json!([{"type": "function", "name": "look_up", "description": "Look a word up",
        "parameters": {"type": "object", "properties": {"word": {"type": "string", "enum": ["kiln", "clay"]}},
                       "required": ["word"], "additionalProperties": false}}]);
    let body = json!({"model": MODEL, "input": "Look up kiln.", "tools": tools,
        "tool_choice": "required", "parallel_tool_calls": false, "max_output_tokens": 256,
        "temperature": 0});
    let (status, r) = post_json(&client, &server.url("/v1/responses"), &body).await;
    assert_eq!(status, 200, "{r}");
    let call = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "function_call")
        .unwrap_or_else(|| panic!("no function_call in {r}"));
    assert_eq!(call["name"], "look_up");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(
        ["kiln", "clay"].contains(&args["word"].as_str().unwrap()),
        "{args}"
    );

    // The call and its output, sent back, reach the template as a turn with tool_calls and
    // a tool message.
    let follow_up = json!({"model": MODEL, "max_output_tokens": 4, "temperature": 0, "tools": tools,
        "input": [{"role": "user", "content": "Look up kiln."},
                  {"type": "function_call", "call_id": call["call_id"], "name": "look_up",
                   "arguments": call["arguments"]},
                  {"type": "function_call_output", "call_id": call["call_id"], "output": "a furnace"}]});
    let (status, r) = post_json(&client, &server.url("/v1/responses"), &follow_up).await;
    assert_eq!(status, 200, "{r}");
    let chat_turns = json!({"model": MODEL, "max_tokens": 4, "temperature": 0,
        "tools": [{"type": "function", "function": {"name": "look_up",
            "description": "Look a word up", "parameters": tools[0]["parameters"]}}],
        "messages": [{"role": "user", "content": "Look up kiln."},
            {"role": "assistant", "content": null, "tool_calls": [{"id": call["call_id"],
                "type": "function", "function": {"name": "look_up", "arguments": call["arguments"]}}]},
            {"role": "tool", "tool_call_id": call["call_id"], "name": "look_up", "content": "a furnace"}]});
    let (status, chat) = post_json(&client, &server.url("/v1/chat/completions"), &chat_turns).await;
    assert_eq!(status, 200, "{chat}");
    assert_eq!(r["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
    assert_eq!(
        output_text(&r),
        chat["choices"][0]["message"]["content"].as_str().unwrap()
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["tool_choice"] = json!({"type": "function", "name": "look_up"});
    let (_, text) = post_json(&client, &server.url("/v1/responses"), &streamed).await;
    let events = parse_events(text.as_str().unwrap());
    let done = events
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .unwrap_or_else(|| panic!("no arguments event in {text}"));
    assert_eq!(done.1["name"], "look_up");
    let last = &events.last().unwrap().1;
    assert_eq!(last["type"], "response.completed", "{last}");
    assert!(last["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .any(|item| item["type"] == "function_call" && item["arguments"] == done.1["arguments"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_format_and_refusals() {
    let server = Server::start(&[]);
    let client = Client::new();
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}},
        "required": ["n"], "additionalProperties": false});
    let (status, r) = post_json(
        &client,
        &server.url("/v1/responses"),
        &json!({"model": MODEL, "input": "A number, please.", "max_output_tokens": 64,
            "text": {"format": {"type": "json_schema", "name": "num", "schema": schema, "strict": true}}}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let value: Value = serde_json::from_str(&output_text(&r)).expect("JSON output");
    assert!(value["n"].is_i64(), "{value}");

    for (body, param) in [
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}),
            "input",
        ),
        (
            json!({"model": MODEL, "input": "x", "temperature": -1}),
            "temperature",
        ),
    ] {
        let (status, r) = post_json(&client, &server.url("/v1/responses"), &body).await;
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], param, "{r}");
    }
    let (status, _) = post_json(
        &client,
        &server.url("/v1/responses"),
        &json!({"model": "nope", "input": "x"}),
    )
    .await;
    assert_eq!(status, 404);
}
