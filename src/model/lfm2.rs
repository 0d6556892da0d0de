//! Liquid AI's LFM2 (`Lfm2ForCausalLM`: LFM2 350M / 700M / 1.2B / 2.6B): a hybrid whose
//! layers are either Llama-style attention (GQA, per-head q/k RMS norms before the rotation)
//! or a gated short convolution: `in_proj` gives each token gates B, C and an input x, the
//! row `B * x` is convolved causally and depthwise over the last `conv_L_cache` (3) tokens,
//! gated by C, and projected by `out_proj`. Both kinds feed a SwiGLU MLP
//! (`feed_forward.w1/w3/w2`).
//!
//! The convolution needs each sequence's last rows, which kiln keeps in the paged cache in
//! place of a convolution layer's keys ([`crate::backend::KvCacheSpec::conv_layers`]), so
//! decode, chunked prefill, prefix caching and preemption treat them like keys. In the
//! layer, `in_proj` takes the place of the fused q/k/v projection and `out_proj` of the
//! attention's output projection ([`crate::backend::Backend::gated_short_conv`] in between).

use super::config::layer_types_marking;
use super::llama::{cols_part, load_stacked, rows_part};
use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};
use crate::backend::{Backend, DType};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::ops::Range;

/// One convolution layer's kernel, as this rank holds it: `[channels, taps]`, its channels
/// the rank's share of the hidden size (the attention layers' q columns).
pub struct ShortConv<B: Backend> {
    pub weight: B::Tensor,
    pub channels: usize,
}

/// Layer `prefix`'s convolution on this rank (channels `cols` of `hidden`): the kernel, and
/// `in_proj`'s B, C and x rows stacked (`[3 * channels, hidden]`: the layer's fused
/// projection) and `out_proj`'s columns (its output projection).
pub fn load_conv<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    prefix: &str,
    (hidden, taps): (usize, usize),
    cols: &Range<usize>,
    dtype: DType,
) -> Result<(ShortConv<B>, B::Tensor, B::Tensor)> {
    let name = |n: &str| format!("{prefix}.conv.{n}.weight");
    let shifted = |k: usize| k * hidden + cols.start..k * hidden + cols.end;
    let in_parts: Vec<_> = (0..3)
        .map(|k| rows_part(name("in_proj"), vec![3 * hidden, hidden], shifted(k)))
        .collect();
    let in_proj = load_stacked(be, src, &in_parts, dtype)?;
    let out_proj = load_stacked(
        be,
        src,
        &[cols_part(
            name("out_proj"),
            vec![hidden, hidden],
            cols.clone(),
        )],
        dtype,
    )?;
    let kernel = rows_part(name("conv"), vec![hidden, 1, taps], cols.clone())
        .read(src, dtype)?
        .reshape((cols.len(), taps))?;
    let conv = ShortConv {
        weight: be.upload(kernel)?,
        channels: cols.len(),
    };
    Ok((conv, in_proj, out_proj))
}

/// The convolution layers: their kernel length and which layers they are.
#[derive(Clone, Debug, PartialEq)]
pub struct ShortConvLayers {
    pub taps: usize,
    pub layers: Vec<bool>,
}

impl ShortConvLayers {
    /// Whether layer `i` is a convolution.
    pub fn is_conv(&self, i: usize) -> bool {
        self.layers.get(i).copied().unwrap_or(false)
    }
}

/// `value` (an LFM2 config.json) in the names kiln's loader reads: `norm_eps` as
/// `rms_norm_eps`, the original keys (`theta`, `block_ff_dim`, `tie_embedding`) where the
/// transformers ones are missing, and the MLP width as transformers sizes it
/// (`block_auto_adjust_ff_dim`: two thirds, times `block_ffn_dim_multiplier`, rounded up to
/// `block_multiple_of`). Convolution biases (`conv_bias`) are refused.
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    anyhow::ensure!(
        fields.get("conv_bias").and_then(Value::as_bool) != Some(true),
        "LFM2 with convolution biases (conv_bias) is not supported"
    );
    let number = |k: &str| fields.get(k).and_then(Value::as_f64);
    let rope_theta = number("theta")
        .or(number("rope_theta"))
        .unwrap_or(1_000_000.0);
    let eps = number("norm_eps").unwrap_or(1e-5);
    let mut inter = number("block_ff_dim")
        .or(number("intermediate_size"))
        .unwrap_or(12288.0);
    let auto_adjust = fields
        .get("block_auto_adjust_ff_dim")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if auto_adjust {
        inter = (2.0 * inter / 3.0).floor();
        if let Some(multiplier) = fields.get("block_ffn_dim_multiplier") {
            if let Some(m) = multiplier.as_f64() {
                let multiple = number("block_multiple_of").unwrap_or(256.0).max(1.0);
                inter = (m * inter).floor();
                inter = ((inter + multiple - 1.0) / multiple).floor() * multiple;
            }
        } else {
            // Lfm2Config's default multiplier is 1.0, rounded to its default multiple.
            let multiple = number("block_multiple_of").unwrap_or(256.0).max(1.0);
            inter = ((inter + multiple - 1.0) / multiple).floor() * multiple;
        }
    }
    let tie = fields
        .get("tie_embedding")
        .or(fields.get("tie_word_embeddings"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    for (key, default) in [
        ("vocab_size", json!(65536)),
        ("hidden_size", json!(2560)),
        ("num_hidden_layers", json!(32)),
        ("num_attention_heads", json!(32)),
        ("num_key_value_heads", json!(8)),
        ("max_position_embeddings", json!(128000)),
        ("hidden_act", json!("silu")),
    ] {
        fields.entry(key).or_insert(default);
    }
    fields.insert("rope_theta".into(), json!(rope_theta));
    fields.insert("rms_norm_eps".into(), json!(eps));
    fields.insert("intermediate_size".into(), json!(inter as u64));
    fields.insert("tie_word_embeddings".into(), json!(tie));
    Ok(value)
}

/// `value` (an LFM2-MoE config.json, `Lfm2MoeForCausalLM`) as kiln reads it: LFM2's layers
/// with Lfm2MoeConfig's defaults, its dense MLPs `intermediate_size` wide as given (no
/// `block_*` adjustment), experts from layer `num_dense_layers` on.
pub fn normalized_moe_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    let dense = fields.get("num_dense_layers").cloned().unwrap_or(json!(2));
    for (key, default) in [
        ("hidden_size", json!(2048)),
        ("intermediate_size", json!(7168)),
        ("moe_intermediate_size", json!(1792)),
        ("num_experts", json!(32)),
        ("num_experts_per_tok", json!(4)),
        ("norm_topk_prob", json!(true)),
        ("routed_scaling_factor", json!(1.0)),
    ] {
        fields.entry(key).or_insert(default);
    }
    fields.insert("first_k_dense_replace".into(), dense);
    fields.insert("block_auto_adjust_ff_dim".into(), json!(false));
    fields.remove("block_ff_dim");
    normalized_config(value)
}

/// The convolution layers of a normalised LFM2 config: `layer_types` `conv`, or every layer
/// not in `full_attn_idxs` (all layers attend without either).
pub fn conv_layers(value: &Value, layers: usize) -> Result<ShortConvLayers> {
    let taps = value
        .get("conv_L_cache")
        .and_then(Value::as_u64)
        .unwrap_or(3) as usize;
    anyhow::ensure!(taps > 0, "conv_L_cache must be positive");
    let conv = match layer_types_marking(value, layers, "conv")? {
        Some(conv) => conv,
        None => match value.get("full_attn_idxs").and_then(Value::as_array) {
            Some(attention) => {
                let attention: Vec<u64> = attention.iter().filter_map(Value::as_u64).collect();
                (0..layers)
                    .map(|i| !attention.contains(&(i as u64)))
                    .collect()
            }
            None => vec![false; layers],
        },
    };
    Ok(ShortConvLayers { taps, layers: conv })
}

/// LFM2's names of a layer's weights (the loader's first).
const RENAMED: [(&str, &str); 11] = [
    ("input_layernorm.", "operator_norm."),
    ("post_attention_layernorm.", "ffn_norm."),
    ("self_attn.o_proj.", "self_attn.out_proj."),
    ("self_attn.q_norm.", "self_attn.q_layernorm."),
    ("self_attn.k_norm.", "self_attn.k_layernorm."),
    ("mlp.gate_proj.", "feed_forward.w1."),
    ("mlp.up_proj.", "feed_forward.w3."),
    ("mlp.down_proj.", "feed_forward.w2."),
    // LFM2-MoE's router, its expert bias and its experts (`experts.N.w1` / `w3` / `w2`).
    ("mlp.gate.", "feed_forward.gate."),
    ("mlp.expert_bias", "feed_forward.expert_bias"),
    ("mlp.experts.", "feed_forward.experts."),
];

/// An LFM2 checkpoint under the loader's names (its final norm is `model.embedding_norm`).
pub struct Lfm2Weights;

impl Lfm2Weights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        RenamedWeights::new(inner, |name| match layer_part(name) {
            Some((index, part)) => format!("model.layers.{index}.{}", renamed_part(part, &RENAMED)),
            None if name == "model.norm.weight" => "model.embedding_norm.weight".to_string(),
            None => name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Architecture, ModelConfig};

    /// LiquidAI/LFM2-1.2B's config.json as the hub has it (the fields kiln reads).
    const LFM2_1_2B: &str = r#"{"architectures": ["Lfm2ForCausalLM"],
        "block_auto_adjust_ff_dim": true, "block_dim": 2048, "block_ff_dim": 12288,
        "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256, "block_norm_eps": 1e-05,
        "bos_token_id": 1, "conv_L_cache": 3, "conv_bias": false, "eos_token_id": 7,
        "hidden_size": 2048, "layer_types": ["conv", "conv", "full_attention", "conv", "conv",
        "full_attention", "conv", "conv", "full_attention", "conv", "full_attention", "conv",
        "full_attention", "conv", "full_attention", "conv"], "max_position_embeddings": 128000,
        "model_type": "lfm2", "norm_eps": 1e-05, "num_attention_heads": 32,
        "num_hidden_layers": 16, "num_key_value_heads": 8, "pad_token_id": 0,
        "rope_theta": 1000000.0, "theta": 1000000.0, "tie_embedding": true,
        "torch_dtype": "bfloat16", "vocab_size": 65536}"#;

    #[test]
    fn the_lfm2_1_2b_hub_config_parses() {
        let c = ModelConfig::from_json(LFM2_1_2B).unwrap();
        assert_eq!(c.architecture, Architecture::Lfm2);
        // Two thirds of block_ff_dim, a multiple of 256.
        assert_eq!(c.intermediate_size, 8192);
        assert!(c.tie_word_embeddings && c.qk_norm);
        assert_eq!(c.rope_theta, 1_000_000.0);
        let conv = c.short_conv.as_ref().unwrap();
        assert_eq!(conv.taps, 3);
        let attention: Vec<usize> = (0..16).filter(|&i| !conv.is_conv(i)).collect();
        assert_eq!(attention, vec![2, 5, 8, 10, 12, 14]);
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 1.17).abs() < 0.05, "{billions}");
        // 6 attention layers' K and V (8 heads of 64) and 10 convolution rows of 2048.
        assert_eq!(c.cache_values_per_token(), 6 * 2 * 512 + 10 * 2048);
    }

    #[test]
    fn convolution_biases_are_refused() {
        let text = LFM2_1_2B.replace(r#""conv_bias": false"#, r#""conv_bias": true"#);
        let err = ModelConfig::from_json(&text).unwrap_err();
        assert!(format!("{err:#}").contains("conv_bias"), "{err:#}");
    }

    #[test]
    fn weights_take_lfm2_names() {
        let src = Lfm2Weights::wrap(crate::model::weights::DummyWeights { seed: 0 });
        let name = |n: &str| src.stored_name(n);
        assert_eq!(
            name("model.layers.2.self_attn.o_proj.weight"),
            "model.layers.2.self_attn.out_proj.weight"
        );
        assert_eq!(
            name("model.layers.0.mlp.down_proj.weight"),
            "model.layers.0.feed_forward.w2.weight"
        );
        assert_eq!(
            name("model.layers.0.conv.in_proj.weight"),
            "model.layers.0.conv.in_proj.weight"
        );
        assert_eq!(name("model.norm.weight"), "model.embedding_norm.weight");
    }
}
