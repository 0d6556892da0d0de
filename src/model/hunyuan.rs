//! Tencent's Hunyuan dense models (`HunYuanDenseV1ForCausalLM`): their checkpoints name the
//! per-head q / k norms `query_layernorm` / `key_layernorm`; everything else has the
//! Llama-family loader's names. (The norms apply after the rotation:
//! `ModelConfig::qk_norm_after_rope`.)

use super::weights::{with_layer_renames, RenamedWeights, WeightSource};
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// `value` (a Hunyuan MoE config.json) with its per-layer expert settings (`num_experts`,
/// `moe_topk`, `moe_intermediate_size`, `num_shared_expert`: a number or one per layer) as
/// single numbers, and the shared expert's width as `shared_expert_intermediate_size`.
/// Settings that differ between layers are refused.
pub fn normalized_moe_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    for key in [
        "num_experts",
        "moe_topk",
        "moe_intermediate_size",
        "num_shared_expert",
    ] {
        let Some(Value::Array(per_layer)) = fields.get(key) else {
            continue;
        };
        let first = per_layer.first().cloned().unwrap_or(Value::Null);
        anyhow::ensure!(
            per_layer.iter().all(|v| *v == first),
            "Hunyuan MoE with {key} differing between layers is not supported"
        );
        fields.insert(key.to_string(), first);
    }
    let number = |k: &str| fields.get(k).and_then(Value::as_u64);
    // transformers' HunYuanMoEV1 gives every MLP (experts, shared) intermediate_size.
    let inter = number("intermediate_size").unwrap_or(11008);
    let shared = number("num_shared_expert").unwrap_or(1) * inter;
    let expert_inter = number("moe_intermediate_size").unwrap_or(inter);
    fields.insert("moe_intermediate_size".into(), json!(expert_inter));
    fields.insert("shared_expert_intermediate_size".into(), json!(shared));
    if let Some(top_k) = fields.get("moe_topk").cloned() {
        fields.insert("num_experts_per_tok".into(), top_k);
    }
    Ok(value)
}

/// Hunyuan's names of a layer's q / k norms.
const RENAMED: [(&str, &str); 4] = [
    ("self_attn.q_norm.", "self_attn.query_layernorm."),
    ("self_attn.k_norm.", "self_attn.key_layernorm."),
    // The MoE model's router and shared expert.
    ("mlp.gate.weight", "mlp.gate.wg.weight"),
    ("mlp.shared_experts.", "mlp.shared_mlp."),
];

/// A Hunyuan checkpoint under the loader's names.
pub struct HunYuanWeights;

impl HunYuanWeights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        with_layer_renames(inner, &RENAMED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Architecture, ModelConfig};

    #[test]
    fn head_norms_take_hunyuan_names() {
        let src = HunYuanWeights::wrap(crate::model::weights::DummyWeights { seed: 0 });
        let checkpoint_name = |name: &str| src.stored_name(name);
        assert_eq!(
            checkpoint_name("model.layers.3.self_attn.q_norm.weight"),
            "model.layers.3.self_attn.query_layernorm.weight"
        );
        assert_eq!(
            checkpoint_name("model.layers.0.self_attn.k_norm.weight"),
            "model.layers.0.self_attn.key_layernorm.weight"
        );
        assert_eq!(
            checkpoint_name("model.layers.0.self_attn.q_proj.weight"),
            "model.layers.0.self_attn.q_proj.weight"
        );
        assert_eq!(checkpoint_name("model.norm.weight"), "model.norm.weight");
    }

    /// tencent/Hunyuan-7B-Instruct's config.json as the hub has it (fields kiln reads).
    const HUNYUAN_7B: &str = r#"{"architectures": ["HunYuanDenseV1ForCausalLM"],
        "attention_bias": false, "attention_head_dim": 128, "bos_token_id": 1,
        "eos_token_id": 127960, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 14336, "max_position_embeddings": 32768,
        "model_type": "hunyuan_v1_dense", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_scaling": {"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0,
            "mscale": 1.0, "mscale_all_dim": 1.0, "type": "dynamic"},
        "rope_theta": 10000.0, "tie_word_embeddings": true, "use_cla": false,
        "use_qk_norm": true, "use_rotary_pos_emb": true, "vocab_size": 128167}"#;

    /// tencent/Hunyuan-A13B-Instruct's config.json (fields kiln reads; per-layer lists of 32).
    #[test]
    fn the_hunyuan_a13b_hub_config_parses() {
        let per_layer = |v: u64| format!("[{}]", vec![v.to_string(); 32].join(", "));
        let text = HUNYUAN_7B
            .replace("HunYuanDenseV1ForCausalLM", "HunYuanMoEV1ForCausalLM")
            .replace(
                r#""intermediate_size": 14336"#,
                &format!(
                    r#""intermediate_size": 3072, "num_experts": 64, "moe_topk": {},
                    "moe_intermediate_size": {}, "num_shared_expert": {}"#,
                    per_layer(8),
                    per_layer(3072),
                    per_layer(1)
                ),
            );
        let c = ModelConfig::from_json(&text).unwrap();
        assert_eq!(c.architecture, Architecture::HunYuanMoe);
        assert!(c.qk_norm_after_rope);
        let moe = c.moe.as_ref().unwrap();
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.normalize_top_k),
            (64, 8, true)
        );
        assert_eq!(moe.expert_intermediate_size, 3072);
        assert_eq!(moe.shared_expert_intermediate_size, Some(3072));
        assert!(moe.router_f32 && !moe.shared_expert_gated);
        let uneven = text.replacen("8, 8", "8, 4", 1);
        let err = ModelConfig::from_json(&uneven).unwrap_err();
        assert!(format!("{err:#}").contains("moe_topk differing"), "{err:#}");
    }

    #[test]
    fn the_hunyuan_7b_hub_config_parses() {
        let c = ModelConfig::from_json(HUNYUAN_7B).unwrap();
        assert_eq!(c.architecture, Architecture::HunYuanDense);
        assert!(c.qk_norm && c.qk_norm_after_rope && c.tie_word_embeddings);
        // NTK-alpha: 10000 * 1000^(128 / 126), no scaling left.
        let base = 10000.0 * 1000f64.powf(128.0 / 126.0);
        assert!(
            (c.rope_theta - base).abs() / base < 1e-12,
            "{}",
            c.rope_theta
        );
        assert!(c.rope_scaling.is_none());
        let cla = HUNYUAN_7B.replace(r#""use_cla": false"#, r#""use_cla": true"#);
        let err = ModelConfig::from_json(&cla).unwrap_err();
        assert!(format!("{err:#}").contains("use_cla"), "{err:#}");
    }
}
