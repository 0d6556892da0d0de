//! GPT-NeoX checkpoints (Pythia, GPT-NeoX-20B) under the names the Llama-family loader asks
//! for: `gpt_neox.embed_in` is `model.embed_tokens`, `attention.dense` the output
//! projection, `dense_h_to_4h` / `dense_4h_to_h` the ungated MLP's two projections (asked
//! for by StarCoder2's names, `c_fc` / `c_proj`), `final_layer_norm` the final norm and
//! `embed_out` the LM head. The fused `query_key_value` keeps its name: the loader cuts it
//! head by head itself (`llama::per_head_qkv_parts`).

use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};

pub struct GptNeoXWeights;

impl GptNeoXWeights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        RenamedWeights::new(inner, checkpoint_name)
    }
}

/// The checkpoint's name of the loader's weight `name`.
fn checkpoint_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "gpt_neox.embed_in.weight".into(),
        "lm_head.weight" => return "embed_out.weight".into(),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("model.norm.") {
        return format!("gpt_neox.final_layer_norm.{rest}");
    }
    let Some((index, part)) = layer_part(name) else {
        // A classifier's `score.weight` and anything else keep their names.
        return name.to_string();
    };
    const RENAMED: [(&str, &str); 4] = [
        ("self_attn.o_proj.", "attention.dense."),
        ("self_attn.query_key_value.", "attention.query_key_value."),
        ("mlp.c_fc.", "mlp.dense_h_to_4h."),
        ("mlp.c_proj.", "mlp.dense_4h_to_h."),
    ];
    let part = renamed_part(part, &RENAMED);
    format!("gpt_neox.layers.{index}.{part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_names_map_to_pythia_checkpoint_names() {
        let cases = [
            ("model.embed_tokens.weight", "gpt_neox.embed_in.weight"),
            ("lm_head.weight", "embed_out.weight"),
            ("model.norm.bias", "gpt_neox.final_layer_norm.bias"),
            (
                "model.layers.11.self_attn.query_key_value.weight",
                "gpt_neox.layers.11.attention.query_key_value.weight",
            ),
            (
                "model.layers.0.self_attn.o_proj.bias",
                "gpt_neox.layers.0.attention.dense.bias",
            ),
            (
                "model.layers.3.mlp.c_fc.weight",
                "gpt_neox.layers.3.mlp.dense_h_to_4h.weight",
            ),
            (
                "model.layers.3.mlp.c_proj.bias",
                "gpt_neox.layers.3.mlp.dense_4h_to_h.bias",
            ),
            (
                "model.layers.2.post_attention_layernorm.weight",
                "gpt_neox.layers.2.post_attention_layernorm.weight",
            ),
            ("score.weight", "score.weight"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(checkpoint_name(ours), theirs, "{ours}");
        }
    }
}
