//! The forcing grammar shared by formats that spell each argument out between tags rather
//! than as one JSON object (Qwen3-Coder's and Seed-OSS's XML, GLM-4.5's key/value pairs):
//! a call block per function, each parameter in its schema's order (required ones always,
//! the others optional), a string value as free text up to its closing tag, an enum's
//! values as literals, any other value as JSON under its schema.

use serde_json::Value;

/// The literal text of one format around calls, functions and parameters.
pub struct ArgumentTags<'a> {
    /// Before and after each call (the function's elements included).
    pub call: (String, String),
    /// A function's opening, from its name.
    pub function: &'a dyn Fn(&str) -> String,
    /// A parameter's opening, from its key, and what closes its value.
    pub parameter: &'a dyn Fn(&str) -> String,
    pub value_end: String,
}

/// llguidance Lark for answers that are calls to `tools` (name, parameters schema) laid out
/// with `tags`; several, one per line, when `parallel`.
pub fn grammar(
    tags: &ArgumentTags<'_>,
    tools: &[(String, Value)],
    parallel: bool,
    json_options: &Value,
) -> String {
    let mut rules = Vec::new();
    let mut functions = Vec::new();
    for (t, (name, schema)) in tools.iter().enumerate() {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut items = vec![lark_string(&(tags.function)(name))];
        let properties = schema.get("properties").and_then(Value::as_object);
        for (p, (key, property)) in properties.into_iter().flatten().enumerate() {
            let rule = format!("p{t}_{p}");
            let open = lark_string(&(tags.parameter)(key));
            let close = lark_string(&tags.value_end);
            let types = schema_types(property);
            if let Some(choices) = string_choices(property) {
                rules.push(format!("{rule}: {open} ({}) {close}", choices.join(" | ")));
            } else if types.is_empty() || types.iter().any(|ty| ty == "string") {
                // Free text, ended lazily by the closing tag.
                rules.push(format!("{rule}: {open} {rule}_text"));
                rules.push(format!("{rule}_text[suffix={close}]: /(?s:.*)/"));
            } else {
                let mut value_schema = property.clone();
                if let Some(map) = value_schema.as_object_mut() {
                    map.insert("x-guidance".into(), json_options.clone());
                }
                rules.push(format!("{rule}: {open} %json {value_schema} {close}"));
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
    format!(
        "start: call{repeat}\ncall: {} ({}) {}\n{}\n",
        lark_string(&tags.call.0),
        functions.join(" | "),
        lark_string(&tags.call.1),
        rules.join("\n")
    )
}

/// The JSON types a property's schema allows (`type` as a string or a list; `anyOf`/`oneOf`
/// alternatives; an all-string `enum`); empty when it says nothing.
pub fn schema_types(property: &Value) -> Vec<String> {
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
/// schema does not know) stays text, as written. Python's `True`/`False`/`None` (what the
/// templates write for such values) are accepted.
pub fn typed_value(text: &str, property: Option<&Value>) -> Value {
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

/// The property schema of `key` in a tool's parameters schema.
pub fn property<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let pointer = format!("/properties/{}", key.replace('~', "~0").replace('/', "~1"));
    schema.and_then(|s| s.pointer(&pointer))
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
