//! Qwen3-Next (`Qwen3NextForCausalLM`, Qwen3-Next-80B-A3B): three gated delta rule layers
//! ("linear attention", [`crate::backend::gated_delta`]) to one gated attention layer, each
//! before Qwen2-MoE's experts with a gated shared expert; every RMS norm but the mixers'
//! output norm scales by `1 + w`.
//!
//! The attention layer is Qwen3's (per-head q / k norms, a quarter of each head rotating)
//! whose `q_proj` also gives, head by head, a gate for its output: `attn * sigmoid(gate)`
//! before `o_proj`. kiln loads those gate rows after q / k / v in the fused projection and
//! splits them off ([`gate_parts`]).
//!
//! A mixer layer's `in_proj_qkvz` and `in_proj_ba` interleave their outputs key head by key
//! head; kiln loads them reordered into one projection (q, k, v, z, b, a: the layout the
//! backend op reads), which takes the fused q/k/v projection's place, and `out_proj` the
//! output projection's. The mixers keep a state per sequence, so these models run without
//! prefix caching or speculative decoding, as the Mamba models do. Their norm is per head,
//! so they shard: a tensor-parallel rank holds a range of value heads and the key heads
//! those read (a key head shared by several ranks when there are fewer key heads than
//! ranks), and its columns of `out_proj`, whose partial sums are all-reduced.

use super::config::layer_types_marking;
use super::llama::{cols_part, load, load_stacked, rows_part, Part};
use super::weights::WeightSource;
use crate::backend::gated_delta::{GatedDeltaParams, GatedDeltaShape};
use crate::backend::{Backend, DType};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::ops::Range;

/// Which layers are gated delta mixers, and their shape.
#[derive(Clone, Debug, PartialEq)]
pub struct GatedDeltaLayers {
    pub shape: GatedDeltaShape,
    pub layers: Vec<bool>,
}

impl GatedDeltaLayers {
    /// Whether layer `i` is a gated delta mixer.
    pub fn is_mixer(&self, i: usize) -> bool {
        self.layers.get(i).copied().unwrap_or(false)
    }

    /// A Qwen3-Next config's mixers (`linear_*` keys, Qwen3NextConfig's defaults):
    /// `layer_types` `linear_attention`, or all but every `full_attention_interval`-th.
    pub fn from_config(value: &Value, layers: usize) -> Result<Self> {
        let number =
            |k: &str, default: u64| value.get(k).and_then(Value::as_u64).unwrap_or(default);
        let marked = layer_types_marking(value, layers, "linear_attention")?;
        let interval = number("full_attention_interval", 4).max(1) as usize;
        let shape = GatedDeltaShape {
            k_heads: number("linear_num_key_heads", 16) as usize,
            v_heads: number("linear_num_value_heads", 32) as usize,
            k_dim: number("linear_key_head_dim", 128) as usize,
            v_dim: number("linear_value_head_dim", 128) as usize,
            taps: number("linear_conv_kernel_dim", 4) as usize,
            norm_eps: value
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
        };
        shape.validate()?;
        anyhow::ensure!(
            shape.taps >= 2,
            "linear_conv_kernel_dim {} must be at least 2",
            shape.taps
        );
        Ok(GatedDeltaLayers {
            shape,
            layers: marked
                .unwrap_or_else(|| (0..layers).map(|i| (i + 1) % interval != 0).collect()),
        })
    }
}

/// `value` (a Qwen3-Next config.json) with Qwen3NextConfig's defaults where kiln's loader
/// reads other models' keys: a quarter of each head rotating, heads of 256, the chosen
/// experts' weights renormalised.
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    for (key, default) in [
        ("partial_rotary_factor", json!(0.25)),
        ("head_dim", json!(256)),
        ("norm_topk_prob", json!(true)),
        ("num_experts", json!(512)),
        ("num_experts_per_tok", json!(10)),
        ("moe_intermediate_size", json!(512)),
        ("shared_expert_intermediate_size", json!(512)),
        ("rms_norm_eps", json!(1e-6)),
    ] {
        fields.entry(key).or_insert(default);
    }
    Ok(value)
}

/// One mixer's weights on this device (`dt_bias` and `a` in f32).
pub struct GatedDeltaMixer<B: Backend> {
    pub shape: GatedDeltaShape,
    pub conv_weight: B::Tensor,
    pub dt_bias: B::Tensor,
    pub a: B::Tensor,
    pub norm: B::Tensor,
}

impl<B: Backend> GatedDeltaMixer<B> {
    /// The parameters as the backend op takes them.
    pub fn params(&self) -> GatedDeltaParams<'_, B::Tensor> {
        GatedDeltaParams {
            shape: self.shape,
            conv_weight: &self.conv_weight,
            dt_bias: &self.dt_bias,
            a: &self.a,
            norm: &self.norm,
        }
    }
}

/// The in-projections a mixer's fused projection is cut from, by index in
/// [`in_proj_rows`]' pairs.
const IN_PROJ: [&str; 2] = ["in_proj_qkvz", "in_proj_ba"];

/// The rows of `in_proj_qkvz` (0) and `in_proj_ba` (1) a rank holding value heads `v_heads`
/// reads, in the order the backend op takes them: its key heads' q, then their k, then its
/// value heads' v, z, b and a. The checkpoint stores them key head by key head (each
/// group's q, k, then its value heads' v and z; b and a likewise).
fn in_proj_rows(sh: &GatedDeltaShape, v_heads: &Range<usize>) -> Vec<(usize, Range<usize>)> {
    let r = sh.heads_per_key();
    let (dk, dv) = (sh.k_dim, sh.v_dim);
    let (_, keys) = sh.shard(v_heads);
    let group = 2 * dk + 2 * r * dv;
    // Key head g's value heads this rank holds, counted within the group.
    let ours = |g: usize| v_heads.start.max(g * r) - g * r..v_heads.end.min((g + 1) * r) - g * r;
    // Per key head: the rows `at(g)` within its group of `size` rows of in-projection `t`.
    let pieces = |t: usize, size: usize, at: &dyn Fn(usize) -> Range<usize>| {
        keys.clone()
            .map(|g| {
                let rows = at(g);
                (t, g * size + rows.start..g * size + rows.end)
            })
            .collect::<Vec<_>>()
    };
    let mut rows = Vec::new();
    rows.extend(pieces(0, group, &|_| 0..dk));
    rows.extend(pieces(0, group, &|_| dk..2 * dk));
    for skip in [2 * dk, 2 * dk + r * dv] {
        let at = |g: usize| {
            let heads = ours(g);
            skip + heads.start * dv..skip + heads.end * dv
        };
        rows.extend(pieces(0, group, &at));
    }
    for skip in [0, r] {
        let at = |g: usize| {
            let heads = ours(g);
            skip + heads.start..skip + heads.end
        };
        rows.extend(pieces(1, 2 * r, &at));
    }
    rows
}

/// `rows` of `whole` stacked, in order.
fn gather_rows(
    whole: &[candle_core::Tensor],
    rows: impl IntoIterator<Item = (usize, Range<usize>)>,
) -> Result<candle_core::Tensor> {
    let pieces = rows
        .into_iter()
        .map(|(t, r)| whole[t].narrow(0, r.start, r.len()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(candle_core::Tensor::cat(&pieces, 0)?)
}

/// Layer `prefix`'s mixer (`{prefix}.linear_attn.*`) for a rank holding value heads
/// `v_heads` of the mixer of shape `sh`: its parameters (in its own, smaller shape), the
/// reordered in-projection (the layer's fused projection) and its columns of `out_proj`.
/// Each stored tensor is read once (an FP8 one expands once) and cut on the host.
pub fn load_mixer<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    prefix: &str,
    (hidden, sh, v_heads): (usize, &GatedDeltaShape, &Range<usize>),
    dtype: DType,
) -> Result<(GatedDeltaMixer<B>, B::Tensor, B::Tensor)> {
    let name = |n: &str| format!("{prefix}.linear_attn.{n}");
    let (local, keys) = sh.shard(v_heads);
    let r = sh.heads_per_key();
    let in_shapes = [
        [sh.k_heads * (2 * sh.k_dim + 2 * r * sh.v_dim), hidden],
        [sh.k_heads * 2 * r, hidden],
    ];
    let whole = IN_PROJ
        .iter()
        .zip(in_shapes)
        .map(|(n, shape)| src.tensor(&name(&format!("{n}.weight")), &shape, dtype))
        .collect::<Result<Vec<_>>>()?;
    let in_proj = be.upload(gather_rows(&whole, in_proj_rows(sh, v_heads))?)?;
    let (dk, dv) = (sh.k_dim, sh.v_dim);
    let out_cols = v_heads.start * dv..v_heads.end * dv;
    let out_part = cols_part(
        name("out_proj.weight"),
        vec![hidden, sh.value_dim()],
        out_cols,
    );
    let out_proj = load_stacked(be, src, &[out_part], dtype)?;
    // The convolution's channels: this rank's q, k and v.
    let key_dim = sh.key_dim();
    let conv = src
        .tensor(&name("conv1d.weight"), &[sh.conv_dim(), 1, sh.taps], dtype)?
        .reshape((sh.conv_dim(), sh.taps))?;
    let channels = [
        keys.start * dk..keys.end * dk,
        key_dim + keys.start * dk..key_dim + keys.end * dk,
        2 * key_dim + v_heads.start * dv..2 * key_dim + v_heads.end * dv,
    ];
    let kernel = gather_rows(&[conv], channels.map(|rows| (0, rows)))?;
    debug_assert_eq!(kernel.dims(), [local.conv_dim(), sh.taps]);
    // Per-head parameters in f32, as the kernels read them (the checkpoint's values rounded
    // to the model dtype first, as transformers holds them).
    let per_head = |n: &str| -> Result<candle_core::Tensor> {
        Ok(src
            .tensor(&name(n), &[sh.v_heads], dtype)?
            .narrow(0, v_heads.start, v_heads.len())?
            .to_dtype(candle_core::DType::F32)?)
    };
    let a = per_head("A_log")?.exp()?.neg()?;
    let mixer = GatedDeltaMixer {
        shape: local,
        conv_weight: be.upload(kernel)?,
        dt_bias: be.upload(per_head("dt_bias")?)?,
        a: be.upload(a)?,
        norm: load(be, src, &name("norm.weight"), &[sh.v_dim], dtype)?,
    };
    Ok((mixer, in_proj, out_proj))
}

/// The q rows (`gate` false) or the gate rows (true) of `q_proj`'s `suffix` (`weight`,
/// `bias`) for `heads`: Qwen3-Next's q_proj gives each head's q, then its gate.
pub(super) fn gate_parts(
    prefix: &str,
    suffix: &str,
    (hidden, head_dim, num_heads): (usize, usize, usize),
    heads: Range<usize>,
    gate: bool,
) -> Vec<Part> {
    let name = format!("{prefix}.self_attn.q_proj.{suffix}");
    let rows = 2 * head_dim * num_heads;
    let shape = if suffix == "bias" {
        vec![rows]
    } else {
        vec![rows, hidden]
    };
    heads
        .map(|h| {
            let start = 2 * head_dim * h + if gate { head_dim } else { 0 };
            rows_part(name.clone(), shape.clone(), start..start + head_dim)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Architecture, ModelConfig};

    /// Qwen3-Next-80B-A3B-Instruct's config.json, in the fields kiln reads.
    const QWEN3_NEXT_80B: &str = r#"{"architectures": ["Qwen3NextForCausalLM"],
        "model_type": "qwen3_next", "hidden_size": 2048, "intermediate_size": 5120,
        "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2,
        "head_dim": 256, "partial_rotary_factor": 0.25, "rope_theta": 10000000,
        "max_position_embeddings": 262144, "vocab_size": 151936, "rms_norm_eps": 1e-06,
        "tie_word_embeddings": false, "full_attention_interval": 4,
        "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
        "linear_num_key_heads": 16, "linear_num_value_heads": 32,
        "linear_value_head_dim": 128, "num_experts": 512, "num_experts_per_tok": 10,
        "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": true,
        "attention_bias": false}"#;

    #[test]
    fn qwen3_next_mixes_three_layers_in_four_and_gates_its_attention() {
        let c = ModelConfig::from_json(QWEN3_NEXT_80B).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3Next);
        let g = c.gated_delta.as_ref().unwrap();
        let attention: Vec<usize> = (0..48).filter(|&i| !g.is_mixer(i)).collect();
        assert_eq!(attention, (0..12).map(|i| 4 * i + 3).collect::<Vec<_>>());
        let s = g.shape;
        assert_eq!(
            (s.key_dim(), s.value_dim(), s.conv_dim()),
            (2048, 4096, 8192)
        );
        assert_eq!(s.projection_width(), 8192 + 4096 + 64);
        assert!(c.attention_output_gate && c.qk_norm && !c.qkv_bias);
        assert_eq!((c.head_dim, c.rotary_dim), (256, 64));
        let moe = c.moe.as_ref().unwrap();
        assert_eq!((moe.num_experts, moe.top_k), (512, 10));
        assert!(moe.shared_expert_gated && moe.normalize_top_k);
        assert!((0..48).all(|i| moe.is_sparse(i)));
        // Per token: 12 attention layers' K and V (2 heads of 256); per sequence, 36 states
        // of 32 x 128 x 128 and windows of 3 rows of 8192.
        assert_eq!(c.cache_values_per_token(), 12 * 2 * 512);
        assert_eq!(
            c.state_values_per_sequence(),
            36 * (32 * 128 * 128 + 3 * 8192)
        );
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 79.7).abs() < 0.5, "{billions}");
        let active = c.active_parameters() as f64 / 1e9;
        assert!((active - 3.9).abs() < 0.3, "{active}");
    }

    #[test]
    fn layer_types_override_the_interval() {
        let text = QWEN3_NEXT_80B.replace(
            r#""num_hidden_layers": 48"#,
            r#""num_hidden_layers": 3, "layer_types": ["full_attention", "linear_attention",
            "linear_attention"]"#,
        );
        let c = ModelConfig::from_json(&text).unwrap();
        assert_eq!(c.gated_delta.unwrap().layers, vec![false, true, true]);
        let odd = QWEN3_NEXT_80B.replace(
            r#""linear_num_value_heads": 32"#,
            r#""linear_num_value_heads": 24"#,
        );
        let err = ModelConfig::from_json(&odd).unwrap_err();
        assert!(format!("{err:#}").contains("value heads"), "{err:#}");
    }

    #[test]
    fn the_in_projection_is_reordered_key_head_by_key_head() {
        let sh = GatedDeltaShape {
            k_heads: 2,
            v_heads: 4,
            k_dim: 3,
            v_dim: 5,
            taps: 4,
            norm_eps: 1e-6,
        };
        let rows: Vec<(bool, Range<usize>)> = in_proj_rows(&sh, &(0..4))
            .into_iter()
            .map(|(t, r)| (t == 0, r))
            .collect();
        // Groups of 2 * 3 + 2 * 10 = 26 rows: q, k, v, z; of the ba rows groups of 4.
        assert_eq!(
            rows,
            vec![
                (true, 0..3),
                (true, 26..29),
                (true, 3..6),
                (true, 29..32),
                (true, 6..16),
                (true, 32..42),
                (true, 16..26),
                (true, 42..52),
                (false, 0..2),
                (false, 4..6),
                (false, 2..4),
                (false, 6..8),
            ]
        );
        let total: usize = rows.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(total, sh.projection_width());
        // Rank 1 of 2 holds key head 1 and its value heads 2 and 3.
        let rows = |v: Range<usize>| -> Vec<Range<usize>> {
            in_proj_rows(&sh, &v).into_iter().map(|(_, r)| r).collect()
        };
        assert_eq!(rows(2..4), vec![26..29, 29..32, 32..42, 42..52, 4..6, 6..8]);
        // Rank 3 of 4 holds value head 3 and the key head it shares with rank 2.
        assert_eq!(rows(3..4), vec![26..29, 29..32, 37..42, 47..52, 5..6, 7..8]);
        let (local, keys) = sh.shard(&(3..4));
        assert_eq!((local.k_heads, local.v_heads, keys), (1, 1, 1..2));
        let width: usize = in_proj_rows(&sh, &(3..4))
            .iter()
            .map(|(_, r)| r.len())
            .sum();
        assert_eq!(width, local.projection_width());
    }
}
