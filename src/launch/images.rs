//! Starting the image engine for `kiln serve` when the model is a diffusers pipeline.

use super::{Device, EngineArgs};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::image_ops::ImageOps;
use crate::backend::DType;
use crate::diffusion::config::ModelIndex;
use crate::diffusion::handle::{ImageEngineArgs, ImageHandle, ImageModelInfo};
use crate::diffusion::Pipeline;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Images one UNet batch may hold: batching beyond this buys little on a CPU and costs
/// memory.
const MAX_BATCH_IMAGES: usize = 16;

/// The pipeline directory `--model` names, if it is a diffusers pipeline (one with a
/// `model_index.json`); `None` for everything an LLM is loaded from.
pub fn diffusers_dir(args: &EngineArgs) -> Result<Option<PathBuf>> {
    match args.model.as_deref() {
        None => Ok(None),
        Some(model) => pipeline_dir(model, args.revision.as_deref()),
    }
}

/// `model` as a diffusers pipeline directory: a local directory with `model_index.json`, or
/// a hub repo that has one (fetched into the HF cache); `None` when it is neither.
pub fn pipeline_dir(model: &str, revision: Option<&str>) -> Result<Option<PathBuf>> {
    let local = Path::new(model);
    if local.exists() {
        return Ok(local
            .join("model_index.json")
            .is_file()
            .then(|| local.to_path_buf()));
    }
    let looks_like_repo = model.split('/').count() == 2 && !model.starts_with('.');
    if !looks_like_repo {
        return Ok(None);
    }
    let repo = crate::model::source::HubRepo::open(model, revision)?;
    crate::diffusion::hub::fetch(&repo).with_context(|| format!("fetching the pipeline {model}"))
}

/// Loads the pipeline in `dir` and starts its engine; returns it with the model's name.
pub fn build_image_engine(
    args: &EngineArgs,
    dir: &Path,
    max_queued: usize,
) -> Result<(ImageHandle, String)> {
    anyhow::ensure!(
        args.tensor_parallel_size.unwrap_or(1) == 1,
        "image pipelines are not sharded: leave --tensor-parallel-size at 1"
    );
    let dtype: DType = match args.dtype.as_str() {
        "auto" => DType::F32,
        other => other.parse().map_err(anyhow::Error::msg)?,
    };
    let index = ModelIndex::read(dir)?;
    let class = match index.kind {
        crate::diffusion::config::PipelineKind::StableDiffusion => "StableDiffusionPipeline",
        crate::diffusion::config::PipelineKind::StableDiffusionXL => "StableDiffusionXLPipeline",
    };
    let engine_args = ImageEngineArgs {
        max_queued,
        max_batch_images: MAX_BATCH_IMAGES,
        seed: args.seed,
    };
    let name = dir
        .canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    // `--device` / `--gpu` pick the device as for an LLM (auto: GPU 0 when there is one).
    let handle = match super::pick_device(args)? {
        Device::Cpu => spawn_on(CpuBackend::new(), dir, dtype, class, engine_args)?,
        Device::Cuda(ordinal) => {
            let backend = CudaBackend::new(ordinal)
                .with_context(|| format!("opening CUDA device {ordinal}"))?;
            spawn_on(backend, dir, dtype, class, engine_args)?
        }
    };
    Ok((handle, name))
}

/// Loads the pipeline onto `be` and starts its engine thread.
fn spawn_on<B: ImageOps + Send + 'static>(
    be: B,
    dir: &Path,
    dtype: DType,
    class: &str,
    engine_args: ImageEngineArgs,
) -> Result<ImageHandle> {
    let device = be.name();
    tracing::info!(
        "loading the {class} in {} on {device} ({dtype:?})",
        dir.display()
    );
    let pipeline = Pipeline::load(be, dir, dtype)
        .with_context(|| format!("loading the pipeline in {}", dir.display()))?;
    let info = ImageModelInfo::of(&pipeline, class.to_string());
    ImageHandle::spawn(pipeline, info, engine_args)
}
