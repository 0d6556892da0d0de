//! `POST /v1/images/generations`: OpenAI's image API over the image engine. Images come back
//! inline as base64 PNGs (`b64_json`); kiln hosts no URLs.

use super::error::{ApiError, ApiResult};
use super::image_metrics::Outcome;
use super::json::ApiJson;
use super::state::{unix_now, SharedState};
use super::types::images::*;
use crate::diffusion::handle::{ImageOutput, ImageParams, RequestError};
use crate::diffusion::png;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use std::time::Instant;

#[utoipa::path(post, tag = "openai", path = "/v1/images/generations",
    request_body = ImageGenerationRequest,
    responses(
        (status = 200, description = "PNG images, base64-encoded", body = ImagesResponse),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody)))]
pub async fn generate_images(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<ImageGenerationRequest>,
) -> ApiResult<Json<ImagesResponse>> {
    let arrival = Instant::now();
    let result = generate(&state, &req).await;
    let metrics = &state.metrics.images;
    match &result {
        Ok((_, queue_secs)) => {
            metrics.observe_success(arrival.elapsed().as_secs_f64(), *queue_secs)
        }
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => metrics.record(Outcome::Rejected),
        Err(e) if e.status.is_client_error() => metrics.record(Outcome::Invalid),
        Err(_) => metrics.record(Outcome::Failed),
    }
    result.map(|(response, _)| Json(response))
}

/// The response and the request's time in the queue (seconds).
async fn generate(
    state: &SharedState,
    req: &ImageGenerationRequest,
) -> ApiResult<(ImagesResponse, f64)> {
    let served = state.ready_images(req.model.as_deref())?;
    let params = to_params(req)?;
    let ticket = served.engine.submit(&params).map_err(request_error)?;
    // Dropping this future (the client hung up) drops the ticket: the request is cancelled.
    let output = ticket.wait().await.map_err(ApiError::internal)?;
    let queue_secs = output.queue_time.as_secs_f64();
    let data = tokio::task::spawn_blocking(move || encode(output))
        .await
        .map_err(|e| ApiError::internal(format!("encoding the images: {e}")))??;
    let response = ImagesResponse {
        created: unix_now(),
        data,
    };
    Ok((response, queue_secs))
}

/// The engine's parameters from OpenAI's fields and kiln's extensions.
fn to_params(req: &ImageGenerationRequest) -> ApiResult<ImageParams> {
    match req.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some("url") => {
            return Err(ApiError::invalid(
                Some("response_format"),
                "response_format `url` is not supported: kiln does not host images; \
                 use `b64_json` to get them inline",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                Some("response_format"),
                format!("response_format must be `b64_json`, not `{other}`"),
            ))
        }
    }
    if let Some(format) = req.output_format.as_deref().filter(|f| *f != "png") {
        return Err(ApiError::invalid(
            Some("output_format"),
            format!("output_format must be `png`, not `{format}`"),
        ));
    }
    let (width, height) = parse_size(req.size.as_deref())?;
    // Out-of-range counts keep their sign so the engine's range check names them.
    let count = |v: i64| usize::try_from(v.max(0)).unwrap_or(usize::MAX);
    Ok(ImageParams {
        prompt: req.prompt.clone(),
        negative_prompt: req.negative_prompt.clone(),
        width,
        height,
        num_images: req.n.map(count).unwrap_or(1),
        steps: req.num_inference_steps.map(count),
        guidance_scale: req.guidance_scale,
        seed: req.seed,
    })
}

/// `WIDTHxHEIGHT`, or `auto` / absent for the model's trained size.
fn parse_size(size: Option<&str>) -> ApiResult<(Option<usize>, Option<usize>)> {
    let Some(size) = size.filter(|s| *s != "auto") else {
        return Ok((None, None));
    };
    let parsed = size
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some((w, h)) => Ok((Some(w), Some(h))),
        None => Err(ApiError::invalid(
            Some("size"),
            format!(
                "size must be `WIDTHxHEIGHT` in pixels (e.g. `512x512`) or `auto`, not `{size}`"
            ),
        )),
    }
}

fn request_error(e: RequestError) -> ApiError {
    let message = e.to_string();
    match e {
        RequestError::Invalid { param, .. } => ApiError::invalid(Some(param), message),
        RequestError::QueueFull(_) => ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message,
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
        },
        RequestError::EngineDown(_) => ApiError::unavailable(message),
    }
}

/// Each image as a base64 PNG.
fn encode(output: ImageOutput) -> ApiResult<Vec<ImageData>> {
    output
        .images
        .iter()
        .map(|rgb| {
            let png = png::encode_rgb8(output.width, output.height, rgb)
                .map_err(|e| ApiError::internal(format!("encoding a PNG: {e:#}")))?;
            Ok(ImageData {
                b64_json: base64::engine::general_purpose::STANDARD.encode(png),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_or_name_the_param() {
        assert_eq!(parse_size(None).unwrap(), (None, None));
        assert_eq!(parse_size(Some("auto")).unwrap(), (None, None));
        assert_eq!(parse_size(Some("64x32")).unwrap(), (Some(64), Some(32)));
        for bad in ["64", "x32", "64x", "-8x8", "big"] {
            let e = parse_size(Some(bad)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("size"), "{bad}");
        }
    }
}
