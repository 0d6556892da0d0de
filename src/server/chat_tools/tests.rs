use super::*;
use crate::model::reasoning::ReasoningFormat;
use crate::model::tool_calls::ToolCallFormat;
use serde_json::json;

fn think(prompt: &str) -> Reasoning {
    Reasoning {
        format: ReasoningFormat::Think,
        prompt: prompt.to_string(),
    }
}

/// Deltas of `text` streamed 3 characters at a time: (reasoning, content, call names).
fn streamed(s: &mut ChoiceStream, text: &str) -> (String, String, Vec<String>) {
    let (mut reasoning, mut content, mut calls) = (String::new(), String::new(), Vec::new());
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = chars.chunks(3).map(|c| c.iter().collect()).collect();
    for (i, piece) in pieces.iter().enumerate() {
        for d in s.deltas(piece, i == pieces.len() - 1) {
            reasoning.push_str(d.reasoning_content.as_deref().unwrap_or(""));
            content.push_str(d.content.as_deref().unwrap_or(""));
            for c in d.tool_calls.unwrap_or_default() {
                calls.push(format!("{}#{}", c.call.function.name, c.index));
            }
        }
    }
    (reasoning, content, calls)
}

const HERMES_TEMPLATE: &str =
    "{% if tools %}Wrap calls in <tool_call></tool_call> tags.{% endif %}{{ messages[0].content }}";

fn request(extra: serde_json::Value) -> ChatCompletionRequest {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(body).unwrap()
}

#[test]
fn calls_are_looked_for_when_offered_and_forced_with_a_grammar() {
    let hermes = ChatTemplate::new(HERMES_TEMPLATE, None, None).unwrap();
    let plain = ChatTemplate::new("{{ messages[0].content }}", None, None).unwrap();
    let tools = json!([
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "g"}}
    ]);
    let with = |choice: serde_json::Value| {
        let mut extra = json!({"tools": tools});
        if !choice.is_null() {
            extra["tool_choice"] = choice;
        }
        request(extra)
    };
    let found = Some(ToolCallFormat::Hermes);
    for choice in [json!(null), json!("auto")] {
        let plan = tool_plan(&with(choice), Some(&hermes), &|_| None).unwrap();
        assert_eq!((plan.parser.map(|p| p.format), plan.forced), (found, None));
    }
    assert_eq!(
        tool_plan(&with(json!("none")), Some(&hermes), &|_| None)
            .unwrap()
            .parser,
        None
    );
    assert_eq!(
        tool_plan(&request(json!({})), Some(&hermes), &|_| None)
            .unwrap()
            .parser,
        None
    );
    assert_eq!(
        tool_plan(&with(json!(null)), Some(&plain), &|_| None)
            .unwrap()
            .parser,
        None
    );

    let required = tool_plan(&with(json!("required")), Some(&hermes), &|_| None).unwrap();
    assert_eq!(required.parser.map(|p| p.format), found);
    let Some(Structure::Lark(grammar)) = required.forced else {
        panic!("a grammar")
    };
    assert!(
        grammar.contains(r#"("\n" call)*"#) && grammar.contains(r#""g""#),
        "{grammar}"
    );
    let named = tool_plan(
        &with(json!({"type": "function", "function": {"name": "g"}})),
        Some(&hermes),
        &|_| None,
    )
    .unwrap();
    let Some(Structure::Lark(grammar)) = named.forced else {
        panic!("a grammar")
    };
    assert!(
        !grammar.contains(r#""f""#) && !grammar.contains("call)*"),
        "{grammar}"
    );

    for (choice, template) in [
        (
            json!({"type": "function", "function": {"name": "nope"}}),
            &hermes,
        ),
        (json!("required"), &plain),
        (json!("sometimes"), &hermes),
    ] {
        let err = tool_plan(&with(choice), Some(template), &|_| None).unwrap_err();
        assert_eq!(err.body().error.param.as_deref(), Some("tool_choice"));
    }
    let err = tool_plan(
        &request(json!({"tools": [{"type": "function"}]})),
        Some(&hermes),
        &|_| None,
    )
    .unwrap_err();
    assert_eq!(err.body().error.param.as_deref(), Some("tools"));
}

#[test]
fn a_message_carries_the_calls_and_the_choice_finishes_with_tool_calls() {
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>";
    let (parsed, made_calls) = message(None, text, Some(&ToolCallFormat::Hermes.into()));
    assert!(made_calls);
    assert_eq!(parsed.content, None);
    assert_eq!(parsed.tool_calls.len(), 1);
    let call = &parsed.tool_calls[0];
    assert!(call.id.starts_with("call_"), "{}", call.id);
    assert_eq!(call.kind, "function");
    assert_eq!(call.function.name, "f");
    assert_eq!(call.function.arguments, r#"{"a":1}"#);
    let wire = serde_json::to_value(&parsed).unwrap();
    assert_eq!(wire["tool_calls"][0]["type"], "function");
    assert!(wire["content"].is_null());

    let (untouched, made_calls) = message(None, text, None);
    assert!(!made_calls);
    assert_eq!(untouched.content.as_deref(), Some(text));
    assert!(serde_json::to_value(&untouched)
        .unwrap()
        .get("tool_calls")
        .is_none());

    assert_eq!(
        finish_reason(Some("stop".into()), true).as_deref(),
        Some("tool_calls")
    );
    assert_eq!(
        finish_reason(Some("length".into()), true).as_deref(),
        Some("length")
    );
    assert_eq!(
        finish_reason(Some("stop".into()), false).as_deref(),
        Some("stop")
    );
}

#[test]
fn streamed_calls_are_numbered_per_choice_and_text_passes_through() {
    let mut s = ChoiceStream::new(Some(ToolCallFormat::Hermes.into()));
    let call = |name: &str| {
        format!("<tool_call>{{\"name\": \"{name}\", \"arguments\": {{}}}}</tool_call>")
    };
    let first = s.deltas(&format!("ok {}", call("a")), false);
    assert_eq!(first[0].content.as_deref(), Some("ok "));
    let a = &first[1].tool_calls.as_ref().unwrap()[0];
    assert_eq!((a.index, a.call.function.name.as_str()), (0, "a"));
    let second = s.deltas(&format!("{}<tool", call("b")), true);
    let b = &second[0].tool_calls.as_ref().unwrap()[0];
    assert_eq!((b.index, b.call.function.name.as_str()), (1, "b"));
    assert_eq!(
        second[1].content.as_deref(),
        Some("<tool"),
        "held text flushed at the end"
    );
    assert!(s.made_calls());
    let wire = serde_json::to_value(&second[0]).unwrap();
    assert_eq!(wire["tool_calls"][0]["index"], 1);
    assert_eq!(wire["tool_calls"][0]["function"]["name"], "b");
    assert_eq!(wire["tool_calls"][0]["type"], "function");

    let mut plain = ChoiceStream::new(None);
    let deltas = plain.deltas("<tool_call>", false);
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].content.as_deref(), Some("<tool_call>"));
    assert!(!plain.made_calls());
}

#[test]
fn reasoning_is_split_off_before_calls_are_looked_for() {
    let text = "<think>Need the word.</think>\n\nOk <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
    let (m, made_calls) = message(
        Some(&think("assistant\n")),
        text,
        Some(&ToolCallFormat::Hermes.into()),
    );
    assert!(made_calls);
    assert_eq!(m.reasoning_content.as_deref(), Some("Need the word."));
    assert_eq!(m.content.as_deref(), Some("Ok"));
    // Cut off while thinking: reasoning, no content.
    let (m, _) = message(Some(&think("<think>\n")), "hmm", None);
    assert_eq!(
        (m.reasoning_content.as_deref(), m.content),
        (Some("hmm"), None)
    );

    let mut s = ChoiceStream::new(Some(ToolCallFormat::Hermes.into()))
        .with_reasoning(&think("assistant\n"));
    let (reasoning, content, calls) = streamed(&mut s, text);
    assert_eq!(reasoning, "Need the word.");
    assert_eq!(content, "Ok ");
    assert_eq!(calls, ["f#0"]);
    assert!(s.made_calls());
}

#[test]
fn harmony_channels_split_into_reasoning_answer_and_calls() {
    let harmony = Reasoning {
        format: ReasoningFormat::Harmony,
        prompt: "<|start|>assistant".into(),
    };
    let answer = "<|channel|>analysis<|message|>Simple sum.<|end|><|start|>assistant<|channel|>final<|message|>4";
    let (m, made_calls) = message(Some(&harmony), answer, None);
    assert!(!made_calls);
    assert_eq!(m.reasoning_content.as_deref(), Some("Simple sum."));
    assert_eq!(m.content.as_deref(), Some("4"));
    let (r, c, calls) = streamed(
        &mut ChoiceStream::new(None).with_reasoning(&harmony),
        answer,
    );
    assert_eq!(
        (r.as_str(), c.as_str(), calls.len()),
        ("Simple sum.", "4", 0)
    );

    // Two calls in one turn: both are calls, numbered in order, with no content.
    let call = "<|channel|>analysis<|message|>Two lookups.<|end|><|start|>assistant to=functions.a<|channel|>commentary json<|message|>{\"x\": 1}<|call|><|start|>assistant to=functions.b<|channel|>commentary json<|message|>{}";
    let (m, made_calls) = message(Some(&harmony), call, None);
    assert!(made_calls);
    assert_eq!(m.content, None);
    let names: Vec<_> = m
        .tool_calls
        .iter()
        .map(|c| c.function.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(m.tool_calls[0].function.arguments, "{\"x\": 1}");
    let mut s = ChoiceStream::new(None).with_reasoning(&harmony);
    let (r, c, calls) = streamed(&mut s, call);
    assert_eq!((r.as_str(), c.as_str()), ("Two lookups.", ""));
    assert_eq!(calls, ["a#0", "b#1"]);
    assert!(s.made_calls());
}

/// Qwen3-Coder's chat template teaches the XML form; the plan's parser types each value by
/// the request's schema, in a whole message and in a stream.
#[test]
fn xml_calls_are_typed_by_the_requests_tools() {
    let template = ChatTemplate::new(
        "{{ '<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>' }}",
        None,
        None,
    )
    .unwrap();
    let req = request(
        json!({"tools": [{"type": "function", "function": {"name": "move",
        "parameters": {"type": "object", "properties": {
            "to": {"type": "string"}, "steps": {"type": "integer"}}}}}]}),
    );
    let parser = tool_plan(&req, Some(&template), &|_| None)
        .unwrap()
        .parser
        .unwrap();
    assert_eq!(parser.format, ToolCallFormat::Qwen3Xml);
    let text = "Moving.\n<tool_call>\n<function=move>\n<parameter=to>\n007\n</parameter>\n\
                <parameter=steps>\n12\n</parameter>\n</function>\n</tool_call>";
    let (m, made_calls) = message(None, text, Some(&parser));
    assert!(made_calls);
    assert_eq!(m.content.as_deref(), Some("Moving."));
    assert_eq!(m.tool_calls[0].function.name, "move");
    assert_eq!(
        m.tool_calls[0].function.arguments,
        r#"{"to":"007","steps":12}"#
    );

    let mut s = ChoiceStream::new(Some(parser));
    let mut arguments = Vec::new();
    let mut content = String::new();
    for piece in text.as_bytes().chunks(5) {
        for d in s.deltas(std::str::from_utf8(piece).unwrap(), false) {
            content.push_str(d.content.as_deref().unwrap_or(""));
            for call in d.tool_calls.into_iter().flatten() {
                arguments.push(call.call.function.arguments);
            }
        }
    }
    s.deltas("", true);
    assert_eq!(content, "Moving.\n");
    assert_eq!(arguments, [r#"{"to":"007","steps":12}"#]);
}

/// gpt-oss: harmony carries calls itself, so forcing one is a grammar over its special
/// tokens, and the harmony splitter (not a tool-call parser) reads the result.
#[test]
fn forced_calls_with_harmony_use_its_special_tokens() {
    let template = ChatTemplate::new("{{ messages[0].content }}", None, None)
        .unwrap()
        .with_reasoning(Some(ReasoningFormat::Harmony));
    let req = request(
        json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                             "tool_choice": "required"}),
    );
    let ids = |t: &str| match t {
        "<|channel|>" => Some(7),
        "<|constrain|>" => Some(8),
        "<|message|>" => Some(9),
        _ => None,
    };
    let plan = tool_plan(&req, Some(&template), &ids).unwrap();
    assert_eq!(plan.parser, None);
    let Some(Structure::Lark(grammar)) = plan.forced else {
        panic!("a grammar")
    };
    assert!(
        grammar.starts_with("start: <[7]> \"commentary to=functions.\""),
        "{grammar}"
    );
    let err = tool_plan(&req, Some(&template), &|_| None).unwrap_err();
    assert_eq!(err.body().error.param.as_deref(), Some("tool_choice"));
    assert!(
        err.body().error.message.contains("<|channel|>"),
        "{}",
        err.body().error.message
    );
}
