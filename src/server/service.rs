//! The small endpoints: models, tokenizer, version, health, metrics.

use super::error::{ApiError, ApiResult};
use super::json::ApiJson;
use super::state::{AppState, Served, ServedImages, SharedState};
use super::types::service::*;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[utoipa::path(get, tag = "openai", path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn models(State(state): State<SharedState>) -> ApiResult<Json<ModelList>> {
    if let Some(images) = state.images() {
        state.healthy()?;
        return Ok(Json(image_models(&state, images)));
    }
    let served = state.ready()?;
    let card = |id: &str, root: &str, parent: Option<String>| ModelCard {
        id: id.to_string(),
        object: "model",
        created: state.started_at,
        owned_by: "kiln",
        root: root.to_string(),
        max_model_len: served.engine.info().max_model_len,
        parent,
    };
    let base = served.names.first().cloned();
    let data = served
        .names
        .iter()
        .map(|name| card(name, &served.root, None))
        .chain(
            served
                .adapters()
                .iter()
                .map(|a| card(&a.name, &a.path, base.clone())),
        )
        .collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

/// OpenAI's model retrieval: the card of one served name (which may hold slashes, as
/// `Qwen/Qwen2.5-0.5B-Instruct` does).
#[utoipa::path(get, tag = "openai", path = "/v1/models/{model}",
    params(("model" = String, Path, description = "A served model name")),
    responses((status = 200, body = ModelCard), (status = 404, body = super::error::ErrorBody)))]
pub async fn retrieve_model(
    State(state): State<SharedState>,
    Path(model): Path<String>,
) -> ApiResult<Json<ModelCard>> {
    let Json(list) = models(State(state)).await?;
    list.data
        .into_iter()
        .find(|card| card.id == model)
        .map(Json)
        .ok_or_else(|| ApiError::model_not_found(&model))
}

/// An image server's models: the pipeline under each served name.
fn image_models(state: &AppState, images: &ServedImages) -> ModelList {
    let data = images
        .names
        .iter()
        .map(|name| ModelCard {
            id: name.clone(),
            object: "model",
            created: state.started_at,
            owned_by: "kiln",
            root: images.root.clone(),
            max_model_len: images.engine.info().max_prompt_tokens,
            parent: None,
        })
        .collect();
    ModelList {
        object: "list",
        data,
    }
}

/// A tokenizer request may name a model; if it does, it must be one we serve.
fn served_for<'a>(state: &'a AppState, model: Option<&str>) -> ApiResult<&'a Served> {
    match model {
        Some(model) => state.ready_for(model),
        None => state.ready(),
    }
}

#[utoipa::path(post, tag = "service", path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = 400, body = super::error::ErrorBody)))]
pub async fn tokenize(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> ApiResult<Json<TokenizeResponse>> {
    let served = served_for(&state, req.model.as_deref())?;
    let tokenizer = served.engine.tokenizer();
    let encode_failed = |e: anyhow::Error| ApiError::internal(format!("tokenizing: {e:#}"));
    let tokens = match (&req.prompt, &req.messages) {
        (Some(prompt), None) => tokenizer
            .encode(prompt, req.add_special_tokens.unwrap_or(true))
            .map_err(encode_failed)?,
        (None, Some(messages)) => {
            let template = tokenizer.chat_template().ok_or_else(|| {
                ApiError::invalid(Some("messages"), "this model has no chat template")
            })?;
            let text = super::chat::render_messages(
                template,
                messages,
                req.add_generation_prompt,
                req.continue_final_message,
                serde_json::Value::Null,
            )?;
            tokenizer.encode(&text, false).map_err(encode_failed)?
        }
        _ => {
            return Err(ApiError::invalid(
                Some("prompt"),
                "give exactly one of prompt or messages",
            ))
        }
    };
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: served.engine.info().max_model_len,
    }))
}

#[utoipa::path(post, tag = "service", path = "/detokenize", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = 400, body = super::error::ErrorBody)))]
pub async fn detokenize(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> ApiResult<Json<DetokenizeResponse>> {
    let served = served_for(&state, req.model.as_deref())?;
    let vocab = served.engine.info().vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            Some("tokens"),
            format!("token id {bad} is outside the vocabulary ({vocab} tokens)"),
        ));
    }
    let prompt = served
        .engine
        .tokenizer()
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid(Some("tokens"), format!("{e:#}")))?;
    Ok(Json(DetokenizeResponse { prompt }))
}

#[utoipa::path(get, tag = "service", path = "/version", responses((status = 200, body = VersionResponse)))]
pub async fn version() -> Json<VersionResponse> {
    Json(VersionResponse {
        version: crate::version(),
    })
}

/// 200 once the model is loaded and the engine healthy; 503 while loading, after an
/// engine failure, and while shutting down (so load balancers stop routing here).
#[utoipa::path(get, tag = "service", path = "/health", responses((status = 200), (status = 503)))]
pub async fn health(State(state): State<SharedState>) -> Response {
    match state.healthy() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response(),
        Err(e) => {
            let body = serde_json::json!({"status": "unavailable", "reason": e.message});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

#[utoipa::path(get, tag = "service", path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<SharedState>) -> Response {
    let stats = state.served().map(|s| s.engine.stats().as_ref());
    if let Some(images) = state.images() {
        state.metrics.images.sync(images.engine.stats());
    }
    let adapters: Vec<(usize, String)> = state
        .served()
        .map(|s| s.adapters().into_iter().map(|a| (a.slot, a.name)).collect())
        .unwrap_or_default();
    let text = state.metrics.render(stats, &adapters);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
