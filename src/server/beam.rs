//! vLLM's `use_beam_search` (with `length_penalty`) on completions and chat: `n` beams per
//! prompt, searched by `engine::beam_search` and returned as finished choices, so the
//! handlers answer them (streamed or not) like any other.

use super::error::{ApiError, ApiResult};
use super::generate::{check_fits, request_error, Choice};
use super::state::Served;
use super::types::common::{BeamRequest, SamplingFields};
use crate::engine::beam_search::{
    beam_output, search_engine, BeamConfig, BeamError, MAX_BEAM_WIDTH,
};
use crate::engine::SamplingParams;
use futures_util::future::try_join_all;
use std::time::Instant;

/// Refuses what a beam search would otherwise ignore: it ranks beams by the model's raw
/// log-probabilities, so logit edits and stop strings cannot apply; prompt scores
/// (`echo` with `logprobs`, `prompt_logprobs`) are not computed for beams. (Temperature, top-p,
/// top-k, min-p and seeds do not apply either; vLLM accepts them, and so does kiln.)
/// Penalties are checked on the request's own `fields`: the model's generation config may
/// set defaults (a repetition penalty) that a beam search, like vLLM's, leaves out.
pub fn check(
    params: &SamplingParams,
    fields: &SamplingFields,
    n: usize,
    length_penalty: Option<f64>,
) -> ApiResult<()> {
    if n > MAX_BEAM_WIDTH {
        return Err(ApiError::invalid(
            Some("n"),
            format!("beam search takes at most {MAX_BEAM_WIDTH} beams (n), got {n}"),
        ));
    }
    if length_penalty.is_some_and(|p| !p.is_finite()) {
        return Err(ApiError::invalid(
            Some("length_penalty"),
            "length_penalty must be a finite number",
        ));
    }
    let unsupported = [
        ("stop", !params.stop.is_empty()),
        ("logit_bias", !params.logit_bias.is_empty()),
        ("allowed_token_ids", params.allowed_token_ids.is_some()),
        ("bad_words", !params.bad_words_ids.is_empty()),
        ("response_format", params.structure.is_some()),
        ("min_tokens", params.min_tokens > 0),
        (
            "presence_penalty",
            fields.presence_penalty.is_some_and(|p| p != 0.0),
        ),
        (
            "frequency_penalty",
            fields.frequency_penalty.is_some_and(|p| p != 0.0),
        ),
        (
            "repetition_penalty",
            fields.repetition_penalty.is_some_and(|p| p != 1.0),
        ),
        ("prompt_logprobs", params.prompt_logprobs.is_some()),
    ];
    match unsupported.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(ApiError::invalid(
            Some(name),
            format!("{name} is not supported with use_beam_search"),
        )),
        None => Ok(()),
    }
}

/// A generating request's choices: its beams when it asks for a beam search (checked
/// against the request's own `fields`), otherwise `n` submitted samples per prompt.
pub async fn choices(
    served: &Served,
    prompts: Vec<Vec<u32>>,
    n: usize,
    params: &SamplingParams,
    (beam, fields): (BeamRequest, &SamplingFields),
    arrival: Instant,
    prompt_param: &str,
) -> ApiResult<Vec<Choice>> {
    if beam.use_beam_search != Some(true) {
        return super::generate::submit(served, prompts, n, params, arrival, prompt_param);
    }
    check(params, fields, n, beam.length_penalty)?;
    search_choices(
        served,
        prompts,
        n,
        params,
        beam.length_penalty,
        arrival,
        prompt_param,
    )
    .await
}

/// Searches `n` beams after each prompt; choice `p * n + i` is prompt `p`'s `i`-th best.
pub async fn search_choices(
    served: &Served,
    prompts: Vec<Vec<u32>>,
    n: usize,
    params: &SamplingParams,
    length_penalty: Option<f64>,
    arrival: Instant,
    prompt_param: &str,
) -> ApiResult<Vec<Choice>> {
    let info = served.engine.info();
    let mut end_tokens = params.stop_token_ids.clone();
    if !params.ignore_eos {
        end_tokens.extend(&info.eos);
    }
    for prompt in &prompts {
        check_fits(prompt.len(), params.max_tokens, info.max_model_len)?;
    }
    let searches = prompts.iter().map(|prompt| {
        let config = BeamConfig {
            width: n,
            max_tokens: params
                .max_tokens
                .unwrap_or(info.max_model_len.saturating_sub(prompt.len())),
            end_tokens: end_tokens.clone(),
            length_penalty: length_penalty.unwrap_or(1.0),
            keep_end_token: params.include_stop_str_in_output,
        };
        async move {
            search_engine(
                &served.engine,
                prompt,
                &config,
                params,
                params.logprobs.unwrap_or(0),
            )
            .await
            .map_err(|e| match e {
                BeamError::Refused(e) => request_error(e, prompt_param),
                BeamError::Engine(message) => ApiError::internal(message),
            })
        }
    });
    let found = try_join_all(searches).await?;
    let tokenizer = served.engine.tokenizer();
    let mut choices = Vec::with_capacity(prompts.len() * n);
    for (prompt_index, beams) in found.into_iter().enumerate() {
        let prompt_tokens = prompts[prompt_index].len();
        for (i, beam) in beams.into_iter().enumerate() {
            let text = tokenizer
                .decode(&beam.tokens, params.skip_special_tokens)
                .map_err(|e| ApiError::internal(format!("decoding a beam: {e:#}")))?;
            let out = beam_output(beam, prompt_tokens, text, params.logprobs);
            choices.push(Choice::finished(
                served,
                prompt_index * n + i,
                prompt_index,
                out,
                arrival,
            ));
        }
    }
    Ok(choices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_beam_search_would_ignore_naming_it() {
        let plain = SamplingParams::default();
        let fields = SamplingFields::default();
        assert!(check(&plain, &fields, 4, Some(0.5)).is_ok());
        let wide = check(&plain, &fields, MAX_BEAM_WIDTH + 1, None).unwrap_err();
        assert_eq!(wide.param.as_deref(), Some("n"));
        assert!(check(&plain, &fields, 2, Some(f64::NAN)).is_err());
        let stop = SamplingParams {
            stop: vec!["x".into()],
            ..SamplingParams::default()
        };
        let refused = check(&stop, &fields, 2, None).unwrap_err();
        assert_eq!(refused.param.as_deref(), Some("stop"));
        // A generation-config default is no request for a penalty; the request's own is.
        let defaulted = SamplingParams {
            repetition_penalty: 1.05,
            ..SamplingParams::default()
        };
        assert!(check(&defaulted, &fields, 2, None).is_ok());
        let asked = SamplingFields {
            repetition_penalty: Some(1.2),
            ..SamplingFields::default()
        };
        let refused = check(&defaulted, &asked, 2, None).unwrap_err();
        assert_eq!(refused.param.as_deref(), Some("repetition_penalty"));
    }
}
