//! `POST /v1/responses`: OpenAI's Responses API. A request becomes the chat request it
//! amounts to (`input.rs`), runs through the chat endpoint's machinery, and its one choice
//! comes back as output items: reasoning, the message, function calls (whole, or as the
//! stream of events in `events.rs`).

mod events;
pub mod input;

use super::chat::{self, Prepared};
use super::chat_tools;
use super::error::{ApiError, ApiResult};
use super::generate;
use super::json::ApiJson;
use super::logprobs;
use super::state::SharedState;
use super::types::chat::{AssistantMessage, TokenLogprobEntry};
use super::types::responses::*;
use crate::engine::{FinishReason, RequestOutput};
use crate::model::tokenizer::Tokenizer;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Instant;

#[utoipa::path(post, tag = "openai", path = "/v1/responses", request_body = ResponsesRequest,
    responses(
        (status = 200, description = "A response, or `text/event-stream` events when `stream` is true", body = ResponseObject),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody)))]
pub async fn create_response(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<ResponsesRequest>,
) -> ApiResult<Response> {
    let arrival = Instant::now();
    let served = state.ready_for(&req.model)?;
    let chat_req = input::chat_request(&req)?;
    let prepared = chat::prepare(served, &chat_req, arrival).await?;
    let response = in_progress(&req);
    if req.stream.unwrap_or(false) {
        return Ok(events::stream(state.clone(), response, prepared));
    }
    let Prepared {
        submitted,
        want_logprobs,
        tool_parser,
        reasoning,
        ..
    } = prepared;
    let finals = generate::collect_all(submitted, &state.metrics).await?;
    let out = finals
        .first()
        .ok_or_else(|| ApiError::internal("a response without its choice"))?;
    let tokenizer = served.engine.tokenizer();
    let (message, _) = chat_tools::message(reasoning.as_ref(), &out.text, tool_parser.as_ref());
    let text_logprobs = if want_logprobs {
        logprobs::chat(logprobs::TokenNames::new(tokenizer, false), &out.logprobs).content
    } else {
        Vec::new()
    };
    let status = item_status(out);
    let output = output_items(message, text_logprobs, status);
    Ok(axum::Json(finished(response, output, out, tokenizer)).into_response())
}

/// The response as it stands before any output: the request's settings echoed.
fn in_progress(req: &ResponsesRequest) -> ResponseObject {
    ResponseObject {
        id: new_id("resp"),
        object: "response",
        created_at: super::state::unix_now(),
        status: "in_progress",
        error: None,
        incomplete_details: None,
        instructions: req.instructions.clone(),
        max_output_tokens: req.max_output_tokens,
        model: req.model.clone(),
        output: Vec::new(),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        previous_response_id: None,
        reasoning: req.reasoning.clone(),
        store: false,
        temperature: Some(req.temperature.unwrap_or(1.0)),
        text: req
            .text
            .clone()
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        tool_choice: req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        tools: req.tools.clone().unwrap_or_default(),
        top_p: Some(req.top_p.unwrap_or(1.0)),
        truncation: req.truncation.clone().unwrap_or_else(|| "disabled".into()),
        usage: None,
        user: req.user.clone(),
        metadata: req.metadata.clone().unwrap_or_else(|| json!({})),
    }
}

/// An id for a response or output item: OpenAI's prefixes, random hex.
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

/// An item cut off by the token limit is `incomplete`, as is the response.
fn item_status(out: &RequestOutput) -> &'static str {
    match out.finish_reason {
        Some(FinishReason::Length) | Some(FinishReason::Abort) => "incomplete",
        _ => "completed",
    }
}

/// `response` with its output and usage, finished as `out` finished.
fn finished(
    mut response: ResponseObject,
    output: Vec<OutputItem>,
    out: &RequestOutput,
    tokenizer: &Tokenizer,
) -> ResponseObject {
    let reasoning_tokens = output
        .iter()
        .map(|item| match item {
            OutputItem::Reasoning { content, .. } => content
                .iter()
                .map(|c| tokenizer.encode(&c.text, false).map_or(0, |ids| ids.len()))
                .sum(),
            _ => 0,
        })
        .sum::<usize>()
        .min(out.completion_tokens);
    response.status = item_status(out);
    if response.status == "incomplete" {
        response.incomplete_details = Some(IncompleteDetails {
            reason: "max_output_tokens",
        });
    }
    response.output = output;
    response.usage = Some(ResponseUsage {
        input_tokens: out.prompt_tokens,
        input_tokens_details: InputTokensDetails {
            cached_tokens: out.cached_tokens,
        },
        output_tokens: out.completion_tokens,
        output_tokens_details: OutputTokensDetails { reasoning_tokens },
        total_tokens: out.prompt_tokens + out.completion_tokens,
    });
    response
}

/// A finished choice's output items: its reasoning, its message (when it said anything or
/// made no call), then its calls.
fn output_items(
    message: AssistantMessage,
    text_logprobs: Vec<TokenLogprobEntry>,
    status: &'static str,
) -> Vec<OutputItem> {
    let mut items = Vec::new();
    if let Some(text) = message.reasoning_content {
        items.push(reasoning_item(new_id("rs"), text, status));
    }
    let content = message.content.unwrap_or_default();
    if !content.is_empty() || message.tool_calls.is_empty() {
        items.push(message_item(new_id("msg"), content, text_logprobs, status));
    }
    for call in message.tool_calls {
        items.push(call_item(call, "completed"));
    }
    items
}

fn message_item(
    id: String,
    text: String,
    logprobs: Vec<TokenLogprobEntry>,
    status: &'static str,
) -> OutputItem {
    OutputItem::Message {
        id,
        status,
        role: "assistant",
        content: vec![output_text(text, logprobs)],
    }
}

fn output_text(text: String, logprobs: Vec<TokenLogprobEntry>) -> OutputText {
    OutputText {
        kind: "output_text",
        text,
        annotations: Vec::new(),
        logprobs,
    }
}

fn reasoning_item(id: String, text: String, status: &'static str) -> OutputItem {
    OutputItem::Reasoning {
        id,
        summary: Vec::new(),
        content: vec![ReasoningText {
            kind: "reasoning_text",
            text,
        }],
        status,
    }
}

/// A chat tool call as a `function_call` item; its call id is the chat call's id.
fn call_item(call: super::types::chat::ToolCall, status: &'static str) -> OutputItem {
    OutputItem::FunctionCall {
        id: new_id("fc"),
        call_id: call.id,
        name: call.function.name,
        arguments: call.function.arguments,
        status,
    }
}
