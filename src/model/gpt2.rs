//! OpenAI's GPT-2 (and DistilGPT-2, and models trained with its code): its config's own field
//! names turned into the ones kiln reads, and its checkpoints read under the Llama-family
//! loader's names. GPT-2 stores its projections as `Conv1D` weights, `[in, out]`: they are
//! read transposed, so the loader sees the usual `[out, in]` (and a tensor-parallel rank's
//! rows are the stored tensor's columns).

use super::weights::{layer_part, GeneratedPart, Slice, WeightSource};
use crate::backend::DType;
use anyhow::Result;
use candle_core::Tensor;

/// `value` (a GPT-2 config.json) with the fields a Llama-style config names as such:
/// `n_embd` as `hidden_size`, `n_inner` (4 x `n_embd` when null) as `intermediate_size`, and
/// so on. What kiln does not run (cross-attention, unscaled or per-layer-scaled attention
/// scores) is refused.
pub fn normalized_config(mut value: serde_json::Value) -> Result<serde_json::Value> {
    let fields = value
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("config.json is not an object"))?;
    let flag = |k: &str| fields.get(k).and_then(|v| v.as_bool());
    anyhow::ensure!(
        flag("add_cross_attention") != Some(true),
        "GPT-2 with cross-attention (add_cross_attention) is not supported"
    );
    anyhow::ensure!(
        flag("scale_attn_by_inverse_layer_idx") != Some(true),
        "GPT-2's scale_attn_by_inverse_layer_idx is not supported"
    );
    anyhow::ensure!(
        flag("scale_attn_weights") != Some(false),
        "GPT-2 without scaled attention scores (scale_attn_weights: false) is not supported"
    );
    // transformers' GPT2Config defaults.
    let number = |k: &str, default: u64| fields.get(k).and_then(|v| v.as_u64()).unwrap_or(default);
    let hidden = number("n_embd", 768);
    let inner = number("n_inner", 4 * hidden);
    let renamed = [
        ("hidden_size", serde_json::json!(hidden)),
        ("intermediate_size", serde_json::json!(inner)),
        (
            "num_hidden_layers",
            serde_json::json!(number("n_layer", 12)),
        ),
        (
            "num_attention_heads",
            serde_json::json!(number("n_head", 12)),
        ),
        (
            "max_position_embeddings",
            serde_json::json!(number("n_positions", 1024)),
        ),
        ("vocab_size", serde_json::json!(number("vocab_size", 50257))),
        (
            "layer_norm_eps",
            fields
                .get("layer_norm_epsilon")
                .cloned()
                .unwrap_or(serde_json::json!(1e-5)),
        ),
        (
            "hidden_act",
            fields
                .get("activation_function")
                .cloned()
                .unwrap_or(serde_json::json!("gelu_new")),
        ),
    ];
    for (k, v) in renamed {
        fields.insert(k.to_string(), v);
    }
    // GPT-BigCode (StarCoder 1, SantaCoder): one key / value head unless `multi_query` is
    // false (its config's default is true).
    if fields.get("model_type").and_then(|v| v.as_str()) == Some("gpt_bigcode") {
        let heads = fields.get("n_head").and_then(|v| v.as_u64()).unwrap_or(12);
        let multi_query = fields
            .get("multi_query")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let kv_heads = if multi_query { 1 } else { heads };
        fields.insert("num_key_value_heads".into(), serde_json::json!(kv_heads));
    }
    Ok(value)
}

/// A GPT-2 checkpoint under the loader's names (see the module documentation); also
/// GPT-BigCode's, whose projections are ordinary `[out, in]` linear weights.
pub struct Gpt2Weights<S> {
    inner: S,
    /// Whether the projections are `Conv1D` weights (GPT-2's), stored transposed.
    conv1d: bool,
    /// `transformer.` where the checkpoint is a `GPT2LMHeadModel`'s, empty where it is a
    /// bare `GPT2Model`'s (the hub's original `gpt2` files).
    prefix: &'static str,
}

impl<S: WeightSource> Gpt2Weights<S> {
    pub fn wrap(inner: S) -> Self {
        Self::with_layout(inner, true)
    }

    /// GPT-BigCode's checkpoints: GPT-2's names, linear weights.
    pub fn wrap_linear(inner: S) -> Self {
        Self::with_layout(inner, false)
    }

    fn with_layout(inner: S, conv1d: bool) -> Self {
        let prefix = if inner.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        Gpt2Weights {
            inner,
            conv1d,
            prefix,
        }
    }

    /// The stored name of the loader's weight `name`, and whether it is a `Conv1D` weight
    /// (stored transposed).
    fn stored(&self, name: &str) -> (String, bool) {
        let p = self.prefix;
        match name {
            "model.embed_tokens.weight" => return (format!("{p}wte.weight"), false),
            "model.embed_positions.weight" => return (format!("{p}wpe.weight"), false),
            _ => {}
        }
        if let Some(rest) = name.strip_prefix("model.norm.") {
            return (format!("{p}ln_f.{rest}"), false);
        }
        let Some((index, part)) = layer_part(name) else {
            return (name.to_string(), false);
        };
        const RENAMED: [(&str, &str); 7] = [
            ("input_layernorm.", "ln_1."),
            ("post_attention_layernorm.", "ln_2."),
            ("self_attn.qkv_proj.", "attn.c_attn."),
            // GPT-BigCode without multi-query: q / k / v fused head by head.
            ("self_attn.query_key_value.", "attn.c_attn."),
            ("self_attn.o_proj.", "attn.c_proj."),
            ("mlp.c_fc.", "mlp.c_fc."),
            ("mlp.c_proj.", "mlp.c_proj."),
        ];
        let Some((theirs, rest)) = RENAMED
            .iter()
            .find_map(|(ours, theirs)| part.strip_prefix(ours).map(|rest| (theirs, rest)))
        else {
            return (format!("{p}h.{index}.{part}"), false);
        };
        // The norms' weights are vectors; every projection's weight is a Conv1D one.
        let conv1d = self.conv1d && rest == "weight" && !theirs.starts_with("ln_");
        (format!("{p}h.{index}.{theirs}{rest}"), conv1d)
    }
}

/// `[a, b]` as `[b, a]`.
fn flipped(shape: &[usize]) -> Result<[usize; 2]> {
    match shape {
        &[a, b] => Ok([b, a]),
        _ => anyhow::bail!("a Conv1D weight must be 2-d, asked for {shape:?}"),
    }
}

impl<S: WeightSource> WeightSource for Gpt2Weights<S> {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        match self.stored(name) {
            (stored, true) => {
                let t = self.inner.tensor(&stored, &flipped(shape)?, dtype)?;
                Ok(t.t()?.contiguous()?)
            }
            (stored, false) => self.inner.tensor(&stored, shape, dtype),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(&self.stored(name).0)
    }

    fn generated(
        &self,
        name: &str,
        shape: &[usize],
        slice: Option<&Slice>,
    ) -> Option<GeneratedPart> {
        match self.stored(name) {
            (stored, false) => self.inner.generated(&stored, shape, slice),
            (_, true) => None,
        }
    }

    fn tensor_slice(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        dtype: DType,
    ) -> Result<Tensor> {
        match self.stored(name) {
            (stored, true) => {
                // Rows of the transposed weight are columns of the stored one.
                let stored_slice = Slice {
                    dim: 1 - slice.dim.min(1),
                    range: slice.range.clone(),
                };
                let t = self
                    .inner
                    .tensor_slice(&stored, &flipped(shape)?, &stored_slice, dtype)?;
                Ok(t.t()?.contiguous()?)
            }
            (stored, false) => self.inner.tensor_slice(&stored, shape, slice, dtype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Named host tensors.
    struct Named(HashMap<String, Tensor>);

    impl WeightSource for Named {
        fn tensor(&self, name: &str, shape: &[usize], _dtype: DType) -> Result<Tensor> {
            let t = self
                .0
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
            anyhow::ensure!(
                t.dims() == shape,
                "{name}: {:?} asked as {shape:?}",
                t.dims()
            );
            Ok(t.clone())
        }
        fn contains(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }
    }

    #[test]
    fn conv1d_weights_read_transposed_and_shards_cut_their_columns() {
        let dev = candle_core::Device::Cpu;
        // A [in 2, out 3] Conv1D weight: the loader asks for [3, 2].
        let stored = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let bias = Tensor::new(&[7f32, 8., 9.], &dev).unwrap();
        let src = Gpt2Weights::wrap(Named(HashMap::from([
            ("h.0.attn.c_attn.weight".to_string(), stored),
            ("h.0.attn.c_attn.bias".to_string(), bias),
            (
                "wte.weight".to_string(),
                Tensor::zeros((4, 2), candle_core::DType::F32, &dev).unwrap(),
            ),
        ])));
        let name = "model.layers.0.self_attn.qkv_proj.weight";
        let w = src.tensor(name, &[3, 2], DType::F32).unwrap();
        assert_eq!(w.to_vec2::<f32>().unwrap(), [[1., 4.], [2., 5.], [3., 6.]]);
        let rows = Slice {
            dim: 0,
            range: 1..3,
        };
        let part = src.tensor_slice(name, &[3, 2], &rows, DType::F32).unwrap();
        assert_eq!(part.to_vec2::<f32>().unwrap(), [[2., 5.], [3., 6.]]);
        let b = src
            .tensor("model.layers.0.self_attn.qkv_proj.bias", &[3], DType::F32)
            .unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [7., 8., 9.]);
        assert!(src.contains("model.embed_tokens.weight"));
        assert!(!src.contains("model.embed_positions.weight"));
    }

    #[test]
    fn lm_head_checkpoints_keep_their_transformer_prefix() {
        let dev = candle_core::Device::Cpu;
        let wte = Tensor::zeros((4, 2), candle_core::DType::F32, &dev).unwrap();
        let src = Gpt2Weights::wrap(Named(HashMap::from([(
            "transformer.wte.weight".to_string(),
            wte,
        )])));
        assert_eq!(
            src.stored("model.layers.3.post_attention_layernorm.bias"),
            ("transformer.h.3.ln_2.bias".to_string(), false)
        );
        assert_eq!(
            src.stored("model.layers.3.mlp.c_proj.weight"),
            ("transformer.h.3.mlp.c_proj.weight".to_string(), true)
        );
        assert_eq!(
            src.stored("model.norm.weight"),
            ("transformer.ln_f.weight".to_string(), false)
        );
    }

    #[test]
    fn hub_configs_get_llama_style_fields_and_unsupported_variants_are_refused() {
        // openai-community/gpt2's config.json (its n_inner is null).
        let gpt2 = serde_json::json!({"activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"], "bos_token_id": 50256, "eos_token_id": 50256,
            "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768,
            "n_head": 12, "n_inner": null, "n_layer": 12, "n_positions": 1024,
            "scale_attn_weights": true, "vocab_size": 50257});
        let c = normalized_config(gpt2.clone()).unwrap();
        assert_eq!(c["hidden_size"], 768);
        assert_eq!(c["intermediate_size"], 3072);
        assert_eq!(c["num_hidden_layers"], 12);
        assert_eq!(c["max_position_embeddings"], 1024);
        assert_eq!(c["hidden_act"], "gelu_new");
        let mut scaled = gpt2;
        scaled["scale_attn_by_inverse_layer_idx"] = serde_json::json!(true);
        let err = normalized_config(scaled).unwrap_err().to_string();
        assert!(err.contains("scale_attn_by_inverse_layer_idx"), "{err}");
    }
}
