//! `kiln image`: one-off image generation from a diffusers pipeline directory, to PNG files,
//! with a progress bar over the denoising steps.

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{device_count, CudaBackend};
use crate::backend::image_ops::ImageOps;
use crate::backend::DType;
use crate::diffusion::presets::{self, PipelineFiles};
use crate::diffusion::{png, ImageRequest, Pipeline, PipelineWeights};
use crate::launch::{device, Device, DeviceArg, LoadFormat};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// A diffusers pipeline: a directory (model_index.json, unet/, vae/, text_encoder/, ...)
    /// or a hub repo id, fetched into the HF cache.
    /// With --load-format dummy also a built-in preset (sd-1.5, sd-turbo).
    #[arg(long, env = "KILN_IMAGE_MODEL")]
    pub model: PathBuf,
    /// dummy: random weights of the config's shapes (benchmarks; the images are noise).
    #[arg(long, value_enum, default_value = "auto")]
    pub load_format: LoadFormat,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Denoising steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale (at most 1 turns guidance off).
    #[arg(long, default_value_t = 7.5)]
    pub guidance_scale: f32,
    /// Image width in pixels (default: the size the model was trained at).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels (default: the size the model was trained at).
    #[arg(long)]
    pub height: Option<usize>,
    /// Images to generate; with more than one, files are named `<out stem>-<i>.png`.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub num_images: usize,
    /// The same seed and settings give the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weights dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// auto (GPU 0 when there is one), cpu, cuda or cuda:N.
    #[arg(long, env = "KILN_DEVICE", default_value = "auto")]
    pub device: DeviceArg,
    #[arg(long, default_value = "image.png")]
    pub out: PathBuf,
}

/// Where image `i` of `n` goes.
fn output_path(out: &Path, i: usize, n: usize) -> PathBuf {
    if n == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    out.with_file_name(format!("{stem}-{i}.png"))
}

pub fn run(args: ImageArgs) -> Result<()> {
    let name = args.model.to_string_lossy().into_owned();
    let preset = presets::preset(&name).filter(|_| !args.model.exists());
    let files = match preset {
        Some(p) if args.load_format == LoadFormat::Dummy => PipelineFiles::Preset(p),
        _ => PipelineFiles::Dir(
            crate::launch::images::pipeline_dir(&name, None)?.with_context(|| {
                let hint = if preset.is_some() {
                    " (it is a config-only preset: add --load-format dummy)"
                } else {
                    ""
                };
                format!(
                    "{name} is not a diffusers pipeline (no model_index.json, locally or on the \
                     hub){hint}"
                )
            })?,
        ),
    };
    match device::resolve(args.device, device_count)? {
        Device::Cpu => generate_on(CpuBackend::new(), &files, args),
        Device::Cuda(ordinal) => {
            let backend = CudaBackend::new(ordinal)
                .with_context(|| format!("opening CUDA device {ordinal}"))?;
            generate_on(backend, &files, args)
        }
    }
}

/// The weights `--load-format` gives a diffusion pipeline: its files (safetensors; diffusers
/// repositories ship them) or generated ones.
pub fn pipeline_weights(format: LoadFormat, seed: u64) -> Result<PipelineWeights> {
    match format {
        LoadFormat::Dummy => Ok(PipelineWeights::Dummy { seed }),
        LoadFormat::Auto | LoadFormat::Safetensors => Ok(PipelineWeights::Files),
        LoadFormat::Pt => {
            anyhow::bail!(
                "diffusion pipelines load safetensors weights; --load-format pt is for LLMs"
            )
        }
    }
}

fn generate_on<B: ImageOps>(be: B, files: &PipelineFiles, args: ImageArgs) -> Result<()> {
    let weights = pipeline_weights(args.load_format, args.seed)?;
    let pipeline = Pipeline::load_from(be, files, weights, args.dtype)
        .with_context(|| format!("loading the pipeline {}", files.name()))?;
    let size = pipeline.default_size();
    let req = ImageRequest {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        width: args.width.unwrap_or(size),
        height: args.height.unwrap_or(size),
        num_images: args.num_images,
        seed: args.seed,
        initial_latents: None,
    };
    let bar = indicatif::ProgressBar::new(req.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("denoising [{bar:40}] {pos}/{len} steps {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let images = pipeline.generate(&req, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    for i in 0..images.count {
        let path = output_path(&args.out, i, images.count);
        let bytes = png::encode_rgb8(images.width, images.height, &images.rgb8(i))?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} ({}x{})",
            path.display(),
            images.width,
            images.height
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_images_get_numbered_names() {
        let out = Path::new("dir/cat.png");
        assert_eq!(output_path(out, 0, 1), PathBuf::from("dir/cat.png"));
        assert_eq!(output_path(out, 1, 3), PathBuf::from("dir/cat-1.png"));
    }
}
