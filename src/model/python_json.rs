//! config.json as Python's `json` writes it: `Infinity`, `-Infinity` and `NaN` are not JSON
//! but appear in transformers' configs (Mamba2Config's `time_step_limit` is `[0.0,
//! Infinity]`). They are read as `null`, which each reader takes as "not set".

use std::borrow::Cow;

/// `text` with the bare `Infinity`, `-Infinity` and `NaN` tokens (outside strings) as `null`.
pub fn strict_json(text: &str) -> Cow<'_, str> {
    if !text.contains("Infinity") && !text.contains("NaN") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_tokens_become_null_outside_strings_only() {
        let text =
            r#"{"limit": [0.0, Infinity], "low": -Infinity, "x": NaN, "name": "Infinity \"NaN\""}"#;
        let value: serde_json::Value = serde_json::from_str(&strict_json(text)).unwrap();
        assert_eq!(value["limit"], serde_json::json!([0.0, null]));
        assert!(value["low"].is_null() && value["x"].is_null());
        assert_eq!(value["name"], "Infinity \"NaN\"");
        assert!(matches!(strict_json(r#"{"a": 1}"#), Cow::Borrowed(_)));
    }
}
