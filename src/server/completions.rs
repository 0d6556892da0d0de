//! `POST /v1/completions`.

use super::beam;
use super::best_of;
use super::error::{ApiError, ApiResult};
use super::generate::{self, finish_reason, Choice, ResponseMeta};
use super::json::ApiJson;
use super::logprobs::{self, TokenNames};
use super::sampling::{bad_words_ids, choices, to_params, truncate_prompt};
use super::sse;
use super::state::{Served, SharedState};
use super::types::completion::*;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

/// Most prompts one request may carry.
const MAX_PROMPTS: usize = 256;

#[utoipa::path(post, tag = "openai", path = "/v1/completions", request_body = CompletionRequest,
    responses(
        (status = 200, description = "A completion, or `text/event-stream` chunks when `stream` is true", body = Completion),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody)))]
pub async fn completions(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> ApiResult<Response> {
    let arrival = Instant::now();
    let served = state.ready_for(&req.model)?;
    served.generates()?;
    reject_unsupported(&req)?;
    let n = choices(req.n)?;
    let candidates = best_of::candidates(req.best_of, n, req.stream.unwrap_or(false))?;
    if candidates > n && req.use_beam_search == Some(true) {
        return Err(ApiError::invalid(
            Some("best_of"),
            "best_of cannot be combined with use_beam_search (n is the beam width)",
        ));
    }
    let mut params = to_params(req.sampling())?;
    params.lora_adapter = served.adapter_for(&req.model);
    let bad_words = req.bad_words.as_deref().unwrap_or_default();
    params.bad_words_ids = bad_words_ids(served.engine.tokenizer(), bad_words)?;
    let max_model_len = served.engine.info().max_model_len;
    let prompts = tokenize_prompts(served, &req.prompt)?
        .into_iter()
        .map(|p| {
            truncate_prompt(
                p,
                req.truncate_prompt_tokens,
                params.max_tokens,
                max_model_len,
            )
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let echo = req.echo.unwrap_or(false);
    // What `echo` prepends: the prompt as text, once per choice of that prompt.
    let echoed: Vec<String> = if echo {
        let tokenizer = served.engine.tokenizer();
        prompts
            .iter()
            .map(|p| {
                tokenizer
                    .decode(p, false)
                    .map_err(|e| ApiError::internal(format!("decoding the prompt: {e:#}")))
            })
            .collect::<ApiResult<_>>()?
    } else {
        vec![String::new(); prompts.len()]
    };
    // An echoed prompt's ids, for its logprobs' token texts.
    let echoed_ids: Vec<Vec<u32>> = if echo { prompts.clone() } else { Vec::new() };
    let want_logprobs = params.logprobs.is_some();
    if candidates > n {
        // best_of ranks the candidates by their tokens' log-probabilities.
        params.logprobs.get_or_insert(0);
    }
    let (beam, fields) = (req.beam(), req.sampling());
    let submitted = beam::choices(
        served,
        prompts,
        candidates,
        &params,
        (beam, &fields),
        arrival,
        "prompt",
    )
    .await?;
    let meta = ResponseMeta::new("cmpl", &req.model);
    let token_ids = req.return_tokens_as_token_ids.unwrap_or(false);
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let options = StreamOptions {
            n,
            include_usage,
            continuous_usage: super::types::common::StreamOptions::continuous(
                req.stream_options.as_ref(),
            ),
            want_logprobs,
            top: req.logprobs.unwrap_or(0),
            token_ids,
        };
        return Ok(stream(
            state.clone(),
            meta,
            submitted,
            Echo {
                texts: echoed,
                ids: echoed_ids,
            },
            options,
        ));
    }
    let finals = generate::collect_all(submitted, &state.metrics).await?;
    // Every candidate's tokens were generated, so all count.
    let usage = generate::usage(&finals, candidates);
    let finals = if candidates > n {
        best_of::pick(finals, candidates, n, want_logprobs)
    } else {
        finals
    };
    let tokenizer = served.engine.tokenizer();
    let response = Completion {
        id: meta.id,
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        usage: Some(Some(usage)),
        choices: finals
            .iter()
            .enumerate()
            .map(|(index, out)| {
                let prefix = &echoed[index / n];
                let mut offset = prefix.len();
                CompletionChoice {
                    index,
                    text: format!("{prefix}{}", out.text),
                    logprobs: want_logprobs.then(|| {
                        let names = TokenNames::new(tokenizer, token_ids);
                        let top = req.logprobs.unwrap_or(0);
                        let mut all = echoed_logprobs(names, &echoed_ids, index / n, out, top);
                        all.extend(logprobs::completion(names, &out.logprobs, &mut offset));
                        all
                    }),
                    finish_reason: finish_reason(out),
                    stop_reason: out.stop_reason.clone(),
                    prompt_logprobs: req.prompt_logprobs.map(|top| {
                        let names = TokenNames::new(tokenizer, token_ids);
                        let scores = out.prompt_logprobs.as_deref().unwrap_or_default();
                        logprobs::vllm_prompt(names, scores, top)
                    }),
                }
            })
            .collect(),
        system_fingerprint: None,
    };
    Ok(axum::Json(response).into_response())
}

fn reject_unsupported(req: &CompletionRequest) -> ApiResult<()> {
    if req.prompt_logprobs.is_some() && req.stream == Some(true) {
        return Err(ApiError::invalid(
            Some("prompt_logprobs"),
            "prompt_logprobs are not available with stream",
        ));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(Some("suffix"), "suffix is not supported"));
    }
    Ok(())
}

/// The echoed prompt's logprobs entries for a choice of prompt `prompt` (none without echo).
fn echoed_logprobs(
    names: TokenNames<'_>,
    echoed_ids: &[Vec<u32>],
    prompt: usize,
    out: &crate::engine::RequestOutput,
    top: usize,
) -> CompletionLogprobs {
    match (echoed_ids.get(prompt), &out.prompt_logprobs) {
        (Some(ids), Some(scores)) => logprobs::completion_prompt(names, ids, scores, top),
        _ => CompletionLogprobs::default(),
    }
}

/// What `echo` prepends to each prompt's choices: its text and its ids.
struct Echo {
    texts: Vec<String>,
    ids: Vec<Vec<u32>>,
}

/// The prompt ids of each prompt, in any of OpenAI's four forms.
fn tokenize_prompts(served: &Served, prompt: &Prompt) -> ApiResult<Vec<Vec<u32>>> {
    tokenize_inputs(served, prompt, "prompt", MAX_PROMPTS)
}

/// The token ids of each input of a prompt-like field (`param`), at most `max` of them.
pub(super) fn tokenize_inputs(
    served: &Served,
    prompt: &Prompt,
    param: &str,
    max: usize,
) -> ApiResult<Vec<Vec<u32>>> {
    let tokenizer = served.engine.tokenizer();
    let encode = |text: &str| {
        tokenizer
            .encode(text, true)
            .map_err(|e| ApiError::internal(format!("tokenizing the {param}: {e:#}")))
    };
    let prompts = match prompt {
        Prompt::Text(text) => vec![encode(text)?],
        Prompt::Texts(texts) => texts.iter().map(|t| encode(t)).collect::<ApiResult<_>>()?,
        Prompt::Tokens(ids) => vec![ids.clone()],
        Prompt::TokenLists(lists) => lists.clone(),
    };
    if prompts.is_empty() || prompts.len() > max {
        return Err(ApiError::invalid(
            Some(param),
            format!("between 1 and {max} {param}s per request"),
        ));
    }
    Ok(prompts)
}

struct StreamOptions {
    n: usize,
    include_usage: bool,
    /// Usage so far on every chunk of generated text.
    continuous_usage: bool,
    want_logprobs: bool,
    /// Alternatives per token (`logprobs`).
    top: usize,
    /// Logprobs name tokens `token_id:<id>` (vLLM's `return_tokens_as_token_ids`).
    token_ids: bool,
}

fn chunk(meta: &ResponseMeta, choices: Vec<CompletionChoice>, include_usage: bool) -> Completion {
    Completion {
        id: meta.id.clone(),
        object: "text_completion",
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage: include_usage.then_some(None),
        system_fingerprint: None,
    }
}

fn stream(
    state: SharedState,
    meta: ResponseMeta,
    submitted: Vec<Choice>,
    echo: Echo,
    opts: StreamOptions,
) -> Response {
    let echoed = echo.texts;
    sse::response(move |tx| async move {
        let Some(served) = state.served() else { return };
        let tokenizer = served.engine.tokenizer().clone();
        let count = submitted.len();
        let mut finals = vec![None; count];
        // Where each choice's next token starts in its text (after any echoed prompt).
        let mut offsets: Vec<usize> = (0..count).map(|i| echoed[i / opts.n].len()).collect();
        let mut pending_echo: Vec<bool> =
            (0..count).map(|i| !echoed[i / opts.n].is_empty()).collect();
        let mut events = generate::interleave(submitted, state.clone());
        loop {
            let (index, out) = match generate::next_output(&mut events, &tx).await {
                generate::Next::Output(index, out) => (index, out),
                generate::Next::End => break,
                generate::Next::Stop => return,
            };
            let finish = finish_reason(&out);
            let mut text = out.text.clone();
            if std::mem::take(&mut pending_echo[index]) {
                text.insert_str(0, &echoed[index / opts.n]);
            }
            if text.is_empty() && finish.is_none() && !opts.want_logprobs {
                continue;
            }
            let choice = CompletionChoice {
                index,
                text,
                logprobs: opts.want_logprobs.then(|| {
                    // The first increment of an echoed choice carries the prompt's scores.
                    let names = TokenNames::new(&tokenizer, opts.token_ids);
                    let mut all = echoed_logprobs(names, &echo.ids, index / opts.n, &out, opts.top);
                    all.extend(logprobs::completion(
                        names,
                        &out.logprobs,
                        &mut offsets[index],
                    ));
                    all
                }),
                finish_reason: finish.clone(),
                stop_reason: out.stop_reason.clone(),
                // Refused with `stream` (as vLLM does).
                prompt_logprobs: None,
            };
            let mut c = chunk(&meta, vec![choice], opts.include_usage);
            if opts.continuous_usage {
                c.usage = Some(Some(super::chat::usage_so_far(&out)));
            }
            tx.send(&c);
            if finish.is_some() {
                finals[index] = Some(out);
            }
        }
        if opts.include_usage {
            let finals: Vec<_> = finals.into_iter().flatten().collect();
            let mut last = chunk(&meta, Vec::new(), true);
            last.usage = Some(Some(generate::usage(&finals, opts.n)));
            tx.send(&last);
        }
        tx.done();
    })
}
