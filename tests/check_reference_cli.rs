//! `kiln check-reference` on the CPU: every fixture passes in float32 and bfloat16 (the same
//! command proves the GPU path on a device machine), and a wrong reference makes it fail.

mod common;

use common::{engine_args, fixture, ARCHS};
use kiln::cli::check_reference::check;
use std::process::Command;

#[test]
fn every_fixture_passes_on_the_cpu_in_f32_and_bf16() {
    for arch in ARCHS {
        for dtype in ["float32", "bfloat16"] {
            let dir = fixture(arch);
            let args = engine_args(&[
                "--model",
                dir.to_str().unwrap(),
                "--device",
                "cpu",
                "--dtype",
                dtype,
                "--block-size",
                "4",
            ]);
            let report = check(&args).unwrap();
            assert_eq!(report.device, "cpu");
            // 3 prompts: logits, greedy alone, greedy batched; and their embeddings where
            // the fixture has references for them (qwen3).
            let embeddings = if dir.join("embeddings.json").exists() {
                3
            } else {
                0
            };
            assert_eq!(report.rows.len(), 9 + embeddings, "{arch} {dtype}");
            assert_eq!(
                report
                    .rows
                    .iter()
                    .filter(|r| r.check == "embedding")
                    .count(),
                embeddings,
                "{arch} {dtype}"
            );
            assert!(report.ok, "{arch} {dtype}: {:#?}", report.rows);
        }
    }
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn the_command_prints_json_and_exits_non_zero_on_a_mismatch() {
    let good = fixture("qwen2");
    let out = kiln(&[
        "check-reference",
        "--model",
        good.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["dtype"], "f32");

    // The same model against a reference whose greedy continuation was tampered with.
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&good).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = tmp.path().join("reference.json");
    let mut reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let token = &mut reference["prompts"][1]["greedy_ids"][5];
    *token = serde_json::json!(token.as_u64().unwrap() + 1);
    std::fs::write(&path, reference.to_string()).unwrap();
    let out = kiln(&[
        "check-reference",
        "--model",
        tmp.path().to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("FAIL") && table.contains("step 5"),
        "{table}"
    );
}

/// `--also` checks more fixtures in the same process: one report each, and a fixture that
/// cannot be checked fails on its own without stopping the others.
#[test]
fn several_fixtures_check_in_one_process() {
    let (qwen2, llama) = (fixture("qwen2"), fixture("llama"));
    let both = format!("{},{}", llama.display(), fixture("falcon").display());
    let run = |also: &str| {
        kiln(&[
            "check-reference",
            "--model",
            qwen2.to_str().unwrap(),
            "--also",
            also,
            "--device",
            "cpu",
            "--json",
        ])
    };
    let out = run(&both);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports.len(), 3);
    assert!(reports.iter().all(|r| r["ok"] == true));
    assert!(reports[1]["model"].as_str().unwrap().ends_with("llama"));

    let missing = tempfile::tempdir().unwrap();
    let out = run(&format!("{},{}", missing.path().display(), llama.display()));
    assert_eq!(out.status.code(), Some(1));
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[1]["ok"], false);
    let note = reports[1]["rows"][0]["note"].as_str().unwrap();
    assert!(note.contains("reference.json"), "{note}");
    assert_eq!(reports[2]["ok"], true);
}

/// Adapters given with `--lora-modules` whose folder holds PEFT references for the fixture
/// add rows: their logits and batched greedy tokens (float32 only; an adapter for another
/// fixture adds none).
#[test]
fn lora_adapters_of_the_fixture_are_checked_against_peft() {
    let dir = fixture("llama");
    let lora = fixture("lora");
    let module = |name: &str| format!("{name}={}", lora.join(name).display());
    let (all, qv, granite) = (
        module("llama_all"),
        module("llama_qv_rslora"),
        module("granite_all"),
    );
    for tp in ["1", "2"] {
        let args = engine_args(&[
            "--model",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--tensor-parallel-size",
            tp,
            "--lora-modules",
            &all,
            &qv,
            &granite,
        ]);
        let report = check(&args).unwrap();
        assert!(report.ok, "{:?}", report.rows);
        let lora_rows = report.rows.iter().filter(|r| r.check.starts_with("lora:"));
        // One rank: logits and greedy per prompt per adapter; sharded: greedy only.
        let per_adapter = if tp == "1" { 6 } else { 3 };
        assert_eq!(lora_rows.count(), 2 * per_adapter, "TP {tp}");
        assert!(!report
            .rows
            .iter()
            .any(|r| r.check.starts_with("lora:granite_all")));
    }
}

/// BLOOM 560M's checkpoint was saved from `BloomModel`: its weights have no `transformer.`
/// prefix. The bloom fixture with its weights renamed that way must pass as it is.
#[test]
fn bloom_checkpoints_without_the_transformer_prefix_load() {
    let dir = fixture_with_renamed_weights("bloom", |name| {
        name.trim_start_matches("transformer.").to_string()
    });
    check_in_f32(&dir);
}

/// The hub's Llama 4 checkpoints are `Llama4ForConditionalGeneration`: the text model's
/// config under `text_config`, its weights under `language_model.` (the vision tower's are
/// never read).
#[test]
fn llama4_conditional_generation_checkpoints_run_their_language_model() {
    let dir = fixture_with_renamed_weights("llama4", |name| format!("language_model.{name}"));
    nest_config_as(
        &dir,
        ("Llama4ForConditionalGeneration", "llama4"),
        "llama4_vision_model",
    );
    check_in_f32(&dir);
}

/// LFM2-VL checkpoints (`Lfm2VlForConditionalGeneration`) keep the text model under
/// `model.language_model.` (transformers 4.57's layout), its config under `text_config`.
#[test]
fn lfm2_vl_checkpoints_run_their_language_model() {
    let dir = fixture_with_renamed_weights("lfm2", |name| {
        name.replacen("model.", "model.language_model.", 1)
    });
    nest_config_as(
        &dir,
        ("Lfm2VlForConditionalGeneration", "lfm2-vl"),
        "siglip2_vision_model",
    );
    check_in_f32(&dir);
}

/// Rewrites `dir`'s config as a multimodal one of `(architecture, model_type)`: the text
/// model's config under `text_config` beside a vision config of `vision_type` (never read).
fn nest_config_as(
    dir: &tempfile::TempDir,
    (architecture, model_type): (&str, &str),
    vision_type: &str,
) {
    let config_path = dir.path().join("config.json");
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let eos = text["eos_token_id"].clone();
    text.as_object_mut().unwrap().remove("architectures");
    let wrapped = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "text_config": text,
        "vision_config": {"hidden_size": 16, "model_type": vision_type},
        "eos_token_id": eos,
    });
    std::fs::write(&config_path, wrapped.to_string()).unwrap();
}

/// A copy of fixture `name` whose weights are stored under `rename(name)`.
fn fixture_with_renamed_weights(name: &str, rename: impl Fn(&str) -> String) -> tempfile::TempDir {
    use safetensors::tensor::TensorView;
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let stored = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, TensorView<'_>)> = stored
        .tensors()
        .into_iter()
        .map(|(name, view)| (rename(&name), view))
        .collect();
    assert!(
        stored.names().iter().any(|n| rename(n) != **n),
        "the renaming changes no weight's name"
    );
    safetensors::serialize_to_file(renamed, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

/// check-reference on `dir` in f32 on the CPU passes.
fn check_in_f32(dir: &tempfile::TempDir) {
    let args = engine_args(&[
        "--model",
        dir.path().to_str().unwrap(),
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]);
    let report = check(&args).unwrap();
    assert!(report.ok, "{:#?}", report.rows);
}
