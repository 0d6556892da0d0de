//! BigScience's BLOOM (`BloomForCausalLM`: BLOOM 560M .. 176B, BLOOMZ and their fine-tunes):
//! GPT-NeoX's fused `query_key_value` (head by head, q then k then v), a LayerNorm right
//! after the word embeddings, ALiBi instead of positions, a 4x tanh-GELU MLP, biases
//! everywhere and the head tied to the embeddings. Its config's fields are turned into the
//! ones kiln reads; its checkpoints are read under the Llama-family loader's names, with or
//! without the `transformer.` prefix (BLOOM 560M is saved without it).

use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// `value` (a BLOOM config.json) with the fields kiln reads. What BLOOM's code can do that
/// kiln does not (the residual taken after the norm) is refused.
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    anyhow::ensure!(
        fields
            .get("apply_residual_connection_post_layernorm")
            .and_then(Value::as_bool)
            != Some(true),
        "BLOOM with the residual taken after the norm \
         (apply_residual_connection_post_layernorm: true) is not supported"
    );
    // transformers' BloomConfig defaults and its attribute map (n_layer, n_head; n_embed
    // is the older name of hidden_size).
    let number = |k: &str| fields.get(k).and_then(Value::as_u64);
    let hidden = number("hidden_size").or(number("n_embed")).unwrap_or(64);
    let renamed = [
        ("hidden_size", json!(hidden)),
        ("num_hidden_layers", json!(number("n_layer").unwrap_or(2))),
        ("num_attention_heads", json!(number("n_head").unwrap_or(8))),
        ("intermediate_size", json!(4 * hidden)),
        (
            "layer_norm_eps",
            fields
                .get("layer_norm_epsilon")
                .cloned()
                .unwrap_or(json!(1e-5)),
        ),
        // BLOOM's GELU is the tanh approximation.
        ("hidden_act", json!("gelu_pytorch_tanh")),
        // ALiBi has no position table; BLOOM was trained on 2048-token sequences.
        (
            "max_position_embeddings",
            fields.get("seq_length").cloned().unwrap_or(json!(2048)),
        ),
    ];
    for (k, v) in renamed {
        fields.insert(k.to_string(), v);
    }
    Ok(value)
}

/// A BLOOM checkpoint under the loader's names.
pub struct BloomWeights;

impl BloomWeights {
    /// `inner` under the loader's names; checkpoints saved from `BloomModel` (BLOOM 560M)
    /// have no `transformer.` prefix.
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        let prefix = if inner.contains("transformer.word_embeddings.weight") {
            "transformer."
        } else {
            ""
        };
        RenamedWeights::new(inner, move |name| checkpoint_name(name, prefix))
    }
}

/// The checkpoint's name of the loader's weight `name`, its base model's weights under
/// `prefix`.
fn checkpoint_name(name: &str, prefix: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return format!("{prefix}word_embeddings.weight"),
        "lm_head.weight" => return name.to_string(),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("model.embed_norm.") {
        return format!("{prefix}word_embeddings_layernorm.{rest}");
    }
    if let Some(rest) = name.strip_prefix("model.norm.") {
        return format!("{prefix}ln_f.{rest}");
    }
    let Some((index, part)) = layer_part(name) else {
        // A classifier's score.weight.
        return name.to_string();
    };
    format!(
        "{prefix}h.{index}.{}",
        renamed_part(part, &BLOOM_LAYER_NAMES)
    )
}

/// BLOOM's names of a layer's attention and MLP weights (Falcon, built on BLOOM's code,
/// keeps them): `(the loader's prefix, the checkpoint's)`.
pub(super) const BLOOM_LAYER_NAMES: [(&str, &str); 4] = [
    ("self_attn.o_proj.", "self_attention.dense."),
    ("self_attn.", "self_attention."),
    ("mlp.c_fc.", "mlp.dense_h_to_4h."),
    ("mlp.c_proj.", "mlp.dense_4h_to_h."),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_names_map_to_bloom_checkpoint_names() {
        let cases = [
            ("model.embed_tokens.weight", "word_embeddings.weight"),
            ("model.embed_norm.bias", "word_embeddings_layernorm.bias"),
            ("model.norm.weight", "ln_f.weight"),
            (
                "model.layers.3.self_attn.query_key_value.bias",
                "h.3.self_attention.query_key_value.bias",
            ),
            (
                "model.layers.0.self_attn.o_proj.weight",
                "h.0.self_attention.dense.weight",
            ),
            ("model.layers.1.mlp.c_fc.bias", "h.1.mlp.dense_h_to_4h.bias"),
            (
                "model.layers.1.mlp.c_proj.weight",
                "h.1.mlp.dense_4h_to_h.weight",
            ),
            (
                "model.layers.2.post_attention_layernorm.weight",
                "h.2.post_attention_layernorm.weight",
            ),
        ];
        for (ours, theirs) in cases {
            assert_eq!(checkpoint_name(ours, ""), theirs, "{ours}");
            assert_eq!(
                checkpoint_name(ours, "transformer."),
                format!("transformer.{theirs}")
            );
        }
        assert_eq!(
            checkpoint_name("lm_head.weight", "transformer."),
            "lm_head.weight"
        );
    }

    /// bigscience/bloom-560m's config.json as the hub has it.
    #[test]
    fn the_bloom_560m_hub_config_parses() {
        let text = r#"{"apply_residual_connection_post_layernorm": false,
            "architectures": ["BloomForCausalLM"], "attention_dropout": 0.0,
            "attention_softmax_in_fp32": true, "bias_dropout_fusion": true, "bos_token_id": 1,
            "eos_token_id": 2, "hidden_dropout": 0.0, "hidden_size": 1024,
            "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
            "masked_softmax_fusion": true, "model_type": "bloom", "n_head": 16,
            "n_inner": null, "n_layer": 24, "offset_alibi": 100, "pad_token_id": 3,
            "pretraining_tp": 1, "skip_bias_add": true, "skip_bias_add_qkv": false,
            "slow_but_exact": false, "unk_token_id": 0, "use_cache": true,
            "vocab_size": 250880}"#;
        let c = crate::model::config::ModelConfig::from_json(text).unwrap();
        assert_eq!(c.architecture, crate::model::config::Architecture::Bloom);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (16, 16, 64));
        assert_eq!((c.num_layers, c.intermediate_size), (24, 4096));
        assert_eq!(c.max_position_embeddings, 2048);
        assert!(c.layer_norm && c.embedding_norm && !c.parallel_block);
        assert!(c.qkv_bias && c.o_bias && c.ungated_mlp_bias);
        assert!(c.tie_word_embeddings);
        assert!(c.rope_layers.as_ref().unwrap().iter().all(|&on| !on));
        let alibi = c.alibi.unwrap();
        assert!((alibi.slopes(16, 64)[0] - 0.5f32.sqrt()).abs() < 1e-7);
        assert_eq!(
            (c.eos_token_ids.as_slice(), c.bos_token_id),
            (&[2][..], Some(1))
        );
        let err = crate::model::config::ModelConfig::from_json(
            &text.replace("layernorm\": false", "layernorm\": true"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("after the norm"), "{err:#}");
    }
}
