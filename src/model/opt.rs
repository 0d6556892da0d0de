//! Meta's OPT (`OPTForCausalLM`, OPT-125M to 66B, the models vLLM's quickstart serves): its
//! config's fields turned into the ones kiln reads, and its checkpoints read under the
//! Llama-family loader's names. An OPT layer is GPT-2's (LayerNorms before each block,
//! biases everywhere, an ungated MLP, here ReLU), with separate q / k / v projections and
//! learned positions read two rows on (`OPTLearnedPositionalEmbedding`'s offset).

use super::weights::{renamed_part, RenamedWeights, WeightSource};
use anyhow::Result;

/// Where OPT's position table starts reading.
pub const POSITION_OFFSET: usize = 2;

/// `value` (an OPT config.json) with `ffn_dim` as `intermediate_size` and
/// `activation_function` as `hidden_act`. The variants kiln does not run are refused: norms
/// after the blocks (OPT-350M's `do_layer_norm_before: false`), embeddings projected in and
/// out (`word_embed_proj_dim` other than `hidden_size`), no biases, norms without weights.
pub fn normalized_config(mut value: serde_json::Value) -> Result<serde_json::Value> {
    let fields = value
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("config.json is not an object"))?;
    let flag = |k: &str| fields.get(k).and_then(|v| v.as_bool());
    anyhow::ensure!(
        flag("do_layer_norm_before") != Some(false),
        "OPT with its norms after the blocks (do_layer_norm_before: false, OPT-350M) is not \
         supported"
    );
    anyhow::ensure!(
        flag("enable_bias") != Some(false),
        "OPT without biases (enable_bias: false) is not supported"
    );
    anyhow::ensure!(
        flag("layer_norm_elementwise_affine") != Some(false),
        "OPT's LayerNorms without weights (layer_norm_elementwise_affine: false) are not \
         supported"
    );
    anyhow::ensure!(
        flag("_remove_final_layer_norm") != Some(true),
        "OPT without its final LayerNorm (_remove_final_layer_norm) is not supported"
    );
    let number = |k: &str| fields.get(k).and_then(|v| v.as_u64());
    let hidden = number("hidden_size").unwrap_or(768);
    if let Some(projected) = number("word_embed_proj_dim") {
        anyhow::ensure!(
            projected == hidden,
            "OPT with embeddings of {projected} projected to the hidden size {hidden} \
             (word_embed_proj_dim) is not supported"
        );
    }
    // transformers' OPTConfig defaults.
    let ffn = number("ffn_dim").unwrap_or(3072);
    let act = fields
        .get("activation_function")
        .cloned()
        .unwrap_or(serde_json::json!("relu"));
    fields.insert("intermediate_size".into(), serde_json::json!(ffn));
    fields.insert("hidden_act".into(), act);
    // OPT's LayerNorms use PyTorch's default epsilon.
    fields
        .entry("layer_norm_eps")
        .or_insert(serde_json::json!(1e-5));
    Ok(value)
}

/// An OPT checkpoint under the loader's names.
pub struct OptWeights;

impl OptWeights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        RenamedWeights::new(inner, checkpoint_name)
    }
}

/// The checkpoint's name of the loader's weight `name`.
fn checkpoint_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.norm.") {
        return format!("model.decoder.final_layer_norm.{rest}");
    }
    let Some(rest) = name.strip_prefix("model.") else {
        return name.to_string();
    };
    let Some((index, part)) = rest
        .strip_prefix("layers.")
        .and_then(|rest| rest.split_once('.'))
    else {
        // embed_tokens, embed_positions.
        return format!("model.decoder.{rest}");
    };
    const RENAMED: [(&str, &str); 5] = [
        ("input_layernorm.", "self_attn_layer_norm."),
        ("post_attention_layernorm.", "final_layer_norm."),
        ("self_attn.o_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "fc1."),
        ("mlp.c_proj.", "fc2."),
    ];
    let part = renamed_part(part, &RENAMED);
    format!("model.decoder.layers.{index}.{part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_names_map_to_opt_checkpoint_names() {
        let cases = [
            (
                "model.embed_tokens.weight",
                "model.decoder.embed_tokens.weight",
            ),
            (
                "model.embed_positions.weight",
                "model.decoder.embed_positions.weight",
            ),
            ("model.norm.bias", "model.decoder.final_layer_norm.bias"),
            (
                "model.layers.4.input_layernorm.weight",
                "model.decoder.layers.4.self_attn_layer_norm.weight",
            ),
            (
                "model.layers.4.post_attention_layernorm.bias",
                "model.decoder.layers.4.final_layer_norm.bias",
            ),
            (
                "model.layers.0.self_attn.k_proj.bias",
                "model.decoder.layers.0.self_attn.k_proj.bias",
            ),
            (
                "model.layers.0.self_attn.o_proj.weight",
                "model.decoder.layers.0.self_attn.out_proj.weight",
            ),
            (
                "model.layers.1.mlp.c_fc.weight",
                "model.decoder.layers.1.fc1.weight",
            ),
            (
                "model.layers.1.mlp.c_proj.bias",
                "model.decoder.layers.1.fc2.bias",
            ),
            ("lm_head.weight", "lm_head.weight"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(checkpoint_name(ours), theirs, "{ours}");
        }
    }

    #[test]
    fn hub_configs_get_llama_style_fields_and_opt_350m_is_refused() {
        // facebook/opt-125m's config.json.
        let opt = serde_json::json!({"activation_function": "relu",
            "architectures": ["OPTForCausalLM"], "bos_token_id": 2, "do_layer_norm_before": true,
            "eos_token_id": 2, "ffn_dim": 3072, "hidden_size": 768,
            "max_position_embeddings": 2048, "model_type": "opt", "num_attention_heads": 12,
            "num_hidden_layers": 12, "pad_token_id": 1, "vocab_size": 50272,
            "word_embed_proj_dim": 768});
        let c = normalized_config(opt.clone()).unwrap();
        assert_eq!(c["intermediate_size"], 3072);
        assert_eq!(c["hidden_act"], "relu");
        assert_eq!(c["layer_norm_eps"], 1e-5);
        // facebook/opt-350m: post-norm layers, 512-wide embeddings projected to 1024.
        let mut opt_350m = opt;
        opt_350m["do_layer_norm_before"] = serde_json::json!(false);
        let err = normalized_config(opt_350m.clone()).unwrap_err().to_string();
        assert!(err.contains("do_layer_norm_before"), "{err}");
        opt_350m["do_layer_norm_before"] = serde_json::json!(true);
        opt_350m["word_embed_proj_dim"] = serde_json::json!(512);
        let err = normalized_config(opt_350m).unwrap_err().to_string();
        assert!(err.contains("word_embed_proj_dim"), "{err}");
    }
}
