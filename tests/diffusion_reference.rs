//! kiln's Stable Diffusion pipelines against HuggingFace diffusers, stage by stage, on the
//! tiny random-weight pipelines of `tests/fixtures/diffusion/` (made by
//! `scripts/make_diffusion_fixtures.py`): `tiny-sd` (SD 1.5 style) and `tiny-sdxl` (two text
//! encoders, pooled embeds, size conditioning). Everything runs in f32 on the CPU.
//!
//! Tolerances (measured differences are 10x or more below them):
//! - token ids: exact;
//! - text encoder states, one UNet forward, one VAE decode: 2e-5 absolute on values of
//!   order 1 (measured <= 3e-6);
//! - scheduler tables: timesteps exact, sigmas 1e-5 relative, one step 1e-5 relative to the
//!   largest value;
//! - full runs (3-step Euler + CFG + negative prompt, 2 images; 2-step DDIM "trailing";
//!   1-step Euler ancestral "trailing" without CFG; SDXL: Euler + CFG with a negative prompt
//!   and with zeroed negative conditioning, 1-step Euler ancestral): final latents 1e-5 relative to their
//!   largest magnitude (CFG with random weights blows them up to tens; measured <= 2e-6),
//!   pixels in [0, 1] 1e-4 absolute (measured <= 4e-6);
//! - sizes whose latents have odd sides (`reference_odd_sizes.*`: `tiny-sd` at 22x30 pixels,
//!   `tiny-sdxl` at 26x18 with its size conditioning): one UNet forward and a 3-step
//!   Euler + CFG run, with the same tolerances.

use candle_core::{Device, Tensor};
use kiln::backend::cpu::CpuBackend;
use kiln::backend::image_ops::ImageOps;
use kiln::backend::{Backend, DType};
use kiln::diffusion::scheduler::SchedulerConfig;
use kiln::diffusion::unet::TextTime;
use kiln::diffusion::{ImageRequest, Pipeline};
use std::collections::HashMap;
use std::path::PathBuf;

const SD: &str = "tiny-sd";
const SDXL: &str = "tiny-sdxl";

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusion")
        .join(name)
}

/// The references of the fixture `name` (`reference.*`), or those of one of its extra sets
/// (`reference_<set>.*`, e.g. `odd_sizes`).
fn reference_file(name: &str, set: Option<&str>, ext: &str) -> PathBuf {
    let stem = set.map_or("reference".to_string(), |s| format!("reference_{s}"));
    fixture_dir(name).join(format!("{stem}.{ext}"))
}

fn reference_json(name: &str) -> serde_json::Value {
    set_json(name, None)
}

fn set_json(name: &str, set: Option<&str>) -> serde_json::Value {
    let text = std::fs::read_to_string(reference_file(name, set, "json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    set_tensors(name, None)
}

fn set_tensors(name: &str, set: Option<&str>) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(reference_file(name, set, "safetensors"), &Device::Cpu).unwrap()
}

fn reference(name: &str, key: &str) -> Tensor {
    set_reference(name, None, key)
}

fn set_reference(name: &str, set: Option<&str>, key: &str) -> Tensor {
    set_tensors(name, set)
        .remove(key)
        .unwrap_or_else(|| panic!("{name} {set:?} references have no {key}"))
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn pipeline(name: &str) -> Pipeline<CpuBackend> {
    Pipeline::load(CpuBackend::new(), &fixture_dir(name), DType::F32).unwrap()
}

/// Fails unless every `|got - want| <= tol`; returns the largest difference.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values, expected {}",
        got.len(),
        want.len()
    );
    let (mut worst, mut at) = (0f32, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if d.is_nan() || d > worst {
            (worst, at) = (d, i);
        }
    }
    assert!(
        worst <= tol,
        "{what}: max |diff| {worst:e} at {at} (got {}, want {}) > {tol:e}",
        got[at],
        want[at]
    );
    eprintln!("{what}: max |diff| {worst:e} (tolerance {tol:e})");
    worst
}

#[test]
fn clip_tokenizer_matches_transformers() {
    let p = pipeline(SD);
    for case in reference_json(SD)["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(p.tokenizer().encode_padded(text).unwrap(), want, "{text:?}");
    }
}

#[test]
fn text_encoder_matches_transformers() {
    let p = pipeline(SD);
    let be = p.backend();
    let ids: Vec<Vec<u32>> =
        serde_json::from_value(reference_json(SD)["text_encoder"]["input_ids"].clone()).unwrap();
    let flat: Vec<u32> = ids.concat();
    let out = p.text_encoder().forward(be, &flat, ids.len()).unwrap();
    let tol = 2e-5;
    for (name, got) in [
        ("last_hidden_state", &out.last_hidden),
        ("penultimate", &out.penultimate),
        ("pooled", &out.pooled),
    ] {
        let want = reference(SD, &format!("text_encoder.{name}"));
        assert_eq!(be.dims(got), want.dims(), "{name} shape");
        assert_close(name, &be.to_host_f32(got).unwrap(), &values(&want), tol);
    }
}

#[test]
fn one_unet_forward_matches_diffusers() {
    let p = pipeline(SD);
    let be = p.backend();
    let timestep = reference_json(SD)["unet"]["timestep"].as_f64().unwrap() as f32;
    let out = p
        .unet()
        .forward(
            be,
            &reference(SD, "unet.sample"),
            timestep,
            &reference(SD, "unet.context"),
            None,
        )
        .unwrap();
    let want = reference(SD, "unet.out");
    assert_eq!(out.dims(), want.dims());
    assert_close("unet", &values(&out), &values(&want), 2e-5);
}

#[test]
fn vae_decode_matches_diffusers() {
    let p = pipeline(SD);
    let be = p.backend();
    let image = p.vae().decode(be, &reference(SD, "vae.latents")).unwrap();
    let want = reference(SD, "vae.image");
    assert_eq!(image.dims(), want.dims());
    assert_close("vae decode", &values(&image), &values(&want), 2e-5);
}

#[test]
fn schedulers_match_diffusers() {
    let sample = values(&reference(SD, "scheduler.sample"));
    let output = values(&reference(SD, "scheduler.model_output"));
    let all = tensors(SD);
    let cases = reference_json(SD)["schedulers"].clone();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 50);
    for case in cases {
        let mut config = case["config"].clone();
        config["_class_name"] = case["class_name"].clone();
        let config = SchedulerConfig::from_json(config).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let key = case["key"].as_str().unwrap();
        let schedule = config.build(steps).unwrap();
        let want_t: Vec<f32> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        assert_eq!(schedule.timesteps(), want_t.as_slice(), "{key} timesteps");
        let init = case["init_noise_sigma"].as_f64().unwrap() as f32;
        assert!(
            (schedule.init_noise_sigma() - init).abs() <= 1e-5 * init,
            "{key} init sigma"
        );

        let i = case["step_index"].as_u64().unwrap() as usize;
        let scale = schedule.input_scale(i);
        let scaled: Vec<f32> = sample.iter().map(|x| x * scale).collect();
        assert_close(
            &format!("{key} scaled"),
            &scaled,
            &values(&all[&format!("{key}.scaled")]),
            1e-6,
        );
        let rule = schedule.step_rule(i);
        let noise = all
            .get(&format!("{key}.noise"))
            .map(values)
            .unwrap_or_else(|| vec![0.0; sample.len()]);
        let prev: Vec<f32> = (0..sample.len())
            .map(|j| {
                rule.sample * sample[j] + rule.model_output * output[j] + rule.noise * noise[j]
            })
            .collect();
        let want = values(&all[&format!("{key}.prev")]);
        let largest = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert_close(&format!("{key} step"), &prev, &want, 1e-5 * largest);
    }
}

/// Every full run recorded for the fixture `name` (in its reference set `set`), from its
/// initial latents.
fn check_full_runs(name: &str, set: Option<&str>) {
    let mut p = pipeline(name);
    let reference = |name, key: &str| set_reference(name, set, key);
    let initial = reference(name, "run.initial_latents");
    for run in set_json(name, set)["runs"].as_array().unwrap() {
        let run_name = format!("{name} {}", run["name"].as_str().unwrap());
        let key = format!("run.{}", run["name"].as_str().unwrap());
        p.set_scheduler(SchedulerConfig::from_json(run["scheduler"].clone()).unwrap());
        let n = run["num_images"].as_u64().unwrap() as usize;
        let req = ImageRequest {
            prompt: run["prompt"].as_str().unwrap().to_string(),
            negative_prompt: run["negative_prompt"].as_str().map(str::to_string),
            steps: run["steps"].as_u64().unwrap() as usize,
            guidance_scale: run["guidance_scale"].as_f64().unwrap() as f32,
            width: run["width"].as_u64().unwrap() as usize,
            height: run["height"].as_u64().unwrap() as usize,
            num_images: n,
            seed: 0,
            initial_latents: Some(values(&initial.narrow(0, 0, n).unwrap())),
        };
        let mut steps_seen = 0;
        let out = p.generate(&req, &mut |done, _| steps_seen = done).unwrap();
        assert_eq!(steps_seen, req.steps, "{run_name}: progress");
        let want = values(&reference(name, &format!("{key}.latents")));
        let largest = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert_close(
            &format!("{run_name} latents"),
            &out.latents,
            &want,
            1e-5 * largest,
        );
        let want = values(&reference(name, &format!("{key}.image")));
        assert_close(&format!("{run_name} image"), &out.pixels, &want, 1e-4);
    }
}

#[test]
fn full_runs_match_diffusers() {
    check_full_runs(SD, None);
}

/// Reference set at a size whose latents have odd sides, which the UNet's downsample rounds
/// up, so its upsample must return to the skip connection's size, not double: `tiny-sd` at
/// 22x30 pixels (11x15 latents, 6x8 below), `tiny-sdxl` at 26x18 (13x9, 7x5 below).
const ODD: Option<&str> = Some("odd_sizes");

#[test]
fn unet_forward_on_odd_latent_sides_matches_diffusers() {
    let p = pipeline(SD);
    let be = p.backend();
    let timestep = set_json(SD, ODD)["unet"]["timestep"].as_f64().unwrap() as f32;
    let sample = set_reference(SD, ODD, "unet.sample");
    assert_eq!(sample.dims(), &[2, 4, 11, 15]);
    let out = p
        .unet()
        .forward(
            be,
            &sample,
            timestep,
            &set_reference(SD, ODD, "unet.context"),
            None,
        )
        .unwrap();
    let want = set_reference(SD, ODD, "unet.out");
    assert_eq!(out.dims(), want.dims());
    assert_close("unet 11x15", &values(&out), &values(&want), 2e-5);
}

#[test]
fn full_run_at_a_size_with_odd_latent_sides_matches_diffusers() {
    let p = pipeline(SD);
    // The pipeline accepts any multiple of the VAE's factor (2 here, 8 for real models).
    assert_eq!(p.size_multiple(), 2);
    check_full_runs(SD, ODD);
}

#[test]
fn sdxl_tokenizer_2_matches_transformers() {
    let p = pipeline(SDXL);
    let (tokenizer, _) = p.second_text_encoder().unwrap();
    for case in reference_json(SDXL)["tokenizer_2_cases"]
        .as_array()
        .unwrap()
    {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tokenizer.encode_padded(text).unwrap(), want, "{text:?}");
    }
}

#[test]
fn sdxl_second_text_encoder_matches_transformers() {
    let p = pipeline(SDXL);
    let be = p.backend();
    let (_, encoder) = p.second_text_encoder().unwrap();
    let ids: Vec<Vec<u32>> =
        serde_json::from_value(reference_json(SDXL)["text_encoder_2"]["input_ids"].clone())
            .unwrap();
    let out = encoder.forward(be, &ids.concat(), ids.len()).unwrap();
    let want = reference(SDXL, "text_encoder_2.penultimate");
    assert_close(
        "sdxl penultimate",
        &values(&out.penultimate),
        &values(&want),
        2e-5,
    );
    let want = reference(SDXL, "text_encoder_2.text_embeds");
    let got = out.projected.expect("text_encoder_2 projects");
    assert_eq!(got.dims(), want.dims());
    assert_close("sdxl text_embeds", &values(&got), &values(&want), 2e-5);
}

#[test]
fn sdxl_unet_with_added_conditioning_matches_diffusers() {
    let p = pipeline(SDXL);
    let be = p.backend();
    let timestep = reference_json(SDXL)["unet"]["timestep"].as_f64().unwrap() as f32;
    let text_embeds = reference(SDXL, "unet.text_embeds");
    let time_ids = values(&reference(SDXL, "unet.time_ids"));
    let added = TextTime {
        text_embeds: &text_embeds,
        time_ids: &time_ids,
    };
    let sample = reference(SDXL, "unet.sample");
    let context = reference(SDXL, "unet.context");
    let out = p
        .unet()
        .forward(be, &sample, timestep, &context, Some(&added))
        .unwrap();
    let want = reference(SDXL, "unet.out");
    assert_eq!(out.dims(), want.dims());
    assert_close("sdxl unet", &values(&out), &values(&want), 2e-5);
    // Without its added conditioning the SDXL UNet refuses to run.
    assert!(p
        .unet()
        .forward(be, &sample, timestep, &context, None)
        .is_err());
}

#[test]
fn sdxl_full_runs_match_diffusers() {
    check_full_runs(SDXL, None);
}

/// `tiny-sdxl`'s odd-size set: 26x18 pixels, 13x9 latents, which its one downsample rounds up
/// to 7x5; the UNet also carries the size in its added conditioning (time ids).
#[test]
fn sdxl_unet_forward_on_odd_latent_sides_matches_diffusers() {
    let p = pipeline(SDXL);
    let be = p.backend();
    let reference = |key| set_reference(SDXL, ODD, key);
    let timestep = set_json(SDXL, ODD)["unet"]["timestep"].as_f64().unwrap() as f32;
    let sample = reference("unet.sample");
    assert_eq!(sample.dims(), &[2, 4, 13, 9]);
    let text_embeds = reference("unet.text_embeds");
    let time_ids = values(&reference("unet.time_ids"));
    // Both rows: original size 26x18, no crop, target size 26x18.
    assert_eq!(&time_ids[..6], &[26.0, 18.0, 0.0, 0.0, 26.0, 18.0]);
    let added = TextTime {
        text_embeds: &text_embeds,
        time_ids: &time_ids,
    };
    let out = p
        .unet()
        .forward(
            be,
            &sample,
            timestep,
            &reference("unet.context"),
            Some(&added),
        )
        .unwrap();
    let want = reference("unet.out");
    assert_eq!(out.dims(), want.dims());
    assert_close("sdxl unet 13x9", &values(&out), &values(&want), 2e-5);
}

#[test]
fn sdxl_full_run_at_a_size_with_odd_latent_sides_matches_diffusers() {
    let p = pipeline(SDXL);
    assert_eq!(p.size_multiple(), 2);
    check_full_runs(SDXL, ODD);
}
