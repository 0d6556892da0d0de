//! GLM-4.5 / 4.6 / 4.7's tool-call format: a `<tool_call>` block holding the function's
//! name on the first line, then each argument as an `<arg_key>` / `<arg_value>` pair:
//!
//! ```text
//! <tool_call>get_weather
//! <arg_key>city</arg_key>
//! <arg_value>Paris</arg_value>
//! </tool_call>
//! ```
//!
//! Its template writes string values as they are and others as JSON, so values are typed
//! by the tool's parameter schema, as in the XML format (`qwen3_xml.rs`).

use super::argument_grammar::{self, property, typed_value, ArgumentTags};
use super::{ToolCall, CLOSE, OPEN};
use serde_json::{Map, Value};

const KEY: &str = "<arg_key>";
const KEY_END: &str = "</arg_key>";
const VALUE: &str = "<arg_value>";
const VALUE_END: &str = "</arg_value>";

/// Whether a chat template teaches this format.
pub fn taught_by(template_source: &str) -> bool {
    template_source.contains(KEY) && template_source.contains(OPEN)
}

/// The call in one block's body, typed by `tools`; `None` without a name or with an
/// argument that does not close.
pub fn parse_call(body: &str, tools: &[(String, Value)]) -> Option<ToolCall> {
    let name_end = body.find(KEY).unwrap_or(body.len());
    let name = body[..name_end].trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let schema = tools.iter().find(|(n, _)| n == name).map(|(_, s)| s);
    let mut arguments = Map::new();
    let mut rest = &body[name_end..];
    while let Some(start) = rest.find(KEY) {
        let after = &rest[start + KEY.len()..];
        let key_end = after.find(KEY_END)?;
        let key = after[..key_end].trim().to_string();
        let after = &after[key_end + KEY_END.len()..];
        let value_start = after.find(VALUE)? + VALUE.len();
        let value_len = after[value_start..].find(VALUE_END)?;
        let raw = &after[value_start..value_start + value_len];
        let value = typed_value(raw, property(schema, &key));
        arguments.insert(key, value);
        rest = &after[value_start + value_len + VALUE_END.len()..];
    }
    Some(ToolCall {
        name: name.to_string(),
        arguments: Value::Object(arguments).to_string(),
    })
}

/// llguidance Lark for answers that are calls to `tools` in this format (see
/// `argument_grammar`).
pub fn forcing_grammar(tools: &[(String, Value)], parallel: bool, json_options: &Value) -> String {
    let tags = ArgumentTags {
        call: (OPEN.to_string(), CLOSE.to_string()),
        function: &|name| format!("{name}\n"),
        parameter: &|key| format!("{KEY}{key}{KEY_END}\n{VALUE}"),
        value_end: format!("{VALUE_END}\n"),
    };
    argument_grammar::grammar(&tags, tools, parallel, json_options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_become_arguments_typed_by_the_schema() {
        let tools = vec![(
            "get_weather".to_string(),
            json!({"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "hours": {"type": "array"}}}),
        )];
        let body = "get_weather\n<arg_key>city</arg_key>\n<arg_value>New York</arg_value>\n\
                    <arg_key>days</arg_key>\n<arg_value>3</arg_value>\n\
                    <arg_key>hours</arg_key>\n<arg_value>[9, 12]</arg_value>\n";
        let call = parse_call(body, &tools).unwrap();
        assert_eq!(call.name, "get_weather");
        assert_eq!(
            call.arguments,
            r#"{"city":"New York","days":3,"hours":[9,12]}"#
        );
        assert_eq!(parse_call("now\n", &tools).unwrap().arguments, "{}");
        for bad in [
            "",
            "\n<arg_key>a</arg_key><arg_value>1</arg_value>",
            "f\n<arg_key>a</arg_key>\n<arg_value>unclosed",
            "{\"name\": \"f\"}",
        ] {
            assert!(parse_call(bad, &tools).is_none(), "{bad:?}");
        }
    }
}
