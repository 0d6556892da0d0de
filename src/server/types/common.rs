//! Pieces shared by chat and text completions: stop sequences, stream options, usage.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `stop`: one string or a list of up to [`MAX_STOP_SEQUENCES`].
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Upper bound on stop sequences per request; OpenAI allows 4, vLLM more. Generous but
/// finite so that a request cannot make every step scan a huge list.
pub const MAX_STOP_SEQUENCES: usize = 32;

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and `"usage": null` on every other chunk).
    #[serde(default)]
    pub include_usage: bool,
    /// vLLM's: with `include_usage`, every chunk of generated text also carries its
    /// choice's usage so far.
    #[serde(default)]
    pub continuous_usage_stats: bool,
}

impl StreamOptions {
    /// Whether every chunk carries usage (`continuous_usage_stats` with `include_usage`).
    pub fn continuous(options: Option<&StreamOptions>) -> bool {
        options.is_some_and(|o| o.include_usage && o.continuous_usage_stats)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV entries came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// The sampling fields both endpoints share, before they become engine parameters.
#[derive(Clone, Debug, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<usize>,
    pub min_tokens: usize,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Vec<u32>,
    pub include_stop_str_in_output: bool,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: bool,
    pub skip_special_tokens: Option<bool>,
    /// Alternatives per token, when logprobs are asked for at all.
    pub logprobs: Option<usize>,
    /// OpenAI's `logit_bias`: token ids (as strings) to biases.
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// Alternatives per prompt token, when the prompt's logprobs are asked for at all.
    pub prompt_logprobs: Option<usize>,
    /// Structured output, in OpenAI's form and vLLM's.
    pub guided: Guided,
    /// vLLM's `allowed_token_ids`.
    pub allowed_token_ids: Option<Vec<u32>>,
    /// vLLM's `cache_salt`.
    pub cache_salt: Option<String>,
    /// vLLM's `priority`.
    pub priority: Option<i64>,
}

/// A request's beam-search fields (vLLM's).
#[derive(Clone, Copy, Debug, Default)]
pub struct BeamRequest {
    pub use_beam_search: Option<bool>,
    pub length_penalty: Option<f64>,
}

/// The structured-output fields of a request: OpenAI's `response_format` and vLLM's
/// `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` and their newer
/// `structured_outputs` object; at most one may constrain it.
#[derive(Clone, Debug, Default)]
pub struct Guided {
    pub response_format: Option<serde_json::Value>,
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    pub structured_outputs: Option<serde_json::Value>,
}
