//! Structured output over HTTP on the demo model: whatever the model would rather say, the
//! answer matches the requested JSON schema, regular expression or choice.

mod server_support;

use reqwest::Client;
use serde_json::{json, Value};
use server_support::{parse_sse, post_json, Server, MODEL};

async fn chat(client: &Client, server: &Server, extra: Value) -> (u16, Value) {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is a kiln?"}],
        "max_tokens": 64,
        "temperature": 0,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, r) = post_json(client, &server.url("/v1/chat/completions"), &body).await;
    if body["stream"] == json!(true) {
        let content: String = parse_sse(r.as_str().unwrap())
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        return (status, json!({"content": content}));
    }
    (status, r)
}

fn content(r: &Value) -> String {
    r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_requested_structure() {
    let server = Server::start(&[]);
    let client = Client::new();
    let schema = json!({
        "type": "object",
        "properties": {
            "material": {"enum": ["clay", "glass", "metal"]},
            "hot": {"type": "boolean"},
            "degrees": {"type": "integer", "minimum": 0, "maximum": 2000}
        },
        "required": ["material", "hot", "degrees"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    });
    let format = json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "kiln", "schema": schema}}});
    for sampling in [json!({}), json!({"temperature": 1.0, "seed": 3})] {
        let mut extra = format.clone();
        extra
            .as_object_mut()
            .unwrap()
            .extend(sampling.as_object().unwrap().clone());
        let (status, r) = chat(&client, &server, extra.clone()).await;
        assert_eq!(status, 200, "{r}");
        let text = content(&r);
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(["clay", "glass", "metal"].contains(&value["material"].as_str().unwrap()));
        assert!(value["hot"].is_boolean());
        assert!(
            (0..=2000).contains(&value["degrees"].as_i64().unwrap()),
            "{text}"
        );
        assert_eq!(value.as_object().unwrap().len(), 3);
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        // Streamed, the same text.
        extra["stream"] = json!(true);
        let (_, streamed) = chat(&client, &server, extra).await;
        assert_eq!(streamed["content"], text.as_str());
    }

    let options = ["a pottery oven", "a furnace", "unknown"];
    let (_, r) = chat(&client, &server, json!({"guided_choice": options})).await;
    assert!(options.contains(&content(&r).as_str()), "{r}");

    let (_, r) = chat(
        &client,
        &server,
        json!({"guided_regex": "[0-9]{3}-[0-9]{4}"}),
    )
    .await;
    let text = content(&r);
    assert!(
        text.len() == 8
            && text.chars().enumerate().all(|(i, c)| if i == 3 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }),
        "{text:?}"
    );

    let (_, r) = chat(
        &client,
        &server,
        json!({"response_format": {"type": "json_object"}, "max_tokens": 200}),
    )
    .await;
    let text = content(&r);
    assert!(text.starts_with('{'), "{text:?}");
    if r["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(&text).unwrap().is_object(),
            "{text}"
        );
    }

    // Completions take the same fields.
    let (_, r) = post_json(
        &client,
        &server.url("/v1/completions"),
        &json!({"model": MODEL, "prompt": "The answer is", "max_tokens": 8,
                "guided_choice": ["yes", "no"]}),
    )
    .await;
    assert!(
        ["yes", "no"].contains(&r["choices"][0]["text"].as_str().unwrap()),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_structures_are_400_on_response_format() {
    let server = Server::start(&[]);
    let client = Client::new();
    for bad in [
        json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "no-such-type"}}}}),
        json!({"response_format": {"type": "json_schema"}}),
        json!({"response_format": {"type": "yaml"}}),
        json!({"guided_regex": "(unclosed"}),
        json!({"guided_regex": "a", "guided_choice": ["b"]}),
        json!({"guided_choice": []}),
    ] {
        let (status, r) = chat(&client, &server, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {r}");
        assert_eq!(r["error"]["param"], "response_format", "{r}");
    }
    let (status, _) = chat(
        &client,
        &server,
        json!({"response_format": {"type": "text"}}),
    )
    .await;
    assert_eq!(status, 200);
}

/// vLLM's `guided_grammar` (a Lark grammar) and its newer `structured_outputs` object
/// constrain the answer as the older fields do; malformed ones are 400s naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grammars_and_structured_outputs_constrain_the_answer() {
    let server = Server::start(&[]);
    let client = Client::new();
    let grammar = r#"start: "kiln " ("hot" | "cold") " " /[0-9]{2}/"#;
    let (status, r) = chat(&client, &server, json!({"guided_grammar": grammar})).await;
    assert_eq!(status, 200, "{r}");
    let text = content(&r);
    let (word, digits) = text
        .strip_prefix("kiln ")
        .and_then(|t| t.split_once(' '))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(["hot", "cold"].contains(&word), "{text:?}");
    assert!(
        digits.len() == 2 && digits.chars().all(|c| c.is_ascii_digit()),
        "{text:?}"
    );
    for (so, check) in [
        (json!({"choice": ["clay", "glass"]}), "choice"),
        (json!({"regex": "[a-c]{3}x"}), "regex"),
        (
            json!({"grammar": grammar, "disable_fallback": true}),
            "grammar",
        ),
        // GBNF, as vLLM's xgrammar backend takes it.
        (
            json!({"grammar": "root ::= kiln-word [0-9]{2}\nkiln-word ::= \"kiln \""}),
            "grammar",
        ),
        (
            json!({"json": {"type": "object", "properties": {"n": {"type": "integer"}},
                         "required": ["n"], "additionalProperties": false}}),
            "json",
        ),
    ] {
        let (status, r) = chat(&client, &server, json!({"structured_outputs": so})).await;
        assert_eq!(status, 200, "{check}: {r}");
        let text = content(&r);
        let ok = match check {
            "choice" => text == "clay" || text == "glass",
            "regex" => text.len() == 4 && text.ends_with('x'),
            "grammar" => text.starts_with("kiln "),
            _ => serde_json::from_str::<Value>(&text).is_ok_and(|v| v["n"].is_i64()),
        };
        assert!(ok, "{check}: {text:?}");
    }
    for bad in [
        json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
        json!({"structured_outputs": {"structural_tag": "x"}}),
        json!({"structured_outputs": {"choice": []}}),
        json!({"structured_outputs": "regex"}),
    ] {
        let (status, r) = chat(&client, &server, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {r}");
        assert_eq!(r["error"]["param"], "structured_outputs", "{r}");
    }
    let (status, r) = chat(
        &client,
        &server,
        json!({"guided_regex": "a", "structured_outputs": {"regex": "b"}}),
    )
    .await;
    assert_eq!(status, 400, "{r}");
}
