//! `kiln check-image-reference`: runs a diffusion fixture (`tests/fixtures/diffusion/<name>`,
//! made with diffusers by scripts/make_diffusion_fixtures.py) on a device and compares it
//! with the references it records: every full pipeline run (final latents and pixels, from
//! the recorded initial latents) and the single stages where recorded (text encoder, one
//! UNet forward, one VAE decode), in `reference.*` and each `reference_<set>.*`. Exit status
//! 1 on any mismatch: this is how a GPU run of the image ops is proved to give diffusers'
//! images.

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{device_count, CudaBackend};
use crate::backend::image_ops::ImageOps;
use crate::backend::DType;
use crate::diffusion::scheduler::SchedulerConfig;
use crate::diffusion::unet::TextTime;
use crate::diffusion::{ImageRequest, Pipeline};
use crate::launch::{device, Device, DeviceArg};
use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct CheckImageReferenceArgs {
    /// The fixture: a diffusers pipeline directory holding reference.json and
    /// reference.safetensors (and optionally reference_<set>.json / .safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// The pipeline's dtype (f32, f16 or bf16). The references are f32: 16-bit runs are held
    /// to looser tolerances.
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How close a run must come to diffusers, per dtype.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerances {
    /// Text encoder states, one UNet forward, one VAE decode: absolute (values of order 1).
    pub stage: f32,
    /// Final latents: relative to their largest magnitude (CFG with random weights makes
    /// them large).
    pub latents: f32,
    /// Pixels in [0, 1]: absolute.
    pub pixels: f32,
}

impl Tolerances {
    /// f32: 5x the CPU's test tolerances (a GPU sums in other orders; the CPU measures 10x
    /// below its own). 16-bit: a few units of the dtype's rounding carried through the
    /// models; first estimates, to be revised with GPU measurements.
    pub fn for_dtype(dtype: DType) -> Tolerances {
        match dtype {
            DType::F32 => Tolerances {
                stage: 1e-4,
                latents: 5e-5,
                pixels: 5e-4,
            },
            DType::F16 => Tolerances {
                stage: 2e-2,
                latents: 2e-2,
                pixels: 2e-2,
            },
            DType::BF16 => Tolerances {
                stage: 1e-1,
                latents: 1e-1,
                pixels: 1e-1,
            },
        }
    }
}

/// One compared quantity.
#[derive(Serialize, Debug)]
pub struct ImageCheckRow {
    /// `<set>/<stage or run>.<quantity>`.
    pub check: String,
    pub max_abs_diff: f64,
    pub limit: f64,
    pub ok: bool,
}

#[derive(Serialize, Debug)]
pub struct ImageCheckReport {
    pub model: String,
    pub device: String,
    pub dtype: DType,
    pub tolerances: Tolerances,
    pub ok: bool,
    pub rows: Vec<ImageCheckRow>,
}

/// Runs the check; `Ok(false)` when something does not match.
pub fn run(args: CheckImageReferenceArgs) -> Result<bool> {
    let report = check(&args.model, args.device, args.dtype)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report.rows {
            println!(
                "{:<4} {:<44} {:>10.3e} (limit {:.1e})",
                if r.ok { "ok" } else { "FAIL" },
                r.check,
                r.max_abs_diff,
                r.limit
            );
        }
        println!(
            "{} on {} ({}): {}",
            report.model,
            report.device,
            report.dtype,
            if report.ok { "matches" } else { "MISMATCH" }
        );
    }
    Ok(report.ok)
}

/// Loads the fixture in `dir` on the device `device` picks and compares every reference set.
pub fn check(dir: &Path, device: DeviceArg, dtype: DType) -> Result<ImageCheckReport> {
    let sets = reference_sets(dir)?;
    anyhow::ensure!(
        !sets.is_empty(),
        "{} holds no reference.json (is --model a diffusion fixture?)",
        dir.display()
    );
    match device::resolve(device, device_count)? {
        Device::Cpu => compare(CpuBackend::new(), dir, &sets, dtype),
        Device::Cuda(ordinal) => {
            let backend = CudaBackend::new(ordinal)
                .with_context(|| format!("opening CUDA device {ordinal}"))?;
            compare(backend, dir, &sets, dtype)
        }
    }
}

/// The reference sets in `dir`: "" for `reference.*`, `<set>` for `reference_<set>.*`.
fn reference_sets(dir: &Path) -> Result<Vec<String>> {
    let mut sets = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".json") {
            match stem.strip_prefix("reference") {
                Some("") => sets.push(String::new()),
                Some(rest) => match rest.strip_prefix('_') {
                    Some(set) => sets.push(set.to_string()),
                    None => continue,
                },
                None => continue,
            }
        }
    }
    sets.sort();
    Ok(sets)
}

/// One reference set: its JSON and its f32 tensors.
struct ReferenceSet {
    name: String,
    json: Value,
    tensors: HashMap<String, Tensor>,
}

impl ReferenceSet {
    fn load(dir: &Path, set: &str) -> Result<ReferenceSet> {
        let stem = match set {
            "" => "reference".to_string(),
            s => format!("reference_{s}"),
        };
        let json_path = dir.join(format!("{stem}.json"));
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let tensors_path = dir.join(format!("{stem}.safetensors"));
        let tensors = candle_core::safetensors::load(&tensors_path, &candle_core::Device::Cpu)
            .with_context(|| format!("reading {}", tensors_path.display()))?;
        Ok(ReferenceSet {
            name: if set.is_empty() { "reference" } else { set }.to_string(),
            json: serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", json_path.display()))?,
            tensors,
        })
    }

    fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .with_context(|| format!("{}: no tensor {key}", self.name))
    }

    fn values(&self, key: &str) -> Result<Vec<f32>> {
        Ok(self.tensor(key)?.flatten_all()?.to_vec1()?)
    }
}

/// Largest `|got - want|` (NaN is infinite; a length mismatch too).
fn max_abs_diff(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() as f64)
        .fold(
            0.0,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
}

fn row(check: String, got: &[f32], want: &[f32], limit: f64) -> ImageCheckRow {
    let diff = max_abs_diff(got, want);
    ImageCheckRow {
        check,
        max_abs_diff: diff,
        limit,
        ok: diff <= limit,
    }
}

fn compare<B: ImageOps>(
    be: B,
    dir: &Path,
    sets: &[String],
    dtype: DType,
) -> Result<ImageCheckReport> {
    let device = be.name();
    let tol = Tolerances::for_dtype(dtype);
    let mut pipeline = Pipeline::load(be, dir, dtype)
        .with_context(|| format!("loading the pipeline in {}", dir.display()))?;
    let mut rows = Vec::new();
    for set in sets {
        let set = ReferenceSet::load(dir, set)?;
        rows.extend(
            stages(&pipeline, &set, &tol).with_context(|| format!("reference set {}", set.name))?,
        );
        rows.extend(
            runs(&mut pipeline, &set, &tol)
                .with_context(|| format!("reference set {}", set.name))?,
        );
    }
    Ok(ImageCheckReport {
        model: dir.display().to_string(),
        device,
        dtype,
        tolerances: tol,
        ok: rows.iter().all(|r| r.ok),
        rows,
    })
}

/// The single-stage references the set records.
fn stages<B: ImageOps>(
    p: &Pipeline<B>,
    set: &ReferenceSet,
    tol: &Tolerances,
) -> Result<Vec<ImageCheckRow>> {
    let be = p.backend();
    let upload = |key: &str| -> Result<B::Tensor> {
        let t = set.tensor(key)?;
        be.tensor_from_f32(set.values(key)?, t.dims(), p.dtype())
    };
    let limit = tol.stage as f64;
    let mut rows = Vec::new();
    if let Some(ids) = set.json["text_encoder"].get("input_ids") {
        let ids: Vec<Vec<u32>> = serde_json::from_value(ids.clone())?;
        let out = p.text_encoder().forward(be, &ids.concat(), ids.len())?;
        for (name, got) in [
            ("last_hidden_state", &out.last_hidden),
            ("penultimate", &out.penultimate),
            ("pooled", &out.pooled),
        ] {
            let want = set.values(&format!("text_encoder.{name}"))?;
            let check = format!("{}/text_encoder.{name}", set.name);
            rows.push(row(check, &be.to_host_f32(got)?, &want, limit));
        }
    }
    if let Some(timestep) = set.json["unet"].get("timestep").and_then(Value::as_f64) {
        let text_embeds = match set.tensors.contains_key("unet.text_embeds") {
            true => Some(upload("unet.text_embeds")?),
            false => None,
        };
        let time_ids = match set.tensors.contains_key("unet.time_ids") {
            true => set.values("unet.time_ids")?,
            false => Vec::new(),
        };
        let added = text_embeds.as_ref().map(|text_embeds| TextTime {
            text_embeds,
            time_ids: &time_ids,
        });
        let out = p.unet().forward(
            be,
            &upload("unet.sample")?,
            timestep as f32,
            &upload("unet.context")?,
            added.as_ref(),
        )?;
        let check = format!("{}/unet.out", set.name);
        rows.push(row(
            check,
            &be.to_host_f32(&out)?,
            &set.values("unet.out")?,
            limit,
        ));
    }
    if set.tensors.contains_key("vae.latents") {
        let image = p.vae().decode(be, &upload("vae.latents")?)?;
        let check = format!("{}/vae.image", set.name);
        rows.push(row(
            check,
            &be.to_host_f32(&image)?,
            &set.values("vae.image")?,
            limit,
        ));
    }
    Ok(rows)
}

/// Every full run the set records, from its initial latents.
fn runs<B: ImageOps>(
    p: &mut Pipeline<B>,
    set: &ReferenceSet,
    tol: &Tolerances,
) -> Result<Vec<ImageCheckRow>> {
    let Some(runs) = set.json["runs"].as_array() else {
        return Ok(Vec::new());
    };
    let initial = set.tensor("run.initial_latents")?;
    let mut rows = Vec::new();
    for run in runs {
        let name = run["name"].as_str().context("a run without a name")?;
        let text = |key: &str| run[key].as_str().map(str::to_string);
        let count = |key: &str| -> Result<usize> {
            run[key]
                .as_u64()
                .map(|v| v as usize)
                .with_context(|| format!("run {name}: no {key}"))
        };
        let n = count("num_images")?;
        p.set_scheduler(SchedulerConfig::from_json(run["scheduler"].clone())?);
        let req = ImageRequest {
            prompt: text("prompt").unwrap_or_default(),
            negative_prompt: text("negative_prompt"),
            steps: count("steps")?,
            guidance_scale: run["guidance_scale"].as_f64().unwrap_or(1.0) as f32,
            width: count("width")?,
            height: count("height")?,
            num_images: n,
            seed: 0,
            initial_latents: Some(initial.narrow(0, 0, n)?.flatten_all()?.to_vec1()?),
        };
        let out = p
            .generate(&req, &mut |_, _| {})
            .with_context(|| format!("run {name}"))?;
        let want = set.values(&format!("run.{name}.latents"))?;
        let largest = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let check = format!("{}/{name}.latents", set.name);
        let limit = (tol.latents * largest) as f64;
        rows.push(row(check, &out.latents, &want, limit));
        let want = set.values(&format!("run.{name}.image"))?;
        let check = format!("{}/{name}.image", set.name);
        rows.push(row(check, &out.pixels, &want, tol.pixels as f64));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_sets_are_found_by_file_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "reference.json",
            "reference_odd_sizes.json",
            "referenced.json",
            "model_index.json",
            "reference.safetensors",
        ] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        assert_eq!(reference_sets(dir.path()).unwrap(), ["", "odd_sizes"]);
    }

    #[test]
    fn diffs_treat_nan_and_length_mismatches_as_failures() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
        assert_eq!(max_abs_diff(&[f32::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert!(!row("x".into(), &[1.0], &[1.2], 0.1).ok);
    }

    #[test]
    fn sixteen_bit_tolerances_are_looser_than_f32() {
        let (f32, bf16) = (
            Tolerances::for_dtype(DType::F32),
            Tolerances::for_dtype(DType::BF16),
        );
        assert!(f32.stage < bf16.stage && f32.latents < bf16.latents);
    }
}
