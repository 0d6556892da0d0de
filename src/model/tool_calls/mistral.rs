//! Mistral's tool-call format. The answer switches to calls at the `[TOOL_CALLS]` special
//! token, followed either by a JSON list of `{"name": ..., "arguments": {...}}` objects
//! (tokenizers up to v3: Mistral 7B v0.3, Nemo, Small 3.0/3.1) or, from v11 on (Small 3.2,
//! Devstral, Magistral), by `NAME[ARGS]{...}` for each call (with `[CALL_ID]ID` between
//! them in some versions), each call after its own `[TOOL_CALLS]`.
//!
//! Mistral's templates also insist that call ids are 9 alphanumeric characters, so ids
//! handed out for this format are made that way (`call_id`).

use super::{call_from_value, call_schema, guided_schema, ToolCall};
use serde_json::Value;

pub const TOOL_CALLS: &str = "[TOOL_CALLS]";
pub const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";

/// Whether a chat template teaches this format.
pub fn taught_by(template_source: &str) -> bool {
    template_source.contains(TOOL_CALLS)
}

/// Splits an answer at its first `[TOOL_CALLS]`: the text before, and the calls after;
/// `None` when there is no marker or what follows it is not calls.
pub fn parse(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let at = text.find(TOOL_CALLS)?;
    let calls = parse_calls(&text[at + TOOL_CALLS.len()..])?;
    Some((text[..at].to_string(), calls))
}

/// The calls after the first marker, in either generation's layout.
fn parse_calls(text: &str) -> Option<Vec<ToolCall>> {
    let body = text.trim_start();
    if body.starts_with('[') || body.starts_with('{') {
        return json_calls(body);
    }
    let mut calls = Vec::new();
    for part in body.split(TOOL_CALLS) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (head, arguments) = part.split_once(ARGS)?;
        // `NAME[CALL_ID]ID`: the model's own id is not kept (kiln hands out its own).
        let name = head.split(CALL_ID).next().unwrap_or(head).trim();
        let arguments: Value = serde_json::from_str(arguments.trim()).ok()?;
        if name.is_empty() || !arguments.is_object() {
            return None;
        }
        calls.push(ToolCall {
            name: name.to_string(),
            arguments: arguments.to_string(),
        });
    }
    (!calls.is_empty()).then_some(calls)
}

/// `[{"name": ..., "arguments": ...}, ...]` (or one object), possibly followed by more
/// `[TOOL_CALLS]` lists.
fn json_calls(body: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    for part in body.split(TOOL_CALLS) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(part).ok()? {
            Value::Array(items) => {
                for item in &items {
                    calls.push(call_from_value(item)?);
                }
            }
            object @ Value::Object(_) => calls.push(call_from_value(&object)?),
            _ => return None,
        }
    }
    (!calls.is_empty()).then_some(calls)
}

/// A call id as Mistral's templates accept them: 9 characters from `[a-zA-Z0-9]`.
pub fn call_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..9)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// llguidance Lark for answers that are calls to `tools`: the `[TOOL_CALLS]` token (by id,
/// as it is a special token), then the layout the tokenizer has tokens for: `NAME[ARGS]{...}`
/// per call when it has `[ARGS]`, else one JSON list.
pub fn forcing_grammar(
    tools: &[(String, Value)],
    parallel: bool,
    json_options: &Value,
    tool_calls_id: u32,
    args_id: Option<u32>,
) -> String {
    let marker = format!("<[{tool_calls_id}]>");
    match args_id {
        Some(args) => {
            let alternatives: Vec<String> = tools
                .iter()
                .enumerate()
                .map(|(i, _)| format!("f{i}"))
                .collect();
            let rules: Vec<String> = tools
                .iter()
                .enumerate()
                .map(|(i, (name, parameters))| {
                    let schema = guided_schema(parameters, json_options);
                    let name = Value::String(name.clone());
                    format!("f{i}: {name} <[{args}]> %json {schema}")
                })
                .collect();
            let repeat = if parallel { " call*" } else { "" };
            format!(
                "start: call{repeat}\ncall: {marker} ({})\n{}\n",
                alternatives.join(" | "),
                rules.join("\n")
            )
        }
        None => {
            let call = call_schema(tools, "arguments", json_options);
            let repeat = if parallel { r#" (", " call)*"# } else { "" };
            format!("start: {marker} \"[\" call{repeat} \"]\"\ncall: %json {call}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_give_the_calls_and_the_text_before_them() {
        let (text, calls) = parse(
            "Checking.[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}, \
             {\"name\": \"now\", \"arguments\": {}}]",
        )
        .unwrap();
        assert_eq!(text, "Checking.");
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(
            (calls[1].name.as_str(), calls[1].arguments.as_str()),
            ("now", "{}")
        );

        let (text, calls) = parse(
            "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}[TOOL_CALLS]now[CALL_ID]a1B2c3D4e[ARGS]{}",
        )
        .unwrap();
        assert_eq!(text, "");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(
            (calls[1].name.as_str(), calls[1].arguments.as_str()),
            ("now", "{}")
        );
    }

    #[test]
    fn anything_else_is_not_calls() {
        for text in [
            "no marker at all",
            "[TOOL_CALLS]",
            "[TOOL_CALLS][{\"name\": \"f\"",
            "[TOOL_CALLS]f[ARGS]not json",
            "[TOOL_CALLS]f without args",
            "[TOOL_CALLS][ARGS]{}",
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn ids_are_nine_alphanumerics() {
        let ids: Vec<String> = (0..50).map(|_| call_id()).collect();
        assert!(ids
            .iter()
            .all(|id| id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric())));
        assert!(ids.iter().any(|id| id != &ids[0]));
    }
}
