//! Bearer-token auth on `/v1/*` when `--api-key` is set.

use super::error::ApiError;
use super::state::SharedState;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub async fn require_api_key(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.api_key {
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !keys_match(given, expected) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Compares in time independent of where (or whether) the keys differ: both are hashed to
/// fixed-size digests first, so even the length of the real key does not leak.
pub fn keys_match(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::keys_match;

    #[test]
    fn matches_only_the_same_key() {
        assert!(keys_match("sk-abc", "sk-abc"));
        assert!(!keys_match("sk-abd", "sk-abc"));
        assert!(!keys_match("", "sk-abc"));
        assert!(!keys_match("sk-abcd", "sk-abc"));
    }
}
