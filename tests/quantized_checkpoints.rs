//! Quantized checkpoints, expanded to the model dtype at load, against what transformers
//! computes from the same files (it unpacks them itself): gpt-oss's experts packed as
//! MXFP4 the way OpenAI ships them, and an FP8 checkpoint with 32 x 32 block scales in
//! compressed-tensors' float-quantized format (Qwen3-FP8's and DeepSeek's layout). Both
//! fixtures are an unquantized fixture, quantized (scripts/make_fixtures.py).

mod common;

use common::{fixture, load, max_abs_diff};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    prompt_ids: Vec<u32>,
    last_logits: Vec<f32>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `quantized`'s logits match transformers' within 1e-3; the quantization moves them
/// away from those of `unquantized` (so reading the weights some other way would show).
fn matches_transformers(quantized: &str, unquantized: &str) {
    let m = load(quantized, "float32");
    let packed = reference(quantized);
    let full = reference(unquantized);
    for (p, f) in packed.prompts.iter().zip(&full.prompts) {
        let ours = kiln::cli::check_reference::last_logits(&m, &p.prompt_ids).unwrap();
        let diff = max_abs_diff(&ours, &p.last_logits);
        assert!(diff < 1e-3, "{quantized}: max abs logit diff {diff}");
        assert!(max_abs_diff(&p.last_logits, &f.last_logits) > 0.05);
    }
}

#[test]
fn packed_experts_unpack_as_transformers_unpacks_them() {
    matches_transformers("gpt_oss_mxfp4", "gpt_oss");
}

#[test]
fn fp8_block_scaled_weights_expand_as_transformers_expands_them() {
    matches_transformers("qwen3_fp8", "qwen3");
}
