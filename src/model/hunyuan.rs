//! Tencent's Hunyuan dense models (`HunYuanDenseV1ForCausalLM`): their checkpoints name the
//! per-head q / k norms `query_layernorm` / `key_layernorm`; everything else has the
//! Llama-family loader's names. (The norms apply after the rotation:
//! `ModelConfig::qk_norm_after_rope`.)

use super::weights::{with_layer_renames, RenamedWeights, WeightSource};

/// Hunyuan's names of a layer's q / k norms.
const RENAMED: [(&str, &str); 2] = [
    ("self_attn.q_norm.", "self_attn.query_layernorm."),
    ("self_attn.k_norm.", "self_attn.key_layernorm."),
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
