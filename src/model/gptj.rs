//! EleutherAI's GPT-J (`GPTJForCausalLM`, GPT-J-6B and its fine-tunes): Phi's parallel layer
//! (one LayerNorm feeding attention and an ungated GELU MLP, both added to the stream) with
//! bias-free q / k / v / out projections, adjacent-pair rotary on the first `rotary_dim`
//! values of each head, and a biased LM head. Its config speaks GPT-2's field names; its
//! checkpoints are read under the Llama-family loader's names.

use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};
use anyhow::Result;

/// `value` (a GPT-J config.json) with GPT-2's renames and `rotary_dim` as a
/// `partial_rotary_factor` of the head.
pub fn normalized_config(value: serde_json::Value) -> Result<serde_json::Value> {
    let mut value = super::gpt2::normalized_config(value)?;
    let number = |k: &str| value.get(k).and_then(|v| v.as_u64());
    let head_dim = match (number("hidden_size"), number("num_attention_heads")) {
        (Some(h), Some(n)) if n > 0 => h / n,
        _ => anyhow::bail!("a GPT-J config without n_embd / n_head"),
    };
    // GPTJConfig's default; null rotates the whole head.
    let rotary = match value.get("rotary_dim") {
        Some(serde_json::Value::Null) => head_dim,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("rotary_dim must be a number"))?,
        None => 64,
    };
    anyhow::ensure!(
        rotary > 0 && rotary <= head_dim,
        "rotary_dim {rotary} must be within the head ({head_dim})"
    );
    value["partial_rotary_factor"] = serde_json::json!(rotary as f64 / head_dim as f64);
    Ok(value)
}

/// A GPT-J checkpoint under the loader's names.
pub struct GptJWeights;

impl GptJWeights {
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
        return format!("transformer.ln_f.{rest}");
    }
    let Some((index, part)) = layer_part(name) else {
        // lm_head.weight / .bias.
        return name.to_string();
    };
    const RENAMED: [(&str, &str); 4] = [
        ("input_layernorm.", "ln_1."),
        ("self_attn.o_proj.", "attn.out_proj."),
        ("self_attn.", "attn."),
        ("mlp.c_fc.", "mlp.fc_in."),
    ];
    let part = match part.strip_prefix("mlp.c_proj.") {
        Some(rest) => format!("mlp.fc_out.{rest}"),
        None => renamed_part(part, &RENAMED),
    };
    format!("transformer.h.{index}.{part}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_names_map_to_gptj_checkpoint_names() {
        let cases = [
            ("model.embed_tokens.weight", "transformer.wte.weight"),
            ("model.norm.bias", "transformer.ln_f.bias"),
            ("lm_head.bias", "lm_head.bias"),
            (
                "model.layers.2.input_layernorm.weight",
                "transformer.h.2.ln_1.weight",
            ),
            (
                "model.layers.2.self_attn.k_proj.weight",
                "transformer.h.2.attn.k_proj.weight",
            ),
            (
                "model.layers.2.self_attn.o_proj.weight",
                "transformer.h.2.attn.out_proj.weight",
            ),
            (
                "model.layers.0.mlp.c_fc.bias",
                "transformer.h.0.mlp.fc_in.bias",
            ),
            (
                "model.layers.0.mlp.c_proj.weight",
                "transformer.h.0.mlp.fc_out.weight",
            ),
        ];
        for (ours, theirs) in cases {
            assert_eq!(checkpoint_name(ours), theirs, "{ours}");
        }
    }

    #[test]
    fn gptj_6b_config_rotates_a_quarter_of_each_head() {
        // EleutherAI/gpt-j-6b's config.json (its fields that matter).
        let c = normalized_config(serde_json::json!({"architectures": ["GPTJForCausalLM"],
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05, "model_type": "gptj",
            "n_embd": 4096, "n_head": 16, "n_inner": null, "n_layer": 28, "n_positions": 2048,
            "rotary_dim": 64, "tie_word_embeddings": false, "vocab_size": 50400}))
        .unwrap();
        assert_eq!(c["partial_rotary_factor"], 0.25);
        assert_eq!(c["intermediate_size"], 16384);
        let err = normalized_config(serde_json::json!({"n_embd": 64, "n_head": 8,
            "rotary_dim": 16}))
        .unwrap_err()
        .to_string();
        assert!(err.contains("rotary_dim 16"), "{err}");
    }
}
