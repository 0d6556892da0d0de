//! What the engine streams back for a request.

use serde::Serialize;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or the model length reached.
    Length,
    /// Cancelled by the client or the server.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// The chosen token's log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
    /// The token's rank in the whole vocabulary (1: the likeliest), where it was computed
    /// (prompt tokens: vLLM's `prompt_logprobs` report it).
    pub rank: Option<u32>,
}

/// One increment of a request's output. The last one carries `finish_reason`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RequestOutput {
    /// Tokens generated since the previous increment.
    pub token_ids: Vec<u32>,
    /// Text of those tokens, never a broken UTF-8 sequence; may lag the tokens (held back
    /// while a stop string or a multi-byte character could still be forming).
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
    /// The stop string or token that ended the request, if any.
    pub stop_reason: Option<String>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    /// Every prompt token's log-probability (the first has none), on the first increment
    /// of a request that asked for them.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    /// An embedding request's vector (its only increment).
    pub embedding: Option<Vec<f32>>,
    /// Time between arrival and first scheduling; set on the first increment.
    #[serde(skip)]
    pub queue_time: Option<Duration>,
}

/// What a request's stream yields: an increment, or the error that ended it.
pub type RequestEvent = Result<RequestOutput, String>;
