//! How Jinja2 under Python prints values: `{{ value }}` and `value | string` call Python's
//! `str()`, which for a dict or list is its `repr()` (`{'type': 'function', 'on': True}`).
//!
//! Some templates print tool schemas or arguments that way (`{{ tool }}`, `{{ tool|string }}`)
//! and their models were trained on Python's spelling, so minijinja's own (JSON-like) text
//! would hand them a prompt they have never seen.

use super::pyjson;
use minijinja::value::ValueKind;
use minijinja::{Error, Value};

/// Python's `str(value)`: a string as itself, anything else as its `repr`.
pub fn str(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::String => Ok(value.as_str().unwrap_or_default().to_string()),
        // Jinja2 prints an undefined value as nothing.
        ValueKind::Undefined => Ok(String::new()),
        _ => {
            let mut out = String::new();
            write_repr(&mut out, value)?;
            Ok(out)
        }
    }
}

/// The `string` filter, as Jinja2's (`str()` of the value, safe strings kept as they are).
pub fn string_filter(value: &Value) -> Result<Value, Error> {
    if value.is_safe() {
        return Ok(value.clone());
    }
    str(value).map(Value::from)
}

/// Python's `repr(value)`.
fn write_repr(out: &mut String, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key)?;
                out.push_str(": ");
                write_repr(out, &value.get_item(&key)?)?;
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item)?;
            }
            out.push(']');
        }
        // Functions, macros and the like have no Python spelling worth copying.
        _ => out.push_str(&value.to_string()),
    }
    Ok(())
}

/// Floats as Python's repr writes them (`1.0`, `nan`, `inf`); integers as digits.
fn write_number(out: &mut String, value: &Value) {
    let f = f64::try_from(value.clone()).unwrap_or(0.0);
    if !value.is_integer() && f.is_nan() {
        out.push_str("nan");
    } else if !value.is_integer() && f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
    } else {
        pyjson::write_number(out, value);
    }
}

/// A string literal as Python's repr quotes it: single quotes unless the text holds a single
/// quote and no double quote; backslashes, the quote and control characters escaped.
fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr_of(json: serde_json::Value) -> String {
        str(&Value::from_serialize(json)).unwrap()
    }

    #[test]
    fn dicts_and_lists_print_as_python_reprs_in_insertion_order() {
        let text = repr_of(serde_json::json!({
            "type": "function",
            "name": "get",
            "on": true,
            "off": null,
            "n": [1, 2.0, -0.5],
            "nested": {"a": []}
        }));
        assert_eq!(
            text,
            "{'type': 'function', 'name': 'get', 'on': True, 'off': None, 'n': [1, 2.0, -0.5], \
             'nested': {'a': []}}"
        );
    }

    #[test]
    fn strings_inside_containers_take_pythons_quotes_and_escapes() {
        // Expected values from CPython 3.11's repr().
        let cases = [
            ("plain", "'plain'"),
            ("it's", "\"it's\""),
            ("both ' and \"", "'both \\' and \"'"),
            ("line\nbreak\ttab\\slash", "'line\\nbreak\\ttab\\\\slash'"),
            ("bell\u{7}", "'bell\\x07'"),
            ("Grüße 世界", "'Grüße 世界'"),
        ];
        for (text, expected) in cases {
            assert_eq!(repr_of(serde_json::json!([text])), format!("[{expected}]"));
            // A string on its own is printed as itself.
            assert_eq!(repr_of(serde_json::json!(text)), text);
        }
    }
}
