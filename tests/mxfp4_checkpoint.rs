//! gpt-oss as OpenAI ships it: experts packed as MXFP4 (`*_blocks` / `*_scales`). The
//! fixture is the gpt_oss one with its experts packed (scripts/make_fixtures.py), and its
//! reference is what transformers computes after unpacking them itself.

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

#[test]
fn packed_experts_unpack_as_transformers_unpacks_them() {
    let m = load("gpt_oss_mxfp4", "float32");
    let packed = reference("gpt_oss_mxfp4");
    let unpacked = reference("gpt_oss");
    for (p, full) in packed.prompts.iter().zip(&unpacked.prompts) {
        let ours = kiln::cli::check_reference::last_logits(&m, &p.prompt_ids).unwrap();
        let diff = max_abs_diff(&ours, &p.last_logits);
        assert!(diff < 1e-3, "max abs logit diff {diff}");
        // The packing is lossy: had kiln read the unpacked fixture's weights some other
        // way, it would not land on these logits.
        assert!(max_abs_diff(&p.last_logits, &full.last_logits) > 0.05);
    }
}
