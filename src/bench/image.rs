//! `kiln bench image`: end-to-end time of a diffusion pipeline (text encoder, the UNet's
//! denoising loop, VAE decode), the UNet's steps per second, and its achieved TFLOP/s against
//! a tensor-core peak (the UNet's FLOPs counted from its config: see
//! [`crate::diffusion::flops`]).
//!
//! Every stage boundary synchronises the device before the clock is read (the CUDA backend
//! queues its work on a stream; only a host copy or an explicit synchronise waits for it).

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{device_count, CudaBackend};
use crate::backend::image_ops::ImageOps;
use crate::backend::DType;
use crate::diffusion::flops::{parameter_counts, unet_cost, ParameterCounts, UNetInput};
use crate::diffusion::presets::{self, PipelineFiles};
use crate::diffusion::{ImageRequest, Pipeline, Progress, Stage};
use crate::launch::{device, Device, DeviceArg, LoadFormat};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Dense f16 / bf16 tensor-core peak of an H100 SXM and an H200, in TFLOP/s.
pub const HOPPER_DENSE_F16_TFLOPS: f64 = 989.0;

#[derive(clap::Args, Debug)]
pub struct ImageBenchArgs {
    /// A diffusers pipeline directory or hub repo, or a built-in preset (sd-1.5, sd-turbo)
    /// with --load-format dummy.
    #[arg(long, env = "KILN_IMAGE_MODEL")]
    pub model: String,
    /// dummy: random weights of the config's shapes, generated on the device.
    #[arg(long, value_enum, default_value = "auto")]
    pub load_format: LoadFormat,
    /// auto (GPU 0 when there is one), cpu, cuda or cuda:N.
    #[arg(long, env = "KILN_DEVICE", default_value = "auto")]
    pub device: DeviceArg,
    /// Weights and activations dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f16")]
    pub dtype: DType,
    /// Image width in pixels (default: the size the model was trained at).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels (default: the size the model was trained at).
    #[arg(long)]
    pub height: Option<usize>,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (above 1 doubles the UNet batch; 0 for Turbo models).
    #[arg(long, default_value_t = 7.5)]
    pub guidance_scale: f32,
    /// Images per run.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Untimed runs first (kernel loading, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Tensor-core peak to compare the UNet against, in TFLOP/s. Default: 989 (dense
    /// f16/bf16) on an H100 or H200; none elsewhere.
    #[arg(long, env = "KILN_BENCH_PEAK_TFLOPS")]
    pub peak_tflops: Option<f64>,
    #[arg(
        long,
        default_value = "a photograph of an astronaut riding a horse on mars"
    )]
    pub prompt: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub result_json: Option<PathBuf>,
}

/// One timed run, in seconds.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ImageRun {
    pub total_s: f64,
    pub text_encoder_s: f64,
    pub unet_loop_s: f64,
    pub vae_decode_s: f64,
    /// Denoising steps per second (each step is one UNet forward of the whole batch).
    pub unet_it_per_s: f64,
    pub unet_tflops: f64,
    pub peak_fraction: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct ImageBenchReport {
    pub model: String,
    pub load_format: String,
    pub device: String,
    pub dtype: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance_scale: f32,
    pub batch: usize,
    /// Samples per UNet forward (twice `batch` with guidance).
    pub unet_batch: usize,
    pub params: ParameterCounts,
    pub unet_gflops_per_step: f64,
    pub peak_tflops: Option<f64>,
    pub load_s: f64,
    pub runs: Vec<ImageRun>,
    /// The run with the median total time.
    pub median: ImageRun,
    pub any_non_finite: bool,
}

/// Waits for the device's queued work (the CPU backend has none).
pub trait Synchronize {
    fn sync(&self) -> Result<()>;
}

impl Synchronize for CpuBackend {
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

impl Synchronize for CudaBackend {
    fn sync(&self) -> Result<()> {
        self.synchronize()
    }
}

/// Times the stages of one generation: synchronises at each stage's end, then reads the
/// clock.
struct StageClock<'a, B: Synchronize> {
    be: &'a B,
    start: Instant,
    marks: Vec<(Stage, f64)>,
    error: Option<anyhow::Error>,
    bar: &'a indicatif::ProgressBar,
}

impl<B: Synchronize> Progress for StageClock<'_, B> {
    fn step(&mut self, done: usize, _total: usize) {
        self.bar.set_position(done as u64);
    }

    fn stage(&mut self, stage: Stage) {
        if let Err(e) = self.be.sync() {
            self.error.get_or_insert(e);
        }
        self.marks.push((stage, self.start.elapsed().as_secs_f64()));
    }
}

impl<B: Synchronize> StageClock<'_, B> {
    fn at(&self, stage: Stage) -> Result<f64> {
        self.marks
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, t)| *t)
            .with_context(|| format!("the pipeline did not report {stage:?}"))
    }
}

/// The pipeline `model` names: a preset (config only) or a diffusers directory / repo.
fn resolve_files(model: &str) -> Result<PipelineFiles> {
    if !std::path::Path::new(model).exists() {
        if let Some(p) = presets::preset(model) {
            return Ok(PipelineFiles::Preset(p));
        }
    }
    let dir = crate::launch::images::pipeline_dir(model, None)?.with_context(|| {
        format!(
            "{model} is neither a diffusers pipeline (no model_index.json, locally or on the \
             hub) nor a built-in preset ({})",
            presets::names().join(", ")
        )
    })?;
    Ok(PipelineFiles::Dir(dir))
}

/// The peak to compare against: the flag, else the dense f16 peak of a known GPU.
fn default_peak(device: Device) -> Option<f64> {
    let Device::Cuda(i) = device else {
        return None;
    };
    let gpu = crate::gpu::Inventory::detect()
        .devices
        .into_iter()
        .find(|d| d.index == i)?;
    use crate::gpu::GpuType;
    matches!(gpu.gpu_type, GpuType::H100 | GpuType::H200).then_some(HOPPER_DENSE_F16_TFLOPS)
}

pub fn run(args: ImageBenchArgs) -> Result<()> {
    let report = run_report(args)?;
    print_report(&report);
    Ok(())
}

/// Runs the bench and writes `--result-json`; returns the report.
pub fn run_report(mut args: ImageBenchArgs) -> Result<ImageBenchReport> {
    let files = resolve_files(&args.model)?;
    let device = device::resolve(args.device, device_count)?;
    if args.peak_tflops.is_none() {
        args.peak_tflops = default_peak(device);
    }
    let report = match device {
        Device::Cpu => bench_on(CpuBackend::new(), &files, &args)?,
        Device::Cuda(ordinal) => {
            let be = CudaBackend::new(ordinal)
                .with_context(|| format!("opening CUDA device {ordinal}"))?;
            bench_on(be, &files, &args)?
        }
    };
    if let Some(path) = &args.result_json {
        super::write_json(path, &report)?;
    }
    Ok(report)
}

fn bench_on<B: ImageOps + Synchronize>(
    be: B,
    files: &PipelineFiles,
    args: &ImageBenchArgs,
) -> Result<ImageBenchReport> {
    anyhow::ensure!(args.iters >= 1, "--iters must be at least 1");
    let weights = crate::cli::image::pipeline_weights(args.load_format, args.seed)?;
    let device_name = be.name();
    let load_start = Instant::now();
    let pipeline = Pipeline::load_from(be, files, weights, args.dtype)
        .with_context(|| format!("loading {} on {device_name}", files.name()))?;
    pipeline.backend().sync()?;
    let load_s = load_start.elapsed().as_secs_f64();
    let size = pipeline.default_size();
    let req = ImageRequest {
        prompt: args.prompt.clone(),
        negative_prompt: None,
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        width: args.width.unwrap_or(size),
        height: args.height.unwrap_or(size),
        num_images: args.batch,
        seed: args.seed,
        initial_latents: None,
    };
    pipeline.validate(&req)?;
    let guided = req.guidance_scale > 1.0;
    let unet_batch = args.batch * if guided { 2 } else { 1 };
    let [_, _, lh, lw] = pipeline.latent_dims(&req);
    let cost = unet_cost(
        pipeline.unet_config(),
        UNetInput {
            batch: unet_batch,
            height: lh,
            width: lw,
            context_len: pipeline.tokenizer().max_length(),
        },
    )?;
    // The number of steps the schedule really runs (a scheduler may clip it).
    let steps = pipeline
        .scheduler_config()
        .build(req.steps)?
        .timesteps()
        .len();

    let bar = indicatif::ProgressBar::new(((args.warmup + args.iters) * steps) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut runs = Vec::with_capacity(args.iters);
    let mut any_non_finite = false;
    for i in 0..args.warmup + args.iters {
        let warm = i < args.warmup;
        bar.set_message(if warm { "warm-up" } else { "timed" });
        bar.set_length(steps as u64);
        bar.set_position(0);
        let mut clock = StageClock {
            be: pipeline.backend(),
            start: Instant::now(),
            marks: Vec::new(),
            error: None,
            bar: &bar,
        };
        let images = pipeline.generate_observed(&req, &mut clock)?;
        if let Some(e) = clock.error.take() {
            return Err(e.context("synchronising the device"));
        }
        let total_s = clock.start.elapsed().as_secs_f64();
        any_non_finite |= images
            .latents
            .iter()
            .chain(&images.pixels)
            .any(|v| !v.is_finite());
        if warm {
            continue;
        }
        let text = clock.at(Stage::TextEncoded)?;
        let denoised = clock.at(Stage::Denoised)?;
        let decoded = clock.at(Stage::Decoded)?;
        let unet_loop_s = denoised - text;
        let unet_tflops = cost.flops() * steps as f64 / unet_loop_s / 1e12;
        runs.push(ImageRun {
            total_s,
            text_encoder_s: text,
            unet_loop_s,
            vae_decode_s: decoded - denoised,
            unet_it_per_s: steps as f64 / unet_loop_s,
            unet_tflops,
            peak_fraction: args.peak_tflops.map(|p| unet_tflops / p),
        });
    }
    bar.finish_and_clear();
    let mut by_total: Vec<&ImageRun> = runs.iter().collect();
    by_total.sort_by(|a, b| a.total_s.total_cmp(&b.total_s));
    let median = by_total[by_total.len() / 2].clone();
    Ok(ImageBenchReport {
        model: files.name(),
        load_format: format!("{:?}", args.load_format).to_lowercase(),
        device: device_name,
        dtype: args.dtype.to_string(),
        width: req.width,
        height: req.height,
        steps,
        guidance_scale: req.guidance_scale,
        batch: args.batch,
        unet_batch,
        params: parameter_counts(files)?,
        unet_gflops_per_step: cost.flops() / 1e9,
        peak_tflops: args.peak_tflops,
        load_s,
        runs,
        median,
        any_non_finite,
    })
}

fn print_report(r: &ImageBenchReport) {
    let p = &r.params;
    println!(
        "model {} ({} weights) on {}, {}, {}x{}, {} steps, guidance {}, batch {} (UNet batch {})",
        r.model,
        r.load_format,
        r.device,
        r.dtype,
        r.width,
        r.height,
        r.steps,
        r.guidance_scale,
        r.batch,
        r.unet_batch
    );
    println!(
        "params: UNet {:.1}M, text encoder {:.1}M{}, VAE decoder {:.1}M; UNet {:.1} GFLOP per \
         step; loaded in {:.2} s; peak {}",
        p.unet as f64 / 1e6,
        p.text_encoder as f64 / 1e6,
        p.text_encoder_2
            .map(|n| format!(" + {:.1}M", n as f64 / 1e6))
            .unwrap_or_default(),
        p.vae_decoder as f64 / 1e6,
        r.unet_gflops_per_step,
        r.load_s,
        r.peak_tflops
            .map(|t| format!("{t:.0} TFLOP/s"))
            .unwrap_or_else(|| "not given".into())
    );
    println!("| run | total s | text encoder ms | UNet loop s | VAE decode ms | UNet it/s | UNet TFLOP/s | of peak |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, run) in r.runs.iter().enumerate() {
        println!(
            "| {i} | {:.3} | {:.1} | {:.3} | {:.1} | {:.2} | {:.1} | {} |",
            run.total_s,
            run.text_encoder_s * 1e3,
            run.unet_loop_s,
            run.vae_decode_s * 1e3,
            run.unet_it_per_s,
            run.unet_tflops,
            run.peak_fraction
                .map(|f| format!("{:.1}%", f * 100.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "median: {:.3} s per image batch, UNet {:.2} it/s{}",
        r.median.total_s,
        r.median.unet_it_per_s,
        if r.any_non_finite {
            " (WARNING: non-finite values in the output)"
        } else {
            ""
        }
    );
}
