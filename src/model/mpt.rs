//! MosaicML's MPT (`MptForCausalLM`, and the `MPTForCausalLM` of the original checkpoints
//! with remote code: MPT-7B / 30B and their instruct, chat and storywriter models): bias-free
//! LayerNorms and projections, one `Wqkv` (q rows, then k, then v), ALiBi instead of
//! positions, an ungated exact-GELU MLP and the head tied to the embeddings. Its config's
//! fields are turned into the ones kiln reads; its checkpoints are read under the
//! Llama-family loader's names.

use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// `value` (an MPT config.json) with the fields kiln reads. Options of MPT's own code that
/// change the computation and that kiln does not run are refused by name.
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    let attn = fields.get("attn_config").cloned().unwrap_or(json!({}));
    let attn_flag = |k: &str| attn.get(k).and_then(Value::as_bool);
    anyhow::ensure!(
        attn_flag("alibi") != Some(false),
        "MPT without ALiBi (attn_config.alibi: false, learned positions) is not supported"
    );
    for (key, what) in [
        ("qk_ln", "q / k LayerNorms"),
        ("prefix_lm", "prefix-LM attention"),
        ("attn_uses_sequence_id", "attention within sequence ids"),
    ] {
        anyhow::ensure!(
            attn_flag(key) != Some(true),
            "MPT with {what} (attn_config.{key}: true) is not supported"
        );
    }
    if let Some(kind) = attn.get("attn_type").and_then(Value::as_str) {
        anyhow::ensure!(
            kind == "multihead_attention",
            "MPT's attn_type '{kind}' is not supported (only multihead_attention)"
        );
    }
    anyhow::ensure!(
        fields.get("no_bias").and_then(Value::as_bool) != Some(false),
        "MPT with biases (no_bias: false) is not supported"
    );
    anyhow::ensure!(
        fields.get("logit_scale").is_none_or(Value::is_null),
        "MPT's logit_scale is not supported"
    );
    // transformers' MptConfig defaults.
    let number = |k: &str, default: u64| fields.get(k).and_then(Value::as_u64).unwrap_or(default);
    let hidden = number("d_model", 2048);
    let renamed = [
        ("architectures", json!(["MptForCausalLM"])),
        ("hidden_size", json!(hidden)),
        ("num_hidden_layers", json!(number("n_layers", 24))),
        ("num_attention_heads", json!(number("n_heads", 16))),
        (
            "intermediate_size",
            json!(number("expansion_ratio", 4) * hidden),
        ),
        (
            "max_position_embeddings",
            json!(number("max_seq_len", 2048)),
        ),
        (
            "layer_norm_eps",
            fields
                .get("layer_norm_epsilon")
                .cloned()
                .unwrap_or(json!(1e-5)),
        ),
        ("hidden_act", json!("gelu")),
        (
            "alibi_bias_max",
            attn.get("alibi_bias_max").cloned().unwrap_or(json!(8)),
        ),
        (
            "clip_qkv",
            attn.get("clip_qkv").cloned().unwrap_or(Value::Null),
        ),
        (
            "softmax_scale",
            attn.get("softmax_scale").cloned().unwrap_or(Value::Null),
        ),
    ];
    for (k, v) in renamed {
        fields.insert(k.to_string(), v);
    }
    fields.entry("vocab_size").or_insert(json!(50368));
    Ok(value)
}

/// An MPT checkpoint under the loader's names.
pub struct MptWeights;

impl MptWeights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        RenamedWeights::new(inner, checkpoint_name)
    }
}

/// The checkpoint's name of the loader's weight `name`.
fn checkpoint_name(name: &str) -> String {
    if name == "model.embed_tokens.weight" {
        return "transformer.wte.weight".into();
    }
    if let Some(rest) = name.strip_prefix("model.norm.") {
        return format!("transformer.norm_f.{rest}");
    }
    let Some((index, part)) = layer_part(name) else {
        return name.to_string();
    };
    const RENAMED: [(&str, &str); 6] = [
        ("input_layernorm.", "norm_1."),
        ("post_attention_layernorm.", "norm_2."),
        ("self_attn.qkv_proj.", "attn.Wqkv."),
        ("self_attn.o_proj.", "attn.out_proj."),
        ("mlp.c_fc.", "ffn.up_proj."),
        ("mlp.c_proj.", "ffn.down_proj."),
    ];
    format!(
        "transformer.blocks.{index}.{}",
        renamed_part(part, &RENAMED)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Architecture, ModelConfig};

    #[test]
    fn loader_names_map_to_mpt_checkpoint_names() {
        let cases = [
            ("model.embed_tokens.weight", "transformer.wte.weight"),
            ("model.norm.weight", "transformer.norm_f.weight"),
            (
                "model.layers.3.self_attn.qkv_proj.weight",
                "transformer.blocks.3.attn.Wqkv.weight",
            ),
            (
                "model.layers.0.self_attn.o_proj.weight",
                "transformer.blocks.0.attn.out_proj.weight",
            ),
            (
                "model.layers.1.input_layernorm.weight",
                "transformer.blocks.1.norm_1.weight",
            ),
            (
                "model.layers.1.post_attention_layernorm.bias",
                "transformer.blocks.1.norm_2.bias",
            ),
            (
                "model.layers.2.mlp.c_fc.weight",
                "transformer.blocks.2.ffn.up_proj.weight",
            ),
            (
                "model.layers.2.mlp.c_proj.weight",
                "transformer.blocks.2.ffn.down_proj.weight",
            ),
            ("lm_head.weight", "lm_head.weight"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(checkpoint_name(ours), theirs, "{ours}");
        }
    }

    /// mosaicml/mpt-7b's config.json as the hub has it (remote-code architecture name).
    const MPT_7B: &str = r#"{"architectures": ["MPTForCausalLM"],
        "attn_config": {"alibi": true, "alibi_bias_max": 8, "attn_impl": "torch",
            "attn_pdrop": 0, "attn_type": "multihead_attention",
            "attn_uses_sequence_id": false, "clip_qkv": null, "prefix_lm": false,
            "qk_ln": false, "softmax_scale": null},
        "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig",
            "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
        "d_model": 4096, "emb_pdrop": 0, "embedding_fraction": 1.0, "expansion_ratio": 4,
        "init_config": {"emb_init_std": null, "init_div_is_residual": true, "name": "kaiming_normal_"},
        "init_device": "cpu", "learned_pos_emb": true, "logit_scale": null,
        "max_seq_len": 2048, "model_type": "mpt", "n_heads": 32, "n_layers": 32,
        "no_bias": true, "norm_type": "low_precision_layernorm", "resid_pdrop": 0,
        "tokenizer_name": "EleutherAI/gpt-neox-20b", "torch_dtype": "bfloat16",
        "transformers_version": "4.28.1", "use_cache": false, "verbose": 0,
        "vocab_size": 50432}"#;

    #[test]
    fn the_mpt_7b_hub_config_parses() {
        let c = ModelConfig::from_json(MPT_7B).unwrap();
        assert_eq!(c.architecture, Architecture::Mpt);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 32, 128));
        assert_eq!((c.num_layers, c.intermediate_size), (32, 16384));
        assert_eq!((c.max_position_embeddings, c.vocab_size), (2048, 50432));
        assert!(c.layer_norm && !c.embedding_norm && !c.parallel_block);
        assert!(!c.qkv_bias && !c.o_bias && !c.ungated_mlp_bias);
        assert!(c.tie_word_embeddings);
        assert!(c.rope_layers.as_ref().unwrap().iter().all(|&on| !on));
        assert_eq!(c.alibi.unwrap().max_bias, 8.0);
        assert_eq!(c.folded_scales(), (1.0, 1.0));
    }

    #[test]
    fn what_mpt_runs_differently_is_refused_by_name() {
        let cases = [
            (r#""qk_ln": false"#, r#""qk_ln": true"#, "q / k LayerNorms"),
            (r#""clip_qkv": null"#, r#""clip_qkv": 8"#, "clip_qkv"),
            (r#""no_bias": true"#, r#""no_bias": false"#, "no_bias"),
            (r#""alibi": true"#, r#""alibi": false"#, "without ALiBi"),
            (
                r#""multihead_attention""#,
                r#""grouped_query_attention""#,
                "grouped_query_attention",
            ),
            (
                r#""logit_scale": null"#,
                r#""logit_scale": 0.5"#,
                "logit_scale",
            ),
        ];
        for (from, to, says) in cases {
            assert!(MPT_7B.contains(from), "{from}");
            let err = ModelConfig::from_json(&MPT_7B.replace(from, to)).unwrap_err();
            assert!(format!("{err:#}").contains(says), "{to}: {err:#}");
        }
    }

    #[test]
    fn a_softmax_scale_folds_into_the_queries() {
        let c = ModelConfig::from_json(
            &MPT_7B.replace(r#""softmax_scale": null"#, r#""softmax_scale": 0.125"#),
        )
        .unwrap();
        // head_dim 128: kiln's attention applies 128^-0.5.
        let (q, o) = c.folded_scales();
        assert!((q - 0.125 * 128f64.sqrt()).abs() < 1e-12 && o == 1.0, "{q}");
    }
}
