//! TII's Falcon-H1 (`FalconH1ForCausalLM`: Falcon-H1 0.5B to 34B, Falcon-H1R): every layer
//! runs Llama attention and a Mamba-2 mixer side by side on the same normed input and adds
//! their outputs, then a SwiGLU MLP. Its µP multipliers scale the embeddings, the logits,
//! each block's inputs and outputs, the keys, the MLP's gate and down projections, and the
//! mixer's in-projection piece by piece (z, x, B, C, dt).
//!
//! kiln folds the multipliers that sit next to a linear map into its weights at load (the
//! rounding differs from transformers' by one dtype step of the product, well inside the
//! reference tolerance); the embedding and logit multipliers are applied at run time as
//! Granite's are, so a tied head stays one table. The layer's fused projection holds q, k,
//! v and then the mixer's `in_proj` rows (one GEMM over the normed input); the mixer's
//! recurrent state lives in a cache layer of its own after the model's attention layers
//! ([`ParallelMixer::cache_layer`]).

use super::llama::{load_stacked, Part};
use super::mamba::{in_proj_parts, load_mixer_params, out_proj_part, MambaLayers, MambaMixer};
use super::weights::WeightSource;
use crate::backend::{Backend, DType};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::ops::Range;

/// Falcon-H1's µP multipliers (FalconH1Config's names; 1 where a config leaves one out).
#[derive(Clone, Debug, PartialEq)]
pub struct FalconH1Scales {
    pub embedding: f64,
    pub lm_head: f64,
    /// Multiplies the attention's input (its q, k and v).
    pub attention_in: f64,
    pub attention_out: f64,
    /// Multiplies the keys (on top of `attention_in`).
    pub key: f64,
    pub ssm_in: f64,
    pub ssm_out: f64,
    /// The in-projection's z, x, B, C and dt pieces.
    pub ssm: [f64; 5],
    /// The MLP's gate and down projections.
    pub mlp: [f64; 2],
}

impl FalconH1Scales {
    pub fn from_config(value: &Value) -> Result<Self> {
        let scalar = |k: &str| value.get(k).and_then(Value::as_f64).unwrap_or(1.0);
        let list = |k: &str, len: usize| -> Result<Vec<f64>> {
            match value.get(k) {
                None | Some(Value::Null) => Ok(vec![1.0; len]),
                Some(v) => {
                    let values: Vec<f64> = v
                        .as_array()
                        .with_context(|| format!("{k} is not a list"))?
                        .iter()
                        .map(|x| {
                            x.as_f64()
                                .with_context(|| format!("{k} holds a non-number"))
                        })
                        .collect::<Result<_>>()?;
                    anyhow::ensure!(
                        values.len() == len,
                        "{k} has {} values, Falcon-H1 takes {len}",
                        values.len()
                    );
                    Ok(values)
                }
            }
        };
        let ssm = list("ssm_multipliers", 5)?;
        let mlp = list("mlp_multipliers", 2)?;
        Ok(FalconH1Scales {
            embedding: scalar("embedding_multiplier"),
            lm_head: scalar("lm_head_multiplier"),
            attention_in: scalar("attention_in_multiplier"),
            attention_out: scalar("attention_out_multiplier"),
            key: scalar("key_multiplier"),
            ssm_in: scalar("ssm_in_multiplier"),
            ssm_out: scalar("ssm_out_multiplier"),
            ssm: [ssm[0], ssm[1], ssm[2], ssm[3], ssm[4]],
            mlp: [mlp[0], mlp[1]],
        })
    }

    /// The factors of the q, k and v rows.
    pub fn qkv(&self) -> [f64; 3] {
        [
            self.attention_in,
            self.attention_in * self.key,
            self.attention_in,
        ]
    }
}

/// `value` (a Falcon-H1 config.json) with FalconH1Config's defaults where they differ from
/// Bamba's, whose mixer keys it shares: `mamba_d_ssm` 1024 when absent (the inner width;
/// null: `mamba_expand * hidden_size`), no gated norm, the norm before the gate where there
/// is one, RoPE base 1e5, and attention and MLP without biases whatever the file says. The
/// mixers clamp no step size (`time_step_limit` unread).
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    for (key, default) in [
        ("mamba_d_ssm", json!(1024)),
        ("mamba_rms_norm", json!(false)),
        ("mamba_norm_before_gate", json!(true)),
        ("rope_theta", json!(100000.0)),
    ] {
        fields.entry(key).or_insert(default);
    }
    anyhow::ensure!(
        fields.get("projectors_bias").and_then(Value::as_bool) != Some(true),
        "Falcon-H1 with projectors_bias is not supported"
    );
    let flag = |k: &str| fields.get(k).and_then(Value::as_bool).unwrap_or(false);
    // With the norm, mamba_ssm's norm-before-gate order (norm(y) * silu(z)) is not the one
    // kiln's mixer runs (norm(y * silu(z))).
    anyhow::ensure!(
        !(flag("mamba_rms_norm") && flag("mamba_norm_before_gate")),
        "Falcon-H1 with mamba_rms_norm and mamba_norm_before_gate is not supported"
    );
    fields.insert("attention_bias".into(), json!(false));
    fields.insert("mlp_bias".into(), json!(false));
    fields.remove("time_step_limit");
    Ok(value)
}

/// A Mamba-2 mixer beside a layer's attention.
pub struct ParallelMixer<B: Backend> {
    pub mixer: MambaMixer<B>,
    /// `out_proj`, the output multiplier folded in.
    pub out_proj: B::Tensor,
    /// The cache layer holding its states: `num_layers + i` for layer `i`, after the
    /// attention layers' keys and values.
    pub cache_layer: usize,
    /// The fused projection's columns that are attention's (q, k, v); the mixer's follow.
    pub attention_width: usize,
}

impl<B: Backend> ParallelMixer<B> {
    /// The mixer's output, projected, for its columns `zxbcdt` of the fused projection.
    pub fn forward(
        &self,
        be: &B,
        zxbcdt: &B::Tensor,
        cache: &mut B::KvCache,
        batch: &B::BatchMeta,
    ) -> Result<B::Tensor> {
        let params = self.mixer.params();
        let y = be.mamba_mixer(zxbcdt, &params, cache, self.cache_layer, batch)?;
        be.linear(&y, &self.out_proj, None)
    }
}

/// Layer `prefix`'s fused projection parts: q, k and v (this rank's `q_k_v` parts, scaled)
/// then the mixer's `in_proj` rows of heads `heads`, each piece (z, x, B, C, dt) scaled by
/// its multiplier times the input multiplier.
pub(super) fn projection_parts(
    q_k_v: Vec<Part>,
    prefix: &str,
    (hidden, mamba, scales): (usize, &MambaLayers, &FalconH1Scales),
    heads: &Range<usize>,
) -> Vec<Part> {
    let mut parts: Vec<Part> = q_k_v
        .into_iter()
        .zip(scales.qkv())
        .map(|(part, factor)| part.scaled(factor))
        .collect();
    let factors = scales.ssm.map(|f| f * scales.ssm_in);
    parts.extend(in_proj_parts(prefix, hidden, &mamba.shape, heads, factors));
    parts
}

/// Layer `prefix`'s mixer beside its attention, its heads `heads` (`attention_width`
/// columns of q, k and v before its own in the fused projection), for cache layer
/// `cache_layer`.
pub fn load_parallel_mixer<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    prefix: &str,
    (hidden, mamba, scales): (usize, &MambaLayers, &FalconH1Scales),
    heads: &Range<usize>,
    (attention_width, cache_layer): (usize, usize),
    dtype: DType,
) -> Result<ParallelMixer<B>> {
    let out = out_proj_part(prefix, hidden, &mamba.shape, heads).scaled(scales.ssm_out);
    Ok(ParallelMixer {
        mixer: load_mixer_params(be, src, prefix, mamba, heads, dtype)?,
        out_proj: load_stacked(be, src, &[out], dtype)?,
        cache_layer,
        attention_width,
    })
}

#[cfg(test)]
mod tests {
    use crate::model::config::{Architecture, ModelConfig};

    /// tiiuae/Falcon-H1-0.5B-Instruct's config.json (the keys kiln reads).
    fn falcon_h1_05b() -> String {
        r#"{"architectures": ["FalconH1ForCausalLM"], "model_type": "falcon_h1",
        "attention_in_multiplier": 1.0, "attention_out_multiplier": 0.9375,
        "embedding_multiplier": 5.656854249492381, "head_dim": 64, "hidden_size": 1024,
        "intermediate_size": 2048, "key_multiplier": 0.390625,
        "lm_head_multiplier": 0.0390625, "mamba_chunk_size": 128, "mamba_conv_bias": true,
        "mamba_d_conv": 4, "mamba_d_head": 64, "mamba_d_ssm": 1536, "mamba_d_state": 128,
        "mamba_expand": 2, "mamba_n_groups": 1, "mamba_n_heads": 24,
        "mamba_norm_before_gate": false, "mamba_proj_bias": false, "mamba_rms_norm": false,
        "max_position_embeddings": 16384,
        "mlp_multipliers": [0.8838834764831844, 0.5859375], "num_attention_heads": 8,
        "num_hidden_layers": 36, "num_key_value_heads": 2, "projectors_bias": false,
        "rms_norm_eps": 1e-05, "rope_theta": 100000000000.0, "ssm_in_multiplier": 1.25,
        "ssm_multipliers": [0.3535533905932738, 0.25, 0.3535533905932738, 0.5,
        0.3535533905932738], "ssm_out_multiplier": 0.23570226039551587,
        "tie_word_embeddings": false, "vocab_size": 32784}"#
            .to_string()
    }

    #[test]
    fn every_layer_attends_and_mixes_with_its_multipliers() {
        let c = ModelConfig::from_json(&falcon_h1_05b()).unwrap();
        assert_eq!(c.architecture, Architecture::FalconH1);
        let m = c.mamba.as_ref().unwrap();
        assert!(m.parallel && m.layers.iter().all(|&l| l));
        assert_eq!(
            (m.shape.inner(), m.shape.heads, m.shape.head_dim),
            (1536, 24, 64)
        );
        assert!(!m.shape.normed);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (8, 2, 64));
        let s = c.falcon_h1.as_ref().unwrap();
        assert_eq!(s.qkv(), [1.0, 0.390625, 1.0]);
        assert_eq!((s.ssm[3], s.mlp[1]), (0.5, 0.5859375));
        // Keys and values in every layer, a state per sequence in every layer too.
        assert_eq!(c.cache_layers(), 72);
        assert_eq!(c.cache_values_per_token(), 36 * 2 * 128);
        assert_eq!(c.state_slot_values(0), Some(m.shape.slot_values()));
        assert!(c.keeps_recurrent_state() && !c.mixer_only_layers());
        // TII counts Falcon-H1-0.5B as 0.52B parameters.
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 0.52).abs() < 0.01, "{billions}");
    }

    #[test]
    fn falcon_h1_config_defaults_and_refusals() {
        // FalconH1Config's defaults: d_ssm 1024 when absent, no gated norm.
        let text = falcon_h1_05b()
            .replace(r#""mamba_d_ssm": 1536, "#, "")
            .replace(r#""mamba_d_head": 64, "#, "")
            .replace(r#""mamba_n_heads": 24"#, r#""mamba_n_heads": 16"#)
            .replace(r#""mamba_rms_norm": false,"#, "");
        let c = ModelConfig::from_json(&text).unwrap();
        let sh = c.mamba.as_ref().unwrap().shape;
        assert_eq!((sh.inner(), sh.normed), (1024, false));
        // null: expand * hidden.
        let text = falcon_h1_05b()
            .replace(r#""mamba_d_ssm": 1536"#, r#""mamba_d_ssm": null"#)
            .replace(r#""mamba_n_heads": 24"#, r#""mamba_n_heads": 16"#)
            .replace(r#""mamba_d_head": 64"#, r#""mamba_d_head": "auto""#);
        let c = ModelConfig::from_json(&text).unwrap();
        assert_eq!(c.mamba.as_ref().unwrap().shape.inner(), 2048);
        let normed =
            falcon_h1_05b().replace(r#""mamba_rms_norm": false"#, r#""mamba_rms_norm": true"#);
        let c = ModelConfig::from_json(&normed).unwrap();
        assert!(c.mamba.as_ref().unwrap().shape.normed);
        for (from, to) in [
            (
                r#""mamba_norm_before_gate": false"#,
                r#""mamba_norm_before_gate": true"#,
            ),
            (r#""projectors_bias": false"#, r#""projectors_bias": true"#),
            (
                r#""mlp_multipliers": [0.8838834764831844, 0.5859375]"#,
                r#""mlp_multipliers": [0.88]"#,
            ),
        ] {
            let text = normed.replace(from, to);
            assert!(ModelConfig::from_json(&text).is_err(), "{to}");
        }
    }
}
