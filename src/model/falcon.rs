//! TII's Falcon (`FalconForCausalLM`, and `RWForCausalLM` checkpoints of the same models):
//! its config's fields turned into the ones kiln reads, and its checkpoints read under the
//! Llama-family loader's names. The variants share one fused `query_key_value` whose rows
//! run KV group by KV group (the group's q heads, then its k head, then its v head):
//! - Falcon-7B: multi-query (one group), a parallel layer with one LayerNorm;
//! - Falcon-40B / 180B (`new_decoder_architecture`): KV groups, a parallel layer whose
//!   attention and MLP read their own LayerNorms (`ln_attn`, `ln_mlp`);
//! - Falcon2-11B: KV groups, one LayerNorm (`num_ln_in_parallel_attn: 1`);
//! - `parallel_attn: false`: a sequential layer with a norm before each block.
//!
//! All use an ungated GELU MLP and biases only where `bias` says, and rotate-half rotary over
//! the whole head, except the ALiBi variants (`alibi`, Falcon-RW), whose biases are added
//! before the scores are scaled (`Alibi::scaled_by_head_dim`).

use super::bloom::BLOOM_LAYER_NAMES;
use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};
use anyhow::Result;
use serde_json::{json, Value};

/// Falcon's layer shape, from its config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FalconLayer {
    /// Attention and MLP both read the stream (else the MLP reads the attention's output).
    pub parallel: bool,
    /// A parallel layer's attention and MLP read their own LayerNorms.
    pub two_norms: bool,
    /// Every projection has a bias.
    pub bias: bool,
    /// Positions as ALiBi biases instead of rotary.
    pub alibi: bool,
}

impl FalconLayer {
    /// Reads a normalized Falcon config (see [`normalized_config`]).
    pub fn of(value: &Value) -> FalconLayer {
        let flag =
            |k: &str, default: bool| value.get(k).and_then(Value::as_bool).unwrap_or(default);
        let new_arch = flag("new_decoder_architecture", false);
        let norms = value
            .get("num_ln_in_parallel_attn")
            .and_then(Value::as_u64)
            .unwrap_or(if new_arch { 2 } else { 1 });
        let parallel = new_arch || flag("parallel_attn", true);
        FalconLayer {
            parallel,
            two_norms: parallel && new_arch && norms == 2,
            bias: flag("bias", false),
            alibi: flag("alibi", false),
        }
    }
}

/// `value` (a Falcon or RW config.json) with the fields kiln reads: head counts (one KV head
/// for multi-query, every head's own without it, `num_kv_heads` groups in the new
/// decoder architecture), `ffn_hidden_size`, the LayerNorm epsilon and the activation.
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("config.json is not an object"))?;
    // RW's (the checkpoints before transformers' port) names for the same fields.
    for (old, new) in [
        ("n_embed", "hidden_size"),
        ("n_layer", "num_hidden_layers"),
        ("n_head", "num_attention_heads"),
        ("n_head_kv", "num_kv_heads"),
    ] {
        if let Some(v) = fields.remove(old) {
            fields.entry(new).or_insert(v);
        }
    }
    fields.insert("architectures".into(), json!(["FalconForCausalLM"]));
    let flag = |k: &str, default: bool| fields.get(k).and_then(Value::as_bool).unwrap_or(default);
    anyhow::ensure!(
        !flag("apply_residual_connection_post_layernorm", false),
        "Falcon with the residual taken after the norm \
         (apply_residual_connection_post_layernorm: true) is not supported"
    );
    let new_arch = flag("new_decoder_architecture", false);
    let multi_query = flag("multi_query", true);
    if let Some(norms) = fields
        .get("num_ln_in_parallel_attn")
        .and_then(Value::as_u64)
    {
        anyhow::ensure!(
            norms == 1 || (norms == 2 && new_arch),
            "num_ln_in_parallel_attn {norms} is supported as 1, or 2 with \
             new_decoder_architecture"
        );
    }
    // transformers' FalconConfig defaults (Falcon-7B's shape).
    let number = |k: &str| fields.get(k).and_then(Value::as_u64);
    let hidden = number("hidden_size").unwrap_or(4544);
    let heads = number("num_attention_heads").unwrap_or(71);
    let kv_heads = if new_arch {
        number("num_kv_heads").unwrap_or(heads)
    } else if multi_query {
        1
    } else {
        heads
    };
    let ffn = number("ffn_hidden_size").unwrap_or(4 * hidden);
    let eps = fields
        .get("layer_norm_epsilon")
        .cloned()
        .unwrap_or(json!(1e-5));
    let act = fields.get("activation").cloned().unwrap_or(json!("gelu"));
    fields.insert("hidden_size".into(), json!(hidden));
    fields.insert("num_attention_heads".into(), json!(heads));
    fields.insert("num_key_value_heads".into(), json!(kv_heads));
    fields.insert("intermediate_size".into(), json!(ffn));
    fields.insert("layer_norm_eps".into(), eps);
    fields.insert("hidden_act".into(), act);
    fields
        .entry("max_position_embeddings")
        .or_insert(json!(2048));
    Ok(value)
}

/// A Falcon checkpoint under the loader's names; `two_norms` says whether its layers name
/// their norms `ln_attn` / `ln_mlp` (`ModelConfig::parallel_two_norms`).
pub struct FalconWeights;

impl FalconWeights {
    pub fn wrap<S: WeightSource>(inner: S, two_norms: bool) -> RenamedWeights<S> {
        RenamedWeights::new(inner, move |name| checkpoint_name(name, two_norms))
    }
}

/// The checkpoint's name of the loader's weight `name`.
fn checkpoint_name(name: &str, two_norms: bool) -> String {
    if name == "model.embed_tokens.weight" {
        return "transformer.word_embeddings.weight".into();
    }
    if let Some(rest) = name.strip_prefix("model.norm.") {
        return format!("transformer.ln_f.{rest}");
    }
    let Some((index, part)) = layer_part(name) else {
        // lm_head.weight, a classifier's score.weight.
        return name.to_string();
    };
    const TWO_NORMS: [(&str, &str); 2] = [
        ("input_layernorm.", "ln_attn."),
        ("post_attention_layernorm.", "ln_mlp."),
    ];
    let part = if two_norms && part.contains("layernorm.") {
        renamed_part(part, &TWO_NORMS)
    } else {
        renamed_part(part, &BLOOM_LAYER_NAMES)
    };
    format!("transformer.h.{index}.{part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_names_map_to_falcon_checkpoint_names() {
        let cases = [
            (
                "model.embed_tokens.weight",
                false,
                "transformer.word_embeddings.weight",
            ),
            ("model.norm.bias", false, "transformer.ln_f.bias"),
            ("lm_head.weight", false, "lm_head.weight"),
            (
                "model.layers.3.self_attn.query_key_value.weight",
                false,
                "transformer.h.3.self_attention.query_key_value.weight",
            ),
            (
                "model.layers.0.self_attn.o_proj.weight",
                false,
                "transformer.h.0.self_attention.dense.weight",
            ),
            (
                "model.layers.1.mlp.c_fc.weight",
                false,
                "transformer.h.1.mlp.dense_h_to_4h.weight",
            ),
            (
                "model.layers.1.mlp.c_proj.weight",
                true,
                "transformer.h.1.mlp.dense_4h_to_h.weight",
            ),
            (
                "model.layers.2.input_layernorm.bias",
                false,
                "transformer.h.2.input_layernorm.bias",
            ),
            (
                "model.layers.2.input_layernorm.weight",
                true,
                "transformer.h.2.ln_attn.weight",
            ),
            (
                "model.layers.2.post_attention_layernorm.bias",
                true,
                "transformer.h.2.ln_mlp.bias",
            ),
        ];
        for (ours, two_norms, theirs) in cases {
            assert_eq!(checkpoint_name(ours, two_norms), theirs, "{ours}");
        }
    }

    #[test]
    fn configs_give_each_variant_its_heads_and_layer() {
        let seven_b = normalized_config(json!({
            "architectures": ["FalconForCausalLM"], "hidden_size": 64, "num_attention_heads": 8,
            "multi_query": true, "parallel_attn": true, "bias": false
        }))
        .unwrap();
        assert_eq!(seven_b["num_key_value_heads"], 1);
        assert_eq!(seven_b["intermediate_size"], 256);
        assert_eq!(
            FalconLayer::of(&seven_b),
            FalconLayer {
                parallel: true,
                two_norms: false,
                bias: false,
                alibi: false
            }
        );
        // RW's names, the new decoder architecture's KV groups and two norms.
        let forty_b = normalized_config(json!({
            "architectures": ["RWForCausalLM"], "n_embed": 64, "n_head": 8, "n_head_kv": 2,
            "n_layer": 2, "new_decoder_architecture": true, "bias": true
        }))
        .unwrap();
        assert_eq!(forty_b["architectures"][0], "FalconForCausalLM");
        assert_eq!(forty_b["num_key_value_heads"], 2);
        assert_eq!(forty_b["num_hidden_layers"], 2);
        let layer = FalconLayer::of(&forty_b);
        assert!(layer.parallel && layer.two_norms && layer.bias);
        let sequential = normalized_config(json!({
            "num_attention_heads": 8, "multi_query": false, "parallel_attn": false
        }))
        .unwrap();
        assert_eq!(sequential["num_key_value_heads"], 8);
        assert!(!FalconLayer::of(&sequential).parallel);
        let rw = normalized_config(json!({"alibi": true, "parallel_attn": false})).unwrap();
        assert!(FalconLayer::of(&rw).alibi);
    }

    /// tiiuae/falcon-rw-1b's config.json as the hub has it: ALiBi, a sequential layer.
    #[test]
    fn the_falcon_rw_1b_hub_config_parses() {
        let text = r#"{"alibi": true, "apply_residual_connection_post_layernorm": false,
            "architectures": ["FalconForCausalLM"], "attention_dropout": 0.0, "bias": true,
            "bos_token_id": 1, "eos_token_id": 2, "hidden_dropout": 0.0, "hidden_size": 2048,
            "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "falcon",
            "multi_query": false, "new_decoder_architecture": false,
            "num_attention_heads": 32, "num_hidden_layers": 24, "parallel_attn": false,
            "torch_dtype": "bfloat16", "transformers_version": "4.27.4", "use_cache": true,
            "vocab_size": 50304}"#;
        let c = crate::model::config::ModelConfig::from_json(text).unwrap();
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 32, 64));
        assert!(!c.parallel_block && c.qkv_bias && c.o_bias && c.ungated_mlp_bias);
        assert!(c.rope_layers.as_ref().unwrap().iter().all(|&on| !on));
        let alibi = c.alibi.unwrap();
        assert!(alibi.scaled_by_head_dim);
        // 2^(-8/32) before the 64^-0.5 Falcon scales its biases by.
        assert!((alibi.slopes(32, 64)[0] - 2f32.powf(-0.25) / 8.0).abs() < 1e-7);
    }

    /// tiiuae/falcon-7b's config.json as the hub has it (no rope or context fields).
    #[test]
    fn the_falcon_7b_hub_config_parses() {
        let text = r#"{"alibi": false, "apply_residual_connection_post_layernorm": false,
            "architectures": ["FalconForCausalLM"], "attention_dropout": 0.0, "bias": false,
            "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0,
            "hidden_size": 4544, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
            "model_type": "falcon", "multi_query": true, "new_decoder_architecture": false,
            "num_attention_heads": 71, "num_hidden_layers": 32, "parallel_attn": true,
            "torch_dtype": "bfloat16", "transformers_version": "4.27.4", "use_cache": true,
            "vocab_size": 65024}"#;
        let c = crate::model::config::ModelConfig::from_json(text).unwrap();
        assert_eq!(c.architecture, crate::model::config::Architecture::Falcon);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (71, 1, 64));
        assert_eq!(c.intermediate_size, 4 * 4544);
        assert_eq!(c.max_position_embeddings, 2048);
        assert!(c.parallel_block && !c.parallel_two_norms && c.layer_norm);
        assert!(!c.qkv_bias && !c.o_bias && !c.ungated_mlp_bias);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.rotary_dim, 64);
        assert_eq!(c.rope_theta, 10000.0);
        assert!(c.alibi.is_none() && c.rope_layers.is_none());
    }
}
