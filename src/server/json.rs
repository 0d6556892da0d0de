//! Request bodies parsed into OpenAI's error shape: invalid JSON, wrong types and unknown
//! fields are 400 naming the offending field; a body over the limit is 413.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// Like `axum::Json`, with OpenAI's errors instead of axum's plain-text rejections.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            let message = rejection.body_text();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::invalid(None, format!("request body too large: {message}"))
                    .with_status(status)
            } else {
                ApiError::invalid(None, format!("could not read the request body: {message}"))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses `bytes`, naming the field that failed (OpenAI's `param`) when there is one.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let broken = inner.is_syntax() || inner.is_eof();
        // A syntax error's path is only how far parsing got, not a field at fault.
        let param = (!broken && path != ".").then_some(path);
        let what = if broken {
            "invalid JSON"
        } else {
            "invalid request"
        };
        ApiError::invalid(param.as_deref(), format!("{what}: {inner}"))
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(None, format!("invalid JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        n: Option<u32>,
    }

    #[test]
    fn names_the_field_of_a_wrong_type() {
        let e = parse::<Body>(br#"{"n": "two"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("n"));
    }

    #[test]
    fn rejects_broken_json_and_unknown_fields() {
        let e = parse::<Body>(b"{\"n\": ").unwrap_err();
        assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
        assert_eq!(e.param, None);
        let e = parse::<Body>(br#"{"m": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
        assert!(parse::<Body>(br#"{"n": 1} x"#).is_err());
    }
}
