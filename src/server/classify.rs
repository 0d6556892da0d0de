//! `POST /classify` (vLLM's endpoint): each input's label probabilities from a sequence
//! classifier (`*ForSequenceClassification`: the decoder's last-token hidden state through
//! its score head), computed as the engine's pooling requests.

use super::error::{ApiError, ApiResult};
use super::generate;
use super::json::ApiJson;
use super::state::{unix_now, SharedState};
use super::types::classify::*;
use crate::engine::params::Pooling;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

/// Most inputs one request may carry.
const MAX_INPUTS: usize = 2048;

#[utoipa::path(post, tag = "vllm", path = "/classify", request_body = ClassificationRequest,
    responses(
        (status = 200, description = "One label distribution per input, in order", body = ClassificationResponse),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub async fn classify(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<ClassificationRequest>,
) -> ApiResult<Response> {
    let arrival = Instant::now();
    let served = state.ready_for(&req.model)?;
    let Some(classifier) = served.engine.info().classifier.clone() else {
        return Err(ApiError::invalid(
            Some("model"),
            format!("'{}' is not a sequence classifier", req.model),
        ));
    };
    if served.adapter_for(&req.model).is_some() {
        return Err(ApiError::invalid(
            Some("model"),
            "LoRA adapters do not classify",
        ));
    }
    let inputs = super::completions::tokenize_inputs(served, &req.input, "input", MAX_INPUTS)?;
    let pooling = Pooling {
        dimensions: None,
        normalize: false,
    };
    let (all_logits, prompt_tokens) =
        generate::pool_all(served, inputs, pooling, arrival, &state.metrics).await?;
    let mut data = Vec::with_capacity(all_logits.len());
    for (index, logits) in all_logits.into_iter().enumerate() {
        if logits.len() != classifier.labels.len() {
            return Err(ApiError::internal(format!(
                "{} scores for {} labels",
                logits.len(),
                classifier.labels.len()
            )));
        }
        let probs = probabilities(&logits);
        let best = argmax(&probs);
        data.push(ClassificationData {
            index,
            label: classifier.labels[best].clone(),
            probs,
            num_classes: logits.len(),
            logits,
        });
    }
    let response = ClassificationResponse {
        id: format!("classify-{:032x}", rand::random::<u128>()),
        object: "list",
        created: unix_now(),
        model: req.model,
        data,
        usage: ClassificationUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
            completion_tokens: 0,
        },
    };
    Ok(axum::Json(response).into_response())
}

/// Softmax over the labels; one label gets a sigmoid (a probability of its own).
fn probabilities(logits: &[f32]) -> Vec<f32> {
    if let [one] = logits {
        return vec![1.0 / (1.0 + (-one).exp())];
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The first index of the largest value.
fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_softmax_or_a_sigmoid_for_one_label() {
        let p = probabilities(&[0.0, (2.0f32).ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-6 && (p[1] - 2.0 / 3.0).abs() < 1e-6);
        assert!((probabilities(&[0.0])[0] - 0.5).abs() < 1e-6);
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
    }
}
