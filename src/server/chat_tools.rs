//! Tool calls in chat responses: whether a request's output is searched for them, and the
//! OpenAI shapes they come back in (a whole message, or stream deltas).

use super::error::{ApiError, ApiResult};
use super::types::chat::{
    AssistantMessage, ChatCompletionRequest, ChatDelta, FunctionCall, ToolCall, ToolCallDelta,
};
use crate::model::chat_template::ChatTemplate;
use crate::model::tool_calls::{self, StreamPiece, ToolCallFormat, ToolCallStream};

/// The format to look for calls in: only when the request offers tools, lets the model
/// choose (`tool_choice` absent or `auto`) and the model's template names a format.
/// Forcing a call (`required`, a named function) would need constrained decoding: a 400.
pub fn parser_for(
    req: &ChatCompletionRequest,
    template: Option<&ChatTemplate>,
) -> ApiResult<Option<ToolCallFormat>> {
    match req.tool_choice.as_ref() {
        None => {}
        Some(choice) if choice.as_str() == Some("auto") => {}
        Some(choice) if choice.as_str() == Some("none") => return Ok(None),
        Some(other) => {
            return Err(ApiError::invalid(
                Some("tool_choice"),
                format!(
                    "tool_choice {other} is not supported: only \"auto\" and \"none\" (forcing a \
                     call needs constrained decoding)"
                ),
            ))
        }
    }
    let offered = req.tools.as_ref().is_some_and(|tools| !tools.is_empty());
    Ok(template
        .and_then(ChatTemplate::tool_call_format)
        .filter(|_| offered))
}

/// A finished choice's message; the flag says whether it holds calls.
pub fn message(text: &str, parser: Option<ToolCallFormat>) -> (AssistantMessage, bool) {
    let (content, calls) = match parser {
        Some(format) => {
            let parsed = tool_calls::parse(format, text);
            (parsed.content, parsed.calls)
        }
        None => (Some(text.to_string()), Vec::new()),
    };
    let made_calls = !calls.is_empty();
    let message = AssistantMessage {
        role: "assistant",
        content,
        refusal: None,
        tool_calls: calls.into_iter().map(api_call).collect(),
    };
    (message, made_calls)
}

/// OpenAI reports `tool_calls` for a choice that ended by itself after making calls.
pub fn finish_reason(reason: Option<String>, made_calls: bool) -> Option<String> {
    match reason {
        Some(r) if made_calls && r == "stop" => Some("tool_calls".into()),
        other => other,
    }
}

fn api_call(call: tool_calls::ToolCall) -> ToolCall {
    ToolCall {
        id: format!("call_{:024x}", rand::random::<u128>() >> 32),
        kind: "function",
        function: FunctionCall {
            name: call.name,
            arguments: call.arguments,
        },
    }
}

/// One streamed choice: text deltas as they come, each call as one delta once it closes.
pub struct ChoiceStream {
    parser: Option<ToolCallStream>,
}

impl ChoiceStream {
    pub fn new(parser: Option<ToolCallFormat>) -> Self {
        ChoiceStream {
            parser: parser.map(ToolCallStream::new),
        }
    }

    pub fn made_calls(&self) -> bool {
        self.parser.as_ref().is_some_and(|p| p.calls() > 0)
    }

    /// The deltas for newly generated `text` (`finished`: nothing follows it).
    pub fn deltas(&mut self, text: &str, finished: bool) -> Vec<ChatDelta> {
        let Some(parser) = self.parser.as_mut() else {
            return vec![text_delta(text.to_string())];
        };
        let first_call = parser.calls();
        let mut pieces = parser.push(text);
        if finished {
            pieces.extend(parser.finish().map(StreamPiece::Text));
        }
        let mut calls = first_call..;
        pieces
            .into_iter()
            .map(|piece| match piece {
                StreamPiece::Text(t) => text_delta(t),
                StreamPiece::Call(call) => ChatDelta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: calls.next().unwrap_or_default(),
                        call: api_call(call),
                    }]),
                    ..Default::default()
                },
            })
            .collect()
    }
}

fn text_delta(text: String) -> ChatDelta {
    ChatDelta {
        content: Some(text),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
