//! `POST /v1/embeddings`: request and response.

use super::completion::Prompt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of such lists.
    pub input: Prompt,
    /// `float` (default) or `base64` (each vector's little-endian f32 bytes).
    pub encoding_format: Option<String>,
    /// Keep only the first `dimensions` values (Matryoshka models), then normalise.
    pub dimensions: Option<usize>,
    pub user: Option<String>,
    /// vLLM's: `false` returns the pooled hidden state unnormalised.
    pub normalize: Option<bool>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

/// The vector as numbers, or as base64 of its little-endian f32 bytes.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}
