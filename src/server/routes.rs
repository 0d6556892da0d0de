//! The router: endpoints, auth on `/v1/*`, body limit, request ids, tracing, panics as 500.

use super::auth::require_api_key;
use super::error::ApiError;
use super::state::SharedState;
use super::{
    chat, classify, completions, embeddings, images, lora_admin, openapi, responses, service,
};
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub fn router(state: SharedState, max_body_bytes: usize) -> Router {
    let openai = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/responses", post(responses::create_response))
        .route("/v1/models", get(service::models))
        .route("/v1/models/{*model}", get(service::retrieve_model))
        .route("/v1/images/generations", post(images::generate_images))
        .route("/v1/load_lora_adapter", post(lora_admin::load_lora_adapter))
        .route(
            "/v1/unload_lora_adapter",
            post(lora_admin::unload_lora_adapter),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(openai)
        .route("/classify", post(classify::classify))
        .route("/tokenize", post(service::tokenize))
        .route("/detokenize", post(service::detokenize))
        .route("/version", get(service::version))
        .route("/health", get(service::health))
        .route("/metrics", get(service::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http())
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(panic_response)),
        )
        .with_state(state)
}

/// A bug must not take the connection (or the server) down: answer 500 in OpenAI's shape.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!("handler panicked: {what}");
    ApiError::internal("internal error").into_response()
}
