//! `POST /v1/embeddings`: each input's vector by last-token pooling (the engine's
//! embedding requests), for decoder embedding models such as Qwen3-Embedding.

use super::error::{ApiError, ApiResult};
use super::generate;
use super::json::ApiJson;
use super::state::SharedState;
use super::types::embeddings::*;
use crate::engine::params::Pooling;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use std::time::Instant;

/// Most inputs one request may carry (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[utoipa::path(post, tag = "openai", path = "/v1/embeddings", request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One vector per input, in order", body = EmbeddingList),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody)))]
pub async fn embeddings(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> ApiResult<Response> {
    let arrival = Instant::now();
    let served = state.ready_for(&req.model)?;
    served.generates()?;
    if served.adapter_for(&req.model).is_some() {
        return Err(ApiError::invalid(
            Some("model"),
            format!(
                "'{}' is a LoRA adapter; embeddings come from the base model",
                req.model
            ),
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                format!("'{other}' is not one of 'float', 'base64'"),
            ))
        }
    };
    if req.dimensions == Some(0) {
        return Err(ApiError::invalid(Some("dimensions"), "must be at least 1"));
    }
    let inputs = super::completions::tokenize_inputs(served, &req.input, "input", MAX_INPUTS)?;
    let pooling = Pooling {
        dimensions: req.dimensions,
        normalize: req.normalize.unwrap_or(true),
    };
    let (vectors, prompt_tokens) =
        generate::pool_all(served, inputs, pooling, arrival, &state.metrics).await?;
    let mut data = Vec::with_capacity(vectors.len());
    for (index, vector) in vectors.into_iter().enumerate() {
        if let Some(d) = req.dimensions.filter(|&d| d > vector.len()) {
            return Err(ApiError::invalid(
                Some("dimensions"),
                format!("{d} exceeds the model's {} dimensions", vector.len()),
            ));
        }
        let embedding = if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            EmbeddingVector::Float(vector)
        };
        data.push(EmbeddingData {
            object: "embedding",
            index,
            embedding,
        });
    }
    let response = EmbeddingList {
        object: "list",
        data,
        model: req.model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    Ok(axum::Json(response).into_response())
}
