//! EleutherAI's GPT-Neo (`GPTNeoForCausalLM`, GPT-Neo 125M / 1.3B / 2.7B and their
//! fine-tunes): GPT-2's layer with linear weights, bias-free q / k / v projections, a biased
//! output projection, layers alternating between global attention and a local window
//! (`attention_types`, `window_size`), and attention scores that are not scaled by
//! head_dim^-0.5. kiln's attention applies that factor, so sqrt(head_dim) is folded into the
//! q rows at load (`ModelConfig::folded_scales`).

use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// `value` (a GPT-Neo config.json) with the fields kiln reads: GPT-2-style renames, and the
/// attention pattern as `layer_types` (local layers slide over `window_size`).
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    // transformers' GPTNeoConfig defaults.
    let number = |k: &str, default: u64| fields.get(k).and_then(Value::as_u64).unwrap_or(default);
    let hidden = number("hidden_size", 2048);
    let layers = number("num_layers", 24);
    let types = fields
        .get("attention_types")
        .cloned()
        .unwrap_or(json!([[["global", "local"], 12]]));
    let layer_types = expand_attention_types(&types)?;
    anyhow::ensure!(
        layer_types.len() as u64 == layers,
        "attention_types gives {} layers, num_layers is {layers}",
        layer_types.len()
    );
    let inner = match fields.get("intermediate_size") {
        Some(Value::Number(n)) => n.as_u64().context("intermediate_size")?,
        _ => 4 * hidden,
    };
    let renamed = [
        ("hidden_size", json!(hidden)),
        ("num_hidden_layers", json!(layers)),
        ("num_attention_heads", json!(number("num_heads", 16))),
        ("intermediate_size", json!(inner)),
        ("sliding_window", json!(number("window_size", 256))),
        ("layer_types", json!(layer_types)),
        (
            "layer_norm_eps",
            fields
                .get("layer_norm_epsilon")
                .cloned()
                .unwrap_or(json!(1e-5)),
        ),
        (
            "hidden_act",
            fields
                .get("activation_function")
                .cloned()
                .unwrap_or(json!("gelu_new")),
        ),
    ];
    for (k, v) in renamed {
        fields.insert(k.to_string(), v);
    }
    fields
        .entry("max_position_embeddings")
        .or_insert(json!(2048));
    Ok(value)
}

/// `[[["global", "local"], 12]]` as 24 layer types, `sliding_attention` for the local ones.
fn expand_attention_types(types: &Value) -> Result<Vec<&'static str>> {
    let bad = || format!("attention_types {types} is not [[[kinds...], repeats], ...]");
    let mut out = Vec::new();
    for group in types.as_array().with_context(bad)? {
        let (kinds, repeats) = match group.as_array().map(Vec::as_slice) {
            Some([kinds, repeats]) => (
                kinds.as_array().with_context(bad)?,
                repeats.as_u64().with_context(bad)?,
            ),
            _ => anyhow::bail!(bad()),
        };
        for _ in 0..repeats {
            for kind in kinds {
                out.push(match kind.as_str() {
                    Some("global") => "full_attention",
                    Some("local") => "sliding_attention",
                    _ => anyhow::bail!("attention type {kind} is neither global nor local"),
                });
            }
        }
    }
    Ok(out)
}

/// A GPT-Neo checkpoint under the loader's names.
pub struct GptNeoWeights;

impl GptNeoWeights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        RenamedWeights::new(inner, checkpoint_name)
    }
}

/// The checkpoint's name of the loader's weight `name`.
fn checkpoint_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "transformer.wte.weight".into(),
        "model.embed_positions.weight" => return "transformer.wpe.weight".into(),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("model.norm.") {
        return format!("transformer.ln_f.{rest}");
    }
    let Some((index, part)) = layer_part(name) else {
        return name.to_string();
    };
    const RENAMED: [(&str, &str); 4] = [
        ("input_layernorm.", "ln_1."),
        ("post_attention_layernorm.", "ln_2."),
        ("self_attn.o_proj.", "attn.attention.out_proj."),
        ("self_attn.", "attn.attention."),
    ];
    format!("transformer.h.{index}.{}", renamed_part(part, &RENAMED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_names_map_to_gpt_neo_checkpoint_names() {
        let cases = [
            ("model.embed_tokens.weight", "transformer.wte.weight"),
            ("model.embed_positions.weight", "transformer.wpe.weight"),
            ("model.norm.bias", "transformer.ln_f.bias"),
            ("lm_head.weight", "lm_head.weight"),
            (
                "model.layers.1.self_attn.q_proj.weight",
                "transformer.h.1.attn.attention.q_proj.weight",
            ),
            (
                "model.layers.1.self_attn.o_proj.bias",
                "transformer.h.1.attn.attention.out_proj.bias",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "transformer.h.0.ln_2.weight",
            ),
            (
                "model.layers.0.mlp.c_fc.bias",
                "transformer.h.0.mlp.c_fc.bias",
            ),
        ];
        for (ours, theirs) in cases {
            assert_eq!(checkpoint_name(ours), theirs, "{ours}");
        }
    }

    #[test]
    fn attention_types_expand_to_alternating_windows() {
        let c = normalized_config(json!({
            "hidden_size": 64, "num_layers": 4, "num_heads": 8, "window_size": 16,
            "attention_types": [[["global", "local"], 2]], "intermediate_size": null
        }))
        .unwrap();
        assert_eq!(
            c["layer_types"],
            json!([
                "full_attention",
                "sliding_attention",
                "full_attention",
                "sliding_attention"
            ])
        );
        assert_eq!(c["intermediate_size"], 256);
        assert_eq!(c["sliding_window"], 16);
        let err = normalized_config(json!({"num_layers": 3, "attention_types": [[["global"], 2]]}))
            .unwrap_err();
        assert!(err.to_string().contains("num_layers"), "{err}");
    }
}
