//! `POST /v1/chat/completions`.

use super::beam;
use super::chat_tools;
use super::error::{ApiError, ApiResult};
use super::generate::{self, finish_reason, Choice, ResponseMeta};
use super::json::ApiJson;
use super::logprobs::{self, TokenNames};
use super::sampling::{bad_words_ids, choices, to_params, truncate_prompt};
use super::sse;
use super::state::{Served, SharedState};
use super::types::chat::*;
use super::types::common;
use crate::model::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use crate::model::reasoning::Reasoning;
use crate::model::tool_calls::ToolParser;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

#[utoipa::path(post, tag = "openai", path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A completion, or `text/event-stream` chunks when `stream` is true", body = ChatCompletion),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody)))]
pub async fn chat_completions(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> ApiResult<Response> {
    let arrival = Instant::now();
    let served = state.ready_for(&req.model)?;
    let Prepared {
        submitted,
        n,
        want_logprobs,
        tool_parser,
        reasoning,
    } = prepare(served, &req, arrival).await?;
    let meta = ResponseMeta::new("chatcmpl", &req.model);
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let options = StreamOptions {
            n,
            include_usage,
            continuous_usage: common::StreamOptions::continuous(req.stream_options.as_ref()),
            want_logprobs,
            token_ids: names_tokens_by_id(&req),
            tool_parser,
            reasoning,
        };
        return Ok(stream(state.clone(), meta, submitted, options));
    }
    let finals = generate::collect_all(submitted, &state.metrics).await?;
    let tokenizer = served.engine.tokenizer();
    let response = ChatCompletion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        usage: generate::usage(&finals, n),
        choices: finals
            .iter()
            .enumerate()
            .map(|(index, out)| {
                let (message, made_calls) =
                    chat_tools::message(reasoning.as_ref(), &out.text, tool_parser.as_ref());
                ChatChoice {
                    index,
                    message,
                    logprobs: want_logprobs.then(|| {
                        let names = TokenNames::new(tokenizer, names_tokens_by_id(&req));
                        logprobs::chat(names, &out.logprobs)
                    }),
                    finish_reason: chat_tools::finish_reason(finish_reason(out), made_calls),
                    stop_reason: out.stop_reason.clone(),
                }
            })
            .collect(),
        system_fingerprint: None,
        prompt_logprobs: req.prompt_logprobs.map(|top| {
            let names = TokenNames::new(tokenizer, names_tokens_by_id(&req));
            let scores = finals
                .first()
                .and_then(|f| f.prompt_logprobs.as_deref())
                .unwrap_or_default();
            logprobs::vllm_prompt(names, scores, top)
        }),
    };
    Ok(axum::Json(response).into_response())
}

/// A chat request checked, rendered through the template and submitted.
pub struct Prepared {
    pub submitted: Vec<Choice>,
    pub n: usize,
    pub want_logprobs: bool,
    /// Where calls are looked for in the output.
    pub tool_parser: Option<ToolParser>,
    /// How the model's reasoning is split off its answer, if it is.
    pub reasoning: Option<Reasoning>,
}

/// Validates `req`, renders its messages and submits its choices (shared with
/// `/v1/responses`, which arrives here as a chat request).
pub async fn prepare(
    served: &Served,
    req: &ChatCompletionRequest,
    arrival: Instant,
) -> ApiResult<Prepared> {
    reject_unsupported(req)?;
    if req.top_logprobs.is_some_and(|k| k > 0) && req.logprobs != Some(true) {
        return Err(ApiError::invalid(
            Some("top_logprobs"),
            "top_logprobs requires logprobs to be true",
        ));
    }
    let n = choices(req.n)?;
    served.generates()?;
    let mut params = to_params(req.sampling())?;
    params.lora_adapter = served.adapter_for(&req.model);
    let tokenizer = served.engine.tokenizer();
    params.bad_words_ids = bad_words_ids(tokenizer, req.bad_words.as_deref().unwrap_or_default())?;
    let plan = chat_tools::tool_plan(req, tokenizer.chat_template(), &|token| {
        tokenizer.token_to_id(token)
    })?;
    if let Some(forced) = plan.forced {
        if params.structure.is_some() {
            return Err(ApiError::invalid(
                Some("tool_choice"),
                "a forced tool call cannot be combined with response_format",
            ));
        }
        params.structure = Some(forced);
    }
    let (prompt, prompt_text) = render_prompt(served, req)?;
    let max_model_len = served.engine.info().max_model_len;
    let prompt = truncate_prompt(
        prompt,
        req.truncate_prompt_tokens,
        params.max_tokens,
        max_model_len,
    )?;
    // With a reasoning parser, the rendered prompt tells whether it opened the thinking.
    let reasoning = served
        .engine
        .tokenizer()
        .chat_template()
        .and_then(|t| t.reasoning_format())
        .map(|format| Reasoning {
            format,
            prompt: prompt_text,
        });
    let marks_are_special = reasoning
        .as_ref()
        .is_some_and(|r| r.format.marks_may_be_special_tokens())
        || plan
            .parser
            .as_ref()
            .is_some_and(|p| p.format.marks_may_be_special_tokens());
    if marks_are_special {
        // The parsers read markers that the tokenizer may list as special tokens
        // (harmony's channels, Seed-OSS's tags): decoding must keep them.
        params.skip_special_tokens = false;
    }
    let (beam, fields) = (req.beam(), req.sampling());
    let submitted = beam::choices(
        served,
        vec![prompt],
        n,
        &params,
        (beam, &fields),
        arrival,
        "messages",
    )
    .await?;
    Ok(Prepared {
        submitted,
        n,
        want_logprobs: params.logprobs.is_some(),
        tool_parser: plan.parser,
        reasoning,
    })
}

/// The values OpenAI's `reasoning_effort` takes.
const REASONING_EFFORTS: [&str; 5] = ["none", "minimal", "low", "medium", "high"];

fn reject_unsupported(req: &ChatCompletionRequest) -> ApiResult<()> {
    if req.prompt_logprobs.is_some() && req.stream == Some(true) {
        return Err(ApiError::invalid(
            Some("prompt_logprobs"),
            "prompt_logprobs are not available with stream",
        ));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages must not be empty",
        ));
    }
    if let Some(effort) = &req.reasoning_effort {
        if !REASONING_EFFORTS.contains(&effort.as_str()) {
            return Err(ApiError::invalid(
                Some("reasoning_effort"),
                format!(
                    "reasoning_effort must be one of {}, got {effort:?}",
                    REASONING_EFFORTS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The prompt token ids (the messages through the model's chat template) and the text they
/// were encoded from.
fn render_prompt(served: &Served, req: &ChatCompletionRequest) -> ApiResult<(Vec<u32>, String)> {
    let tokenizer = served.engine.tokenizer();
    let template = tokenizer.chat_template().ok_or_else(|| {
        ApiError::invalid(
            Some("messages"),
            "this model has no chat template; use /v1/completions",
        )
    })?;
    let mut extra = req.chat_template_kwargs.clone().unwrap_or_default();
    // A template variable of the same name, given explicitly, wins.
    if let Some(effort) = &req.reasoning_effort {
        extra
            .entry("reasoning_effort")
            .or_insert_with(|| effort.clone().into());
    }
    if let Some(tools) = &req.tools {
        extra.insert("tools".into(), serde_json::Value::from(tools.clone()));
    }
    let text = render_messages(
        template,
        &req.messages,
        req.add_generation_prompt,
        req.continue_final_message,
        serde_json::Value::Object(extra),
    )?;
    // The template wrote the special tokens itself.
    let ids = tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::internal(format!("tokenizing the prompt: {e:#}")))?;
    Ok((ids, text))
}

/// The chat text of `messages`: a new assistant turn opened (default), or with
/// `continue_final_message` the final message left open.
pub fn render_messages(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    extra: serde_json::Value,
) -> ApiResult<String> {
    let continuing = continue_final_message.unwrap_or(false);
    if continuing && add_generation_prompt == Some(true) {
        return Err(ApiError::invalid(
            Some("continue_final_message"),
            "continue_final_message cannot be combined with add_generation_prompt",
        ));
    }
    let rendered = if continuing {
        template.render_continuing(messages, extra)
    } else {
        template.render(messages, add_generation_prompt.unwrap_or(true), extra)
    };
    rendered.map_err(|e| match e {
        ChatTemplateError::Compile(_) => ApiError::internal(e.to_string()),
        _ => ApiError::invalid(Some("messages"), e.to_string()),
    })
}

/// How a streamed chat response is shaped.
struct StreamOptions {
    n: usize,
    include_usage: bool,
    /// Usage so far on every chunk of generated text.
    continuous_usage: bool,
    want_logprobs: bool,
    /// Logprobs name tokens `token_id:<id>`.
    token_ids: bool,
    tool_parser: Option<ToolParser>,
    /// How reasoning is split off the answer, if it is.
    reasoning: Option<Reasoning>,
}

/// vLLM's `return_tokens_as_token_ids`.
fn names_tokens_by_id(req: &ChatCompletionRequest) -> bool {
    req.return_tokens_as_token_ids.unwrap_or(false)
}

fn chunk(meta: &ResponseMeta, choice: ChatChunkChoice, include_usage: bool) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: meta.id.clone(),
        object: "chat.completion.chunk",
        created: meta.created,
        model: meta.model.clone(),
        choices: vec![choice],
        usage: include_usage.then_some(None),
        system_fingerprint: None,
    }
}

fn stream(
    state: SharedState,
    meta: ResponseMeta,
    submitted: Vec<Choice>,
    options: StreamOptions,
) -> Response {
    let StreamOptions {
        n,
        include_usage,
        continuous_usage,
        want_logprobs,
        token_ids,
        tool_parser,
        reasoning,
    } = options;
    sse::response(move |tx| async move {
        let Some(served) = state.served() else { return };
        let tokenizer = served.engine.tokenizer().clone();
        let count = submitted.len();
        let mut finals = vec![None; count];
        for index in 0..count {
            let delta = ChatDelta {
                role: Some("assistant"),
                content: Some(String::new()),
                tool_calls: None,
                reasoning_content: None,
            };
            let first = ChatChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: None,
            };
            tx.send(&chunk(&meta, first, include_usage));
        }
        let mut choice_streams: Vec<_> = (0..count)
            .map(|_| {
                let s = chat_tools::ChoiceStream::new(tool_parser.clone());
                match &reasoning {
                    Some(r) => s.with_reasoning(r),
                    None => s,
                }
            })
            .collect();
        let mut events = generate::interleave(submitted, state.clone());
        loop {
            let (index, out) = match generate::next_output(&mut events, &tx).await {
                generate::Next::Output(index, out) => (index, out),
                generate::Next::End => break,
                generate::Next::Stop => return,
            };
            let finish = finish_reason(&out);
            let choice_stream = &mut choice_streams[index];
            let mut deltas = choice_stream.deltas(&out.text, finish.is_some());
            let nothing_new = deltas.iter().all(|d| {
                d.tool_calls.is_none()
                    && d.reasoning_content.is_none()
                    && d.content.as_deref().is_none_or(str::is_empty)
            });
            if nothing_new && finish.is_none() && !want_logprobs {
                continue;
            }
            let finish = chat_tools::finish_reason(finish, choice_stream.made_calls());
            if deltas.is_empty() {
                deltas.push(ChatDelta {
                    content: Some(String::new()),
                    ..Default::default()
                });
            }
            let last = deltas.len() - 1;
            for (k, delta) in deltas.into_iter().enumerate() {
                let choice = ChatChunkChoice {
                    index,
                    delta,
                    logprobs: (want_logprobs && k == 0).then(|| {
                        logprobs::chat(TokenNames::new(&tokenizer, token_ids), &out.logprobs)
                    }),
                    finish_reason: finish.clone().filter(|_| k == last),
                };
                let mut c = chunk(&meta, choice, include_usage);
                if continuous_usage {
                    c.usage = Some(Some(usage_so_far(&out)));
                }
                tx.send(&c);
            }
            if finish.is_some() {
                finals[index] = Some(out);
            }
        }
        if include_usage {
            let finals: Vec<_> = finals.into_iter().flatten().collect();
            let last = ChatCompletionChunk {
                choices: Vec::new(),
                usage: Some(Some(generate::usage(&finals, n))),
                ..chunk(&meta, placeholder_choice(), true)
            };
            tx.send(&last);
        }
        tx.done();
    })
}

/// A choice's usage up to this output (`continuous_usage_stats`).
pub fn usage_so_far(out: &crate::engine::RequestOutput) -> common::Usage {
    common::Usage::new(out.prompt_tokens, out.completion_tokens, out.cached_tokens)
}

fn placeholder_choice() -> ChatChunkChoice {
    ChatChunkChoice {
        index: 0,
        delta: ChatDelta::default(),
        logprobs: None,
        finish_reason: None,
    }
}
