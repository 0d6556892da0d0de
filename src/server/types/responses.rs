//! `POST /v1/responses` (OpenAI's Responses API): request, response and stream events.
//!
//! Only what one stateless generation needs: kiln keeps no responses, so
//! `previous_response_id`, `conversation` and `background` are refused and every response
//! says `"store": false`.

use super::chat::TokenLogprobEntry;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string (one user message) or a list of items: messages (`role`, `content` as a
    /// string or `input_text` / `output_text` parts), `function_call` and
    /// `function_call_output` items, and `reasoning` items (dropped).
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// A system message placed before the input.
    pub instructions: Option<String>,
    pub max_output_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Alternatives per output token; needs `include: ["message.output_text.logprobs"]`.
    pub top_logprobs: Option<usize>,
    pub stream: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<serde_json::Value>,
    /// Function tools (`{"type": "function", "name", "description", "parameters"}`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// `auto`, `none`, `required` or `{"type": "function", "name": ...}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// Accepted, not enforced (a forced call with `parallel_tool_calls: false` makes one).
    pub max_tool_calls: Option<usize>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    #[schema(value_type = Option<Object>)]
    pub text: Option<serde_json::Value>,
    /// Accepted and echoed; the model's own template decides how much it thinks.
    #[schema(value_type = Option<Object>)]
    pub reasoning: Option<serde_json::Value>,
    /// Extra output to include; `message.output_text.logprobs` is the one kiln has.
    pub include: Option<Vec<String>>,
    pub store: Option<bool>,
    pub background: Option<bool>,
    pub previous_response_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub conversation: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub prompt: Option<serde_json::Value>,
    pub truncation: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub user: Option<String>,
    pub safety_identifier: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub service_tier: Option<String>,
    // Sampling controls vLLM's Responses endpoint also takes.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OutputText {
    /// Always `output_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<serde_json::Value>,
    pub logprobs: Vec<TokenLogprobEntry>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReasoningText {
    /// Always `reasoning_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
}

/// One item of a response's `output`.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message {
        id: String,
        /// `in_progress`, `completed` or `incomplete`.
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        /// The arguments as JSON text.
        arguments: String,
        status: &'static str,
    },
    Reasoning {
        id: String,
        #[schema(value_type = Vec<Object>)]
        summary: Vec<serde_json::Value>,
        content: Vec<ReasoningText>,
        status: &'static str,
    },
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct OutputTokensDetails {
    /// Output tokens of the reasoning items (counted by tokenizing their text).
    pub reasoning_tokens: usize,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: &'static str,
}

/// A response object, whole or (in stream events) as it stands.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    /// Always `response`.
    pub object: &'static str,
    pub created_at: u64,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'static str,
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<usize>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub reasoning: Option<serde_json::Value>,
    /// Always false: kiln keeps no responses.
    pub store: bool,
    pub temperature: Option<f32>,
    #[schema(value_type = Object)]
    pub text: serde_json::Value,
    #[schema(value_type = Object)]
    pub tool_choice: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<serde_json::Value>,
    pub top_p: Option<f32>,
    pub truncation: String,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

/// A streamed event; every one carries its place in the stream.
#[derive(Clone, Debug, Serialize)]
pub struct SequencedEvent<'a> {
    #[serde(flatten)]
    pub event: &'a ResponseEvent,
    pub sequence_number: usize,
}

/// The stream events kiln sends, in the order a response produces them.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type")]
pub enum ResponseEvent {
    #[serde(rename = "response.created")]
    Created { response: Box<ResponseObject> },
    #[serde(rename = "response.in_progress")]
    InProgress { response: Box<ResponseObject> },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        output_index: usize,
        item: OutputItem,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        item_id: String,
        output_index: usize,
        content_index: usize,
        part: serde_json::Value,
    },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        item_id: String,
        output_index: usize,
        content_index: usize,
        delta: String,
        logprobs: Vec<TokenLogprobEntry>,
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        item_id: String,
        output_index: usize,
        content_index: usize,
        text: String,
        logprobs: Vec<TokenLogprobEntry>,
    },
    #[serde(rename = "response.reasoning_text.delta")]
    ReasoningTextDelta {
        item_id: String,
        output_index: usize,
        content_index: usize,
        delta: String,
    },
    #[serde(rename = "response.reasoning_text.done")]
    ReasoningTextDone {
        item_id: String,
        output_index: usize,
        content_index: usize,
        text: String,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        item_id: String,
        output_index: usize,
        content_index: usize,
        part: serde_json::Value,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        item_id: String,
        output_index: usize,
        delta: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        item_id: String,
        output_index: usize,
        name: String,
        arguments: String,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        output_index: usize,
        item: OutputItem,
    },
    #[serde(rename = "response.completed")]
    Completed { response: Box<ResponseObject> },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: Box<ResponseObject> },
}

impl ResponseEvent {
    /// The event's `type`, also sent as the SSE `event:` field.
    pub fn name(&self) -> &'static str {
        match self {
            ResponseEvent::Created { .. } => "response.created",
            ResponseEvent::InProgress { .. } => "response.in_progress",
            ResponseEvent::OutputItemAdded { .. } => "response.output_item.added",
            ResponseEvent::ContentPartAdded { .. } => "response.content_part.added",
            ResponseEvent::OutputTextDelta { .. } => "response.output_text.delta",
            ResponseEvent::OutputTextDone { .. } => "response.output_text.done",
            ResponseEvent::ReasoningTextDelta { .. } => "response.reasoning_text.delta",
            ResponseEvent::ReasoningTextDone { .. } => "response.reasoning_text.done",
            ResponseEvent::ContentPartDone { .. } => "response.content_part.done",
            ResponseEvent::FunctionCallArgumentsDelta { .. } => {
                "response.function_call_arguments.delta"
            }
            ResponseEvent::FunctionCallArgumentsDone { .. } => {
                "response.function_call_arguments.done"
            }
            ResponseEvent::OutputItemDone { .. } => "response.output_item.done",
            ResponseEvent::Completed { .. } => "response.completed",
            ResponseEvent::Incomplete { .. } => "response.incomplete",
        }
    }
}
