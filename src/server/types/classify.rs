//! `POST /classify` (vLLM's): request and response.

use super::completion::Prompt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassificationRequest {
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of such lists.
    pub input: Prompt,
    pub user: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ClassificationResponse {
    pub id: String,
    /// Always `list`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub data: Vec<ClassificationData>,
    pub usage: ClassificationUsage,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ClassificationData {
    pub index: usize,
    /// The most probable label.
    pub label: String,
    /// Softmax of the logits (a sigmoid for one-label models: reward models, binary
    /// classifiers).
    pub probs: Vec<f32>,
    pub num_classes: usize,
    /// kiln's: the score head's raw outputs (a reward model's reward).
    pub logits: Vec<f32>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ClassificationUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens: usize,
}
