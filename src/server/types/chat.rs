//! `POST /v1/chat/completions`: request, response and stream chunk.

use super::common::{BeamRequest, Guided, SamplingFields, Stop, StreamOptions, Usage};
use crate::model::chat_template::ChatMessage;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    pub model: String,
    /// OpenAI chat messages (`role`, `content` as a string or parts, and any other fields
    /// the chat template reads).
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<ChatMessage>,
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; both are accepted.
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub min_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// -1 or 0: no top-k cut.
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
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
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
    /// Passed to the chat template as `tools`; kiln does not parse tool calls out of the
    /// output.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<serde_json::Value>>,
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// Extra variables for the chat template.
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// OpenAI's reasoning effort (`none`, `minimal`, `low`, `medium`, `high`), handed to
    /// the chat template as `reasoning_effort` (gpt-oss's template reads it).
    pub reasoning_effort: Option<String>,
    pub add_generation_prompt: Option<bool>,
    /// Leave the final (assistant) message open and let the model continue it, instead of
    /// starting a new turn (vLLM's; not with `add_generation_prompt`).
    pub continue_final_message: Option<bool>,
    pub user: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub store: Option<bool>,
    pub service_tier: Option<String>,
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

impl ChatCompletionRequest {
    pub fn beam(&self) -> BeamRequest {
        BeamRequest {
            use_beam_search: self.use_beam_search,
            length_penalty: self.length_penalty,
        }
    }

    pub fn sampling(&self) -> SamplingFields {
        let logprobs = self
            .logprobs
            .unwrap_or(false)
            .then(|| self.top_logprobs.unwrap_or(0));
        SamplingFields {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
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
            logprobs,
            logit_bias: self.logit_bias.clone(),
            prompt_logprobs: self.prompt_logprobs,
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

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenLogprobEntry {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprobEntry>,
    pub refusal: Option<Vec<TokenLogprobEntry>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    pub refusal: Option<String>,
    /// Calls found in the output (only when the request offered `tools`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The model's thinking before its answer (with `--reasoning-parser`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// A whole call in one stream chunk; `index` counts the choice's calls.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(flatten)]
    pub call: ToolCall,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: Option<String>,
    /// The stop string that ended the choice, if any (vLLM's extension).
    pub stop_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: Option<String>,
    /// vLLM's: each prompt token's score (the first `null`), when `prompt_logprobs` asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub prompt_logprobs: Option<Vec<Option<crate::server::logprobs::PromptLogprobEntry>>>,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Present (null until the last chunk) only with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    pub system_fingerprint: Option<String>,
}
