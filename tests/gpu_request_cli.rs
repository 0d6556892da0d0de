//! `--gpu` at startup: on a machine without the request's GPUs, kiln fails before loading
//! anything and says what was asked and what was found.

use std::process::Command;

fn generate(extra: &[&str]) -> (bool, String) {
    let model = format!("{}/tests/fixtures/llama", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "generate",
            "--model",
            &model,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
        ])
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "0")
        .env_remove("KILN_GPU")
        .env_remove("KILN_DEVICE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unsatisfied_request_fails_before_loading() {
    // This test runs where CI runs: no GPU. With a GPU it would need one that is not an H100.
    if kiln::gpu::Inventory::detect()
        .devices
        .iter()
        .any(|d| d.gpu_type != kiln::gpu::GpuType::Other)
    {
        eprintln!("skipped: this machine has GPUs");
        return;
    }
    let (ok, err) = generate(&["--gpu", "H100:2"]);
    assert!(!ok);
    assert!(err.contains("asked for H100:2"), "{err}");
    assert!(
        !err.contains("loading"),
        "must fail before loading the model: {err}"
    );
}

#[test]
fn bad_requests_and_conflicts_are_refused() {
    let (ok, err) = generate(&["--gpu", "Z9000"]);
    assert!(!ok && err.contains("unknown GPU type"), "{err}");
    let (ok, err) = generate(&["--gpu", "H100", "--device", "cpu"]);
    assert!(!ok && err.contains("--device cpu"), "{err}");
    let (ok, err) = generate(&["--tensor-parallel-size", "3"]);
    assert!(!ok && err.contains("--tensor-parallel-size 3"), "{err}");
    // Without GPUs, ranks are CPU threads.
    let (ok, err) = generate(&["--tensor-parallel-size", "2"]);
    assert!(ok && err.contains("2 ranks on [Cpu, Cpu]"), "{err}");
    let (ok, err) = generate(&["--tensor-parallel-size", "1"]);
    assert!(ok, "{err}");
}

#[test]
fn without_a_request_the_cpu_runs_when_there_is_no_gpu() {
    let (ok, err) = generate(&[]);
    assert!(ok, "{err}");
}
