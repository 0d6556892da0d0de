//! `kiln check-image-reference` on the CPU: the tiny SD fixture matches its diffusers
//! references (every set, stages and full runs), and a reference nudged by 0.01 is caught
//! with exit status 1. The same command runs on a GPU in scripts/gpu-check.sh.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/tiny-sd")
}

fn check(dir: &Path) -> (Output, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "check-image-reference",
            "--device",
            "cpu",
            "--json",
            "--model",
        ])
        .arg(dir)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

fn checks(report: &serde_json::Value) -> Vec<(String, bool)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["check"].as_str().unwrap().to_string(),
                r["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_tiny_sd_fixture_matches_every_reference_on_the_cpu() {
    let (out, report) = check(&fixture());
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["ok"], true);
    let names: Vec<String> = checks(&report).into_iter().map(|(n, _)| n).collect();
    for expected in [
        "reference/text_encoder.last_hidden_state",
        "reference/unet.out",
        "reference/vae.image",
        "reference/euler_cfg.latents",
        "reference/euler_cfg.image",
        "odd_sizes/unet.out",
        "odd_sizes/euler_cfg.image",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
}

#[test]
fn a_nudged_reference_fails_the_check() {
    // The pipeline's files, plus one reference set: the odd-size UNet forward with its
    // expected output moved by 0.01.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("reference") {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("reference.json"),
        r#"{"unet": {"timestep": 501.0}}"#,
    )
    .unwrap();
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(
        fixture().join("reference_odd_sizes.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    tensors.retain(|k, _| k.starts_with("unet."));
    let out = (&tensors["unet.out"] + 0.01).unwrap();
    tensors.insert("unet.out".into(), out);
    candle_core::safetensors::save(&tensors, dir.path().join("reference.safetensors")).unwrap();

    let (out, report) = check(dir.path());
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(checks(&report), [("reference/unet.out".to_string(), false)]);
    let diff = report["rows"][0]["max_abs_diff"].as_f64().unwrap();
    assert!((diff - 0.01).abs() < 1e-3, "{diff}");
}
