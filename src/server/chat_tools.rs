//! Tool calls in chat responses: whether a request's output is searched for them, and the
//! OpenAI shapes they come back in (a whole message, or stream deltas).

use super::error::{ApiError, ApiResult};
use super::types::chat::{
    AssistantMessage, ChatCompletionRequest, ChatDelta, FunctionCall, ToolCall, ToolCallDelta,
};
use crate::model::chat_template::ChatTemplate;
use crate::model::grammar::{Structure, JSON_WHITESPACE};
use crate::model::harmony;
use crate::model::reasoning::{self, Piece, Reasoning, ReasoningFormat, ReasoningSplitter};
use crate::model::tool_calls::{self, StreamPiece, ToolCallFormat, ToolCallStream, ToolParser};

/// What a request's tools ask of the generation.
#[derive(Debug, PartialEq)]
pub struct ToolPlan {
    /// Look for calls in the output, in this format (typed by the request's tools).
    pub parser: Option<ToolParser>,
    /// `tool_choice` `required` or a named function: the output must be calls, so it is
    /// generated under this grammar.
    pub forced: Option<Structure>,
}

/// The plan for `req`: calls are looked for when it offers tools and the model's template
/// names a format; `tool_choice` `none` turns that off, `auto` (the default) leaves the
/// choice to the model, `required` or `{"type": "function", "function": {"name": ...}}`
/// force calls (to any offered tool, or to that one) with a grammar (`special_token_id`
/// looks up the tokenizer's ids for formats whose markers are special tokens).
pub fn tool_plan(
    req: &ChatCompletionRequest,
    template: Option<&ChatTemplate>,
    special_token_id: &dyn Fn(&str) -> Option<u32>,
) -> ApiResult<ToolPlan> {
    let invalid = |message: String| ApiError::invalid(Some("tool_choice"), message);
    let tools = offered_tools(req)?;
    let format = template
        .and_then(ChatTemplate::tool_call_format)
        .filter(|_| !tools.is_empty());
    let forced_to: Option<Option<&str>> = match req.tool_choice.as_ref() {
        None => None,
        Some(choice) => match (choice.as_str(), choice.pointer("/function/name")) {
            (Some("auto"), _) => None,
            (Some("none"), _) => {
                return Ok(ToolPlan {
                    parser: None,
                    forced: None,
                })
            }
            (Some("required"), _) => Some(None),
            (None, Some(name))
                if choice.get("type").and_then(|t| t.as_str()) == Some("function") =>
            {
                Some(Some(name.as_str().unwrap_or_default()))
            }
            _ => {
                return Err(invalid(format!(
                    "tool_choice must be \"auto\", \"none\", \"required\" or \
                     {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {choice}"
                )))
            }
        },
    };
    let Some(only) = forced_to else {
        return Ok(ToolPlan {
            parser: format.map(|f| ToolParser::new(f, tools)),
            forced: None,
        });
    };
    let harmony =
        template.and_then(ChatTemplate::reasoning_format) == Some(ReasoningFormat::Harmony);
    if tools.is_empty() || (format.is_none() && !harmony) {
        return Err(invalid(if tools.is_empty() {
            "tool_choice forces a call but the request offers no tools".into()
        } else {
            "this model's chat template names no tool-call format to force calls in (see \
             --tool-call-parser)"
                .into()
        }));
    }
    let chosen: Vec<(String, serde_json::Value)> = match only {
        None => tools.clone(),
        Some(name) => {
            let chosen: Vec<_> = tools.iter().filter(|(n, _)| n == name).cloned().collect();
            if chosen.is_empty() {
                return Err(invalid(format!(
                    "tool_choice names {name:?}, which is not among the tools"
                )));
            }
            chosen
        }
    };
    let options = serde_json::json!({"whitespace_pattern": JSON_WHITESPACE});
    let cannot_force =
        |why: String| invalid(format!("calls cannot be forced for this model: {why}"));
    let Some(format) = format else {
        // gpt-oss: harmony carries the calls itself, and its splitter reads them.
        let grammar =
            harmony::forcing_grammar(&chosen, &options, special_token_id).map_err(cannot_force)?;
        return Ok(ToolPlan {
            parser: None,
            forced: Some(Structure::Lark(grammar)),
        });
    };
    let parallel = req.parallel_tool_calls.unwrap_or(true) && only.is_none();
    let grammar =
        tool_calls::forcing_grammar(format, &chosen, parallel, &options, special_token_id)
            .map_err(cannot_force)?;
    Ok(ToolPlan {
        parser: Some(ToolParser::new(format, tools)),
        forced: Some(Structure::Lark(grammar)),
    })
}

/// The request's functions: (name, parameters schema), in order.
fn offered_tools(req: &ChatCompletionRequest) -> ApiResult<Vec<(String, serde_json::Value)>> {
    req.tools
        .iter()
        .flatten()
        .map(|tool| {
            let function = tool.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(|n| n.as_str())
                .ok_or_else(|| {
                    ApiError::invalid(
                        Some("tools"),
                        format!("a tool without a function name: {tool}"),
                    )
                })?;
            let parameters = function
                .and_then(|f| f.get("parameters"))
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            Ok((name.to_string(), parameters))
        })
        .collect()
}

/// A finished choice's message; the flag says whether it holds calls. With `reasoning` the
/// model's reasoning is split off `text` first (and, in harmony, its calls).
pub fn message(
    reasoning: Option<&Reasoning>,
    text: &str,
    parser: Option<&ToolParser>,
) -> (AssistantMessage, bool) {
    let split = match reasoning {
        Some(r) => reasoning::split(r, text),
        None => reasoning::Split {
            content: Some(text.to_string()),
            ..Default::default()
        },
    };
    let (reasoning_content, answer) = (split.reasoning, split.content);
    let text = answer.as_deref().unwrap_or("");
    let (content, mut calls) = match parser {
        Some(parser) => {
            let parsed = tool_calls::parse(parser.clone(), text);
            (parsed.content, parsed.calls)
        }
        None => (Some(text.to_string()), Vec::new()),
    };
    calls.extend(split.calls);
    let made_calls = !calls.is_empty();
    let format = parser.map(|p| p.format);
    let message = AssistantMessage {
        role: "assistant",
        // Only thinking (cut off before the answer): no content.
        content: content.filter(|_| answer.is_some()),
        refusal: None,
        tool_calls: calls
            .into_iter()
            .enumerate()
            .map(|(index, call)| api_call(call, format, index))
            .collect(),
        reasoning_content,
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

/// The OpenAI shape of the message's `index`-th call, with a new id in the shape the model's
/// format wants back.
fn api_call(call: tool_calls::ToolCall, format: Option<ToolCallFormat>, index: usize) -> ToolCall {
    ToolCall {
        id: format
            .unwrap_or(ToolCallFormat::Hermes)
            .call_id(&call.name, index),
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
    /// The format calls are read in, which shapes their ids.
    format: Option<ToolCallFormat>,
    /// Splits the model's thinking off first (with `--reasoning-parser`).
    reasoning: Option<ReasoningSplitter>,
    /// Calls the reasoning format carried itself (harmony), as streamed so far.
    format_calls: usize,
}

impl ChoiceStream {
    pub fn new(parser: Option<ToolParser>) -> Self {
        ChoiceStream {
            format: parser.as_ref().map(|p| p.format),
            parser: parser.map(ToolCallStream::new),
            reasoning: None,
            format_calls: 0,
        }
    }

    /// Also splits reasoning off, as `reasoning` says.
    pub fn with_reasoning(mut self, reasoning: &Reasoning) -> Self {
        self.reasoning = Some(ReasoningSplitter::new(reasoning));
        self
    }

    pub fn made_calls(&self) -> bool {
        self.calls() > 0
    }

    /// Calls streamed so far, from the tool-call parser and the reasoning format.
    fn calls(&self) -> usize {
        self.parser.as_ref().map_or(0, |p| p.calls()) + self.format_calls
    }

    /// The deltas for newly generated `text` (`finished`: nothing follows it).
    pub fn deltas(&mut self, text: &str, finished: bool) -> Vec<ChatDelta> {
        let Some(splitter) = self.reasoning.as_mut() else {
            return self.answer_deltas(text, finished);
        };
        let mut pieces = splitter.push(text);
        if finished {
            pieces.extend(splitter.finish());
        }
        let mut deltas = Vec::new();
        let mut answer = String::new();
        for piece in pieces {
            match piece {
                Piece::Reasoning(r) => deltas.push(ChatDelta {
                    reasoning_content: Some(r),
                    ..Default::default()
                }),
                Piece::Content(c) => answer.push_str(&c),
                Piece::Call(call) => {
                    let index = self.calls();
                    self.format_calls += 1;
                    deltas.push(ChatDelta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index,
                            call: api_call(call, None, index),
                        }]),
                        ..Default::default()
                    });
                }
            }
        }
        if !answer.is_empty() || finished {
            deltas.extend(self.answer_deltas(&answer, finished));
        }
        deltas
    }

    /// The deltas of the answer part: text, and calls where a parser finds them.
    fn answer_deltas(&mut self, text: &str, finished: bool) -> Vec<ChatDelta> {
        let Some(parser) = self.parser.as_mut() else {
            return vec![text_delta(text.to_string())];
        };
        let first_call = parser.calls() + self.format_calls;
        let mut pieces = parser.push(text);
        if finished {
            pieces.extend(parser.finish());
        }
        let mut calls = first_call..;
        pieces
            .into_iter()
            .map(|piece| match piece {
                StreamPiece::Text(t) => text_delta(t),
                StreamPiece::Call(call) => {
                    let index = calls.next().unwrap_or_default();
                    ChatDelta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index,
                            call: api_call(call, self.format, index),
                        }]),
                        ..Default::default()
                    }
                }
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
