//! The Stable Diffusion pipeline: encode the prompt (and the negative prompt, for
//! classifier-free guidance, in the same batch), denoise latents with the UNet under a
//! scheduler, decode them with the VAE.

use super::clip::ClipTextModel;
use super::config::{ClipConfig, ModelIndex, PipelineKind, UNetConfig, VaeConfig};
use super::nn::Weights;
use super::presets::PipelineFiles;
use super::scheduler::SchedulerConfig;
use super::tokenizer::ClipTokenizer;
use super::unet::{TextTime, UNet};
use super::vae::VaeDecoder;
use crate::backend::image_ops::ImageOps;
use crate::backend::DType;
use crate::model::weights::{DummyWeights, GeneratedPart, SafetensorsWeights, Slice, WeightSource};
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::{Path, PathBuf};

/// The most images one request may ask for.
pub const MAX_IMAGES: usize = 16;

/// One generation: `num_images` images of one prompt.
#[derive(Clone, Debug)]
pub struct ImageRequest {
    pub prompt: String,
    /// Guidance pushes away from this (the empty prompt when absent).
    pub negative_prompt: Option<String>,
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 turns guidance off (one UNet batch).
    pub guidance_scale: f32,
    pub width: usize,
    pub height: usize,
    pub num_images: usize,
    pub seed: u64,
    /// Standard-normal starting latents `[num_images, c, h / f, w / f]` instead of seeded
    /// noise (the pipeline scales them by the scheduler's initial sigma, as diffusers does).
    pub initial_latents: Option<Vec<f32>>,
}

/// The result: final latents and RGB pixels in [0, 1], both row-major.
#[derive(Clone, Debug)]
pub struct GeneratedImages {
    pub width: usize,
    pub height: usize,
    pub count: usize,
    /// `[count, c, h / f, w / f]`, before the VAE.
    pub latents: Vec<f32>,
    /// `[count, height, width, 3]`.
    pub pixels: Vec<f32>,
}

impl GeneratedImages {
    /// Image `i` as 8-bit RGB, rounded as diffusers' `numpy_to_pil` does.
    pub fn rgb8(&self, i: usize) -> Vec<u8> {
        let size = self.width * self.height * 3;
        self.pixels[i * size..(i + 1) * size]
            .iter()
            .map(|&v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

/// The stages of a generation, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The prompts are encoded (the UNet's conditioning is queued).
    TextEncoded,
    /// The denoising loop is queued.
    Denoised,
    /// The VAE decoded the latents and the pixels are on the host.
    Decoded,
}

/// What a caller hears of a running generation.
pub trait Progress {
    /// After denoising step `done` of `total`.
    fn step(&mut self, _done: usize, _total: usize) {}
    /// At the end of each stage.
    fn stage(&mut self, _stage: Stage) {}
}

/// What the UNet is conditioned on, for the whole guided batch.
pub struct Conditioning<T> {
    /// `[batch, n, cross_attention_dim]`.
    pub context: T,
    /// SDXL: pooled text embeds `[batch, projection_dim]` and time ids `[batch, 6]`.
    pub text_embeds: Option<T>,
    pub time_ids: Vec<f32>,
}

/// SDXL's second text encoder.
struct SecondEncoder<B: ImageOps> {
    tokenizer: ClipTokenizer,
    model: ClipTextModel<B>,
}

pub struct Pipeline<B: ImageOps> {
    be: B,
    dtype: DType,
    index: ModelIndex,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel<B>,
    second: Option<SecondEncoder<B>>,
    unet: UNet<B>,
    unet_config: UNetConfig,
    vae: VaeDecoder<B>,
    scheduler: SchedulerConfig,
}

/// The safetensors file(s) of one component: the single file, or the shards of an index.
fn weight_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let single = dir.join(format!("{stem}.safetensors"));
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if index.exists() {
        let value: serde_json::Value = super::config::read_json(&index)?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    anyhow::bail!(
        "{} has no {stem}.safetensors (kiln reads safetensors weights only)",
        dir.display()
    )
}

/// Where a pipeline's weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineWeights {
    /// The safetensors files of the pipeline directory.
    Files,
    /// Random values of the right shapes (`--load-format dummy`), generated on the device
    /// where the backend can.
    Dummy { seed: u64 },
}

/// Dummy weights of one component, with the names its real checkpoint has: a
/// `CLIPTextModel` has no `text_projection` (its config's `projection_dim` notwithstanding).
/// Norm weights are ones, every other value uniform in [-0.02, 0.02) (see [`DummyWeights`]):
/// activations keep a sane scale through the UNet and stay finite over many steps.
struct DummyComponent {
    inner: DummyWeights,
    projection: bool,
}

/// A norm's scale (`norm1.weight`, `conv_norm_out.weight`, `layer_norm2.weight`, ...).
fn is_norm_scale(name: &str) -> bool {
    name.ends_with(".weight")
        && name
            .rsplit('.')
            .nth(1)
            .is_some_and(|layer| layer.contains("norm"))
}

impl WeightSource for DummyComponent {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<candle_core::Tensor> {
        if is_norm_scale(name) {
            return Ok(candle_core::Tensor::ones(
                shape,
                dtype.to_candle(),
                &candle_core::Device::Cpu,
            )?);
        }
        self.inner.tensor(name, shape, dtype)
    }

    fn contains(&self, name: &str) -> bool {
        self.projection || name != "text_projection.weight"
    }

    fn generated(
        &self,
        name: &str,
        shape: &[usize],
        slice: Option<&Slice>,
    ) -> Option<GeneratedPart> {
        if is_norm_scale(name) {
            return None;
        }
        self.inner.generated(name, shape, slice)
    }
}

/// The weights of `component` (`unet`, `text_encoder`, ...), whose files are `<stem>.safetensors`.
fn component_weights(
    files: &PipelineFiles,
    weights: PipelineWeights,
    index: &ModelIndex,
    component: &str,
    stem: &str,
) -> Result<Box<dyn WeightSource>> {
    match weights {
        PipelineWeights::Files => {
            let dir = files.dir().with_context(|| {
                format!(
                    "{} is a config-only preset: use it with --load-format dummy",
                    files.name()
                )
            })?;
            Ok(Box::new(SafetensorsWeights::open(&weight_files(
                &dir.join(component),
                stem,
            )?)?))
        }
        PipelineWeights::Dummy { seed } => Ok(Box::new(DummyComponent {
            inner: DummyWeights { seed },
            projection: index
                .components
                .get(component)
                .is_some_and(|class| class == "CLIPTextModelWithProjection"),
        })),
    }
}

impl<B: ImageOps> Pipeline<B> {
    /// Loads a diffusers pipeline directory.
    pub fn load(be: B, dir: &Path, dtype: DType) -> Result<Self> {
        Self::load_from(
            be,
            &PipelineFiles::Dir(dir.to_path_buf()),
            PipelineWeights::Files,
            dtype,
        )
    }

    /// Loads a pipeline from a directory or a built-in preset, with its weights or dummy ones.
    pub fn load_from(
        be: B,
        files: &PipelineFiles,
        weights: PipelineWeights,
        dtype: DType,
    ) -> Result<Self> {
        let index = ModelIndex::from_files(files)?;
        let clip_config = ClipConfig::from_files(files, "text_encoder")?;
        let unet_config = UNetConfig::from_files(files)?;
        let vae_config = VaeConfig::from_files(files)?;
        let scheduler = SchedulerConfig::from_files(files)?;
        let tokenizer = ClipTokenizer::from_files(files, "tokenizer")?;
        let source = |component: &str, stem: &str| {
            component_weights(files, weights, &index, component, stem)
        };

        let te_src = source("text_encoder", "model")?;
        let text_encoder =
            ClipTextModel::load(&Weights::new(&be, te_src.as_ref(), dtype), &clip_config)
                .context("loading the text encoder")?;
        let unet_src = source("unet", "diffusion_pytorch_model")?;
        let unet = UNet::load(&Weights::new(&be, unet_src.as_ref(), dtype), &unet_config)
            .context("loading the UNet")?;
        let vae_src = source("vae", "diffusion_pytorch_model")?;
        let vae = VaeDecoder::load(&Weights::new(&be, vae_src.as_ref(), dtype), &vae_config)
            .context("loading the VAE")?;
        let (second, context_width) = if index.kind == PipelineKind::StableDiffusionXL {
            let config = ClipConfig::from_files(files, "text_encoder_2")?;
            let src = source("text_encoder_2", "model")?;
            let model = ClipTextModel::load(&Weights::new(&be, src.as_ref(), dtype), &config)
                .context("loading the second text encoder")?;
            anyhow::ensure!(
                model.has_projection(),
                "text_encoder_2 has no text_projection (SDXL needs its pooled embeds)"
            );
            let second = SecondEncoder {
                tokenizer: ClipTokenizer::from_files(files, "tokenizer_2")?,
                model,
            };
            (Some(second), clip_config.hidden_size + config.hidden_size)
        } else {
            (None, clip_config.hidden_size)
        };
        anyhow::ensure!(
            unet_config.context_dim() == context_width,
            "the UNet attends to {}-wide text states, the text encoders make {context_width}",
            unet_config.context_dim(),
        );
        Ok(Pipeline {
            be,
            dtype,
            index,
            tokenizer,
            text_encoder,
            second,
            unet,
            unet_config,
            vae,
            scheduler,
        })
    }

    pub fn backend(&self) -> &B {
        &self.be
    }
    /// The dtype the weights (and so the latents) are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }
    pub fn text_encoder(&self) -> &ClipTextModel<B> {
        &self.text_encoder
    }
    /// SDXL's second tokenizer and text encoder.
    pub fn second_text_encoder(&self) -> Option<(&ClipTokenizer, &ClipTextModel<B>)> {
        self.second.as_ref().map(|s| (&s.tokenizer, &s.model))
    }
    pub fn unet(&self) -> &UNet<B> {
        &self.unet
    }
    pub fn unet_config(&self) -> &UNetConfig {
        &self.unet_config
    }
    pub fn vae(&self) -> &VaeDecoder<B> {
        &self.vae
    }
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }
    /// Swaps the scheduler (diffusers' `pipe.scheduler = ...`), e.g. Euler ancestral with
    /// "trailing" spacing for Turbo models.
    pub fn set_scheduler(&mut self, scheduler: SchedulerConfig) {
        self.scheduler = scheduler;
    }

    /// The image side the model was trained at (diffusers' default width and height).
    pub fn default_size(&self) -> usize {
        let latent = match &self.unet_config.sample_size {
            Some(super::config::PerBlock::One(s)) => *s,
            Some(super::config::PerBlock::Each(v)) if !v.is_empty() => v[0],
            _ => 64,
        };
        latent * self.vae.config().scale_factor()
    }

    /// Width and height must divide by this: the VAE's scale factor (8 for real models), so
    /// that the latents have whole sides. The UNet takes latents of any size (see
    /// [`UNet::forward`](super::unet::UNet::forward)).
    pub fn size_multiple(&self) -> usize {
        self.vae.config().scale_factor()
    }

    /// Checks a request's numbers, with messages fit for an API error.
    pub fn validate(&self, req: &ImageRequest) -> Result<()> {
        let m = self.size_multiple();
        anyhow::ensure!(
            req.width > 0
                && req.height > 0
                && req.width.is_multiple_of(m)
                && req.height.is_multiple_of(m),
            "width and height must be positive multiples of {m}, not {}x{}",
            req.width,
            req.height
        );
        anyhow::ensure!(
            (1..=MAX_IMAGES).contains(&req.num_images),
            "the number of images must be between 1 and {MAX_IMAGES}, not {}",
            req.num_images
        );
        anyhow::ensure!(
            req.guidance_scale.is_finite() && req.guidance_scale >= 0.0,
            "guidance_scale must be a finite number >= 0, not {}",
            req.guidance_scale
        );
        Ok(())
    }

    /// `[num_images, channels, height / f, width / f]`: the starting latents of `req`.
    pub fn latent_dims(&self, req: &ImageRequest) -> [usize; 4] {
        let f = self.vae.config().scale_factor();
        [
            req.num_images,
            self.unet_config.in_channels,
            req.height / f,
            req.width / f,
        ]
    }

    /// The UNet's conditioning for the whole batch: with guidance the negative prompt's for
    /// every image, then the prompt's; without, the prompt's only.
    pub fn encode_prompts(
        &self,
        req: &ImageRequest,
        guided: bool,
    ) -> Result<Conditioning<B::Tensor>> {
        let be = &self.be;
        // SDXL guides away from zeros, not from the empty prompt, when there is no negative.
        let zero_negative = guided
            && req.negative_prompt.is_none()
            && self.second.is_some()
            && self.index.force_zeros_for_empty_prompt;
        let mut texts = Vec::new();
        if guided && !zero_negative {
            texts.push(req.negative_prompt.as_deref().unwrap_or(""));
        }
        texts.push(req.prompt.as_str());
        let ids = |tok: &ClipTokenizer| -> Result<Vec<u32>> {
            let mut ids = Vec::new();
            for text in &texts {
                ids.extend(tok.encode_padded(text)?);
            }
            Ok(ids)
        };
        let first = self
            .text_encoder
            .forward(be, &ids(&self.tokenizer)?, texts.len())?;
        let (mut context, mut pooled) = match &self.second {
            None => (first.last_hidden, None),
            Some(second) => {
                let out = second
                    .model
                    .forward(be, &ids(&second.tokenizer)?, texts.len())?;
                let context = be.concat(&[&first.penultimate, &out.penultimate], 2)?;
                (context, out.projected)
            }
        };
        if zero_negative {
            let zeros_like = |t: &B::Tensor| -> Result<B::Tensor> {
                let dims = be.dims(t);
                let zeros =
                    be.tensor_from_f32(vec![0.0; dims.iter().product()], &dims, self.dtype)?;
                be.concat(&[&zeros, t], 0)
            };
            context = zeros_like(&context)?;
            pooled = pooled.as_ref().map(zeros_like).transpose()?;
        }
        let entries = if guided { 2 } else { 1 };
        let context = self.repeat_each(&context, entries, req.num_images)?;
        let text_embeds = match &pooled {
            Some(p) => Some(self.repeat_each(p, entries, req.num_images)?),
            None => None,
        };
        // Original size, crop top-left, target size: kiln neither crops nor resizes.
        let (h, w) = (req.height as f32, req.width as f32);
        let time_ids = if text_embeds.is_some() {
            [h, w, 0.0, 0.0, h, w].repeat(entries * req.num_images)
        } else {
            Vec::new()
        };
        Ok(Conditioning {
            context,
            text_embeds,
            time_ids,
        })
    }

    /// Each of the `entries` rows of `x` (axis 0), `n` times in a row.
    fn repeat_each(&self, x: &B::Tensor, entries: usize, n: usize) -> Result<B::Tensor> {
        let be = &self.be;
        let rows = (0..entries)
            .map(|i| be.narrow(x, 0, i, 1))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&B::Tensor> = rows
            .iter()
            .flat_map(|row| std::iter::repeat_n(row, n))
            .collect();
        be.concat(&refs, 0)
    }

    /// Runs the whole pipeline; `on_step(done, total)` after each denoising step.
    pub fn generate(
        &self,
        req: &ImageRequest,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<GeneratedImages> {
        struct Steps<'a>(&'a mut dyn FnMut(usize, usize));
        impl Progress for Steps<'_> {
            fn step(&mut self, done: usize, total: usize) {
                (self.0)(done, total)
            }
        }
        self.generate_observed(req, &mut Steps(on_step))
    }

    /// [`Pipeline::generate`], telling `progress` of each step and the end of each stage
    /// (for benchmarks: a stage's work is queued, not necessarily done, when it is told).
    pub fn generate_observed(
        &self,
        req: &ImageRequest,
        progress: &mut dyn Progress,
    ) -> Result<GeneratedImages> {
        self.validate(req)?;
        let be = &self.be;
        let schedule = self.scheduler.build(req.steps)?;
        let guided = req.guidance_scale > 1.0;
        let cond = self.encode_prompts(req, guided)?;
        progress.stage(Stage::TextEncoded);
        let added = cond.text_embeds.as_ref().map(|text_embeds| TextTime {
            text_embeds,
            time_ids: &cond.time_ids,
        });
        let dims = self.latent_dims(req);
        let count: usize = dims.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(req.seed);
        let mut normal =
            |n: usize| -> Vec<f32> { (0..n).map(|_| StandardNormal.sample(&mut rng)).collect() };
        let initial = match &req.initial_latents {
            Some(l) => {
                anyhow::ensure!(
                    l.len() == count,
                    "initial latents hold {} values, {dims:?} needs {count}",
                    l.len()
                );
                l.clone()
            }
            None => normal(count),
        };
        let initial = be.tensor_from_f32(initial, &dims, self.dtype)?;
        let mut latents = be.scale(&initial, schedule.init_noise_sigma())?;
        let total = schedule.timesteps().len();
        let n = req.num_images;
        for (i, &t) in schedule.timesteps().iter().enumerate() {
            let input = if guided {
                be.concat(&[&latents, &latents], 0)?
            } else {
                be.scale(&latents, 1.0)?
            };
            let input = be.scale(&input, schedule.input_scale(i))?;
            let out = self
                .unet
                .forward(be, &input, t, &cond.context, added.as_ref())?;
            let prediction = if guided {
                let uncond = be.narrow(&out, 0, 0, n)?;
                let cond = be.narrow(&out, 0, n, n)?;
                let g = req.guidance_scale;
                be.lincomb(&uncond, 1.0 - g, &cond, g)?
            } else {
                out
            };
            let rule = schedule.step_rule(i);
            latents = be.lincomb(&latents, rule.sample, &prediction, rule.model_output)?;
            if rule.noise != 0.0 {
                let noise = be.tensor_from_f32(normal(count), &dims, self.dtype)?;
                latents = be.lincomb(&latents, 1.0, &noise, rule.noise)?;
            }
            progress.step(i + 1, total);
        }
        progress.stage(Stage::Denoised);
        let pixels = self.decode_to_pixels(&latents)?;
        progress.stage(Stage::Decoded);
        Ok(GeneratedImages {
            width: req.width,
            height: req.height,
            count: n,
            latents: be.to_host_f32(&latents)?,
            pixels,
        })
    }

    /// Decodes final latents to `[n, h, w, 3]` pixels in [0, 1].
    pub fn decode_to_pixels(&self, latents: &B::Tensor) -> Result<Vec<f32>> {
        let be = &self.be;
        let vc = self.vae.config();
        let mut z = be.scale(latents, (1.0 / vc.scaling_factor) as f32)?;
        if let Some(shift) = vc.shift_factor.filter(|&s| s != 0.0) {
            let dims = be.dims(&z);
            let ones = be.tensor_from_f32(vec![1.0; dims.iter().product()], &dims, self.dtype)?;
            z = be.lincomb(&z, 1.0, &ones, shift as f32)?;
        }
        let image = self.vae.decode(be, &z)?;
        let dims = be.dims(&image);
        let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        let chw = be.to_host_f32(&image)?;
        let mut out = Vec::with_capacity(chw.len());
        for b in 0..n {
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        let v = chw[((b * c + ch) * h + y) * w + x];
                        out.push((v / 2.0 + 0.5).clamp(0.0, 1.0));
                    }
                }
            }
        }
        Ok(out)
    }
}
