//! `kiln bench serve` end to end: the CLI against `kiln serve` on the demo model.

mod server_support;

use serde_json::Value;
use server_support::{Server, MODEL};
use std::process::Command;

#[test]
fn bench_serve_measures_kiln_serve() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("result.json");
    let plot_path = dir.path().join("plot.png");
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "bench",
            "serve",
            "--base-url",
            &server.base,
            "--model",
            MODEL,
        ])
        .args([
            "--num-prompts",
            "8",
            "--input-len",
            "16",
            "--output-len",
            "8",
            "--ignore-eos",
        ])
        .args(["--seed", "1", "--no-progress", "--goodput", "e2el:600000"])
        .arg("--result-json")
        .arg(&json_path)
        .arg("--plot")
        .arg(&plot_path)
        .output()
        .expect("running kiln bench serve");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Successful requests:") && stdout.contains("Mean TPOT (ms):"),
        "{stdout}"
    );
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(result["completed"], 8);
    assert_eq!(result["failed"], 0);
    // ignore_eos makes every request generate exactly max_tokens, as usage reports.
    assert_eq!(result["total_output_tokens"], 64);
    let requests = result["requests"].as_array().unwrap();
    assert!(requests
        .iter()
        .all(|r| r["output_tokens_source"] == "usage" && r["prompt_tokens"].as_u64() > Some(0)));
    assert_eq!(result["good_requests"], 8);
    for key in [
        "mean_ttft_ms",
        "mean_tpot_ms",
        "mean_itl_ms",
        "mean_e2el_ms",
        "output_throughput",
    ] {
        assert!(result[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(result["mean_e2el_ms"].as_f64() >= result["mean_ttft_ms"].as_f64());
    assert!(std::fs::metadata(&plot_path).unwrap().len() > 0);
}
