//! OpenAI request fields -> engine [`SamplingParams`], with OpenAI's defaults and errors.

use super::error::{ApiError, ApiResult};
use super::types::common::{Guided, SamplingFields, MAX_STOP_SEQUENCES};
use crate::engine::SamplingParams;
use crate::model::grammar::Structure;
use crate::model::tokenizer::Tokenizer;

/// Most choices one request may ask for; each is a sequence in the engine.
pub const MAX_N: usize = 128;

/// Checks `n` (default 1).
pub fn choices(n: Option<usize>) -> ApiResult<usize> {
    let n = n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid(
            Some("n"),
            format!("n must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    Ok(n)
}

/// Builds and validates the engine parameters of the first choice.
pub fn to_params(f: SamplingFields) -> ApiResult<SamplingParams> {
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                Some("top_k"),
                format!("top_k must be -1 (off) or positive, got {k}"),
            ))
        }
    };
    let stop = f.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid(
            Some("stop"),
            format!(
                "at most {MAX_STOP_SEQUENCES} stop sequences, got {}",
                stop.len()
            ),
        ));
    }
    let logit_bias = parse_logit_bias(f.logit_bias.as_ref())?;
    if f.cache_salt.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(ApiError::invalid(
            Some("cache_salt"),
            "cache_salt must be a non-empty string when given",
        ));
    }
    let allowed_token_ids = f.allowed_token_ids.map(|mut ids| {
        ids.sort_unstable();
        ids.dedup();
        ids
    });
    let structure = structure(&f.guided)?;
    let defaults = SamplingParams::default();
    let params = SamplingParams {
        max_tokens: f.max_tokens,
        min_tokens: f.min_tokens,
        temperature: f.temperature.unwrap_or(defaults.temperature),
        top_p: f.top_p.unwrap_or(defaults.top_p),
        top_k,
        min_p: f.min_p.unwrap_or(defaults.min_p),
        repetition_penalty: f.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        presence_penalty: f.presence_penalty.unwrap_or(defaults.presence_penalty),
        frequency_penalty: f.frequency_penalty.unwrap_or(defaults.frequency_penalty),
        // OpenAI seeds are signed; the engine's are the same 64 bits.
        seed: f.seed.map(|s| s as u64),
        stop,
        stop_token_ids: f.stop_token_ids,
        include_stop_str_in_output: f.include_stop_str_in_output,
        ignore_eos: f.ignore_eos,
        logprobs: f.logprobs,
        skip_special_tokens: f
            .skip_special_tokens
            .unwrap_or(defaults.skip_special_tokens),
        logit_bias,
        prompt_logprobs: f.prompt_logprobs,
        structure,
        pooling: None,
        // Set from the request's `model` by the handler (`AppState::resolve_model`).
        lora_adapter: None,
        allowed_token_ids,
        // Tokenized by the handler (`bad_words_ids`), which holds the tokenizer.
        bad_words_ids: Vec::new(),
        cache_salt: f.cache_salt,
        // Checked against the engine's policy when submitted.
        priority: f.priority.unwrap_or(0),
    };
    params.validate()?;
    Ok(params)
}

/// vLLM's `bad_words` as token sequences: each word as it would start the text and as it
/// would follow a space (both, where they tokenize differently), without special tokens.
pub fn bad_words_ids(tokenizer: &Tokenizer, words: &[String]) -> ApiResult<Vec<Vec<u32>>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    for word in words {
        let word = word.trim_start();
        if word.is_empty() {
            return Err(ApiError::invalid(
                Some("bad_words"),
                "a bad word must not be empty",
            ));
        }
        for text in [word.to_string(), format!(" {word}")] {
            let ids = tokenizer
                .encode(&text, false)
                .map_err(|e| ApiError::internal(format!("tokenizing bad_words: {e:#}")))?;
            if !ids.is_empty() && !out.contains(&ids) {
                out.push(ids);
            }
        }
    }
    Ok(out)
}

/// `prompt` cut to its last tokens by vLLM's `truncate_prompt_tokens`: `k >= 1` keeps the
/// last `k`; `-1` keeps as many as leave room for `max_tokens` (one token when unset) in a
/// context of `max_model_len`.
pub fn truncate_prompt(
    prompt: Vec<u32>,
    truncate: Option<i64>,
    max_tokens: Option<usize>,
    max_model_len: usize,
) -> ApiResult<Vec<u32>> {
    let keep = match truncate {
        None => return Ok(prompt),
        Some(-1) => max_model_len.saturating_sub(max_tokens.unwrap_or(1)).max(1),
        Some(k) if k >= 1 && k as u64 <= max_model_len as u64 => k as usize,
        Some(k) if k >= 1 => {
            return Err(ApiError::invalid(
                Some("truncate_prompt_tokens"),
                format!("{k} is more than the model's context of {max_model_len} tokens"),
            ))
        }
        Some(k) => {
            return Err(ApiError::invalid(
                Some("truncate_prompt_tokens"),
                format!("must be -1 or at least 1, got {k}"),
            ))
        }
    };
    let cut = prompt.len().saturating_sub(keep);
    Ok(prompt[cut..].to_vec())
}

/// The structure the output must have, from whichever structured-output field is set.
fn structure(g: &Guided) -> ApiResult<Option<Structure>> {
    let from_format = match &g.response_format {
        None => None,
        Some(format) => match format.get("type").and_then(|t| t.as_str()) {
            Some("text") => None,
            Some("json_object") => Some(Structure::JsonObject),
            Some("json_schema") => {
                let schema = format
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .cloned()
                    .ok_or_else(|| {
                        ApiError::invalid(
                            Some("response_format"),
                            "json_schema needs {\"json_schema\": {\"schema\": {...}}}",
                        )
                    })?;
                Some(Structure::JsonSchema(schema))
            }
            _ => {
                return Err(ApiError::invalid(
                    Some("response_format"),
                    format!(
                    "response_format type must be text, json_object or json_schema, got {format}"
                ),
                ))
            }
        },
    };
    if g.guided_choice.as_ref().is_some_and(|c| c.is_empty()) {
        return Err(ApiError::invalid(
            Some("response_format"),
            "guided_choice needs at least one choice",
        ));
    }
    let given: Vec<Structure> = [
        from_format,
        g.guided_json.clone().map(Structure::JsonSchema),
        g.guided_regex.clone().map(Structure::Regex),
        g.guided_choice.clone().map(Structure::Choice),
        g.guided_grammar.clone().map(Structure::Lark),
        structured_outputs(g.structured_outputs.as_ref())?,
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.len() {
        0 | 1 => Ok(given.into_iter().next()),
        _ => Err(ApiError::invalid(
            Some("response_format"),
            "at most one of response_format, guided_json, guided_regex, guided_choice, \
             guided_grammar and structured_outputs",
        )),
    }
}

/// vLLM's `structured_outputs` object: exactly one constraint among `json`, `regex`,
/// `choice`, `grammar` and `json_object`; its backend options are accepted and unused.
fn structured_outputs(value: Option<&serde_json::Value>) -> ApiResult<Option<Structure>> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |message: String| ApiError::invalid(Some("structured_outputs"), message);
    let fields = value
        .as_object()
        .ok_or_else(|| bad("must be an object".into()))?;
    let mut found = Vec::new();
    for (key, v) in fields {
        if v.is_null() || v == &serde_json::Value::Bool(false) {
            continue;
        }
        let text = || {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("{key} must be a string")))
        };
        found.push(match key.as_str() {
            "json" => match v {
                serde_json::Value::String(s) => Structure::JsonSchema(
                    serde_json::from_str(s).map_err(|e| bad(format!("json is not JSON: {e}")))?,
                ),
                schema => Structure::JsonSchema(schema.clone()),
            },
            "regex" => Structure::Regex(text()?),
            "grammar" => Structure::Lark(text()?),
            "choice" => {
                let choices: Vec<String> = serde_json::from_value(v.clone())
                    .map_err(|_| bad("choice must be a list of strings".into()))?;
                if choices.is_empty() {
                    return Err(bad("choice needs at least one choice".into()));
                }
                Structure::Choice(choices)
            }
            "json_object" => Structure::JsonObject,
            "disable_fallback"
            | "disable_any_whitespace"
            | "disable_additional_properties"
            | "whitespace_pattern"
            | "backend" => continue,
            other => return Err(bad(format!("'{other}' is not supported"))),
        });
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(bad(
            "give exactly one of json, regex, choice, grammar and json_object".into(),
        )),
    }
}

/// OpenAI's `logit_bias` map (token id strings to numbers) as (id, bias) pairs; ranges
/// are checked with the other parameters.
fn parse_logit_bias(
    map: Option<&serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<Vec<(u32, f32)>> {
    let bad = |message: String| ApiError::invalid(Some("logit_bias"), message);
    map.into_iter()
        .flatten()
        .map(|(key, value)| {
            let id = key
                .trim()
                .parse::<u32>()
                .map_err(|_| bad(format!("keys must be token ids, got {key:?}")))?;
            let bias = value.as_f64().ok_or_else(|| {
                bad(format!(
                    "token {id}: the bias must be a number, got {value}"
                ))
            })?;
            Ok((id, bias as f32))
        })
        .collect()
}

/// The parameters of choice `i`: a seeded request gives each choice its own stream
/// (seed + i), so `n` seeded choices differ from each other yet are reproducible.
pub fn for_choice(params: &SamplingParams, i: usize) -> SamplingParams {
    let mut p = params.clone();
    p.seed = params.seed.map(|s| s.wrapping_add(i as u64));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::types::common::Stop;

    #[test]
    fn openai_defaults_and_seeds_per_choice() {
        let p = to_params(SamplingFields {
            seed: Some(7),
            stop: Some(Stop::One("x".into())),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.temperature, 1.0);
        assert_eq!(p.stop, ["x"]);
        assert_eq!(for_choice(&p, 2).seed, Some(9));
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        let bad_top_k = to_params(SamplingFields {
            top_k: Some(-3),
            ..Default::default()
        });
        assert_eq!(bad_top_k.unwrap_err().param.as_deref(), Some("top_k"));
        let bad_temp = to_params(SamplingFields {
            temperature: Some(-0.5),
            ..Default::default()
        });
        assert_eq!(bad_temp.unwrap_err().param.as_deref(), Some("temperature"));
        assert_eq!(choices(Some(0)).unwrap_err().param.as_deref(), Some("n"));
        assert_eq!(choices(None).unwrap(), 1);
    }
}
