//! `kiln plan` on presets: the JSON carries the estimate and the GPU table.

use std::process::Command;

fn plan(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("plan")
        .args(args)
        .arg("--json")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn plan_of_llama_8b_says_which_gpus_fit() {
    let v = plan(&["--model", "llama-3.1-8b", "--max-model-len", "8192"]);
    assert_eq!(v["dtype"], "bfloat16");
    assert_eq!(v["estimate"]["weights"], 16_060_522_496u64);
    let fits = |gpu: &str| {
        v["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["gpu"] == gpu && r["count"] == 1)
            .unwrap()["fits"]
            .as_bool()
            .unwrap()
    };
    assert!(!fits("T4"));
    assert!(fits("H100"));
}

#[test]
fn plan_of_a_local_config_in_f32() {
    let dir = format!("{}/tests/fixtures/qwen3", env!("CARGO_MANIFEST_DIR"));
    let v = plan(&["--model", &dir, "--dtype", "float32"]);
    assert_eq!(v["dtype"], "float32");
    assert!(v["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["fits"] == true));
}
