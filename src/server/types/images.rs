//! `POST /v1/images/generations`: OpenAI's request and response, plus kiln's diffusion
//! settings (`negative_prompt`, `num_inference_steps`, `guidance_scale`, `seed`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageGenerationRequest {
    pub prompt: String,
    /// Optional, as in OpenAI's API: the served pipeline when absent.
    pub model: Option<String>,
    /// Images to generate, 1 to 10 (default 1).
    pub n: Option<i64>,
    /// `WIDTHxHEIGHT` in pixels, or `auto` (the size the model was trained at).
    pub size: Option<String>,
    /// Only `b64_json` (the default): kiln does not host images at URLs.
    pub response_format: Option<String>,
    /// Only `png` (the default).
    pub output_format: Option<String>,
    /// Accepted and ignored (OpenAI's quality and style presets have no meaning here).
    pub quality: Option<String>,
    pub style: Option<String>,
    pub user: Option<String>,
    /// What guidance steers away from.
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 25).
    pub num_inference_steps: Option<i64>,
    /// Classifier-free guidance scale (default 7.5; at most 1 turns guidance off).
    pub guidance_scale: Option<f32>,
    /// The same seed and settings give the same images.
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImageData {
    /// A PNG, base64-encoded.
    pub b64_json: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImagesResponse {
    pub created: u64,
    pub data: Vec<ImageData>,
}
