//! Dummy-weight image pipelines (`--load-format dummy`) and `kiln bench image`, on the CPU
//! with tiny sizes: the tiny fixture's configs with generated weights, and the built-in
//! presets' configs.

use kiln::backend::cpu::CpuBackend;
use kiln::backend::DType;
use kiln::bench::image::{run_report, ImageBenchArgs};
use kiln::diffusion::flops::{unet_cost, UNetInput};
use kiln::diffusion::presets::{self, PipelineFiles};
use kiln::diffusion::{ImageRequest, Pipeline, PipelineWeights};
use kiln::launch::{DeviceArg, LoadFormat};
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/tiny-sd")
}

fn request(steps: usize, guidance_scale: f32, side: usize) -> ImageRequest {
    ImageRequest {
        prompt: "a red cat".into(),
        negative_prompt: None,
        steps,
        guidance_scale,
        width: side,
        height: side,
        num_images: 1,
        seed: 3,
        initial_latents: None,
    }
}

fn dummy(files: PipelineFiles, seed: u64) -> Pipeline<CpuBackend> {
    Pipeline::load_from(
        CpuBackend::new(),
        &files,
        PipelineWeights::Dummy { seed },
        DType::F32,
    )
    .unwrap()
}

#[test]
fn dummy_weights_stay_finite_over_fifty_guided_steps() {
    let pipeline = dummy(PipelineFiles::Dir(fixture_dir()), 0);
    let images = pipeline
        .generate(&request(50, 7.5, 32), &mut |_, _| {})
        .unwrap();
    assert!(images.latents.iter().all(|v| v.is_finite()));
    assert!(images.pixels.iter().all(|v| v.is_finite()));
    // Not a constant image: the weights do something.
    let first = images.pixels[0];
    assert!(images.pixels.iter().any(|&v| (v - first).abs() > 1e-4));

    // Another seed, other weights; the real weights differ from both.
    let short = request(2, 7.5, 32);
    let mine = pipeline.generate(&short, &mut |_, _| {}).unwrap();
    let other = dummy(PipelineFiles::Dir(fixture_dir()), 1)
        .generate(&short, &mut |_, _| {})
        .unwrap();
    assert_ne!(mine.latents, other.latents);
    let real = Pipeline::load(CpuBackend::new(), &fixture_dir(), DType::F32)
        .unwrap()
        .generate(&short, &mut |_, _| {})
        .unwrap();
    assert_ne!(mine.latents, real.latents);
}

#[test]
fn presets_are_found_by_name_and_need_dummy_weights() {
    assert_eq!(presets::preset("SD-1.5").unwrap().name, "sd-1.5");
    assert!(presets::preset("sd-turbo").is_some());
    assert!(presets::preset("sd-9").is_none());
    let files = PipelineFiles::Preset(presets::preset("sd-turbo").unwrap());
    let err = Pipeline::load_from(
        CpuBackend::new(),
        &files,
        PipelineWeights::Files,
        DType::F32,
    )
    .err()
    .expect("a preset has no weight files");
    assert!(
        format!("{err:#}").contains("--load-format dummy"),
        "{err:#}"
    );
    // The stand-in tokenizer's ids fit every preset's text encoder.
    for p in &presets::PRESETS {
        let files = PipelineFiles::Preset(p);
        let tok =
            kiln::diffusion::tokenizer::ClipTokenizer::from_files(&files, "tokenizer").unwrap();
        let clip = kiln::diffusion::config::ClipConfig::from_files(&files, "text_encoder").unwrap();
        let ids = tok
            .encode_padded("an astronaut riding a horse, 4k")
            .unwrap();
        assert_eq!(ids.len(), clip.max_position_embeddings);
        assert!(ids.iter().all(|&id| (id as usize) < clip.vocab_size));
    }
}

fn bench_args(model: &str, json: Option<PathBuf>) -> ImageBenchArgs {
    ImageBenchArgs {
        model: model.to_string(),
        load_format: LoadFormat::Dummy,
        device: DeviceArg::Cpu,
        dtype: DType::F32,
        width: None,
        height: None,
        steps: 3,
        guidance_scale: 7.5,
        batch: 1,
        warmup: 1,
        iters: 2,
        peak_tflops: Some(1.0),
        prompt: "a red cat".into(),
        seed: 0,
        result_json: json,
    }
}

#[test]
fn image_bench_times_each_stage_and_counts_the_unet() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out/bench.json");
    let model = fixture_dir().to_string_lossy().into_owned();
    let r = run_report(bench_args(&model, Some(json.clone()))).unwrap();
    assert_eq!((r.width, r.height, r.steps, r.unet_batch), (32, 32, 3, 2));
    assert_eq!(r.runs.len(), 2);
    assert!(!r.any_non_finite);
    for run in &r.runs {
        let stages = run.text_encoder_s + run.unet_loop_s + run.vae_decode_s;
        assert!(stages > 0.0 && stages <= run.total_s + 1e-9, "{run:?}");
        assert!((run.unet_it_per_s - 3.0 / run.unet_loop_s).abs() < 1e-9);
        assert!((run.peak_fraction.unwrap() - run.unet_tflops).abs() < 1e-12);
    }
    // The FLOPs are the walk's for the fixture's UNet at 16x16 latents, batch 2.
    let files = PipelineFiles::Dir(fixture_dir());
    let config = kiln::diffusion::config::UNetConfig::from_files(&files).unwrap();
    let cost = unet_cost(
        &config,
        UNetInput {
            batch: 2,
            height: 16,
            width: 16,
            context_len: 77,
        },
    )
    .unwrap();
    assert_eq!(r.unet_gflops_per_step, cost.flops() / 1e9);
    assert_eq!(r.params.unet, cost.params);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(written["runs"].as_array().unwrap().len(), 2);
    assert!(written["median"]["unet_it_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn image_bench_runs_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bench", "image", "--model"])
        .arg(fixture_dir())
        .args([
            "--load-format",
            "dummy",
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--steps",
            "1",
            "--guidance-scale",
            "0",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--result-json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("UNet it/s"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["unet_batch"], 1);
    assert!(r["peak_tflops"].is_null());
}

/// The real SD 1.5 and SD-Turbo shapes at 64x64 pixels on the CPU (slow: run by hand with
/// `cargo test --release --test diffusion_dummy_bench -- --ignored`).
#[test]
#[ignore]
fn real_shapes_stay_finite_at_64_pixels() {
    for (name, steps, guidance) in [("sd-1.5", 50, 7.5), ("sd-turbo", 1, 0.0)] {
        let steps = std::env::var("KILN_TEST_STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(steps);
        let pipeline = dummy(PipelineFiles::Preset(presets::preset(name).unwrap()), 0);
        let start = std::time::Instant::now();
        let images = pipeline
            .generate(&request(steps, guidance, 64), &mut |_, _| {})
            .unwrap();
        let max = images.latents.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!(
            "{name}: {steps} steps at 64x64 in {:.1} s, max |latent| {max}",
            start.elapsed().as_secs_f64()
        );
        assert!(images.latents.iter().all(|v| v.is_finite()), "{name}");
        assert!(images.pixels.iter().all(|v| v.is_finite()), "{name}");
    }
}
