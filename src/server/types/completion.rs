//! `POST /v1/completions`: request, response and stream chunk.

use super::common::{BeamRequest, Guided, SamplingFields, Stop, StreamOptions, Usage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A prompt in any of OpenAI's four forms.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub n: Option<usize>,
    /// Candidates generated per prompt (at least `n`, at most 20, not streamed); the `n`
    /// with the highest log-probability per token are returned.
    pub best_of: Option<usize>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Prepend the prompt to the completion text.
    pub echo: Option<bool>,
    /// Not supported (no fill-in-the-middle); must be null or empty.
    pub suffix: Option<String>,
    pub max_tokens: Option<usize>,
    pub min_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub include_stop_str_in_output: Option<bool>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    /// Alternatives per token (0 returns only the chosen token's logprob).
    pub logprobs: Option<usize>,
    /// Token id (as a string) to a bias in -100..=100 added to its logit.
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`.
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<serde_json::Value>,
    /// vLLM's: a JSON schema the output must satisfy.
    #[schema(value_type = Option<Object>)]
    pub guided_json: Option<serde_json::Value>,
    /// vLLM's: a regular expression the output must match.
    pub guided_regex: Option<String>,
    /// vLLM's: the output is exactly one of these strings.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM's: a grammar the output must follow, in llguidance's Lark dialect.
    pub guided_grammar: Option<String>,
    /// vLLM's newer form of the above: exactly one of `json` (a schema), `regex`,
    /// `choice`, `grammar` or `json_object: true`.
    #[schema(value_type = Option<Object>)]
    pub structured_outputs: Option<serde_json::Value>,
    pub user: Option<String>,
    /// vLLM's: only these token ids may be generated.
    pub allowed_token_ids: Option<Vec<u32>>,
    /// vLLM's: words the output must not contain (each tokenized as it would start the
    /// text and after a space).
    pub bad_words: Option<Vec<String>>,
    /// vLLM's: keep only the prompt's last N tokens; -1 keeps as many as leave room for
    /// `max_tokens`.
    pub truncate_prompt_tokens: Option<i64>,
    /// vLLM's: prefix-cache entries are shared only between requests with the same salt.
    pub cache_salt: Option<String>,
    /// vLLM's scheduling priority: only 0 (kiln schedules first come, first served).
    pub priority: Option<i64>,
    /// vLLM's: logprobs name each token `token_id:<id>` instead of by its text.
    pub return_tokens_as_token_ids: Option<bool>,
    /// vLLM's: return the `n` best beams of a beam search (ranked by cumulative
    /// log-probability over length^`length_penalty`) instead of sampling.
    pub use_beam_search: Option<bool>,
    /// vLLM's: the exponent of the length a beam's score divides by (default 1).
    pub length_penalty: Option<f64>,
    /// vLLM's: score every prompt token, with this many alternatives each (not streamed).
    pub prompt_logprobs: Option<usize>,
}

/// OpenAI's default when a completion request names no `max_tokens`.
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

impl CompletionRequest {
    pub fn beam(&self) -> BeamRequest {
        BeamRequest {
            use_beam_search: self.use_beam_search,
            length_penalty: self.length_penalty,
        }
    }

    pub fn sampling(&self) -> SamplingFields {
        SamplingFields {
            max_tokens: Some(self.max_tokens.unwrap_or(DEFAULT_COMPLETION_MAX_TOKENS)),
            min_tokens: self.min_tokens.unwrap_or(0),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            seed: self.seed,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            include_stop_str_in_output: self.include_stop_str_in_output.unwrap_or(false),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repetition_penalty: self.repetition_penalty,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            skip_special_tokens: self.skip_special_tokens,
            logprobs: self.logprobs,
            logit_bias: self.logit_bias.clone(),
            // `echo` with `logprobs` scores the echoed prompt too; vLLM's `prompt_logprobs`
            // asks for it outright. Both: the wider of the two is computed.
            prompt_logprobs: self
                .logprobs
                .filter(|_| self.echo == Some(true))
                .max(self.prompt_logprobs),
            allowed_token_ids: self.allowed_token_ids.clone(),
            cache_salt: self.cache_salt.clone(),
            priority: self.priority,
            guided: Guided {
                response_format: self.response_format.clone(),
                guided_json: self.guided_json.clone(),
                guided_regex: self.guided_regex.clone(),
                guided_choice: self.guided_choice.clone(),
                guided_grammar: self.guided_grammar.clone(),
                structured_outputs: self.structured_outputs.clone(),
            },
        }
    }
}

/// The legacy completions logprobs layout: parallel lists, one entry per token.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `null` for an echoed prompt's first token (nothing precedes it).
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Appends `other`'s entries (an echoed prompt's, then the generated tokens').
    pub fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<String>,
    /// vLLM's: each prompt token's score (the first `null`), when `prompt_logprobs` asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub prompt_logprobs: Option<Vec<Option<crate::server::logprobs::PromptLogprobEntry>>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Null on stream chunks unless it is the last one with `include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    pub system_fingerprint: Option<String>,
}
