//! DeepSeek's tool-call formats: the calls of one answer inside a section, each call a
//! block naming its function then giving its arguments as JSON. DeepSeek-V3 (0324), R1 and
//! the R1 distills fence the arguments as a JSON code block after the call's type:
//!
//! ```text
//! <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
//! ```json
//! {"city": "Oslo"}
//! ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
//! ```
//!
//! DeepSeek-V3.1 writes `<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Oslo"}` instead.
//! Both bodies are read whichever format was asked for; forcing writes the asked one.

use super::{guided_schema, json_object_call, lark_mark, section_grammar, ToolCall};
use serde_json::Value;

pub const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
pub const CALLS_END: &str = "<｜tool▁calls▁end｜>";
pub const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
pub const CALL_END: &str = "<｜tool▁call▁end｜>";
const SEP: &str = "<｜tool▁sep｜>";
/// What V3's template writes between the name and the arguments.
const FENCE_OPEN: &str = "```json";
const FENCE_CLOSE: &str = "```";

/// Whether a chat template teaches one of these formats, and whether it is V3's fenced one.
pub fn taught_by(template_source: &str) -> Option<bool> {
    template_source
        .contains(CALL_BEGIN)
        .then(|| template_source.contains(FENCE_OPEN))
}

/// The call in one block's body (either layout); `None` without a name or valid JSON
/// arguments.
pub fn parse_call(body: &str) -> Option<ToolCall> {
    let (head, rest) = body.split_once(SEP)?;
    let (name, arguments) = if head.trim() == "function" && rest.contains('\n') {
        // V3: `function<sep>NAME\n```json\n{...}\n```` (the type names the tool kind).
        let (name, fenced) = rest.split_once('\n')?;
        let inner = fenced.trim();
        let inner = inner.strip_prefix(FENCE_OPEN).unwrap_or(inner);
        let inner = inner.strip_suffix(FENCE_CLOSE).unwrap_or(inner);
        (name.trim(), inner.trim())
    } else {
        (head.trim(), rest.trim())
    };
    json_object_call(name, arguments)
}

/// llguidance Lark for answers that are calls to `tools`, in V3's fenced layout (`fenced`)
/// or V3.1's; markers the tokenizer has as special tokens are matched by id.
pub fn forcing_grammar(
    tools: &[(String, Value)],
    parallel: bool,
    json_options: &Value,
    fenced: bool,
    special_token_id: &dyn Fn(&str) -> Option<u32>,
) -> String {
    let mark = |text: &str| lark_mark(text, special_token_id);
    let rules: Vec<String> = tools
        .iter()
        .enumerate()
        .map(|(i, (name, parameters))| {
            let schema = guided_schema(parameters, json_options);
            let schema = format!("%json {schema}");
            let quoted = |text: String| Value::from(text).to_string();
            let parts = if fenced {
                [
                    mark(CALL_BEGIN),
                    quoted("function".into()),
                    mark(SEP),
                    quoted(format!("{name}\n{FENCE_OPEN}\n")),
                    schema,
                    quoted(format!("\n{FENCE_CLOSE}")),
                    mark(CALL_END),
                ]
                .join(" ")
            } else {
                [
                    mark(CALL_BEGIN),
                    quoted(name.clone()),
                    mark(SEP),
                    schema,
                    mark(CALL_END),
                ]
                .join(" ")
            };
            format!("f{i}: {parts}")
        })
        .collect();
    section_grammar(&mark(CALLS_BEGIN), &mark(CALLS_END), &rules, parallel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_bodies_give_the_call() {
        let v3 =
            parse_call("function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Oslo\"}\n```")
                .unwrap();
        assert_eq!(
            (v3.name.as_str(), v3.arguments.as_str()),
            ("get_weather", r#"{"city":"Oslo"}"#)
        );
        let v31 = parse_call("get_weather<｜tool▁sep｜>{\"city\": \"Oslo\"}").unwrap();
        assert_eq!(v31, v3);
        for bad in [
            "get_weather{\"city\": 1}",
            "<｜tool▁sep｜>{}",
            "get weather<｜tool▁sep｜>{}",
            "f<｜tool▁sep｜>{\"unclosed\": ",
            "f<｜tool▁sep｜>[1]",
        ] {
            assert_eq!(parse_call(bad), None, "{bad}");
        }
    }
}
