//! Decode speed of kiln's CPU engine against candle-transformers' Llama on the same weights.
//!
//! A ~110M-parameter Llama-shaped model with random f32 weights is written to a temporary
//! safetensors file; both implementations load it. Each decodes greedily after a short
//! prompt; only decode steps are timed. kiln runs at batch 1 and batch 16 (continuous
//! batching, paged KV), candle-transformers at batch 1 (its model has no paged batching).
//! Run: `cargo bench --bench decode_vs_candle` (KILN_BENCH_TOKENS sets the decode length).
//! Under `cargo test --all-targets` (no `--bench` argument) it only smoke-tests itself on a
//! tiny shape, so CI keeps it compiling and working without spending minutes.

use candle_core::{DType, Device, Tensor};
use kiln::backend::cpu::CpuBackend;
use kiln::engine::runner::ModelRunner;
use kiln::engine::{EngineConfig, LlmEngine, SamplingParams};
use kiln::model::config::ModelConfig;
use kiln::model::llama::LlamaModel;
use kiln::model::tokenizer::Tokenizer;
use kiln::model::weights::{DummyWeights, SafetensorsWeights, WeightSource};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "hidden_size": 768, "intermediate_size": 2048,
  "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 4,
  "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
  "max_position_embeddings": 2048, "tie_word_embeddings": false, "hidden_act": "silu"
}"#;
const SMOKE_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "vocab_size": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
  "max_position_embeddings": 2048, "tie_word_embeddings": false, "hidden_act": "silu"
}"#;
const PROMPT_LEN: usize = 16;

fn write_weights(cfg: &ModelConfig, path: &Path) -> anyhow::Result<()> {
    let dummy = DummyWeights { seed: 1 };
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![cfg.vocab_size, h]),
    ];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        shapes.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![cfg.q_width(), h],
            ),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![cfg.kv_width(), h],
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![cfg.kv_width(), h],
            ),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, cfg.q_width()],
            ),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
        ]);
    }
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        // DummyWeights gives no lm_head; draw it under another name.
        let src = if name == "lm_head.weight" {
            "bench.lm_head"
        } else {
            &name
        };
        tensors.insert(
            name.clone(),
            dummy.tensor(src, &shape, kiln::backend::DType::F32)?,
        );
    }
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

/// kiln decode tokens/s at `batch` concurrent sequences.
fn kiln_decode(
    cfg: &ModelConfig,
    weights: &Path,
    tokenizer: Arc<Tokenizer>,
    batch: usize,
    tokens: usize,
) -> anyhow::Result<f64> {
    let be = CpuBackend::new();
    let src = SafetensorsWeights::open(&[weights.to_path_buf()])?;
    let model = LlamaModel::load(&be, cfg.clone(), &src, kiln::backend::DType::F32, |_| {})?;
    let blocks = batch * (PROMPT_LEN + tokens + 16).div_ceil(16);
    let runner = ModelRunner::new(be, model, (blocks, 16), 1)?;
    let config = EngineConfig {
        max_model_len: 2048,
        max_num_seqs: batch,
        max_num_batched_tokens: 4096,
        block_size: 16,
        num_blocks: blocks,
        enable_prefix_caching: false,
        seed: 0,
        scheduling_policy: Default::default(),
    };
    let mut engine = LlmEngine::new(config, Box::new(runner), tokenizer, vec![])?;
    for b in 0..batch {
        let prompt: Vec<u32> = (0..PROMPT_LEN as u32)
            .map(|t| 100 + t * 7 + b as u32 * 13)
            .collect();
        let params = SamplingParams {
            max_tokens: Some(tokens + 1),
            ignore_eos: true,
            ..SamplingParams::greedy()
        };
        engine.add_request(b as u64, prompt, params)?;
    }
    engine.step()?; // prefill: not timed
    let start = Instant::now();
    let mut generated = 0;
    while engine.has_work() {
        generated += engine.step()?.len();
    }
    Ok(generated as f64 / start.elapsed().as_secs_f64())
}

/// candle-transformers Llama decode tokens/s at batch 1.
fn candle_decode(config: &str, weights: &Path, tokens: usize) -> anyhow::Result<f64> {
    use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
    let dev = Device::Cpu;
    let cfg: LlamaConfig = serde_json::from_str(config)?;
    let cfg = cfg.into_config(false);
    let vb =
        unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &dev)? };
    let model = Llama::load(vb, &cfg)?;
    let mut cache = Cache::new(true, DType::F32, &cfg, &dev)?;
    let prompt: Vec<u32> = (0..PROMPT_LEN as u32).map(|t| 100 + t * 7).collect();
    let logits = model.forward(
        &Tensor::new(prompt.as_slice(), &dev)?.unsqueeze(0)?,
        0,
        &mut cache,
    )?;
    let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
    let start = Instant::now();
    for i in 0..tokens {
        let input = Tensor::new(&[next], &dev)?.unsqueeze(0)?;
        let logits = model.forward(&input, PROMPT_LEN + i, &mut cache)?;
        next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
    }
    Ok(tokens as f64 / start.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    kiln::backend::cpu::pin_thread_count();
    let full = std::env::args().any(|a| a == "--bench");
    let (config, default_tokens) = if full {
        (CONFIG, 64)
    } else {
        (SMOKE_CONFIG, 4)
    };
    let tokens: usize = std::env::var("KILN_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_tokens);
    let cfg = ModelConfig::from_json(config)?;
    let dir = tempfile::tempdir()?;
    let weights = dir.path().join("model.safetensors");
    write_weights(&cfg, &weights)?;
    let tokenizer = Arc::new(Tokenizer::from_dir(
        &kiln::model::demo::files()?
            .tokenizer_dir
            .expect("demo tokenizer"),
    )?);
    println!(
        "model: Llama-shaped, {:.0}M parameters, f32, prompt {PROMPT_LEN}, {tokens} decode tokens",
        cfg.num_parameters() as f64 / 1e6
    );
    let candle = candle_decode(config, &weights, tokens)?;
    let kiln1 = kiln_decode(&cfg, &weights, tokenizer.clone(), 1, tokens)?;
    let kiln16 = kiln_decode(&cfg, &weights, tokenizer, 16, tokens)?;
    println!("| implementation | batch | decode tokens/s |");
    println!("|---|---|---|");
    println!("| candle-transformers llama | 1 | {candle:.1} |");
    println!("| kiln | 1 | {kiln1:.1} |");
    println!("| kiln | 16 | {kiln16:.1} |");
    println!(
        "kiln/candle at batch 1: {:.2}x; kiln batch 16 / batch 1: {:.2}x",
        kiln1 / candle,
        kiln16 / kiln1
    );
    Ok(())
}
