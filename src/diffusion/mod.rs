//! Diffusion inference: Stable Diffusion pipelines in the diffusers layout, written against
//! [`crate::backend::image_ops::ImageOps`] so the same code runs on every backend.
//!
//! A generation's path: [`pipeline::Pipeline::generate`] -> [`tokenizer`] + [`clip`] (text
//! conditioning) -> [`scheduler`] + [`unet`] (denoising loop) -> [`vae`] (latents to pixels).

pub mod batch;
pub mod clip;
pub mod config;
pub mod engine;
pub mod flops;
pub mod handle;
pub mod hub;
pub mod nn;
pub mod pipeline;
pub mod png;
pub mod presets;
pub mod queue;
pub mod resnet;
pub mod scheduler;
pub mod tokenizer;
pub mod transformer;
pub mod unet;
pub mod vae;

pub use pipeline::{GeneratedImages, ImageRequest, Pipeline, PipelineWeights, Progress, Stage};
