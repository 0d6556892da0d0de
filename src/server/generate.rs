//! Submitting the choices of a request (each prompt times `n`) and reading them back, with
//! latency metrics observed on the way. Dropping a [`Choice`] cancels its engine request.

use super::error::{ApiError, ApiResult};
use super::metrics::{RequestTimer, ServerMetrics};
use super::sampling::for_choice;
use super::state::Served;
use crate::engine::handle::merge;
use crate::engine::{RequestError, RequestOutput, RequestStream, SamplingParams};
use futures_util::stream::{self, BoxStream, StreamExt};
use std::sync::Arc;
use std::time::Instant;

use super::state::AppState;

/// One choice of a response: its place in `choices`, its prompt, its engine stream.
pub struct Choice {
    pub index: usize,
    pub prompt_index: usize,
    stream: RequestStream,
    timer: RequestTimer,
}

/// Submits `n` choices per prompt; choice `p * n + i` is prompt `p`'s `i`-th. If any is
/// refused, those already submitted are cancelled (dropped) and the error is returned.
pub fn submit(
    served: &Served,
    prompts: Vec<Vec<u32>>,
    n: usize,
    params: &SamplingParams,
    arrival: Instant,
    prompt_param: &str,
) -> ApiResult<Vec<Choice>> {
    let mut choices = Vec::with_capacity(prompts.len() * n);
    let max_model_len = served.engine.info().max_model_len;
    for (prompt_index, prompt) in prompts.into_iter().enumerate() {
        check_fits(prompt.len(), params.max_tokens, max_model_len)?;
        for i in 0..n {
            let stream = served
                .engine
                .submit(prompt.clone(), for_choice(params, i))
                .map_err(|e| request_error(e, prompt_param))?;
            choices.push(Choice {
                index: prompt_index * n + i,
                prompt_index,
                stream,
                timer: RequestTimer::start(arrival),
            });
        }
    }
    Ok(choices)
}

/// OpenAI refuses a prompt and `max_tokens` that cannot fit the context rather than
/// silently generating less.
pub fn check_fits(
    prompt_len: usize,
    max_tokens: Option<usize>,
    max_model_len: usize,
) -> ApiResult<()> {
    match max_tokens {
        Some(max_tokens) if prompt_len.saturating_add(max_tokens) > max_model_len => {
            Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    Some("max_tokens"),
                    format!(
                        "this model's maximum context length is {max_model_len} tokens; \
                         the prompt has {prompt_len} and max_tokens asks for {max_tokens} more"
                    ),
                )
            })
        }
        _ => Ok(()),
    }
}

pub(super) fn request_error(e: RequestError, prompt_param: &str) -> ApiError {
    let prompt_problem = matches!(
        e,
        RequestError::PromptTooLong { .. }
            | RequestError::EmptyPrompt
            | RequestError::InvalidToken { .. }
    );
    let mut err = ApiError::from(e);
    if prompt_problem {
        err.param = Some(prompt_param.to_string());
    }
    err
}

impl Choice {
    /// A choice whose whole output is already known (a beam of a beam search).
    pub fn finished(
        served: &Served,
        index: usize,
        prompt_index: usize,
        out: RequestOutput,
        arrival: Instant,
    ) -> Choice {
        Choice {
            index,
            prompt_index,
            stream: served.engine.finished_stream(out),
            timer: RequestTimer::start(arrival),
        }
    }

    /// The next increment; `None` once the final one (with `finish_reason`) has been read.
    pub async fn next(&mut self, metrics: &ServerMetrics) -> Option<Result<RequestOutput, String>> {
        let mut ev = self.stream.next().await?;
        // Increments already waiting are merged into this one: a client that falls behind the
        // engine gets fewer, larger chunks instead of a growing backlog of tiny ones.
        while let Ok(out) = &mut ev {
            if out.finish_reason.is_some() {
                break;
            }
            match self.stream.try_next() {
                Some(Ok(more)) => crate::engine::handle::merge(out, more),
                Some(Err(e)) => ev = Err(e),
                None => break,
            }
        }
        if let Ok(out) = &ev {
            self.timer.observe(metrics, out);
        }
        Some(ev)
    }

    /// Reads the choice to its end, merging the increments.
    pub async fn collect(mut self, metrics: &ServerMetrics) -> ApiResult<(usize, RequestOutput)> {
        let mut all = RequestOutput::default();
        while let Some(ev) = self.next(metrics).await {
            merge(&mut all, ev.map_err(ApiError::internal)?);
            if all.finish_reason.is_some() {
                return Ok((self.index, all));
            }
        }
        Err(ApiError::unavailable(
            "the engine stopped before the request finished",
        ))
    }
}

/// Each input's pooled vector (the engine's pooling requests: embeddings, classifier
/// scores) and the prompt tokens the inputs held in all.
pub async fn pool_all(
    served: &Served,
    inputs: Vec<Vec<u32>>,
    pooling: crate::engine::params::Pooling,
    arrival: Instant,
    metrics: &ServerMetrics,
) -> ApiResult<(Vec<Vec<f32>>, usize)> {
    let params = SamplingParams {
        pooling: Some(pooling),
        ..SamplingParams::default()
    };
    let submitted = submit(served, inputs, 1, &params, arrival, "input")?;
    let finals = collect_all(submitted, metrics).await?;
    let prompt_tokens = finals.iter().map(|o| o.prompt_tokens).sum();
    let vectors = finals
        .into_iter()
        .map(|o| {
            o.embedding
                .ok_or_else(|| ApiError::internal("the engine returned no pooled vector"))
        })
        .collect::<ApiResult<_>>()?;
    Ok((vectors, prompt_tokens))
}

/// Reads every choice to its end, concurrently; results in choice order.
pub async fn collect_all(
    choices: Vec<Choice>,
    metrics: &ServerMetrics,
) -> ApiResult<Vec<RequestOutput>> {
    let mut results =
        futures_util::future::join_all(choices.into_iter().map(|c| c.collect(metrics)))
            .await
            .into_iter()
            .collect::<ApiResult<Vec<_>>>()?;
    results.sort_by_key(|(index, _)| *index);
    Ok(results.into_iter().map(|(_, out)| out).collect())
}

/// An event of a streamed response: which choice, and its increment or failure.
pub type ChoiceEvent = (usize, Result<RequestOutput, String>);

/// All choices' increments as they come, interleaved. Each choice's part ends after its
/// final increment (or its error); a choice whose engine stream ends early yields an error.
pub fn interleave(choices: Vec<Choice>, state: Arc<AppState>) -> BoxStream<'static, ChoiceEvent> {
    let parts = choices.into_iter().map(move |choice| {
        let state = state.clone();
        stream::unfold(Some(choice), move |choice| {
            let state = state.clone();
            async move {
                let mut choice = choice?;
                let index = choice.index;
                match choice.next(&state.metrics).await {
                    Some(Ok(out)) if out.finish_reason.is_none() => {
                        Some(((index, Ok(out)), Some(choice)))
                    }
                    Some(ev) => Some(((index, ev), None)),
                    None => Some((
                        (
                            index,
                            Err("the engine stopped before the request finished".into()),
                        ),
                        None,
                    )),
                }
            }
        })
        .boxed()
    });
    stream::select_all(parts).boxed()
}

/// What a streaming handler does after [`next_output`].
pub enum Next {
    /// An increment of choice `index` to send.
    Output(usize, RequestOutput),
    /// Every choice has finished: send the trailer.
    End,
    /// An engine error was already sent: stop.
    Stop,
}

/// The next increment of a streamed response. An engine error is sent to the client as an
/// SSE error event followed by `[DONE]`. (A client that goes away drops the whole producer,
/// so there is no "closed" case to watch for here.)
pub async fn next_output(
    events: &mut BoxStream<'static, ChoiceEvent>,
    tx: &super::sse::SseSender,
) -> Next {
    match events.next().await {
        None => Next::End,
        Some((index, Ok(out))) => Next::Output(index, out),
        Some((_, Err(message))) => {
            tx.send_error(ApiError::internal(message));
            tx.done();
            Next::Stop
        }
    }
}

/// The fields every response and chunk of one request repeats.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    pub fn new(prefix: &str, model: &str) -> Self {
        ResponseMeta {
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: super::state::unix_now(),
            model: model.to_string(),
        }
    }
}

/// Usage over all choices: each prompt counted once (as OpenAI does for `n` > 1), every
/// choice's generated tokens summed. `finals[i]` is choice `i`'s last output.
pub fn usage<'a>(
    finals: impl IntoIterator<Item = &'a RequestOutput>,
    n: usize,
) -> super::types::common::Usage {
    let (mut prompt, mut completion, mut cached) = (0, 0, 0);
    for (i, out) in finals.into_iter().enumerate() {
        if i % n == 0 {
            prompt += out.prompt_tokens;
            cached += out.cached_tokens;
        }
        completion += out.completion_tokens;
    }
    super::types::common::Usage::new(prompt, completion, cached)
}

/// OpenAI's name for how a choice ended. An abort only reaches a client when the server
/// cancelled the request (shutdown deadline), which OpenAI's schema has no value for; it
/// is reported as `length`, the nearest "cut short" reason.
pub fn finish_reason(out: &RequestOutput) -> Option<String> {
    out.finish_reason.map(|r| match r {
        crate::engine::FinishReason::Abort => "length".to_string(),
        other => other.as_str().to_string(),
    })
}
