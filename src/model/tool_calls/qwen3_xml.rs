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
        let property =
            schema.and_then(|s| s.pointer(&format!("/properties/{}", escape_pointer(&key))));
        arguments.insert(key, typed_value(strip_one_newline(raw), property));
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

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON types a property's schema allows (`type` as a string or a list; `anyOf`/`oneOf`
/// alternatives); empty when it says nothing.
fn schema_types(property: &Value) -> Vec<String> {
    let mut types = Vec::new();
    match property.get("type") {
        Some(Value::String(t)) => types.push(t.clone()),
        Some(Value::Array(list)) => {
            types.extend(list.iter().filter_map(|t| t.as_str()).map(String::from))
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        for alternative in property
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            types.extend(schema_types(alternative));
        }
    }
    if types.is_empty() {
        if let Some(values) = property.get("enum").and_then(Value::as_array) {
            if values.iter().all(Value::is_string) {
                types.push("string".into());
            }
        }
    }
    types
}

/// `text` as the value `property` asks for. A string parameter keeps the text; a parameter
/// of another type takes the first reading that fits; what fits none (or a parameter the
/// schema does not know) stays text, as written.
fn typed_value(text: &str, property: Option<&Value>) -> Value {
    let types = property.map(schema_types).unwrap_or_default();
    if types.is_empty() || types.iter().any(|t| t == "string") {
        return Value::String(text.to_string());
    }
    let trimmed = text.trim();
    for kind in &types {
        let read = match kind.as_str() {
            "integer" => trimmed.parse::<i64>().ok().map(Value::from),
            "number" => serde_json::from_str::<serde_json::Number>(trimmed)
                .ok()
                .map(Value::Number),
            "boolean" => match trimmed {
                "true" | "True" => Some(Value::Bool(true)),
                "false" | "False" => Some(Value::Bool(false)),
                _ => None,
            },
            "null" => matches!(trimmed, "null" | "None").then_some(Value::Null),
            "object" | "array" => serde_json::from_str::<Value>(trimmed)
                .ok()
                .filter(|v| v.is_object() == (kind == "object") && (v.is_object() || v.is_array())),
            _ => None,
        };
        if let Some(value) = read {
            return value;
        }
    }
    Value::String(text.to_string())
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

/// llguidance Lark for answers that are calls to `tools` in this format: each parameter in
/// its schema's order (required ones always, the others optional), string values as free
/// text up to the closing tag, other values as JSON under their schema.
pub fn forcing_grammar(
    layout: &Layout,
    tools: &[(String, Value)],
    parallel: bool,
    json_options: &Value,
) -> String {
    let value_break = layout.value_break;
    let mut rules = Vec::new();
    let mut functions = Vec::new();
    for (t, (name, schema)) in tools.iter().enumerate() {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut items = vec![lark_string(&format!("{FUNCTION}{name}>\n"))];
        let properties = schema.get("properties").and_then(Value::as_object);
        for (p, (key, property)) in properties.into_iter().flatten().enumerate() {
            let rule = format!("p{t}_{p}");
            let open = lark_string(&format!("{PARAMETER}{key}>{value_break}"));
            let close = format!("{value_break}{PARAMETER_END}\n");
            let types = schema_types(property);
            if let Some(choices) = string_choices(property) {
                rules.push(format!(
                    "{rule}: {open} ({}) {}",
                    choices.join(" | "),
                    lark_string(&close)
                ));
            } else if types.is_empty() || types.iter().any(|ty| ty == "string") {
                rules.push(format!("{rule}: {open} {rule}_text"));
                rules.push(format!(
                    "{rule}_text[suffix={}]: /(?s:.*)/",
                    lark_string(&close)
                ));
            } else {
                let mut value_schema = property.clone();
                if let Some(map) = value_schema.as_object_mut() {
                    map.insert("x-guidance".into(), json_options.clone());
                }
                rules.push(format!(
                    "{rule}: {open} %json {value_schema} {}",
                    lark_string(&close)
                ));
            }
            let optional = if required.contains(&key.as_str()) {
                ""
            } else {
                "?"
            };
            items.push(format!("{rule}{optional}"));
        }
        rules.push(format!("f{t}: {}", items.join(" ")));
        functions.push(format!("f{t}"));
    }
    let repeat = if parallel { r#" ("\n" call)*"# } else { "" };
    let block = format!(
        "call: {} ({}) {}",
        lark_string(&format!("{}\n", layout.open)),
        functions.join(" | "),
        lark_string(&format!("{FUNCTION_END}\n{}", layout.close))
    );
    format!("start: call{repeat}\n{block}\n{}\n", rules.join("\n"))
}

/// The texts a string parameter is limited to (`enum` or `const`), as Lark literals.
fn string_choices(property: &Value) -> Option<Vec<String>> {
    let values = match (property.get("enum"), property.get("const")) {
        (Some(Value::Array(values)), _) => values.clone(),
        (None, Some(value)) => vec![value.clone()],
        _ => return None,
    };
    values
        .iter()
        .map(|v| v.as_str().map(lark_string))
        .collect::<Option<Vec<_>>>()
        .filter(|choices| !choices.is_empty())
}

/// A Lark string literal (the same escapes as a JSON string).
fn lark_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
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
