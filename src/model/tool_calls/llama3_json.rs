//! Llama 3.1 / 3.2 / 3.3's tool-call format: the answer is a JSON object
//! `{"name": ..., "parameters": {...}}` (several separated by `;`), after an optional
//! `<|python_tag|>`, instead of text.

use super::{call_from_value, call_schema, ToolCall};
use serde_json::Value;

const PYTHON_TAG: &str = "<|python_tag|>";

/// What a template says when it teaches this format.
pub const TEMPLATE_MARK: &str = "\"parameters\": dictionary of argument name";

/// Whether a stream's first text (leading whitespace removed) is or may become a call.
pub enum Start {
    Undecided,
    Call,
    Text,
}

pub fn start(text: &str) -> Start {
    let t = text.trim_start();
    if t.is_empty() || (PYTHON_TAG.starts_with(t) && t.len() < PYTHON_TAG.len()) {
        Start::Undecided
    } else if t.starts_with('{') || t.starts_with(PYTHON_TAG) {
        Start::Call
    } else {
        Start::Text
    }
}

/// The calls a whole answer makes, or `None` when it is not (only) calls.
pub fn parse_calls(text: &str) -> Option<Vec<ToolCall>> {
    let body = text.trim();
    let mut rest = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim_start();
    if !rest.starts_with('{') {
        return None;
    }
    let mut calls = Vec::new();
    loop {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = values.next()?.ok()?;
        calls.push(call_from_value(&value)?);
        rest = rest[values.byte_offset()..].trim_start();
        match rest.strip_prefix(';') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() => return Some(calls),
            None => return None,
        }
        if rest.is_empty() {
            return Some(calls);
        }
    }
}

/// llguidance Lark for answers that are calls to `tools`: one object, or several joined by
/// `; ` when `parallel`.
pub fn forcing_grammar(tools: &[(String, Value)], parallel: bool, json_options: &Value) -> String {
    let schema = call_schema(tools, "parameters", json_options);
    let repeat = if parallel { r#" ("; " call)*"# } else { "" };
    format!("start: call{repeat}\ncall: %json {schema}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_calls_and_anything_else_is_text() {
        let calls = parse_calls(
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"now\", \"parameters\": {}}",
        )
        .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(calls[1].arguments, "{}");
        for text in [
            "The weather is fine.",
            "{\"name\": \"f\", \"parameters\": {}} and then some words",
            "{\"no_name\": 1}",
            "{\"name\": \"f\", \"parameters\": {",
        ] {
            assert!(parse_calls(text).is_none(), "{text}");
        }
        assert!(matches!(start("  "), Start::Undecided));
        assert!(matches!(start("<|python"), Start::Undecided));
        assert!(matches!(start(" {\"na"), Start::Call));
        assert!(matches!(start("Sure"), Start::Text));
    }
}
