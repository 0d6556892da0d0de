//! Swiss AI's Apertus (`ApertusForCausalLM`): its checkpoints name a layer's two norms after
//! the blocks they open (`attention_layernorm`, `feedforward_layernorm`); everything else
//! has the Llama-family loader's names. Its MLP's xIELU parameters are read with the MLP
//! (`llama::xielu_of`).

use super::weights::{with_layer_renames, RenamedWeights, WeightSource};

/// Apertus's names of a layer's norms.
const RENAMED: [(&str, &str); 2] = [
    ("input_layernorm.", "attention_layernorm."),
    ("post_attention_layernorm.", "feedforward_layernorm."),
];

/// An Apertus checkpoint under the loader's names.
pub struct ApertusWeights;

impl ApertusWeights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        with_layer_renames(inner, &RENAMED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norms_take_apertus_names_and_the_rest_is_unchanged() {
        let cases = [
            (
                "model.layers.2.input_layernorm.weight",
                "model.layers.2.attention_layernorm.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "model.layers.0.feedforward_layernorm.weight",
            ),
            (
                "model.layers.1.self_attn.q_norm.weight",
                "model.layers.1.self_attn.q_norm.weight",
            ),
            (
                "model.layers.1.mlp.act_fn.alpha_p",
                "model.layers.1.mlp.act_fn.alpha_p",
            ),
            ("model.norm.weight", "model.norm.weight"),
            ("lm_head.weight", "lm_head.weight"),
        ];
        let src = ApertusWeights::wrap(crate::model::weights::DummyWeights { seed: 0 });
        for (ours, theirs) in cases {
            assert_eq!(src.stored_name(ours), theirs);
        }
    }

    /// swiss-ai/Apertus-8B-Instruct-2509's config.json as the hub has it.
    #[test]
    fn the_apertus_8b_hub_config_parses() {
        use crate::backend::image_ops::Activation;
        use crate::model::config::{Architecture, ModelConfig};
        let text = r#"{"architectures": ["ApertusForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 68,
            "hidden_act": "xielu", "hidden_size": 4096, "initializer_range": 0.02,
            "intermediate_size": 21504, "max_position_embeddings": 65536, "mlp_bias": false,
            "model_type": "apertus", "num_attention_heads": 32, "num_hidden_layers": 32,
            "num_key_value_heads": 8, "pad_token_id": 3, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 12000000, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
            "vocab_size": 131072}"#;
        let c = ModelConfig::from_json(text).unwrap();
        assert_eq!(c.architecture, Architecture::Apertus);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 128));
        assert!(c.qk_norm && !c.qkv_bias && !c.o_bias && !c.ungated_mlp_bias);
        assert!(matches!(c.ungated_mlp, Some(Activation::Xielu(_))));
        assert!(!c.layer_norm && !c.tie_word_embeddings);
        assert_eq!(c.rope_scaling.unwrap().rope_type, "llama3");
    }
}
