//! DeepSeek's multi-head latent attention (MLA), run decompressed.
//!
//! MLA projects each token's keys and values through a small latent vector (`kv_lora_rank`
//! values) and gives every head two parts: `qk_nope_head_dim` values decompressed from the
//! latent per head, and `qk_rope_head_dim` rotated values of one key all heads share. kiln
//! decompresses the keys and values as they are computed and caches them as ordinary heads,
//! so the paged cache, the attention kernels and tensor parallelism are the ones every other
//! model runs. The price is cache size: `2 * heads * head_dim` values per token and layer
//! where the latent form needs `kv_lora_rank + qk_rope_head_dim`.
//!
//! The layout is chosen at load, by rearranging weight rows, so that the forward pass needs
//! one op of its own ([`Backend::join_heads`]):
//! - each head is `[rope part, nope part]` (a consistent permutation of q's and k's values
//!   leaves their products unchanged), so the rotation is the usual partial rotary over
//!   each head's first `qk_rope_head_dim` values;
//! - the rope rows of q and k are de-interleaved: DeepSeek rotates adjacent pairs, and
//!   rotating pairs `(i, i + d/2)` of the de-interleaved rows computes the same values;
//! - values are padded with zero rows to the key's head size (the cache holds one size),
//!   and the output projection gets zero columns where the padding lands;
//! - YaRN's softmax scale (`mscale(factor, mscale_all_dim)^2`) is folded into q's rows.

use super::config::ModelConfig;
use super::llama::{cols_part, rows_part, Part};
use super::weights::WeightSource;
use crate::backend::{Backend, DType};
use crate::parallel::ShardLayout;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

/// The q / kv latent norms' epsilon: DeepSeek builds them with its RMS norm's default, not
/// the config's `rms_norm_eps`.
const LATENT_NORM_EPS: f64 = 1e-6;

/// MLA's dimensions, from config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// The rank of q's low-rank projection (`q_a_proj`, a norm, `q_b_proj`); none when q is
    /// projected directly (V2-Lite).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// Multiplies the attention scores on top of `qk_head_dim^-0.5`: YaRN's
    /// `mscale(factor, mscale_all_dim)^2`, or 1.
    pub score_scale: f64,
}

#[derive(Deserialize)]
struct RawMla {
    #[serde(default)]
    q_lora_rank: Option<usize>,
    kv_lora_rank: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    rope_interleave: Option<bool>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
}

impl MlaConfig {
    /// A DeepSeek config's attention dimensions (the config classes' defaults where it is
    /// silent, as transformers 4.57 has them).
    pub fn from_value(value: &serde_json::Value) -> Result<MlaConfig> {
        let raw = RawMla::deserialize(value).context("DeepSeek attention fields")?;
        anyhow::ensure!(
            raw.attention_bias != Some(true),
            "DeepSeek attention with biases (attention_bias) is not supported"
        );
        // V3 names it; V2 always rotates pairs. kiln's load handles interleaved rows only.
        anyhow::ensure!(
            raw.rope_interleave != Some(false),
            "DeepSeek with rope_interleave false is not supported"
        );
        let config = MlaConfig {
            q_lora_rank: raw.q_lora_rank.filter(|&r| r > 0),
            kv_lora_rank: raw.kv_lora_rank.unwrap_or(512),
            qk_nope_head_dim: raw.qk_nope_head_dim.unwrap_or(128),
            qk_rope_head_dim: raw.qk_rope_head_dim.unwrap_or(64),
            v_head_dim: raw.v_head_dim.unwrap_or(128),
            score_scale: yarn_score_scale(raw.rope_scaling.as_ref()),
        };
        anyhow::ensure!(
            config.kv_lora_rank > 0
                && config.qk_rope_head_dim > 0
                && config.qk_rope_head_dim.is_multiple_of(2)
                && config.v_head_dim > 0,
            "DeepSeek attention dimensions must be positive, the rotary one even: {config:?}"
        );
        anyhow::ensure!(
            config.v_head_dim <= config.qk_head_dim(),
            "v_head_dim {} above qk_nope_head_dim + qk_rope_head_dim {} is not supported",
            config.v_head_dim,
            config.qk_head_dim()
        );
        Ok(config)
    }

    /// The size of a q or k head, which the cache and the attention use for v too.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Parameters of one layer's attention with `heads` heads on `hidden` values.
    pub fn parameters(&self, hidden: usize, heads: usize) -> u64 {
        let (h, n) = (hidden as u64, heads as u64);
        let q_out = n * self.qk_head_dim() as u64;
        let q = match self.q_lora_rank {
            Some(r) => h * r as u64 + r as u64 + r as u64 * q_out,
            None => h * q_out,
        };
        let kv_lora = self.kv_lora_rank as u64;
        let kv_a = h * (kv_lora + self.qk_rope_head_dim as u64) + kv_lora;
        let kv_b = kv_lora * n * (self.qk_nope_head_dim + self.v_head_dim) as u64;
        let o = n * self.v_head_dim as u64 * h;
        q + kv_a + kv_b + o
    }
}

/// DeepSeek's YaRN softmax scale: `(0.1 mscale_all_dim ln(factor) + 1)^2` when the config
/// names `mscale_all_dim` and a factor above 1.
fn yarn_score_scale(scaling: Option<&serde_json::Value>) -> f64 {
    let Some(s) = scaling else { return 1.0 };
    let number = |key: &str| s.get(key).and_then(|v| v.as_f64());
    match (number("factor"), number("mscale_all_dim")) {
        (Some(factor), Some(all)) if factor > 1.0 && all != 0.0 => {
            (0.1 * all * factor.ln() + 1.0).powi(2)
        }
        _ => 1.0,
    }
}

/// One layer's latent attention weights on this rank (its heads). The q projection (or q's
/// down projection) and the kv down projection are stacked into the layer's `qkv` weight,
/// since both read the normed hidden state; these are what comes after.
pub struct LatentAttention<B: Backend> {
    /// `q_a_layernorm` and `q_b_proj` (rows rearranged, see the module doc), for a low-rank q.
    q_up: Option<(B::Tensor, B::Tensor)>,
    kv_norm: B::Tensor,
    /// `kv_b_proj`'s rows: the rank's heads' nope parts, then their value parts, each padded
    /// to the head size with zero rows.
    kv_up: B::Tensor,
    /// Rows of the stacked `qkv` output: q (or q's latent), the kv latent, the shared rope key.
    widths: [usize; 3],
    heads: usize,
    dims: MlaConfig,
}

/// The host side of the rearrangement: weight rows and columns moved per head.
struct Rearrange<'a> {
    dims: &'a MlaConfig,
    dtype: DType,
}

impl Rearrange<'_> {
    /// `[rows, in]` rows of head-major `[heads, nope + rope, in]` as `[heads, rope (pairs
    /// de-interleaved), nope, in]`, scaled by `scale` (in f32, rounded once).
    fn q_rows(&self, w: Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let m = self.dims;
        let cols = w.dim(1)?;
        let w = w
            .to_dtype(candle_core::DType::F32)?
            .reshape((heads, m.qk_head_dim(), cols))?;
        let nope = w.narrow(1, 0, m.qk_nope_head_dim)?;
        let rope = deinterleave(&w.narrow(1, m.qk_nope_head_dim, m.qk_rope_head_dim)?, 1)?;
        let joined = (Tensor::cat(&[&rope, &nope], 1)? * scale)?;
        Ok(joined
            .reshape((heads * m.qk_head_dim(), cols))?
            .to_dtype(self.dtype.to_candle())?)
    }

    /// `kv_b_proj` (`[heads, nope + v, latent]`) as the rank's nope rows, then its value rows
    /// padded with zeros to the head size.
    fn kv_up_rows(&self, w: Tensor, heads: usize) -> Result<Tensor> {
        let m = self.dims;
        let latent = w.dim(1)?;
        let w = w.reshape((heads, m.qk_nope_head_dim + m.v_head_dim, latent))?;
        let nope = w
            .narrow(1, 0, m.qk_nope_head_dim)?
            .reshape((heads * m.qk_nope_head_dim, latent))?;
        let v = w.narrow(1, m.qk_nope_head_dim, m.v_head_dim)?;
        let pad = m.qk_head_dim() - m.v_head_dim;
        let v = if pad == 0 {
            v
        } else {
            let zeros = Tensor::zeros((heads, pad, latent), w.dtype(), &Device::Cpu)?;
            Tensor::cat(&[&v, &zeros], 1)?
        };
        let v = v.reshape((heads * m.qk_head_dim(), latent))?;
        Ok(Tensor::cat(&[&nope, &v], 0)?)
    }

    /// `o_proj`'s columns (`[hidden, heads * v]`) with zero columns where each head's padding
    /// sits in the attention output.
    fn o_cols(&self, w: Tensor, heads: usize) -> Result<Tensor> {
        let m = self.dims;
        let pad = m.qk_head_dim() - m.v_head_dim;
        if pad == 0 {
            return Ok(w);
        }
        let hidden = w.dim(0)?;
        let w = w.reshape((hidden, heads, m.v_head_dim))?;
        let zeros = Tensor::zeros((hidden, heads, pad), w.dtype(), &Device::Cpu)?;
        Ok(Tensor::cat(&[&w, &zeros], 2)?.reshape((hidden, heads * m.qk_head_dim()))?)
    }
}

/// `x` with the values along `dim` (pairs `(2i, 2i + 1)`) reordered as all even ones, then
/// all odd ones: DeepSeek's adjacent rotary pairs become rotate-half pairs `(i, i + d/2)`.
fn deinterleave(x: &Tensor, dim: usize) -> Result<Tensor> {
    let d = x.dim(dim)?;
    let order: Vec<u32> = (0..d as u32)
        .step_by(2)
        .chain((1..d as u32).step_by(2))
        .collect();
    let index = Tensor::new(order.as_slice(), x.device())?;
    Ok(x.contiguous()?.index_select(&index, dim)?)
}

/// Reads a whole weight in f32 (the rearrangement works on the host), or this rank's part.
fn read(src: &dyn WeightSource, part: Part) -> Result<Tensor> {
    part.read(src, DType::F32)
}

impl<B: Backend> LatentAttention<B> {
    /// Layer `p`'s latent attention on this rank, and the rows the layer's stacked `qkv`
    /// weight holds (q or its latent, the kv latent and the shared rope key), and the rank's
    /// output projection.
    pub fn load(
        be: &B,
        src: &dyn WeightSource,
        config: &ModelConfig,
        layout: &ShardLayout,
        p: &str,
        dtype: DType,
    ) -> Result<(Self, B::Tensor, B::Tensor)> {
        let m = config
            .mla
            .as_ref()
            .context("not a latent attention model")?;
        let (hidden, total_heads) = (config.hidden_size, config.num_heads);
        let heads = layout.q_heads.len();
        let hd = m.qk_head_dim();
        let r = Rearrange { dims: m, dtype };
        let attn = |n: &str| format!("{p}.self_attn.{n}.weight");
        // The softmax scale on top of head_dim^-0.5, folded into q.
        let q_heads_rows = layout.q_heads.start * hd..layout.q_heads.end * hd;
        let (q_first, q_up) = match m.q_lora_rank {
            None => {
                let part = rows_part(attn("q_proj"), vec![total_heads * hd, hidden], q_heads_rows);
                (r.q_rows(read(src, part)?, heads, m.score_scale)?, None)
            }
            Some(rank) => {
                let down = read(
                    src,
                    rows_part(attn("q_a_proj"), vec![rank, hidden], 0..rank),
                )?;
                let up = rows_part(attn("q_b_proj"), vec![total_heads * hd, rank], q_heads_rows);
                let up = r.q_rows(read(src, up)?, heads, m.score_scale)?;
                let norm = super::llama::load(be, src, &attn("q_a_layernorm"), &[rank], dtype)?;
                (
                    down.to_dtype(dtype.to_candle())?,
                    Some((norm, be.upload(up)?)),
                )
            }
        };
        // kv_a_proj_with_mqa: the latent rows, then the shared key's rope rows (pairs
        // de-interleaved like q's).
        let kv_a_rows = m.kv_lora_rank + m.qk_rope_head_dim;
        let kv_a = read(
            src,
            rows_part(
                attn("kv_a_proj_with_mqa"),
                vec![kv_a_rows, hidden],
                0..kv_a_rows,
            ),
        )?;
        let kv_a = Tensor::cat(
            &[
                &kv_a.narrow(0, 0, m.kv_lora_rank)?,
                &deinterleave(&kv_a.narrow(0, m.kv_lora_rank, m.qk_rope_head_dim)?, 0)?,
            ],
            0,
        )?
        .to_dtype(dtype.to_candle())?;
        let widths = [q_first.dim(0)?, m.kv_lora_rank, m.qk_rope_head_dim];
        let qkv = be.upload(Tensor::cat(&[&q_first, &kv_a], 0)?)?;
        let kv_norm =
            super::llama::load(be, src, &attn("kv_a_layernorm"), &[m.kv_lora_rank], dtype)?;
        let per_head = m.qk_nope_head_dim + m.v_head_dim;
        let kv_b = rows_part(
            attn("kv_b_proj"),
            vec![total_heads * per_head, m.kv_lora_rank],
            layout.q_heads.start * per_head..layout.q_heads.end * per_head,
        );
        let kv_up = r
            .kv_up_rows(read(src, kv_b)?, heads)?
            .to_dtype(dtype.to_candle())?;
        let o = cols_part(
            attn("o_proj"),
            vec![hidden, total_heads * m.v_head_dim],
            layout.q_heads.start * m.v_head_dim..layout.q_heads.end * m.v_head_dim,
        );
        let o_proj = r
            .o_cols(read(src, o)?, heads)?
            .to_dtype(dtype.to_candle())?;
        let latent = LatentAttention {
            q_up,
            kv_norm,
            kv_up: be.upload(kv_up)?,
            widths,
            heads,
            dims: m.clone(),
        };
        Ok((latent, qkv, be.upload(o_proj)?))
    }

    /// The rank's heads' queries, keys and values from the stacked projection's output
    /// (`[n, q + latent + rope]`): q and k `[n, heads * head_dim]` with each head's rope
    /// part first (not yet rotated), v `[n, heads * head_dim]` zero-padded.
    pub fn project(&self, be: &B, qkv: &B::Tensor) -> Result<[B::Tensor; 3]> {
        let m = &self.dims;
        let mut parts = be.split_columns(qkv, &self.widths)?.into_iter();
        let (Some(q), Some(latent), Some(k_rope)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("latent attention: split_columns returned fewer than three parts");
        };
        let q = match &self.q_up {
            None => q,
            Some((norm, up)) => be.linear(&be.rms_norm(&q, norm, LATENT_NORM_EPS)?, up, None)?,
        };
        let latent = be.rms_norm(&latent, &self.kv_norm, LATENT_NORM_EPS)?;
        let kv = be.linear(&latent, &self.kv_up, None)?;
        let nope_width = self.heads * m.qk_nope_head_dim;
        let mut kv = be
            .split_columns(&kv, &[nope_width, self.heads * m.qk_head_dim()])?
            .into_iter();
        let (Some(k_nope), Some(v)) = (kv.next(), kv.next()) else {
            anyhow::bail!("latent attention: split_columns returned fewer than two parts");
        };
        let k = be.join_heads(&k_rope, &k_nope, self.heads)?;
        Ok([q, k, v])
    }
}
