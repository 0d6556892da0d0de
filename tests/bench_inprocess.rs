//! `kiln bench latency` and `kiln bench throughput` end to end on a fixture model.

use std::process::Command;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .args(["--result-json", json.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn latency_sweep_reports_every_batch_size() {
    let llama = fixture("llama");
    let v = run(&[
        "bench",
        "latency",
        "--model",
        &llama,
        // Two full KV blocks of 16 and a partial one: prompts the prefix cache could serve.
        "--input-len",
        "40",
        "--output-len",
        "5",
        "--batch-sizes",
        "1,3",
        "--peak-bandwidth-gbs",
        "10",
    ]);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, batch) in results.iter().zip([1, 3]) {
        assert_eq!(r["batch_size"], batch);
        assert!(r["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["roofline_fraction"].as_f64().unwrap() > 0.0);
        // The measured prefill computes every prompt token: the warm-up ran other prompts.
        assert_eq!(r["prefill_cached_tokens"], 0, "{r}");
    }
    assert!(v["weight_bytes"].as_u64().unwrap() > 100_000);
}

/// A given prompt (`--prompt-file`) with speculative decoding: the demo model's own words
/// repeat, so drafts are kept and a step yields more than one token per sequence.
#[test]
fn latency_with_a_prompt_file_counts_speculated_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(
        &prompt,
        "A kiln is a hot oven for clay. The potter shapes a bowl on the wheel. A kiln is",
    )
    .unwrap();
    let v = run(&[
        "bench",
        "latency",
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--output-len",
        "24",
        "--batch-sizes",
        "1,2",
        "--speculative-config",
        r#"{"method": "ngram", "num_speculative_tokens": 4}"#,
    ]);
    for r in v["results"].as_array().unwrap() {
        let per_step = r["tokens_per_step_per_seq"].as_f64().unwrap();
        assert!(per_step > 1.0, "{r}");
        // Every requested token was generated and counted.
        let tokens = r["decode_tokens_per_s"].as_f64().unwrap();
        assert!(tokens > 0.0, "{r}");
        assert!(r["input_len"].as_u64().unwrap() > 10, "{r}");
    }
}

#[test]
fn throughput_counts_every_token() {
    let qwen = fixture("qwen2");
    let v = run(&[
        "bench",
        "throughput",
        "--model",
        &qwen,
        "--num-prompts",
        "20",
        "--input-len",
        "10",
        "--output-len",
        "4",
    ]);
    assert_eq!(v["input_tokens"], 200);
    assert_eq!(v["output_tokens"], 80);
    assert!(v["total_tokens_per_s"].as_f64().unwrap() > v["output_tokens_per_s"].as_f64().unwrap());
}

/// A benchmark's requests may all run with a LoRA adapter: a PEFT one, or one generated
/// for the model's shape (`dummy:RANK`, for dummy weights); an unknown name is refused.
#[test]
fn latency_and_throughput_run_with_a_lora_adapter() {
    let llama = fixture("llama");
    let peft = format!("sql={}", fixture("lora/llama_all"));
    for adapter in [peft.as_str(), "gen=dummy:16"] {
        let name = adapter.split('=').next().unwrap();
        let v = run(&[
            "bench",
            "latency",
            "--model",
            &llama,
            "--input-len",
            "8",
            "--output-len",
            "3",
            "--batch-sizes",
            "2",
            "--lora-modules",
            adapter,
            "--lora-adapter",
            name,
        ]);
        assert!(v["results"][0]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    let v = run(&[
        "bench",
        "throughput",
        "--model",
        &llama,
        "--num-prompts",
        "3",
        "--input-len",
        "8",
        "--output-len",
        "2",
        "--lora-modules",
        &peft,
        "--lora-adapter",
        "sql",
    ]);
    assert_eq!(v["output_tokens"], 6);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "bench",
            "latency",
            "--model",
            &llama,
            "--lora-modules",
            &peft,
        ])
        .args(["--lora-adapter", "nope", "--batch-sizes", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not among --lora-modules"));
}
