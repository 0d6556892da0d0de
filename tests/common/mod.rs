//! Helpers shared by the integration tests: fixture paths and engines built from them.
#![allow(dead_code)]

use clap::Parser;
use kiln::engine::{EngineHandle, LlmEngine};
use kiln::launch::{build_engine, load_model, EngineArgs, LoadedModel};
use serde::Deserialize;
use std::path::PathBuf;

pub const ARCHS: [&str; 86] = [
    "llama",
    "llama31",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "qwen3_moe",
    "mixtral",
    "gemma2",
    "gemma3",
    "granite",
    "smollm3",
    "qwen2_moe",
    "olmo2",
    "qwen3_yarn",
    "glm4",
    "phi3_longrope",
    "gpt_oss",
    "olmo3",
    "seed_oss",
    "glm4_moe",
    "deepseek_v2",
    "deepseek_v3",
    "qwen2_5_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "internvl",
    "starcoder2",
    "cohere",
    "phi",
    "cohere2",
    "olmoe",
    "gemma",
    "qwen2_vl",
    "gpt_neox",
    "gpt_neox_sequential",
    "gpt2",
    "opt",
    "gpt_bigcode",
    "gpt_bigcode_mha",
    "glm",
    "gptj",
    "granitemoe",
    "ernie4_5",
    "helium",
    "exaone4",
    "olmo",
    "opt_pytorch",
    "falcon",
    "falcon_40b",
    "falcon_sequential",
    "arcee",
    "nemotron",
    "stablelm",
    "stablelm_parallel",
    "gpt_neo",
    "ernie4_5_moe",
    "ministral",
    "llama_attention_bias",
    "bloom",
    "mpt",
    "falcon_rw",
    "phimoe",
    "apertus",
    "dots1",
    "hunyuan_dense",
    "hunyuan_moe",
    "llama4",
    "cohere_qk_norm",
    "stablelm_qk_norm",
    "lfm2",
    "glm4v",
    "glm4v_moe",
    "bamba",
    "granitemoehybrid",
    "granitemoehybrid_moe",
    "mamba2",
    "granitemoeshared",
    "qwen3_next",
    "mamba",
    "falcon_mamba",
    "jamba",
    "falcon_h1",
    "nemotron_h",
    "lfm2_moe",
    "nemotron_h_moe",
];

/// The fixtures kiln shards 2, 4 and 8 ways: all but OLMo 2, OLMo 3 and OLMoE, whose q / k
/// norms span every head, the Mamba-2 models with a gated norm, whose mixers split only
/// into whole B / C groups (two in these fixtures), and the Mamba-1
/// ones, whose `x_proj` reads every channel (they refuse tensor parallelism with a clear
/// error instead).
pub fn shardable_archs() -> impl Iterator<Item = &'static str> {
    ARCHS.into_iter().filter(|&a| {
        !matches!(
            a,
            "olmo2"
                | "olmo3"
                | "olmoe"
                | "bamba"
                | "granitemoehybrid"
                | "granitemoehybrid_moe"
                | "mamba2"
                | "mamba"
                | "falcon_mamba"
                | "jamba"
                | "nemotron_h"
        )
    })
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: EngineArgs,
}

/// Engine arguments as the CLI would parse them from `flags`.
pub fn engine_args(flags: &[&str]) -> EngineArgs {
    let mut argv = vec!["kiln"];
    argv.extend_from_slice(flags);
    Wrapper::parse_from(argv).args
}

pub fn load(name: &str, dtype: &str) -> LoadedModel {
    let dir = fixture(name);
    load_model(&engine_args(&[
        "--model",
        dir.to_str().unwrap(),
        "--dtype",
        dtype,
    ]))
    .unwrap()
}

pub fn engine(name: &str, extra: &[&str]) -> LlmEngine {
    let dir = fixture(name);
    let mut flags = vec!["--model", dir.to_str().unwrap(), "--dtype", "float32"];
    flags.extend_from_slice(extra);
    build_engine(&engine_args(&flags)).unwrap().0
}

/// Greedy decoding of exactly `max_tokens` tokens.
pub fn greedy(max_tokens: usize) -> kiln::engine::SamplingParams {
    kiln::engine::SamplingParams {
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        ..kiln::engine::SamplingParams::greedy()
    }
}

pub fn handle(name: &str, extra: &[&str]) -> EngineHandle {
    EngineHandle::spawn(engine(name, extra), 0)
}

#[derive(Deserialize)]
pub struct Reference {
    pub architecture: String,
    pub prompts: Vec<PromptReference>,
}

#[derive(Deserialize)]
pub struct PromptReference {
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub last_logits: Vec<f32>,
    pub greedy_ids: Vec<u32>,
    pub greedy_margins: Vec<f32>,
    pub bf16_last_logits: Vec<f32>,
    pub bf16_greedy_ids: Vec<u32>,
    pub bf16_greedy_margins: Vec<f32>,
}

/// A text and the ids a reference tokenizer gives it (converted-tokenizer fixtures).
#[derive(Deserialize)]
pub struct EncodingCase {
    pub text: String,
    pub add_special_tokens: bool,
    pub ids: Vec<u32>,
}

impl EncodingCase {
    /// Asserts `tokenizer` gives this case's ids; `what` names the configuration.
    pub fn check(&self, tokenizer: &kiln::model::tokenizer::Tokenizer, what: &str) {
        let ids = tokenizer
            .encode(&self.text, self.add_special_tokens)
            .unwrap();
        assert_eq!(
            ids, self.ids,
            "{what}: {:?} (special tokens: {})",
            self.text, self.add_special_tokens
        );
    }
}

pub fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Drives the engine directly until every request is done.
pub fn run_all(
    engine: &mut LlmEngine,
    reqs: Vec<(u64, Vec<u32>, kiln::engine::SamplingParams)>,
) -> std::collections::HashMap<u64, kiln::engine::RequestOutput> {
    let mut outs = std::collections::HashMap::new();
    for (id, p, s) in reqs {
        engine.add_request(id, p, s).unwrap();
        outs.insert(id, kiln::engine::RequestOutput::default());
    }
    let mut guard = 0;
    while engine.has_work() {
        for (id, o) in engine.step().unwrap() {
            kiln::engine::handle::merge(outs.get_mut(&id).unwrap(), o);
        }
        guard += 1;
        assert!(guard < 100_000, "engine made no progress");
    }
    outs
}
