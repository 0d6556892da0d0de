//! Mamba-2 mixer layers of hybrid models: IBM's Bamba (`BambaForCausalLM`) and Granite 4.0
//! (`GraniteMoeHybridForCausalLM`, the "-H" models, dense or with experts beside the shared
//! MLP). A mixer layer takes the attention's
//! place before the layer's MLP: `in_proj` gives a gate z, the convolution's input x / B / C
//! and a step size per head; x / B / C is convolved causally over the last `d_conv` tokens
//! and SiLU'd, the state-space recurrence runs per head, and `out_proj` maps the gated,
//! RMS-normed result back. In the layer, `in_proj` takes the fused q/k/v projection's place
//! and `out_proj` the output projection's ([`crate::backend::Backend::mamba_mixer`] in
//! between); the recurrent state lives in the paged cache ([`crate::backend::mamba`]).

use super::config::layer_types_marking;
use super::llama::{cols_part, load_stacked, rows_part, Part};
use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};
use crate::backend::mamba::{MambaParams, MambaShape};
use crate::backend::{Backend, DType};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::ops::Range;

/// Which layers are mixers, and their shape.
#[derive(Clone, Debug, PartialEq)]
pub struct MambaLayers {
    pub shape: MambaShape,
    pub layers: Vec<bool>,
    pub conv_bias: bool,
    /// A pure Mamba-2 model (`Mamba2ForCausalLM`): each layer is its norm and mixer, no
    /// MLP.
    pub without_mlp: bool,
    /// Falcon-H1: each mixer runs beside its layer's attention instead of replacing it
    /// (`model/falcon_h1.rs`).
    pub parallel: bool,
}

impl MambaLayers {
    /// Whether layer `i` is a Mamba mixer.
    pub fn is_mamba(&self, i: usize) -> bool {
        self.layers.get(i).copied().unwrap_or(false)
    }

    /// Whether layer `i` is a mixer in place of attention (not beside it).
    pub fn replaces_attention(&self, i: usize) -> bool {
        self.is_mamba(i) && !self.parallel
    }

    /// The mixers of a Bamba, Granite 4.0 hybrid or Falcon-H1 config (`mamba_*` keys,
    /// transformers' defaults; `mamba_d_ssm`, where a number, overrides the inner width);
    /// `mixer_layers` marks the mixers.
    pub fn from_config(value: &Value, hidden: usize, mixer_layers: Vec<bool>) -> Result<Self> {
        let number =
            |k: &str, default: u64| value.get(k).and_then(Value::as_u64).unwrap_or(default);
        let flag =
            |k: &str, default: bool| value.get(k).and_then(Value::as_bool).unwrap_or(default);
        anyhow::ensure!(
            !flag("mamba_proj_bias", false),
            "Mamba layers with projection biases (mamba_proj_bias) are not supported"
        );
        let expand = value
            .get("mamba_expand")
            .and_then(Value::as_f64)
            .unwrap_or(2.0);
        let inner = value
            .get("mamba_d_ssm")
            .and_then(Value::as_u64)
            .map_or((expand * hidden as f64) as usize, |d| d as usize);
        let heads = number("mamba_n_heads", 128) as usize;
        anyhow::ensure!(
            heads > 0 && inner.is_multiple_of(heads),
            "mamba_n_heads ({heads}) must divide the inner width {inner}"
        );
        // "auto" (or absent): the inner width split over the heads.
        let head_dim = value
            .get("mamba_d_head")
            .and_then(Value::as_u64)
            .map_or(inner / heads, |d| d as usize);
        anyhow::ensure!(
            head_dim * heads == inner,
            "mamba_d_head ({head_dim}) times mamba_n_heads ({heads}) is not the inner width \
             {inner}"
        );
        let eps = value
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-6) as f32;
        let groups = number("mamba_n_groups", 1) as usize;
        anyhow::ensure!(
            groups > 0 && inner.is_multiple_of(groups),
            "mamba_n_groups ({groups}) must divide the inner width {inner}"
        );
        // `time_step_limit` (Mamba2Config; Bamba's and Granite's mixers fix it at (0, inf)).
        let limit = value.get("time_step_limit").and_then(Value::as_array);
        let bound = |i: usize, default: f32| {
            limit
                .and_then(|l| l.get(i))
                .and_then(Value::as_f64)
                .map_or(default, |v| v as f32)
        };
        let (dt_min, dt_max) = (bound(0, 0.0), bound(1, f32::INFINITY));
        anyhow::ensure!(
            dt_min <= dt_max,
            "time_step_limit [{dt_min}, {dt_max}] is empty"
        );
        let shape = MambaShape {
            heads,
            head_dim,
            state: number("mamba_d_state", 256) as usize,
            groups,
            taps: number("mamba_d_conv", 4) as usize,
            // The gated norm averages over each B / C group's share of the inner width, as
            // mamba_ssm's fused kernel (the checkpoints' training, transformers' CUDA path,
            // vLLM) does; transformers' eager path averages over the whole width, which is
            // the same for one group.
            norm_group: inner / groups,
            normed: flag("mamba_rms_norm", true),
            norm_eps: eps,
            dt_min,
            dt_max,
        };
        shape.validate()?;
        Ok(MambaLayers {
            shape,
            layers: mixer_layers,
            conv_bias: flag("mamba_conv_bias", true),
            without_mlp: false,
            parallel: false,
        })
    }
}

/// One mixer's weights on this device (`dt_bias`, `a` and `d` in f32).
pub struct MambaMixer<B: Backend> {
    pub shape: MambaShape,
    pub conv_weight: B::Tensor,
    pub conv_bias: Option<B::Tensor>,
    pub dt_bias: B::Tensor,
    pub a: B::Tensor,
    pub d: B::Tensor,
    pub norm: B::Tensor,
}

impl<B: Backend> MambaMixer<B> {
    /// The parameters as the backend op takes them.
    pub fn params(&self) -> MambaParams<'_, B::Tensor> {
        MambaParams {
            shape: self.shape,
            conv_weight: &self.conv_weight,
            conv_bias: self.conv_bias.as_ref(),
            dt_bias: &self.dt_bias,
            a: &self.a,
            d: &self.d,
            norm: &self.norm,
        }
    }
}

/// Layer `prefix`'s mixer (`{prefix}.mamba.*`), its heads `heads` (all of them, or a
/// tensor-parallel rank's): its parameters, `in_proj` (the layer's fused projection) and
/// `out_proj` scaled by `out_scale` (Granite's residual multiplier).
pub fn load_mixer<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    prefix: &str,
    (hidden, mamba): (usize, &MambaLayers),
    heads: &Range<usize>,
    out_scale: f64,
    dtype: DType,
) -> Result<(MambaMixer<B>, B::Tensor, B::Tensor)> {
    let parts = in_proj_parts(prefix, hidden, &mamba.shape, heads, [1.0; 5]);
    let in_proj = load_stacked(be, src, &parts, dtype)?;
    let out_proj = load_stacked(
        be,
        src,
        &[out_proj_part(prefix, hidden, &mamba.shape, heads).scaled(out_scale)],
        dtype,
    )?;
    let mixer = load_mixer_params(be, src, prefix, mamba, heads, dtype)?;
    Ok((mixer, in_proj, out_proj))
}

/// The `in_proj` rows of heads `heads` of layer `prefix`'s mixer (full shape `sh`) and the
/// B / C groups they read, each piece (z, x, B, C, dt) scaled by its factor; one part for
/// the whole unscaled projection.
pub(super) fn in_proj_parts(
    prefix: &str,
    hidden: usize,
    sh: &MambaShape,
    heads: &Range<usize>,
    factors: [f64; 5],
) -> Vec<Part> {
    let name = format!("{prefix}.mamba.in_proj.weight");
    let shape = vec![sh.projection_width(), hidden];
    if heads.len() == sh.heads && factors == [1.0; 5] {
        return vec![rows_part(name, shape, 0..sh.projection_width())];
    }
    let (_, groups) = sh.shard(heads);
    sh.projection_rows(heads, &groups)
        .into_iter()
        .zip(factors)
        .map(|(rows, factor)| rows_part(name.clone(), shape.clone(), rows).scaled(factor))
        .collect()
}

/// The `out_proj` columns of heads `heads` of layer `prefix`'s mixer (full shape `sh`).
pub(super) fn out_proj_part(
    prefix: &str,
    hidden: usize,
    sh: &MambaShape,
    heads: &Range<usize>,
) -> Part {
    cols_part(
        format!("{prefix}.mamba.out_proj.weight"),
        vec![hidden, sh.inner()],
        heads.start * sh.head_dim..heads.end * sh.head_dim,
    )
}

/// Layer `prefix`'s mixer parameters (`{prefix}.mamba.*` but the projections) for heads
/// `heads` and the groups they read; a norm weight of ones where the mixer has no norm
/// (unread).
pub fn load_mixer_params<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    prefix: &str,
    mamba: &MambaLayers,
    heads: &Range<usize>,
    dtype: DType,
) -> Result<MambaMixer<B>> {
    let full = mamba.shape;
    let (sh, groups) = full.shard(heads);
    let name = |n: &str| format!("{prefix}.mamba.{n}");
    let channels = full.conv_channels(heads, &groups);
    // This rank's x, B and C channels of a `[conv_dim, ..]` tensor, read on the host.
    let channel_rows = |n: &str, shape: Vec<usize>| -> Result<candle_core::Tensor> {
        let parts: Vec<candle_core::Tensor> = channels
            .iter()
            .map(|rows| rows_part(name(n), shape.clone(), rows.clone()).read(src, dtype))
            .collect::<Result<_>>()?;
        Ok(candle_core::Tensor::cat(&parts, 0)?)
    };
    let kernel = channel_rows("conv1d.weight", vec![full.conv_dim(), 1, full.taps])?
        .reshape((sh.conv_dim(), sh.taps))?;
    let conv_bias = if mamba.conv_bias {
        Some(be.upload(channel_rows("conv1d.bias", vec![full.conv_dim()])?)?)
    } else {
        None
    };
    // Per-head parameters in f32, as the kernels read them (the checkpoint's values rounded
    // to the model dtype first, as transformers holds them).
    let per_head = |n: &str| -> Result<candle_core::Tensor> {
        Ok(rows_part(name(n), vec![full.heads], heads.clone())
            .read(src, dtype)?
            .to_dtype(candle_core::DType::F32)?)
    };
    let a = per_head("A_log")?.exp()?.neg()?;
    let norm = if sh.normed {
        let part = rows_part(name("norm.weight"), vec![full.inner()], channels[0].clone());
        load_stacked(be, src, &[part], dtype)?
    } else {
        be.upload(candle_core::Tensor::ones(
            sh.inner(),
            dtype.to_candle(),
            &candle_core::Device::Cpu,
        )?)?
    };
    Ok(MambaMixer {
        shape: sh,
        conv_weight: be.upload(kernel)?,
        conv_bias,
        dt_bias: be.upload(per_head("dt_bias")?)?,
        a: be.upload(a)?,
        d: be.upload(per_head("D")?)?,
        norm,
    })
}

/// `value` (a Bamba config.json) as kiln's loader reads it: BambaConfig fixes its rotary
/// (base 10000, no scaling, half of each head rotated) whatever the file says.
pub fn normalized_bamba_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    fields.insert("rope_theta".into(), json!(10000.0));
    fields.insert("rope_scaling".into(), Value::Null);
    fields.insert("partial_rotary_factor".into(), json!(0.5));
    Ok(value)
}

/// Bamba's mixer layers: all but `attn_layer_indices`.
pub fn bamba_layers(value: &Value, layers: usize) -> Vec<bool> {
    let attention: Vec<u64> = value
        .get("attn_layer_indices")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    (0..layers)
        .map(|i| !attention.contains(&(i as u64)))
        .collect()
}

/// `value` (a Granite 4.0 hybrid config.json) as kiln's loader reads it: without experts
/// (`num_local_experts` 0) the shared MLP is the layer's dense MLP, `shared_intermediate_size`
/// wide; with them it is the experts' shared expert (the experts `intermediate_size` wide).
pub fn normalized_granite_hybrid_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    let experts = fields
        .get("num_local_experts")
        .and_then(Value::as_u64)
        .unwrap_or(8);
    let shared = fields
        .get("shared_intermediate_size")
        .and_then(Value::as_u64)
        .unwrap_or(1024);
    if experts == 0 {
        fields.insert("intermediate_size".into(), json!(shared));
    } else {
        fields.insert("shared_expert_intermediate_size".into(), json!(shared));
    }
    fields.entry("rms_norm_eps").or_insert(json!(1e-6));
    Ok(value)
}

/// Granite 4.0 hybrid's mixer layers: `layer_types` `mamba` (every layer without it).
pub fn granite_hybrid_layers(value: &Value, layers: usize) -> Result<Vec<bool>> {
    Ok(layer_types_marking(value, layers, "mamba")?.unwrap_or_else(|| vec![true; layers]))
}

/// Whether a Granite 4.0 hybrid config rotates its attention (`position_embedding_type`
/// `rope`; the released models use none).
pub fn granite_hybrid_rotates(value: &Value) -> bool {
    value.get("position_embedding_type").and_then(Value::as_str) == Some("rope")
}

/// `value` (a Mamba2Config config.json: Mamba-Codestral, the mamba2 models in transformers'
/// format) in the names kiln's loader reads: the mixer's keys as `mamba_*`, its norm's
/// epsilon as `rms_norm_eps`, no MLP (`intermediate_size` 0); attention keys it has none of
/// are filled so the config parses (no layer attends). A context length, which a recurrent
/// model does not have, defaults to 131072 tokens (`--max-model-len` sets it).
pub fn normalized_mamba2_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    anyhow::ensure!(
        fields.get("rms_norm").and_then(Value::as_bool) != Some(false),
        "Mamba-2 without its gated RMS norm (rms_norm false) is not supported"
    );
    // Mamba2Config's defaults.
    for (from, to, default) in [
        ("num_heads", "mamba_n_heads", json!(128)),
        ("head_dim", "mamba_d_head", json!(64)),
        ("n_groups", "mamba_n_groups", json!(8)),
        ("state_size", "mamba_d_state", json!(128)),
        ("conv_kernel", "mamba_d_conv", json!(4)),
        ("expand", "mamba_expand", json!(2)),
        ("use_conv_bias", "mamba_conv_bias", json!(true)),
        ("use_bias", "mamba_proj_bias", json!(false)),
        ("layer_norm_epsilon", "rms_norm_eps", json!(1e-5)),
    ] {
        let v = fields.get(from).cloned().unwrap_or(default);
        fields.insert(to.into(), v);
    }
    for (key, default) in [
        ("vocab_size", json!(32768)),
        ("hidden_size", json!(4096)),
        ("num_hidden_layers", json!(64)),
        ("max_position_embeddings", json!(131072)),
        ("tie_word_embeddings", json!(false)),
    ] {
        fields.entry(key).or_insert(default);
    }
    let heads = fields["mamba_n_heads"].clone();
    fields.insert("num_attention_heads".into(), heads.clone());
    fields.insert("num_key_value_heads".into(), heads);
    fields.insert("intermediate_size".into(), json!(0));
    Ok(value)
}

/// A pure Mamba-1 or Mamba-2 checkpoint (`backbone.*`) under the loader's names. Its layers have one
/// norm, which also stands in for the (unread) norm after the mixer.
pub struct Mamba2Weights;

impl Mamba2Weights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        RenamedWeights::new(inner, |name| match layer_part(name) {
            Some((index, part)) => format!(
                "backbone.layers.{index}.{}",
                renamed_part(part, &MAMBA2_RENAMED)
            ),
            None => match name {
                "model.embed_tokens.weight" => "backbone.embeddings.weight".to_string(),
                "model.norm.weight" => "backbone.norm_f.weight".to_string(),
                _ => name.to_string(),
            },
        })
    }
}

/// A pure Mamba-2 layer's names.
const MAMBA2_RENAMED: [(&str, &str); 3] = [
    ("input_layernorm.", "norm."),
    ("post_attention_layernorm.", "norm."),
    ("mamba.", "mixer."),
];

/// Bamba's names of a layer's weights (the loader's first).
const BAMBA_RENAMED: [(&str, &str); 2] = [
    ("mlp.", "feed_forward."),
    ("post_attention_layernorm.", "pre_ff_layernorm."),
];

/// Jamba's: Bamba's, its router named `router`.
const JAMBA_RENAMED: [(&str, &str); 3] = [
    ("mlp.gate.", "feed_forward.router."),
    ("mlp.", "feed_forward."),
    ("post_attention_layernorm.", "pre_ff_layernorm."),
];

/// Granite 4.0 hybrid's: the shared MLP's fused gate/up and its down projection.
const GRANITE_HYBRID_RENAMED: [(&str, &str); 2] = [
    ("mlp.gate_up_proj.", "shared_mlp.input_linear."),
    ("mlp.down_proj.", "shared_mlp.output_linear."),
];

/// A Bamba checkpoint under the loader's names (its final norm is `model.final_layernorm`).
pub struct BambaWeights;

impl BambaWeights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        Self::wrap_with(inner, &BAMBA_RENAMED)
    }

    /// A Jamba checkpoint: Bamba's names, and its experts' router.
    pub fn wrap_jamba<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        Self::wrap_with(inner, &JAMBA_RENAMED)
    }

    fn wrap_with<S: WeightSource>(
        inner: S,
        table: &'static [(&'static str, &'static str)],
    ) -> RenamedWeights<S> {
        RenamedWeights::new(inner, move |name| match layer_part(name) {
            Some((index, part)) => {
                format!("model.layers.{index}.{}", renamed_part(part, table))
            }
            None if name == "model.norm.weight" => "model.final_layernorm.weight".to_string(),
            None => name.to_string(),
        })
    }
}

/// A Granite 4.0 hybrid checkpoint under the loader's names.
pub struct GraniteHybridWeights;

impl GraniteHybridWeights {
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        RenamedWeights::new(inner, |name| match layer_part(name) {
            Some((index, part)) => format!(
                "model.layers.{index}.{}",
                renamed_part(part, &GRANITE_HYBRID_RENAMED)
            ),
            None => name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Architecture, ModelConfig};

    /// A Granite 4.0 hybrid config shaped like Granite-4.0-H-1B (36 mixers of 48 heads
    /// around 4 attention layers, tied embeddings), with the fields kiln reads; the MLP
    /// width and multipliers are this test's.
    fn granite_h_1b() -> String {
        let mut types = vec!["mamba"; 40];
        for i in [5, 15, 25, 35] {
            types[i] = "attention";
        }
        format!(
            r#"{{"architectures": ["GraniteMoeHybridForCausalLM"], "hidden_size": 1536,
            "num_hidden_layers": 40, "vocab_size": 100352, "max_position_embeddings": 131072,
            "num_attention_heads": 12, "num_key_value_heads": 4, "num_local_experts": 0,
            "shared_intermediate_size": 4096, "position_embedding_type": "nope",
            "tie_word_embeddings": true,
            "embedding_multiplier": 12.0, "attention_multiplier": 0.0078125,
            "residual_multiplier": 0.246, "logits_scaling": 6.0, "rms_norm_eps": 1e-05,
            "mamba_n_heads": 48, "mamba_d_state": 128, "mamba_n_groups": 1,
            "mamba_d_conv": 4, "mamba_expand": 2, "mamba_d_head": "auto",
            "mamba_chunk_size": 256, "mamba_conv_bias": true, "mamba_proj_bias": false,
            "layer_types": {}}}"#,
            serde_json::to_string(&types).unwrap()
        )
    }

    #[test]
    fn a_granite_hybrid_config_marks_its_mixers_and_rotates_nothing() {
        let c = ModelConfig::from_json(&granite_h_1b()).unwrap();
        assert_eq!(c.architecture, Architecture::GraniteMoeHybrid);
        assert_eq!(c.intermediate_size, 4096, "the shared MLP is the dense MLP");
        let m = c.mamba.as_ref().unwrap();
        let attention: Vec<usize> = (0..40).filter(|&i| !m.is_mamba(i)).collect();
        assert_eq!(attention, vec![5, 15, 25, 35]);
        // "auto": the inner width 3072 over 48 heads.
        assert_eq!((m.shape.heads, m.shape.head_dim), (48, 64));
        assert_eq!(m.shape.conv_dim(), 3072 + 2 * 128);
        assert_eq!(m.shape.projection_width(), 3072 + 3328 + 48);
        assert_eq!(m.shape.norm_group, 3072);
        assert!(m.conv_bias);
        assert_eq!(c.rope_layers.as_deref(), Some(&[false; 40][..]));
        assert!(c.granite.is_some());
        // Per token: 4 attention layers' K and V (4 heads of 128), nothing for the mixers;
        // per sequence, 36 states of 48 x 64 x 128 and windows of 3 rows of 3328.
        assert_eq!(c.cache_values_per_token(), 4 * 2 * 512);
        assert_eq!(
            c.state_values_per_sequence(),
            36 * (48 * 64 * 128 + 3 * 3328)
        );
        // Per mixer layer: in_proj 1536 x 6448, the kernel and bias 3328 x 5, dt_bias / A /
        // D, the norm, out_proj, an MLP of 3 x 1536 x 4096 and two norms; per attention
        // layer q / k / v / o (1536 + 2 x 512 + 1536 wide), the same MLP and norms; the
        // tied embedding and the final norm.
        let mixer = 1536 * 6448 + 3328 * 5 + 3 * 48 + 3072 + 3072 * 1536;
        let mlp_norms = 3 * 1536 * 4096 + 2 * 1536;
        let attention = 1536 * (1536 + 2 * 512) + 1536 * 1536;
        let expected =
            36 * (mixer + mlp_norms) + 4 * (attention + mlp_norms) + 100352 * 1536 + 1536;
        assert_eq!(c.num_parameters(), expected as u64);
    }

    #[test]
    fn the_plan_counts_one_state_per_sequence() {
        let c = ModelConfig::from_json(&granite_h_1b()).unwrap();
        let cache = |seqs: usize| {
            crate::plan::estimate(&crate::plan::PlanInput {
                config: &c,
                dtype: crate::backend::DType::BF16,
                max_model_len: 4096,
                max_num_seqs: seqs,
                max_num_batched_tokens: 2048,
            })
        };
        let rows = 4 * 2 * 512 * 2;
        let states = 36 * (48 * 64 * 128 + 3 * 3328) * 4;
        assert_eq!(cache(1).kv_per_token, rows);
        assert_eq!(cache(8).kv_cache, 8 * (4096 * rows + states));
    }

    #[test]
    fn a_granite_moe_hybrid_routes_experts_beside_its_shared_mlp() {
        // Shaped like Granite-4.0-H-Tiny: 64 experts of 512, top 6, a shared MLP of 1024.
        let text = granite_h_1b()
            .replace(
                r#""num_local_experts": 0"#,
                r#""num_local_experts": 64, "num_experts_per_tok": 6, "intermediate_size": 512"#,
            )
            .replace(
                r#""shared_intermediate_size": 4096"#,
                r#""shared_intermediate_size": 1024"#,
            );
        let c = ModelConfig::from_json(&text).unwrap();
        let moe = c.moe.as_ref().unwrap();
        let shape = (moe.num_experts, moe.top_k, moe.expert_intermediate_size);
        assert_eq!(shape, (64, 6, 512));
        assert_eq!(moe.shared_expert_intermediate_size, Some(1024));
        assert!(!moe.shared_expert_gated && moe.normalize_top_k);
        assert!((0..40).all(|i| moe.is_sparse(i)));
    }

    /// Mamba-Codestral-7B's config in the fields kiln reads, as transformers writes it
    /// (Python's `Infinity` in `time_step_limit`).
    const MAMBA_CODESTRAL: &str = r#"{"architectures": ["Mamba2ForCausalLM"],
        "model_type": "mamba2", "hidden_size": 4096, "num_hidden_layers": 64,
        "vocab_size": 32768, "num_heads": 128, "head_dim": 64, "n_groups": 8,
        "state_size": 128, "expand": 2, "conv_kernel": 4, "use_bias": false,
        "use_conv_bias": true, "layer_norm_epsilon": 1e-05, "rms_norm": true,
        "residual_in_fp32": true, "time_step_limit": [0.0, Infinity],
        "tie_word_embeddings": false}"#;

    #[test]
    fn a_pure_mamba2_config_is_all_mixers_without_mlps() {
        let c = ModelConfig::from_json(MAMBA_CODESTRAL).unwrap();
        assert_eq!(c.architecture, Architecture::Mamba2);
        let m = c.mamba.as_ref().unwrap();
        assert!(m.without_mlp && (0..64).all(|i| m.is_mamba(i)));
        let s = m.shape;
        assert_eq!((s.heads, s.head_dim, s.state, s.groups), (128, 64, 128, 8));
        assert_eq!((s.dt_min, s.dt_max), (0.0, f32::INFINITY));
        assert_eq!(s.norm_group, 1024);
        assert_eq!(c.intermediate_size, 0);
        // Nothing per token; per sequence each layer's state and 3-row window.
        assert_eq!(c.cache_values_per_token(), 0);
        assert_eq!(
            c.state_values_per_sequence(),
            64 * (8192 * 128 + 3 * (8192 + 2 * 8 * 128))
        );
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 7.29).abs() < 0.05, "{billions}");
        let clamped = MAMBA_CODESTRAL.replace("[0.0, Infinity]", "[0.001, 0.1]");
        let s = ModelConfig::from_json(&clamped)
            .unwrap()
            .mamba
            .unwrap()
            .shape;
        assert_eq!((s.dt_min, s.dt_max), (0.001, 0.1));
    }

    #[test]
    fn weights_take_mamba2_names() {
        let src = Mamba2Weights::wrap(crate::model::weights::DummyWeights { seed: 0 });
        let name = |n: &str| src.stored_name(n);
        assert_eq!(
            name("model.embed_tokens.weight"),
            "backbone.embeddings.weight"
        );
        assert_eq!(name("model.norm.weight"), "backbone.norm_f.weight");
        assert_eq!(
            name("model.layers.7.input_layernorm.weight"),
            "backbone.layers.7.norm.weight"
        );
        assert_eq!(
            name("model.layers.7.mamba.in_proj.weight"),
            "backbone.layers.7.mixer.in_proj.weight"
        );
        assert_eq!(name("lm_head.weight"), "lm_head.weight");
    }

    #[test]
    fn groups_split_the_gated_norm() {
        let text = granite_h_1b().replace(r#""mamba_n_groups": 1"#, r#""mamba_n_groups": 8"#);
        let c = ModelConfig::from_json(&text).unwrap();
        let shape = c.mamba.unwrap().shape;
        assert_eq!((shape.groups, shape.norm_group), (8, 384));
        assert_eq!(shape.conv_dim(), 3072 + 2 * 8 * 128);
    }

    #[test]
    fn granite_hybrids_with_projection_biases_or_odd_heads_are_refused() {
        for (from, to, says) in [
            (
                r#""mamba_proj_bias": false"#,
                r#""mamba_proj_bias": true"#,
                "mamba_proj_bias",
            ),
            (
                r#""mamba_n_heads": 48"#,
                r#""mamba_n_heads": 45"#,
                "mamba_n_heads",
            ),
        ] {
            let err = ModelConfig::from_json(&granite_h_1b().replace(from, to)).unwrap_err();
            assert!(format!("{err:#}").contains(says), "{err:#}");
        }
    }

    #[test]
    fn bamba_mixes_all_but_its_attention_layers_and_fixes_its_rotary() {
        let c = ModelConfig::from_json(
            r#"{"architectures": ["BambaForCausalLM"], "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-05,
            "attn_layer_indices": [9, 18, 27], "mamba_n_heads": 128, "mamba_d_head": 64,
            "mamba_n_groups": 1, "mamba_d_state": 128, "mamba_d_conv": 4, "mamba_expand": 2,
            "rope_theta": 500000.0, "max_position_embeddings": 262144}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Bamba);
        let m = c.mamba.as_ref().unwrap();
        let attention: Vec<usize> = (0..32).filter(|&i| !m.is_mamba(i)).collect();
        assert_eq!(attention, vec![9, 18, 27]);
        // BambaConfig rotates half of each head with base 10000 whatever the file says.
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rotary_dim, 64);
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 9.4).abs() < 0.5, "{billions}");
    }

    #[test]
    fn weights_take_bamba_and_granite_hybrid_names() {
        let dummy = || crate::model::weights::DummyWeights { seed: 0 };
        let bamba = BambaWeights::wrap(dummy());
        assert_eq!(
            bamba.stored_name("model.layers.3.mlp.down_proj.weight"),
            "model.layers.3.feed_forward.down_proj.weight"
        );
        assert_eq!(
            bamba.stored_name("model.layers.3.post_attention_layernorm.weight"),
            "model.layers.3.pre_ff_layernorm.weight"
        );
        assert_eq!(
            bamba.stored_name("model.layers.0.mamba.A_log"),
            "model.layers.0.mamba.A_log"
        );
        assert_eq!(
            bamba.stored_name("model.norm.weight"),
            "model.final_layernorm.weight"
        );
        let granite = GraniteHybridWeights::wrap(dummy());
        assert_eq!(
            granite.stored_name("model.layers.1.mlp.gate_up_proj.weight"),
            "model.layers.1.shared_mlp.input_linear.weight"
        );
        assert_eq!(
            granite.stored_name("model.layers.1.mlp.down_proj.weight"),
            "model.layers.1.shared_mlp.output_linear.weight"
        );
    }
}
