//! The official `openai` Python client against `kiln serve` (tests/openai_client/).
//! Skipped, with the reason printed, when python3 or the package is missing, unless
//! KILN_REQUIRE_OPENAI_CLIENT=1 (CI), where that is a failure.

mod server_support;

use server_support::{Server, MODEL};
use std::process::Command;

const API_KEY: &str = "sk-kiln-test";
const MAX_QUEUED: &str = "4";

fn openai_client_available() -> Result<(), String> {
    let probe = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if probe.status.success() {
        Ok(())
    } else {
        Err(format!(
            "python3 cannot import openai: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ))
    }
}

/// False (with the reason printed) when the client is missing and not required.
fn client_or_skip() -> bool {
    if let Err(why) = openai_client_available() {
        let required = std::env::var("KILN_REQUIRE_OPENAI_CLIENT").is_ok_and(|v| v == "1");
        assert!(!required, "KILN_REQUIRE_OPENAI_CLIENT=1 but {why}");
        eprintln!("skipping: {why} (pip install openai)");
        return false;
    }
    true
}

#[test]
fn official_openai_client_works_against_the_server() {
    run_client_checks(&[]);
}

/// The same checks with speculative decoding on: streaming, `n`, logprobs, stops and
/// errors behave as without it.
#[test]
fn official_openai_client_works_with_speculative_decoding() {
    run_client_checks(&[
        "--speculative-config",
        r#"{"method": "ngram", "num_speculative_tokens": 3}"#,
    ]);
}

/// Runs tests/openai_client/check_server.py against a server started with `extra` flags.
fn run_client_checks(extra: &[&str]) {
    if !client_or_skip() {
        return;
    }
    // One sequence at a time and a short queue, so the client's RateLimitError is
    // reachable; the other checks are short enough to run one after another.
    let mut flags = vec![
        "--api-key",
        API_KEY,
        "--max-num-seqs",
        "1",
        "--max-queued-requests",
        MAX_QUEUED,
        // The demo's template names no tool-call format; Hermes lets forced calls run.
        "--tool-call-parser",
        "hermes",
    ];
    flags.extend_from_slice(extra);
    let server = Server::start(&flags);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openai_client/check_server.py"
    );
    let output = Command::new("python3")
        .args([script, &server.base, MODEL, API_KEY, MAX_QUEUED])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "openai client checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A LoRA adapter served beside the llama fixture, through the client: listed under its
/// base, answering as itself, refused for embeddings.
#[test]
fn official_openai_client_reaches_lora_adapters() {
    if !client_or_skip() {
        return;
    }
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let base = format!("{fixtures}/llama");
    let adapter = format!("sql={fixtures}/lora/llama_all");
    let server = Server::start(&[
        "--model",
        &base,
        "--served-model-name",
        "llama",
        "--lora-modules",
        &adapter,
    ]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openai_client/check_lora.py"
    );
    let output = Command::new("python3")
        .args([script, &server.base, "llama", "sql"])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "openai client LoRA checks failed:
{stdout}
{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn official_openai_client_generates_images() {
    if !client_or_skip() {
        return;
    }
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/diffusion/tiny-sd"
    );
    let server = Server::start(&["--model", fixture, "--api-key", API_KEY]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openai_client/check_images.py"
    );
    let output = Command::new("python3")
        .args([script, &server.base, "tiny-sd", API_KEY])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "openai client image checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
