//! Per-request sampling and stopping parameters, validated before a request is accepted.

use serde::{Deserialize, Serialize};

/// How to pick tokens and when to stop. Defaults match OpenAI's API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Tokens to generate at most; None means up to the model length.
    pub max_tokens: Option<usize>,
    /// Tokens to generate before EOS or stop token ids may end the sequence.
    pub min_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub min_p: f32,
    /// HF-style: divides positive logits (multiplies negative) of every token seen so far.
    pub repetition_penalty: f32,
    /// OpenAI-style: subtracted once from every generated token's logit.
    pub presence_penalty: f32,
    /// OpenAI-style: subtracted per occurrence of a generated token.
    pub frequency_penalty: f32,
    /// Makes sampling reproducible whatever else is in the batch.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub include_stop_str_in_output: bool,
    pub ignore_eos: bool,
    /// Return the chosen token's logprob and this many alternatives.
    pub logprobs: Option<usize>,
    pub skip_special_tokens: bool,
    /// Added to these tokens' logits before sampling (OpenAI's `logit_bias`, -100..=100).
    pub logit_bias: Vec<(u32, f32)>,
    /// Score every prompt token, with this many alternatives each (`echo` + `logprobs`).
    pub prompt_logprobs: Option<usize>,
    /// What the output must match (structured output); sampled on the host.
    pub structure: Option<crate::model::grammar::Structure>,
    /// An embedding request: nothing is generated; the prompt's pooled hidden state is the
    /// output (`RequestOutput::embedding`).
    pub pooling: Option<Pooling>,
    /// The LoRA adapter the request runs with (an index into the engine's adapters, in
    /// `--lora-modules` order); None: the base model.
    pub lora_adapter: Option<usize>,
    /// Only these tokens may be sampled (vLLM's `allowed_token_ids`); sorted, no repeats.
    pub allowed_token_ids: Option<Vec<u32>>,
    /// Token sequences the output must not contain (vLLM's `bad_words`, tokenized): the
    /// last token of each is banned where the output ends with the others.
    pub bad_words_ids: Vec<Vec<u32>>,
    /// Keeps this request's prefix-cache entries apart from requests with another salt
    /// (vLLM's `cache_salt`): its blocks' hash chain starts from the salt.
    pub cache_salt: Option<String>,
    /// Lower runs first under `--scheduling-policy priority` (vLLM's `priority`); must be 0
    /// under first come, first served.
    pub priority: i64,
}

/// How an embedding request's prompt becomes its vector: the last token's final hidden
/// state (decoder embedding models: Qwen3-Embedding, e5-mistral, gte-Qwen2), cut to its
/// first `dimensions` values (Matryoshka models) and L2-normalised when `normalize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pooling {
    pub dimensions: Option<usize>,
    pub normalize: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: None,
            min_tokens: 0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            include_stop_str_in_output: false,
            ignore_eos: false,
            logprobs: None,
            skip_special_tokens: true,
            logit_bias: Vec::new(),
            prompt_logprobs: None,
            structure: None,
            pooling: None,
            lora_adapter: None,
            allowed_token_ids: None,
            bad_words_ids: Vec::new(),
            cache_salt: None,
            priority: 0,
        }
    }
}

/// Most alternatives a request may ask for (OpenAI allows 20).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A rejected parameter: which one and why, for OpenAI's `param` field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ParamError {
    pub param: &'static str,
    pub message: String,
}

fn check(ok: bool, param: &'static str, message: impl Into<String>) -> Result<(), ParamError> {
    if ok {
        Ok(())
    } else {
        Err(ParamError {
            param,
            message: message.into(),
        })
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Whether the logits are changed on the host before the pick (biases, masks, a
    /// grammar), so the device cannot pick the token by itself.
    pub fn edits_logits(&self) -> bool {
        !self.logit_bias.is_empty()
            || self.structure.is_some()
            || self.allowed_token_ids.is_some()
            || !self.bad_words_ids.is_empty()
    }

    pub fn validate(&self) -> Result<(), ParamError> {
        if let Some(dimensions) = self.pooling.and_then(|p| p.dimensions) {
            check(dimensions > 0, "dimensions", "must be at least 1")?;
        }
        let t = self.temperature;
        check(
            t.is_finite() && t >= 0.0,
            "temperature",
            format!("must be >= 0, got {t}"),
        )?;
        let p = self.top_p;
        check(
            p.is_finite() && p > 0.0 && p <= 1.0,
            "top_p",
            format!("must be in (0, 1], got {p}"),
        )?;
        let m = self.min_p;
        check(
            m.is_finite() && (0.0..=1.0).contains(&m),
            "min_p",
            format!("must be in [0, 1], got {m}"),
        )?;
        let r = self.repetition_penalty;
        check(
            r.is_finite() && r > 0.0,
            "repetition_penalty",
            format!("must be > 0, got {r}"),
        )?;
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            check(
                v.is_finite() && (-2.0..=2.0).contains(&v),
                name,
                format!("must be in [-2, 2], got {v}"),
            )?;
        }
        if let Some(n) = self.max_tokens {
            check(n >= 1, "max_tokens", "must be at least 1")?;
        }
        if let Some(n) = self.logprobs {
            check(
                n <= MAX_TOP_LOGPROBS,
                "top_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            )?;
        }
        if let Some(n) = self.prompt_logprobs {
            check(
                n <= MAX_TOP_LOGPROBS,
                "prompt_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            )?;
        }
        check(
            self.stop.iter().all(|s| !s.is_empty()),
            "stop",
            "stop strings must not be empty",
        )?;
        if let Some((id, bias)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(b.is_finite() && (-100.0..=100.0).contains(b)))
        {
            return Err(ParamError {
                param: "logit_bias",
                message: format!("biases must be between -100 and 100, got {bias} for token {id}"),
            });
        }
        if let Some(allowed) = &self.allowed_token_ids {
            check(
                !allowed.is_empty(),
                "allowed_token_ids",
                "must list at least one token",
            )?;
        }
        check(
            self.bad_words_ids.iter().all(|w| !w.is_empty()),
            "bad_words",
            "a bad word must not be empty",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_not_greedy() {
        let p = SamplingParams::default();
        assert!(p.validate().is_ok());
        assert!(!p.is_greedy());
        assert!(SamplingParams::greedy().is_greedy());
    }

    #[test]
    fn logit_biases_must_lie_within_plus_minus_100() {
        let with = |bias: f32| SamplingParams {
            logit_bias: vec![(5, 1.0), (7, bias)],
            ..Default::default()
        };
        assert!(with(-100.0).validate().is_ok());
        assert!(with(100.0).validate().is_ok());
        for bad in [100.5, -101.0, f32::NAN, f32::INFINITY] {
            assert_eq!(
                with(bad).validate().unwrap_err().param,
                "logit_bias",
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_out_of_range_values_naming_the_param() {
        let cases = [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                presence_penalty: 3.0,
                ..Default::default()
            },
            SamplingParams {
                max_tokens: Some(0),
                ..Default::default()
            },
            SamplingParams {
                logprobs: Some(21),
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
        ];
        let params: Vec<&str> = cases
            .iter()
            .map(|c| c.validate().unwrap_err().param)
            .collect();
        assert_eq!(
            params,
            [
                "temperature",
                "top_p",
                "min_p",
                "repetition_penalty",
                "presence_penalty",
                "max_tokens",
                "top_logprobs",
                "temperature"
            ]
        );
    }
}
