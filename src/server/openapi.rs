//! `GET /openapi.json`, generated from the request/response types and handler annotations.

use super::types::{chat, common, completion, images, service as svc};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "kiln", description = "OpenAI-compatible inference API"),
    paths(
        super::chat::chat_completions,
        super::completions::completions,
        super::embeddings::embeddings,
        super::responses::create_response,
        super::images::generate_images,
        super::service::models,
        super::service::retrieve_model,
        super::service::tokenize,
        super::service::detokenize,
        super::service::version,
        super::service::health,
        super::service::metrics,
        super::classify::classify,
        super::lora_admin::load_lora_adapter,
        super::lora_admin::unload_lora_adapter,
    ),
    components(schemas(
        common::Usage,
        common::Stop,
        common::StreamOptions,
        chat::ChatCompletionChunk,
        completion::Prompt,
        svc::ModelCard,
        images::ImageData,
        super::error::ErrorBody,
    ))
)]
pub struct ApiDoc;

pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
