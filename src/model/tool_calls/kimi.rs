//! Kimi K2's tool-call format: the calls inside a section, each with an id that names the
//! function and counts the calls (`functions.NAME:INDEX`), then its JSON arguments:
//!
//! ```text
//! <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0
//! <|tool_call_argument_begin|>{"city": "Oslo"}<|tool_call_end|><|tool_calls_section_end|>
//! ```
//!
//! (without the line break). Kimi's template writes the same id for a call that comes back
//! in the conversation, so kiln gives calls of this format those ids.

use super::{guided_schema, json_object_call, lark_mark, section_grammar, ToolCall};
use serde_json::Value;

pub const SECTION_BEGIN: &str = "<|tool_calls_section_begin|>";
pub const SECTION_END: &str = "<|tool_calls_section_end|>";
pub const CALL_BEGIN: &str = "<|tool_call_begin|>";
pub const CALL_END: &str = "<|tool_call_end|>";
const ARGUMENTS: &str = "<|tool_call_argument_begin|>";

/// Whether a chat template teaches this format.
pub fn taught_by(template_source: &str) -> bool {
    template_source.contains(CALL_BEGIN) && template_source.contains(ARGUMENTS)
}

/// The id Kimi's template writes for the `index`-th call of a message.
pub fn call_id(name: &str, index: usize) -> String {
    format!("functions.{name}:{index}")
}

/// The call in one block's body; `None` without a name or valid JSON arguments.
pub fn parse_call(body: &str) -> Option<ToolCall> {
    let (id, arguments) = body.split_once(ARGUMENTS)?;
    let id = id.trim();
    let id = id.strip_prefix("functions.").unwrap_or(id);
    // The index after the last colon is optional; names do not hold colons.
    let name = id.rsplit_once(':').map_or(id, |(name, _)| name);
    json_object_call(name, arguments)
}

/// llguidance Lark for answers that are calls to `tools`; markers the tokenizer has as
/// special tokens are matched by id.
pub fn forcing_grammar(
    tools: &[(String, Value)],
    parallel: bool,
    json_options: &Value,
    special_token_id: &dyn Fn(&str) -> Option<u32>,
) -> String {
    let mark = |text: &str| lark_mark(text, special_token_id);
    // The call's index in the message: 0 to 99, without leading zeros, so that it ends.
    let rules: Vec<String> = tools
        .iter()
        .enumerate()
        .map(|(i, (name, parameters))| {
            let schema = guided_schema(parameters, json_options);
            format!(
                "f{i}: {} {} /0|[1-9][0-9]?/ {} %json {schema} {}",
                mark(CALL_BEGIN),
                Value::from(format!("functions.{name}:")),
                mark(ARGUMENTS),
                mark(CALL_END)
            )
        })
        .collect();
    section_grammar(&mark(SECTION_BEGIN), &mark(SECTION_END), &rules, parallel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_function_and_arguments_are_json() {
        let call =
            parse_call("functions.get_weather:3<|tool_call_argument_begin|>{\"city\": \"Oslo\"}")
                .unwrap();
        assert_eq!(
            (call.name.as_str(), call.arguments.as_str()),
            ("get_weather", r#"{"city":"Oslo"}"#)
        );
        assert_eq!(
            parse_call("now<|tool_call_argument_begin|>{}")
                .unwrap()
                .name,
            "now"
        );
        for bad in [
            "functions.f:0{}",
            "functions.:0<|tool_call_argument_begin|>{}",
            "functions.f:0<|tool_call_argument_begin|>{\"x\": ",
        ] {
            assert_eq!(parse_call(bad), None, "{bad}");
        }
        assert_eq!(call_id("get_weather", 1), "functions.get_weather:1");
    }
}
