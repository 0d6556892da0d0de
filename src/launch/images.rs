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
    let name = crate::diffusion::presets::PipelineFiles::Dir(dir.to_path_buf()).name();
    // `--device` / `--gpu` pick the devices as for an LLM (auto: GPU 0 when there is one;
    // `--gpu H100:4`: four GPUs), and each distinct GPU gets a replica of the pipeline.
    let devices = distinct_devices(&super::place_ranks(args)?);
    let handle = if devices == [Device::Cpu] {
        spawn_replicas(vec![CpuBackend::new()], dir, dtype, class, engine_args)?
    } else {
        let backends = devices
            .iter()
            .map(|d| match d {
                Device::Cuda(ordinal) => CudaBackend::new(*ordinal)
                    .with_context(|| format!("opening CUDA device {ordinal}")),
                Device::Cpu => anyhow::bail!("image replicas mix the CPU and GPUs"),
            })
            .collect::<Result<Vec<_>>>()?;
        spawn_replicas(backends, dir, dtype, class, engine_args)?
    };
    Ok((handle, name))
}

/// Each device once, in first-use order.
fn distinct_devices(ranks: &[Device]) -> Vec<Device> {
    let mut devices: Vec<Device> = Vec::new();
    for d in ranks {
        if !devices.contains(d) {
            devices.push(*d);
        }
    }
    devices
}

/// Loads the pipeline onto every backend (in parallel: each replica reads the same files)
/// and starts one engine thread per replica over a shared queue.
fn spawn_replicas<B: ImageOps + Send + 'static>(
    backends: Vec<B>,
    dir: &Path,
    dtype: DType,
    class: &str,
    engine_args: ImageEngineArgs,
) -> Result<ImageHandle> {
    let replicas = backends.len();
    let pipelines = std::thread::scope(|scope| {
        let loading: Vec<_> = backends
            .into_iter()
            .map(|be| {
                scope.spawn(move || {
                    let device = be.name();
                    tracing::info!(
                        "loading the {class} in {} on {device} ({dtype:?})",
                        dir.display()
                    );
                    Pipeline::load(be, dir, dtype).with_context(|| {
                        format!("loading the pipeline in {} on {device}", dir.display())
                    })
                })
            })
            .collect();
        loading
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("loading panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    if replicas > 1 {
        tracing::info!("{replicas} replicas of the pipeline serve requests in parallel");
    }
    let info = ImageModelInfo::of(&pipelines[0], class.to_string());
    ImageHandle::spawn(pipelines, info, engine_args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gpu_gets_one_replica() {
        let ranks = [
            Device::Cuda(2),
            Device::Cuda(0),
            Device::Cuda(2),
            Device::Cuda(0),
        ];
        assert_eq!(distinct_devices(&ranks), [Device::Cuda(2), Device::Cuda(0)]);
        assert_eq!(distinct_devices(&[Device::Cpu]), [Device::Cpu]);
    }
}
