//! Meta's Llama 4 (Scout, Maverick: `Llama4ForCausalLM`, and the language model of the hub's
//! `Llama4ForConditionalGeneration` checkpoints). Its layers are Llama's with four changes:
//! - three layers in four rotate (adjacent pairs, llama3-scaled) and attend only within
//!   their chunk of `attention_chunk_size` positions ([`crate::backend::KeyWindow::Chunked`]),
//!   their q / k heads then normed by a weightless RMS ("L2") norm;
//! - the fourth layer neither rotates nor chunks, and scales each query by a temperature
//!   growing with its position ([`crate::backend::QueryTemperature`]);
//! - the MLPs of `moe_layers` are experts (stacked as Qwen3-VL-MoE's are) chosen by a top-k
//!   router whose sigmoid scales each expert's input, plus a shared expert every token takes
//!   ([`crate::backend::moe::RouterScoring::SigmoidScaledInput`]); the other layers' MLPs are
//!   `intermediate_size_mlp` wide;
//! - the weights live under `feed_forward` (the router, `feed_forward.router`).
//!
//! This module turns the config into the fields kiln's loader reads and names the weights.

use super::config::layer_types_marking;
use super::weights::{with_layer_renames, RenamedWeights, WeightSource};
use crate::backend::QueryTemperature;
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Llama 4's chunked attention: which layers attend within a chunk, and its size.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionChunks {
    pub size: usize,
    pub layers: Vec<bool>,
}

/// `value` (a Llama 4 text config) with its MLP widths and expert layers as kiln's loader
/// reads them: the dense layers' `intermediate_size_mlp` as `intermediate_size`, the
/// experts' and the shared expert's `intermediate_size` as `moe_intermediate_size` and
/// `shared_expert_intermediate_size`, and `moe_layers` (or every
/// `interleave_moe_layer_step`-th layer) as the complement `mlp_only_layers`. Missing
/// fields take `Llama4TextConfig`'s defaults (transformers 4.57).
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    let number = |k: &str, default: u64| fields.get(k).and_then(Value::as_u64).unwrap_or(default);
    let layers = number("num_hidden_layers", 48) as usize;
    let expert_inter = number("intermediate_size", 8192);
    let dense_inter = number("intermediate_size_mlp", 16384);
    let step = number("interleave_moe_layer_step", 1).max(1) as usize;
    let moe_layers: Vec<usize> = match fields.get("moe_layers") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_u64().map(|i| i as usize))
            .collect::<Option<_>>()
            .context("moe_layers must list layer indices")?,
        _ => (step - 1..layers).step_by(step).collect(),
    };
    let dense_layers: Vec<usize> = (0..layers).filter(|i| !moe_layers.contains(i)).collect();
    for (key, default) in [
        ("vocab_size", json!(202048)),
        ("hidden_size", json!(5120)),
        ("num_attention_heads", json!(40)),
        ("num_key_value_heads", json!(8)),
        ("head_dim", json!(128)),
        ("hidden_act", json!("silu")),
        ("max_position_embeddings", json!(131072)),
        ("rms_norm_eps", json!(1e-5)),
        ("rope_theta", json!(500000.0)),
        ("num_local_experts", json!(16)),
        ("num_experts_per_tok", json!(1)),
        ("tie_word_embeddings", json!(false)),
    ] {
        fields.entry(key).or_insert(default);
    }
    fields.insert("num_hidden_layers".into(), json!(layers));
    fields.insert("intermediate_size".into(), json!(dense_inter));
    fields.insert("moe_intermediate_size".into(), json!(expert_inter));
    fields.insert(
        "shared_expert_intermediate_size".into(),
        json!(expert_inter),
    );
    fields.insert("mlp_only_layers".into(), json!(dense_layers));
    fields.insert("decoder_sparse_step".into(), json!(1));
    Ok(value)
}

/// Per layer, whether it rotates: `no_rope_layers` (1: it does), or transformers' default
/// of every `no_rope_layer_interval`-th layer (4) without.
pub fn rope_layers(value: &Value, layers: usize) -> Result<Vec<bool>> {
    match value.get("no_rope_layers").and_then(Value::as_array) {
        Some(flags) if !flags.is_empty() => {
            anyhow::ensure!(
                flags.len() == layers,
                "no_rope_layers has {} entries for {layers} layers",
                flags.len()
            );
            Ok(flags.iter().map(|f| f.as_u64() != Some(0)).collect())
        }
        _ => {
            let every = value
                .get("no_rope_layer_interval")
                .and_then(Value::as_u64)
                .unwrap_or(4)
                .max(1) as usize;
            Ok((0..layers).map(|i| (i + 1) % every != 0).collect())
        }
    }
}

/// The chunked layers (`layer_types` `chunked_attention`, by default the rotating ones) and
/// the chunk (`attention_chunk_size`, 8192 by default; null: none).
pub fn attention_chunks(value: &Value, layers: usize) -> Result<Option<AttentionChunks>> {
    let size = match value.get("attention_chunk_size") {
        Some(Value::Null) => return Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .context("attention_chunk_size must be a positive number")? as usize,
        None => 8192,
    };
    let chunked = match layer_types_marking(value, layers, "chunked_attention")? {
        Some(chunked) => chunked,
        None => rope_layers(value, layers)?,
    };
    Ok(Some(AttentionChunks {
        size,
        layers: chunked,
    }))
}

/// The query temperature of the layers without rotary, where `attn_temperature_tuning` is on
/// (its default; early configs give a number, nonzero meaning on).
pub fn query_temperature(value: &Value) -> Option<QueryTemperature> {
    let on = match value.get("attn_temperature_tuning") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => v.as_f64().is_some_and(|n| n != 0.0),
    };
    let number = |k: &str, default: f64| value.get(k).and_then(Value::as_f64).unwrap_or(default);
    on.then(|| QueryTemperature {
        floor_scale: number("floor_scale", 8192.0) as f32,
        attn_scale: number("attn_scale", 0.1) as f32,
    })
}

/// Llama 4's names of a layer's MLP weights (the loader's first).
const RENAMED: [(&str, &str); 3] = [
    ("mlp.gate.weight", "feed_forward.router.weight"),
    ("mlp.shared_experts.", "feed_forward.shared_expert."),
    ("mlp.", "feed_forward."),
];

/// A Llama 4 checkpoint under the loader's names.
pub struct Llama4Weights;

impl Llama4Weights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        with_layer_renames(inner, &RENAMED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::moe::RouterScoring;
    use crate::backend::KeyWindow;
    use crate::model::config::{Architecture, ModelConfig};

    /// meta-llama/Llama-4-Scout-17B-16E-Instruct's config.json as the hub has it (the
    /// fields kiln reads; the vision config left out).
    fn scout() -> String {
        let no_rope: Vec<&str> = (0..48)
            .map(|i| if (i + 1) % 4 == 0 { "0" } else { "1" })
            .collect();
        format!(
            r#"{{"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
            "text_config": {{"attention_bias": false, "attention_chunk_size": 8192,
              "attn_scale": 0.1, "attn_temperature_tuning": 4, "bos_token_id": 200000,
              "eos_token_id": [200001, 200007, 200008], "floor_scale": 8192,
              "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
              "interleave_moe_layer_step": 1, "intermediate_size": 8192,
              "intermediate_size_mlp": 16384, "max_position_embeddings": 10485760,
              "model_type": "llama4_text", "no_rope_layers": [{}],
              "num_attention_heads": 40, "num_experts_per_tok": 1, "num_hidden_layers": 48,
              "num_key_value_heads": 8, "num_local_experts": 16, "rms_norm_eps": 1e-05,
              "rope_scaling": {{"factor": 16.0, "high_freq_factor": 1.0,
                "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
                "rope_type": "llama3"}},
              "rope_theta": 500000.0, "use_qk_norm": true, "vocab_size": 202048}},
            "tie_word_embeddings": false, "vision_config": {{"hidden_size": 1408}}}}"#,
            no_rope.join(", ")
        )
    }

    #[test]
    fn the_scout_hub_config_parses() {
        let c = ModelConfig::from_json(&scout()).unwrap();
        assert_eq!(c.architecture, Architecture::Llama4);
        assert!(c.nested_language_model);
        assert_eq!(
            (c.intermediate_size, c.head_dim, c.num_layers),
            (16384, 128, 48)
        );
        let moe = c.moe.as_ref().unwrap();
        assert_eq!((moe.num_experts, moe.top_k), (16, 1));
        assert_eq!(moe.expert_intermediate_size, 8192);
        assert_eq!(moe.shared_expert_intermediate_size, Some(8192));
        assert_eq!(moe.scoring, RouterScoring::SigmoidScaledInput);
        assert!(moe.stacked && (0..48).all(|i| moe.is_sparse(i)));
        // Layer 3 neither rotates nor chunks; layer 0 does both, with its L2 q/k norms.
        let rope = c.rope_layers.as_ref().unwrap();
        assert!(rope[0] && !rope[3]);
        assert_eq!(c.layer_key_window(0), KeyWindow::Chunked(8192));
        assert_eq!(c.layer_key_window(3), KeyWindow::Full);
        assert!(c.qk_norm && c.qk_norm_after_rope && c.qk_norm_unweighted);
        let t = c.query_temperature.unwrap();
        assert_eq!((t.floor_scale, t.attn_scale), (8192.0, 0.1));
        assert_eq!(c.eos_token_ids, vec![200001, 200007, 200008]);
        // Equal low and high frequency factors: no smoothed band, a plain split at 8192.
        let rope = crate::model::rope::rope_for(&c).unwrap();
        let wavelen = |f: f32| 2.0 * std::f32::consts::PI / f;
        assert!(rope.inv_freq.iter().all(|f| f.is_finite()));
        assert!(!rope.neox);
        let base = |i: usize| 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0);
        for (i, &f) in rope.inv_freq.iter().enumerate() {
            let expected = if wavelen(base(i) as f32) > 8192.0 {
                base(i) / 16.0
            } else {
                base(i)
            };
            assert!(((f as f64) - expected).abs() <= 1e-6 * expected, "pair {i}");
        }
    }

    #[test]
    fn maverick_interleaves_its_expert_layers() {
        // Llama-4-Maverick: experts every second layer, no q/k norm, 128 experts.
        let text = scout()
            .replace(
                r#""interleave_moe_layer_step": 1"#,
                r#""interleave_moe_layer_step": 2, "moe_layers": [1, 3, 5]"#,
            )
            .replace(r#""num_local_experts": 16"#, r#""num_local_experts": 128"#)
            .replace(r#""use_qk_norm": true"#, r#""use_qk_norm": false"#);
        let c = ModelConfig::from_json(&text).unwrap();
        let moe = c.moe.as_ref().unwrap();
        assert_eq!(moe.num_experts, 128);
        let sparse: Vec<usize> = (0..48).filter(|&i| moe.is_sparse(i)).collect();
        assert_eq!(sparse, vec![1, 3, 5]);
        assert!(!c.qk_norm);
    }

    #[test]
    fn temperature_tuning_and_chunks_can_be_off() {
        let text = scout()
            .replace(
                r#""attn_temperature_tuning": 4"#,
                r#""attn_temperature_tuning": false"#,
            )
            .replace(
                r#""attention_chunk_size": 8192"#,
                r#""attention_chunk_size": null"#,
            );
        let c = ModelConfig::from_json(&text).unwrap();
        assert!(c.query_temperature.is_none());
        assert_eq!(c.layer_key_window(0), KeyWindow::Full);
    }

    #[test]
    fn the_temperature_steps_every_floor_scale_positions() {
        let t = QueryTemperature {
            floor_scale: 8192.0,
            attn_scale: 0.1,
        };
        assert_eq!(t.factor(0), 1.0);
        assert_eq!(t.factor(8190), 1.0);
        assert!((t.factor(8191) - (1.0 + 0.1 * 2f32.ln())).abs() < 1e-7);
        assert!((t.factor(3 * 8192) - (1.0 + 0.1 * 4f32.ln())).abs() < 1e-7);
    }

    #[test]
    fn mlp_weights_take_llama4_names() {
        let src = Llama4Weights::wrap(crate::model::weights::DummyWeights { seed: 0 });
        let name = |n: &str| src.stored_name(n);
        assert_eq!(
            name("model.layers.1.mlp.gate.weight"),
            "model.layers.1.feed_forward.router.weight"
        );
        assert_eq!(
            name("model.layers.1.mlp.shared_experts.up_proj.weight"),
            "model.layers.1.feed_forward.shared_expert.up_proj.weight"
        );
        assert_eq!(
            name("model.layers.1.mlp.experts.gate_up_proj"),
            "model.layers.1.feed_forward.experts.gate_up_proj"
        );
        assert_eq!(
            name("model.layers.0.mlp.down_proj.weight"),
            "model.layers.0.feed_forward.down_proj.weight"
        );
        assert_eq!(
            name("model.layers.0.self_attn.q_proj.weight"),
            "model.layers.0.self_attn.q_proj.weight"
        );
    }
}
