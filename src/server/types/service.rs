//! Models, tokenizer and version endpoints.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub max_model_len: usize,
    /// A LoRA adapter's base model (vLLM's field); absent for the base model itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// Text to tokenize: a `prompt`, or chat `messages` rendered through the chat template.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub messages: Option<Vec<crate::model::chat_template::ChatMessage>>,
    /// Add BOS etc. (for `prompt`; default true).
    pub add_special_tokens: Option<bool>,
    /// For `messages` (default true).
    pub add_generation_prompt: Option<bool>,
    /// As for chat completions: leave the final message open.
    pub continue_final_message: Option<bool>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: usize,
    pub max_model_len: usize,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct VersionResponse {
    pub version: &'static str,
}
