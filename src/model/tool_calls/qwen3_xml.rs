//! The XML tool-call format of Qwen3-Coder, Qwen3.5 and Nemotron 3: a `<tool_call>` block
//! holding `<function=NAME>` and one `<parameter=KEY>` element per argument, each value
//! on its own lines as plain text:
//!
//! ```text
//! <tool_call>
//! <function=get_weather>
//! <parameter=city>
//! Paris
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! Values carry no JSON quoting, so their types come from the tool's parameter schema: a
//! string parameter keeps the text as written, a number, boolean, object or array parameter
//! is read as one (the templates write Python's `True`/`False`/`None`, which are accepted).

use super::argument_grammar::{self, property, typed_value, ArgumentTags};
use super::{ToolCall, CLOSE, OPEN, SEED_CLOSE, SEED_OPEN};
use serde_json::{Map, Value};

const FUNCTION: &str = "<function=";
const FUNCTION_END: &str = "</function>";
const PARAMETER: &str = "<parameter=";
const PARAMETER_END: &str = "</parameter>";

/// Whether a chat template teaches this format (it shows the model the element names).
pub fn taught_by(template_source: &str) -> bool {
    template_source.contains(FUNCTION) && template_source.contains(PARAMETER)
}

/// The call in one block's body, typed by `tools` (name, parameters schema); `None` when the
/// body holds no `<function=...>` element.
pub fn parse_call(body: &str, tools: &[(String, Value)]) -> Option<ToolCall> {
    let after = &body[body.find(FUNCTION)? + FUNCTION.len()..];
    let name_end = after.find('>')?;
    let name = after[..name_end].trim().to_string();
    if name.is_empty() {
        return None;
    }
    let mut rest = &after[name_end + 1..];
    if let Some(end) = rest.find(FUNCTION_END) {
        rest = &rest[..end];
    }
    let schema = tools.iter().find(|(n, _)| *n == name).map(|(_, s)| s);
    let mut arguments = Map::new();
    while let Some(start) = rest.find(PARAMETER) {
        let element = &rest[start + PARAMETER.len()..];
        let key_end = element.find('>')?;
        let key = element[..key_end].trim().to_string();
        let value_text = &element[key_end + 1..];
        // A parameter ends at its closing tag, or (when the model leaves that out) where
        // the next one starts.
        let (raw, next) = match (value_text.find(PARAMETER_END), value_text.find(PARAMETER)) {
            (Some(end), Some(following)) if following < end => {
                (&value_text[..following], following)
            }
            (Some(end), _) => (&value_text[..end], end + PARAMETER_END.len()),
            (None, Some(following)) => (&value_text[..following], following),
            (None, None) => (value_text, value_text.len()),
        };
        let value = typed_value(strip_one_newline(raw), property(schema, &key));
        arguments.insert(key, value);
        rest = &value_text[next..];
    }
    Some(ToolCall {
        name,
        arguments: Value::Object(arguments).to_string(),
    })
}

/// The value sits between one newline after the opening tag and one before the closing tag.
fn strip_one_newline(raw: &str) -> &str {
    let raw = raw.strip_prefix('\n').unwrap_or(raw);
    raw.strip_suffix('\n').unwrap_or(raw)
}

/// How a model family lays the elements out.
pub struct Layout {
    open: &'static str,
    close: &'static str,
    /// The line break between a parameter's tags and its value (Qwen's), or none (Seed's).
    value_break: &'static str,
}

impl Layout {
    pub fn qwen3() -> Layout {
        Layout {
            open: OPEN,
            close: CLOSE,
            value_break: "\n",
        }
    }

    pub fn seed() -> Layout {
        Layout {
            open: SEED_OPEN,
            close: SEED_CLOSE,
            value_break: "",
        }
    }
}

/// llguidance Lark for answers that are calls to `tools` in this format (see
/// `argument_grammar`).
pub fn forcing_grammar(
    layout: &Layout,
    tools: &[(String, Value)],
    parallel: bool,
    json_options: &Value,
) -> String {
    let value_break = layout.value_break;
    let tags = ArgumentTags {
        call: (
            format!("{}\n", layout.open),
            format!("{FUNCTION_END}\n{}", layout.close),
        ),
        function: &|name| format!("{FUNCTION}{name}>\n"),
        parameter: &|key| format!("{PARAMETER}{key}>{value_break}"),
        value_end: format!("{value_break}{PARAMETER_END}\n"),
    };
    argument_grammar::grammar(&tags, tools, parallel, json_options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather_tools() -> Vec<(String, Value)> {
        vec![(
            "get_weather".into(),
            json!({"type": "object", "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "zip": {"type": "string"},
                "where": {"type": "object"},
                "hours": {"type": ["array", "null"]},
                "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]}
            }, "required": ["city"]}),
        )]
    }

    #[test]
    fn parameters_are_typed_by_the_tools_schema() {
        let body = "\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n\
            <parameter=days>\n3\n</parameter>\n<parameter=metric>\nTrue\n</parameter>\n\
            <parameter=zip>\n01234\n</parameter>\n<parameter=where>\n{\"lat\": 1.5}\n</parameter>\n\
            <parameter=hours>\nNone\n</parameter>\n<parameter=ratio>\n0.25\n</parameter>\n\
            <parameter=unknown>\n42\n</parameter>\n</function>\n";
        let call = parse_call(body, &weather_tools()).unwrap();
        assert_eq!(call.name, "get_weather");
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(
            args,
            json!({"city": "New York", "days": 3, "metric": true, "zip": "01234",
                   "where": {"lat": 1.5}, "hours": null, "ratio": 0.25, "unknown": "42"})
        );
        // Argument order is the model's.
        assert!(call.arguments.starts_with(r#"{"city":"New York","days":3"#));
    }

    #[test]
    fn values_keep_inner_lines_and_a_missing_closing_tag_is_tolerated() {
        let body = "<function=write>\n<parameter=code>\nfn main() {\n    println!(\"</p>\");\n}\n\
            <parameter=path>\nsrc/main.rs\n</parameter>\n</function>";
        let call = parse_call(body, &[]).unwrap();
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(args["code"], "fn main() {\n    println!(\"</p>\");\n}");
        assert_eq!(args["path"], "src/main.rs");
        // No parameters at all, and no function element.
        assert_eq!(
            parse_call("<function=now>\n</function>", &[])
                .unwrap()
                .arguments,
            "{}"
        );
        assert!(parse_call("{\"name\": \"f\"}", &[]).is_none());
        assert!(parse_call("<function=>\n</function>", &[]).is_none());
    }

    #[test]
    fn seed_oss_blocks_hold_the_same_elements_without_line_breaks() {
        use crate::model::tool_calls::{parse, ToolCallFormat, ToolParser};
        let text = "I will look.\n<seed:tool_call>\n<function=get_weather>\n\
            <parameter=city>Oslo</parameter>\n<parameter=days>2</parameter>\n</function>\n\
            </seed:tool_call>";
        let parser = ToolParser::new(ToolCallFormat::SeedXml, weather_tools());
        let parsed = parse(parser, text);
        assert_eq!(parsed.content.as_deref(), Some("I will look."));
        assert_eq!(parsed.calls[0].arguments, r#"{"city":"Oslo","days":2}"#);
        // Qwen's tags are not Seed's.
        let qwen = ToolParser::new(ToolCallFormat::Qwen3Xml, weather_tools());
        assert!(parse(qwen, text).calls.is_empty());
    }

    #[test]
    fn the_template_marks_are_recognised() {
        assert!(taught_by(
            "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>"
        ));
        assert!(!taught_by(
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
        ));
    }
}
