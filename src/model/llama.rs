//! The Llama family (Llama 2/3/3.1, Mistral, Qwen2, Qwen3, Phi-3, and the mixture-of-experts
//! Qwen3-MoE and Mixtral), written once against the op set.
//!
//! Differences between the architectures are config switches: QKV bias (Qwen2), per-head
//! q/k RMS norm before RoPE (Qwen3), sliding window (Mistral), tied embeddings, RoPE scaling.

use super::config::{Architecture, ModelConfig};
use super::falcon_h1::{load_parallel_mixer, ParallelMixer};
use super::lfm2::{load_conv, ShortConv};
use super::lora::{LoraAdapter, Site};
use super::lora_forward::{add_updates, AdapterRows};
use super::mamba::{load_mixer, MambaMixer};
use super::mamba1::SelectiveMixer;
use super::mla::LatentAttention;
use super::moe::SparseMlp;
use super::qwen3_next::{gate_parts, GatedDeltaMixer};
use super::rope::rope_for;
use super::weights::{Slice, WeightSource};
use crate::backend::image_ops::{Activation, Xielu};
use crate::backend::{
    AttentionShape, Backend, BatchLayout, DType, HeadTerms, KeyWindow, KvCacheSpec, QkvHeads, Rope,
};
use crate::engine::device_draw::DeviceDraw;
use crate::engine::runner::StepOutput;
use crate::parallel::{Communicator, Shard, ShardLayout, SingleRank};
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::ops::Range;

struct Layer<B: Backend> {
    /// The norm before attention; none in OLMo 2 (which norms after each block).
    input_norm: Option<B::Tensor>,
    /// q, k and v projections stacked into one `[q + 2 kv, hidden]` matrix: one GEMM.
    qkv: B::Tensor,
    qkv_bias: Option<B::Tensor>,
    q_norm: Option<B::Tensor>,
    k_norm: Option<B::Tensor>,
    o_proj: B::Tensor,
    /// gpt-oss: the output projection's bias, held by rank 0 only (the ranks' partial sums
    /// are all-reduced, so it is added once).
    o_bias: Option<B::Tensor>,
    /// gpt-oss: this rank's heads' attention sinks, f32.
    sinks: Option<B::Tensor>,
    /// DeepSeek: what follows `qkv` in its latent attention (whose `qkv` holds q, or q's
    /// latent, and the kv latent with the shared rope key).
    latent: Option<LatentAttention<B>>,
    post_attention_norm: B::Tensor,
    /// StarCoder2: the biases of its LayerNorms (`input_norm`'s, `post_attention_norm`'s);
    /// their presence makes both norms LayerNorms.
    norm_biases: Option<(B::Tensor, B::Tensor)>,
    /// Gemma's and GLM-4's norms around the MLP, OLMo 2's after it (their
    /// `post_attention_norm` closes the attention block instead of opening the MLP).
    sandwich: Option<SandwichNorms<B>>,
    mlp: Mlp<B>,
    /// This layer's attention window (Gemma 3's local layers; Mistral's every layer) or
    /// chunk (Llama 4's rotary layers).
    window: KeyWindow,
    /// Which rotary table this layer rotates with.
    rope: LayerRope,
    /// LFM2: this layer is a gated short convolution (its `qkv` the convolution's
    /// `in_proj`, its `o_proj` the `out_proj`); no attention.
    conv: Option<ShortConv<B>>,
    /// Bamba, Granite 4.0 hybrids: this layer is a Mamba-2 mixer (its `qkv` the mixer's
    /// `in_proj`, its `o_proj` the `out_proj`); no attention.
    mamba: Option<MambaMixer<B>>,
    /// Qwen3-Next: this layer is a gated delta rule mixer (its `qkv` the reordered
    /// in-projections, its `o_proj` the `out_proj`); no attention.
    gated_delta: Option<GatedDeltaMixer<B>>,
    /// Mamba-1: this layer is a selective-scan mixer (its `qkv` the `in_proj`, its `o_proj`
    /// the `out_proj`); no attention.
    selective: Option<SelectiveMixer<B>>,
    /// Falcon-H1: a Mamba-2 mixer beside the attention (its `in_proj` rows after q / k / v
    /// in `qkv`), whose projected output joins the attention's.
    parallel_mixer: Option<ParallelMixer<B>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum LayerRope {
    /// The model's table.
    Global,
    /// Gemma 3's sliding layers' table (own base, no scaling).
    Local,
    /// None: SmolLM3's NoPE layers (an all-zero frequency table, so every angle is 0).
    Off,
}

struct SandwichNorms<B: Backend> {
    /// Gemma's norm into the MLP; none in OLMo 2.
    pre_feedforward: Option<B::Tensor>,
    post_feedforward: B::Tensor,
}

enum Mlp<B: Backend> {
    Dense {
        /// gate and up projections stacked into `[2 * intermediate, hidden]`.
        gate_up: B::Tensor,
        down: B::Tensor,
    },
    /// Mixture of experts (`moe.rs`).
    Sparse(SparseMlp<B>),
    /// None: a pure Mamba-2 model's layer is its mixer alone.
    Absent,
    /// StarCoder2: `down(act(up(x)))`, each projection with its bias (down's on rank 0 only,
    /// as the ranks' partial sums are all-reduced).
    Ungated {
        up: B::Tensor,
        up_bias: Option<B::Tensor>,
        down: B::Tensor,
        down_bias: Option<B::Tensor>,
        act: crate::backend::image_ops::Activation,
    },
}

impl<B: Backend> Mlp<B> {
    /// An ungated MLP's output for `x` (StarCoder2's, Phi's); an error for the others,
    /// which the layer loop runs itself.
    fn ungated_forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let Mlp::Ungated {
            up,
            up_bias,
            down,
            down_bias,
            act,
        } = self
        else {
            anyhow::bail!("not an ungated MLP");
        };
        let hidden = be.activation(&be.linear(x, up, up_bias.as_ref())?, *act)?;
        be.linear(&hidden, down, down_bias.as_ref())
    }
}

pub struct LlamaModel<B: Backend> {
    /// The full model's config (a tensor-parallel rank holds a slice of it, see `layout`).
    pub config: ModelConfig,
    pub dtype: DType,
    /// What this rank holds; the whole model when not sharded.
    pub layout: ShardLayout,
    /// The embedding rows of `layout.vocab`, plus a zero row that tokens of other ranks'
    /// rows read when the vocabulary is split.
    embed: B::Tensor,
    layers: Vec<Layer<B>>,
    norm: B::Tensor,
    /// StarCoder2: the final LayerNorm's bias.
    norm_bias: Option<B::Tensor>,
    /// BLOOM: the LayerNorm after the embedding lookup (weight, bias).
    embed_norm: Option<(B::Tensor, B::Tensor)>,
    /// GPT-2: the learned position embeddings (`[positions, hidden]`, whole on every rank)
    /// and the offset positions are read at.
    positions: Option<(B::Tensor, usize)>,
    /// None when the LM head is tied to the embedding.
    lm_head: Option<B::Tensor>,
    /// Phi: the LM head's bias (this rank's vocabulary entries).
    lm_head_bias: Option<B::Tensor>,
    /// A classifier's head (`[labels, hidden]`, whole on every rank): what
    /// [`LlamaModel::hidden_rows`] returns for it instead of the hidden state.
    score: Option<B::Tensor>,
    rope: B::RopeTable,
    /// Gemma 3's sliding layers' RoPE table (own base, no scaling).
    rope_local: Option<B::RopeTable>,
    /// The identity rotation, for layers without rotary embeddings.
    rope_off: Option<B::RopeTable>,
    /// Multiplies the embeddings: Gemma 3's `sqrt(hidden)` (rounded to the dtype),
    /// Granite's `embedding_multiplier`.
    embed_scale: Option<f32>,
    /// Multiplies the last hidden state before the head: Granite's `1 / logits_scaling`
    /// (the head may be the tied embedding, so it cannot be folded into it).
    logit_scale: Option<f32>,
    /// Gemma 2: the logits become `cap * tanh(logits / cap)`.
    final_softcap: Option<f32>,
    /// This rank's heads.
    attention: AttentionShape,
    /// ALiBi: this rank's heads' slopes (f32), for every layer.
    alibi: Option<B::Tensor>,
    /// LoRA adapters requests may name, by slot (`BatchLayout::adapters` indexes them); an
    /// unloaded adapter leaves its slot empty, so slots are never reused.
    adapters: Vec<Option<LoraAdapter<B::Tensor>>>,
}

/// Loads one named tensor and uploads it.
pub(super) fn load<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<B::Tensor> {
    let whole = Part {
        name: name.to_string(),
        shape: shape.to_vec(),
        slice: None,
        scale: 1.0,
    };
    load_stacked(be, src, &[whole], dtype)
}

/// A norm weight as the model applies it. Gemma stores `w` and scales by `1 + w` (computed
/// in f32, as HF does, then stored in the model dtype), times `extra` (Gemma 3's query scale,
/// folded into its q norm); the other models store the scale itself.
fn load_norm<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    config: &ModelConfig,
    name: &str,
    len: usize,
    dtype: DType,
    extra: f64,
) -> Result<B::Tensor> {
    // OLMo's LayerNorms have no weight: a scale of one.
    if config.architecture == Architecture::Olmo && !src.contains(name) {
        let ones = Tensor::ones(len, dtype.to_candle(), &candle_core::Device::Cpu)?;
        return be.upload(ones);
    }
    // Gemma's and Qwen3-Next's RMS norms and Nemotron's LayerNorms scale by `1 + w`.
    let offset_by_one = config.gemma.is_some()
        || matches!(
            config.architecture,
            Architecture::Nemotron | Architecture::Qwen3Next
        );
    if !offset_by_one {
        return load(be, src, name, &[len], dtype);
    }
    let w = src.tensor(name, &[len], DType::F32)?;
    let folded = ((w + 1.0)? * extra)?.to_dtype(dtype.to_candle())?;
    be.upload(folded)
}

/// One weight's part for this rank: its full name and shape, the slice (None = whole), and
/// a factor folded into its values at load (Granite's multipliers; 1 elsewhere).
pub(super) struct Part {
    name: String,
    shape: Vec<usize>,
    slice: Option<Slice>,
    scale: f64,
}

impl Part {
    /// The shape of what this part holds.
    fn part_shape(&self) -> Vec<usize> {
        let mut shape = self.shape.clone();
        if let Some(slice) = &self.slice {
            shape[slice.dim] = slice.range.len();
        }
        shape
    }

    pub(super) fn read(&self, src: &dyn WeightSource, dtype: DType) -> Result<Tensor> {
        // A scaled part is read in f32 and rounded to the dtype once, after scaling.
        let read_as = if self.scale == 1.0 { dtype } else { DType::F32 };
        let t = match &self.slice {
            None => src.tensor(&self.name, &self.shape, read_as),
            Some(slice) => src.tensor_slice(&self.name, &self.shape, slice, read_as),
        }?;
        if self.scale == 1.0 {
            return Ok(t);
        }
        Ok((t * self.scale)?.to_dtype(dtype.to_candle())?)
    }

    /// This part with its values multiplied by `factor`.
    pub(super) fn scaled(mut self, factor: f64) -> Part {
        self.scale *= factor;
        self
    }
}

/// Loads several parts and stacks them along the output dimension. Generated weights are
/// computed on the device when the backend can (no host work, no upload).
pub(super) fn load_stacked<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    parts: &[Part],
    dtype: DType,
) -> Result<B::Tensor> {
    let generated: Option<Vec<_>> = parts
        .iter()
        .map(|p| src.generated(&p.name, &p.shape, p.slice.as_ref()))
        .collect();
    if let Some(generated) = generated {
        let mut shape = parts[0].part_shape();
        shape[0] = parts.iter().map(|p| p.part_shape()[0]).sum();
        if let Some(t) = be.generate(&generated, &shape, dtype) {
            return t.with_context(|| format!("generating {} on {}", parts[0].name, be.name()));
        }
    }
    let host: Vec<Tensor> = parts
        .iter()
        .map(|p| p.read(src, dtype))
        .collect::<Result<_>>()?;
    be.upload(Tensor::cat(&host, 0)?)
}

/// The part of `[rows, ..]` weight `name` whose rows are `rows` (column-parallel: the whole
/// weight when `rows` covers it).
pub(super) fn rows_part(name: String, shape: Vec<usize>, rows: Range<usize>) -> Part {
    let slice = (rows.len() != shape[0]).then_some(Slice {
        dim: 0,
        range: rows,
    });
    Part {
        name,
        shape,
        slice,
        scale: 1.0,
    }
}

/// The part of `[out, in]` weight `name` whose input columns are `cols` (row-parallel).
pub(super) fn cols_part(name: String, shape: Vec<usize>, cols: Range<usize>) -> Part {
    let slice = (cols.len() != shape[1]).then_some(Slice {
        dim: 1,
        range: cols,
    });
    Part {
        name,
        shape,
        slice,
        scale: 1.0,
    }
}

/// This rank's q, k and v rows (`suffix` `weight`) or biases (`bias`) of Phi-3's and GPT-2's
/// fused `qkv_proj` (q, then k, then v rows).
fn fused_qkv_parts(
    c: &ModelConfig,
    layer: &str,
    q_cols: &Range<usize>,
    kv_cols: &Range<usize>,
    suffix: &str,
) -> [Part; 3] {
    let (q, kv) = (c.q_width(), c.kv_width());
    let name = format!("{layer}.self_attn.qkv_proj.{suffix}");
    let shape = if suffix == "bias" {
        vec![q + 2 * kv]
    } else {
        vec![q + 2 * kv, c.hidden_size]
    };
    [(0, q_cols), (q, kv_cols), (q + kv, kv_cols)]
        .map(|(offset, rows)| rows_at(name.clone(), shape.clone(), offset, rows))
}

/// How a checkpoint stores a layer's q, k and v projections.
enum QkvStorage {
    /// `q_proj`, `k_proj`, `v_proj`.
    Separate,
    /// One `qkv_proj`: q rows, then k rows, then v rows (Phi-3, GPT-2, multi-query
    /// GPT-BigCode).
    Fused,
    /// One `query_key_value` running KV group by KV group, each group's q heads, then its k
    /// head, then its v head (GPT-NeoX and GPT-BigCode without multi-query: groups of one
    /// head; Falcon).
    Grouped,
}

impl QkvStorage {
    fn of(c: &ModelConfig) -> QkvStorage {
        match c.architecture {
            Architecture::Phi3 | Architecture::Gpt2 | Architecture::Mpt => QkvStorage::Fused,
            Architecture::GptNeoX | Architecture::Falcon | Architecture::Bloom => {
                QkvStorage::Grouped
            }
            Architecture::GptBigCode if c.num_kv_heads == c.num_heads => QkvStorage::Grouped,
            Architecture::GptBigCode => QkvStorage::Fused,
            _ => QkvStorage::Separate,
        }
    }
}

/// This rank's q, k and v rows (`suffix` `weight`) or biases (`bias`) of a fused
/// `query_key_value` whose rows run KV group by KV group, each group's q heads, then its k
/// head, then its v head: this rank's q heads' rows, then its KV heads' k rows, then their
/// v rows.
fn grouped_qkv_parts(
    c: &ModelConfig,
    layer: &str,
    layout: &ShardLayout,
    suffix: &str,
) -> Vec<Part> {
    let (h, hd) = (c.hidden_size, c.head_dim);
    let group = c.num_heads / c.num_kv_heads;
    let name = format!("{layer}.self_attn.query_key_value.{suffix}");
    let rows = (c.num_heads + 2 * c.num_kv_heads) * hd;
    let shape = if suffix == "bias" {
        vec![rows]
    } else {
        vec![rows, h]
    };
    let q = layout
        .q_heads
        .clone()
        .map(|head| (head / group) * (group + 2) + head % group);
    let k = layout.kv_heads.clone().map(|kv| kv * (group + 2) + group);
    let v = layout
        .kv_heads
        .clone()
        .map(|kv| kv * (group + 2) + group + 1);
    q.chain(k)
        .chain(v)
        .map(|slot| rows_at(name.clone(), shape.clone(), slot * hd, &(0..hd)))
        .collect()
}

/// This rank's gate and up rows of Phi-3's fused `gate_up_proj` (gate rows first).
fn fused_gate_up_parts(c: &ModelConfig, layer: &str, rows: &Range<usize>) -> [Part; 2] {
    let inter = c.intermediate_size;
    let name = format!("{layer}.mlp.gate_up_proj.weight");
    let shape = vec![2 * inter, c.hidden_size];
    [0, inter].map(|offset| rows_at(name.clone(), shape.clone(), offset, rows))
}

/// Rows `offset + rows` of weight `name`.
fn rows_at(name: String, shape: Vec<usize>, offset: usize, rows: &Range<usize>) -> Part {
    Part {
        name,
        shape,
        slice: Some(Slice {
            dim: 0,
            range: offset + rows.start..offset + rows.end,
        }),
        scale: 1.0,
    }
}

/// Layer `p`'s dense MLP: this rank's gate and up rows stacked, and its down columns.
fn dense_mlp<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    c: &ModelConfig,
    p: &str,
    layout: &ShardLayout,
    dtype: DType,
) -> Result<Mlp<B>> {
    let (h, inter) = (c.hidden_size, c.intermediate_size);
    let (gate_scale, down_scale) = c.mlp_scales();
    let gate_up = if matches!(
        c.architecture,
        Architecture::Phi3
            | Architecture::Glm4
            | Architecture::Glm
            | Architecture::GraniteMoeHybrid
    ) {
        load_stacked(
            be,
            src,
            &fused_gate_up_parts(c, p, &layout.intermediate),
            dtype,
        )?
    } else {
        load_stacked(
            be,
            src,
            &[
                rows_part(
                    format!("{p}.mlp.gate_proj.weight"),
                    vec![inter, h],
                    layout.intermediate.clone(),
                )
                .scaled(gate_scale),
                rows_part(
                    format!("{p}.mlp.up_proj.weight"),
                    vec![inter, h],
                    layout.intermediate.clone(),
                ),
            ],
            dtype,
        )?
    };
    let down = load_stacked(
        be,
        src,
        &[cols_part(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, inter],
            layout.intermediate.clone(),
        )
        .scaled(down_scale)],
        dtype,
    )?;
    Ok(Mlp::Dense { gate_up, down })
}

/// A LayerNorm's bias: StarCoder2's, or zeros for Cohere's norms, which have none.
fn norm_bias<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    name: &str,
    width: usize,
    dtype: DType,
) -> Result<B::Tensor> {
    if src.contains(name) {
        load(be, src, name, &[width], dtype)
    } else {
        be.upload(Tensor::zeros(
            width,
            dtype.to_candle(),
            &candle_core::Device::Cpu,
        )?)
    }
}

/// StarCoder2's ungated MLP of layer `p` (Phi's: `fc1`, `fc2`): `c_fc` (this rank's rows
/// and their biases), `c_proj` (this rank's columns; its bias on rank 0).
fn ungated_mlp<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    c: &ModelConfig,
    p: &str,
    layout: &ShardLayout,
    dtype: DType,
    act: crate::backend::image_ops::Activation,
) -> Result<Mlp<B>> {
    let (h, inter) = (c.hidden_size, c.intermediate_size);
    let rows = layout.intermediate.clone();
    let (up_name, down_name) = match c.architecture {
        Architecture::Phi => ("fc1", "fc2"),
        Architecture::Arcee
        | Architecture::Nemotron
        | Architecture::NemotronH
        | Architecture::Apertus => ("up_proj", "down_proj"),
        _ => ("c_fc", "c_proj"),
    };
    let up = rows_part(
        format!("{p}.mlp.{up_name}.weight"),
        vec![inter, h],
        rows.clone(),
    );
    let up_bias = rows_part(format!("{p}.mlp.{up_name}.bias"), vec![inter], rows.clone());
    let biased = c.ungated_mlp_bias;
    let down = cols_part(format!("{p}.mlp.{down_name}.weight"), vec![h, inter], rows);
    Ok(Mlp::Ungated {
        up: load_stacked(be, src, &[up], dtype)?,
        up_bias: if biased {
            Some(load_stacked(be, src, &[up_bias], dtype)?)
        } else {
            None
        },
        down: load_stacked(be, src, &[down], dtype)?,
        down_bias: if biased && layout.shard.rank == 0 {
            Some(load(
                be,
                src,
                &format!("{p}.mlp.{down_name}.bias"),
                &[h],
                dtype,
            )?)
        } else {
            None
        },
        act: match act {
            // xIELU's parameters are the layer's own.
            Activation::Xielu(_) => Activation::Xielu(xielu_of(src, p)?),
            other => other,
        },
    })
}

/// Layer `p`'s xIELU parameters (`mlp.act_fn.*`, as transformers stores them), or
/// `XIELUActivation`'s defaults where the checkpoint has none.
fn xielu_of(src: &dyn WeightSource, p: &str) -> Result<Xielu> {
    let name = |n: &str| format!("{p}.mlp.act_fn.{n}");
    if !src.contains(&name("alpha_p")) {
        return Ok(Xielu::transformers_default());
    }
    let scalar = |n: &str| -> Result<f32> {
        let name = name(n);
        let shape = src.shape_of(&name)?;
        anyhow::ensure!(
            shape.iter().product::<usize>() == 1,
            "{name} has shape {shape:?}, not one value"
        );
        let values = src.tensor(&name, &shape, DType::F32)?.flatten_all()?;
        Ok(values.to_vec1::<f32>()?[0])
    };
    Ok(Xielu::from_stored(
        scalar("alpha_p")?,
        scalar("alpha_n")?,
        scalar("beta")?,
        scalar("eps")?,
    ))
}

/// This rank's embedding rows; with a split vocabulary, one zero row is appended for the
/// tokens other ranks own (see [`LlamaModel::local_ids`]).
fn load_embedding<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    name: &str,
    config: &ModelConfig,
    layout: &ShardLayout,
    dtype: DType,
) -> Result<B::Tensor> {
    let (vocab, h) = (config.vocab_size, config.hidden_size);
    let rows =
        rows_part(name.to_string(), vec![vocab, h], layout.vocab.clone()).read(src, dtype)?;
    if !layout.splits_vocab() {
        return be.upload(rows);
    }
    let zero = Tensor::zeros((1, h), dtype.to_candle(), &candle_core::Device::Cpu)?;
    be.upload(Tensor::cat(&[rows, zero], 0)?)
}

impl<B: Backend> LlamaModel<B> {
    /// Builds the whole model from a weight source; `on_layer` is called after each layer
    /// (progress).
    pub fn load(
        be: &B,
        config: ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        on_layer: impl FnMut(usize),
    ) -> Result<Self> {
        Self::load_shard(be, config, src, dtype, Shard::single(), on_layer)
    }

    /// Builds one tensor-parallel rank's part of the model, reading only its slices.
    pub fn load_shard(
        be: &B,
        config: ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        shard: Shard,
        mut on_layer: impl FnMut(usize),
    ) -> Result<Self> {
        let layout = ShardLayout::new(&config, shard)?;
        let c = &config;
        let (h, q, kv, hd) = (c.hidden_size, c.q_width(), c.kv_width(), c.head_dim);
        let (q_cols, kv_cols) = (layout.q_columns(hd), layout.kv_columns(hd));
        let (q_scale, residual_scale) = c.folded_scales();
        let embed = load_embedding(be, src, "model.embed_tokens.weight", c, &layout, dtype)?;
        let positions = match c.learned_positions {
            Some(offset) => {
                let shape = [c.max_position_embeddings + offset, h];
                let table = load(be, src, "model.embed_positions.weight", &shape, dtype)?;
                Some((table, offset))
            }
            None => None,
        };
        let embed_norm = if c.embedding_norm {
            let name = |part: &str| format!("model.embed_norm.{part}");
            Some((
                load_norm(be, src, c, &name("weight"), h, dtype, 1.0)?,
                norm_bias(be, src, &name("bias"), h, dtype)?,
            ))
        } else {
            None
        };
        // One slope per head of this rank, shared by every layer.
        let alibi = match &c.alibi {
            Some(alibi) => {
                let all = alibi.slopes(c.num_heads, hd);
                let ours = all[layout.q_heads.clone()].to_vec();
                let n = ours.len();
                Some(be.upload(Tensor::from_vec(ours, n, &candle_core::Device::Cpu)?)?)
            }
            None => None,
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        // Falcon-H1's mixers so far: each keeps its states in a cache layer of its own.
        let mut parallel_mixers = 0;
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let proj = |n: &str, rows: usize, part: &Range<usize>| {
                rows_part(
                    format!("{p}.self_attn.{n}_proj.weight"),
                    vec![rows, h],
                    part.clone(),
                )
            };
            let bias = |n: &str, rows: usize, part: &Range<usize>| {
                rows_part(
                    format!("{p}.self_attn.{n}_proj.bias"),
                    vec![rows],
                    part.clone(),
                )
            };
            let head_norm = |n: &str| -> Result<Option<B::Tensor>> {
                if !c.qk_norm {
                    return Ok(None);
                }
                // Command R+'s and StableLM 2 12B's per-head LayerNorms: this rank's heads'
                // rows (Cohere stores them as one [heads, head_dim] weight, StableLM as one
                // LayerNorm per head).
                if c.qk_layer_norm {
                    let (heads, total) = match n {
                        "q" => (layout.q_heads.clone(), c.num_heads),
                        _ => (layout.kv_heads.clone(), c.num_kv_heads),
                    };
                    let parts: Vec<Part> = if c.architecture == Architecture::StableLm {
                        heads
                            .map(|h| {
                                let name = format!("{p}.self_attn.{n}_layernorm.norms.{h}.weight");
                                rows_part(name, vec![hd], 0..hd)
                            })
                            .collect()
                    } else {
                        let name = format!("{p}.self_attn.{n}_norm.weight");
                        vec![rows_part(name, vec![total, hd], heads)]
                    };
                    return load_stacked(be, src, &parts, dtype).map(Some);
                }
                // Llama 4's weightless norms, on the rotating layers only.
                if c.qk_norm_unweighted {
                    let rotates = c.rope_layers.as_ref().is_none_or(|r| r[i]);
                    let ones = Tensor::ones(hd, dtype.to_candle(), &candle_core::Device::Cpu)?;
                    return rotates.then(|| be.upload(ones)).transpose();
                }
                let name = format!("{p}.self_attn.{n}_norm.weight");
                let scale = match (&c.gemma, n) {
                    (Some(g), "q") => g.query_scale,
                    _ => 1.0,
                };
                // OLMo 2 norms the whole projection (one rank holds all of it).
                let len = match (c.qk_norm_whole, n) {
                    (true, "q") => q,
                    (true, _) => kv,
                    (false, _) => hd,
                };
                Ok(Some(load_norm(be, src, c, &name, len, dtype, scale)?))
            };
            // This rank's q, k and v rows of three separate weights (or biases).
            let q_k_v = |part: &dyn Fn(&str, usize, &Range<usize>) -> Part| {
                [
                    part("q", q, &q_cols),
                    part("k", kv, &kv_cols),
                    part("v", kv, &kv_cols),
                ]
            };
            // This rank's q, k and v weights (`suffix` `weight`) or biases (`bias`), as the
            // checkpoint stores them, the q rows (every storage lists them first, one part per
            // q head or one for all) carrying the folded scale.
            let qkv_parts = |suffix: &str| -> Vec<Part> {
                let separate: &dyn Fn(&str, usize, &Range<usize>) -> Part =
                    if suffix == "bias" { &bias } else { &proj };
                let (parts, q_parts): (Vec<Part>, usize) = match QkvStorage::of(c) {
                    QkvStorage::Fused => {
                        (fused_qkv_parts(c, &p, &q_cols, &kv_cols, suffix).into(), 1)
                    }
                    QkvStorage::Grouped => (
                        grouped_qkv_parts(c, &p, &layout, suffix),
                        layout.q_heads.len(),
                    ),
                    // Qwen3-Next: q_proj's q rows head by head, k, v, then its gate rows.
                    QkvStorage::Separate if c.attention_output_gate => {
                        let dims = (h, hd, c.num_heads);
                        let heads = layout.q_heads.clone();
                        let mut parts = gate_parts(&p, suffix, dims, heads.clone(), false);
                        let q_parts = parts.len();
                        parts.push(separate("k", kv, &kv_cols));
                        parts.push(separate("v", kv, &kv_cols));
                        parts.extend(gate_parts(&p, suffix, dims, heads, true));
                        (parts, q_parts)
                    }
                    QkvStorage::Separate => (q_k_v(separate).into(), 1),
                };
                parts
                    .into_iter()
                    .enumerate()
                    .map(|(i, part)| {
                        if i < q_parts {
                            part.scaled(q_scale)
                        } else {
                            part
                        }
                    })
                    .collect()
            };
            let norm = |n: &str| load_norm(be, src, c, &format!("{p}.{n}.weight"), h, dtype, 1.0);
            // GPT-NeoX's parallel layer norms the stream twice, once for each block.
            // Phi names the attention's output projection `dense`.
            let o_name = if c.architecture == Architecture::Phi {
                "dense"
            } else {
                "o_proj"
            };
            let (latent, latent_qkv, latent_o) = match &c.mla {
                Some(_) => {
                    let (latent, qkv, o) = LatentAttention::load(be, src, c, &layout, &p, dtype)
                        .with_context(|| format!("loading the latent attention of {p}"))?;
                    (Some(latent), Some(qkv), Some(o))
                }
                None => (None, None, None),
            };
            // LFM2's convolution layers take the attention's projections' places.
            let (conv, latent_qkv, latent_o) = match &c.short_conv {
                Some(sc) if sc.is_conv(i) => {
                    let (conv, in_proj, out_proj) =
                        load_conv(be, src, &p, (h, sc.taps), &q_cols, dtype)
                            .with_context(|| format!("loading the convolution of {p}"))?;
                    (Some(conv), Some(in_proj), Some(out_proj))
                }
                _ => (None, latent_qkv, latent_o),
            };
            // Mamba mixers too.
            let (mamba, latent_qkv, latent_o) = match &c.mamba {
                Some(m) if m.replaces_attention(i) => {
                    let (mixer, in_proj, out_proj) = load_mixer(
                        be,
                        src,
                        &p,
                        (h, m),
                        &layout.mamba_heads,
                        residual_scale,
                        dtype,
                    )
                    .with_context(|| format!("loading the Mamba mixer of {p}"))?;
                    (Some(mixer), Some(in_proj), Some(out_proj))
                }
                _ => (None, latent_qkv, latent_o),
            };
            // And gated delta rule mixers.
            let (gated_delta, latent_qkv, latent_o) = match &c.gated_delta {
                Some(g) if g.is_mixer(i) => {
                    let (mixer, in_proj, out_proj) = super::qwen3_next::load_mixer(
                        be,
                        src,
                        &p,
                        (h, &g.shape, &layout.linear_value_heads),
                        dtype,
                    )
                    .with_context(|| format!("loading the gated delta mixer of {p}"))?;
                    (Some(mixer), Some(in_proj), Some(out_proj))
                }
                _ => (None, latent_qkv, latent_o),
            };
            // And Mamba-1's.
            let (selective, latent_qkv, latent_o) = match &c.selective {
                Some(s) if s.is_mixer(i) => {
                    let (mixer, in_proj, out_proj) =
                        super::mamba1::load_mixer(be, src, &p, (h, s), dtype)
                            .with_context(|| format!("loading the Mamba mixer of {p}"))?;
                    (Some(mixer), Some(in_proj), Some(out_proj))
                }
                _ => (None, latent_qkv, latent_o),
            };
            let mixes =
                conv.is_some() || mamba.is_some() || gated_delta.is_some() || selective.is_some();
            // Falcon-H1: attention and a mixer side by side; the fused projection holds the
            // mixer's in_proj rows after q / k / v, all with their multipliers.
            let (parallel_mixer, latent_qkv) = match (&c.mamba, &c.falcon_h1) {
                (Some(m), Some(scales)) if m.parallel && m.is_mamba(i) => {
                    let attention_width = q_cols.len() + 2 * kv_cols.len();
                    let cache_layer = c.num_layers + parallel_mixers;
                    parallel_mixers += 1;
                    let heads = &layout.mamba_heads;
                    let mixer = load_parallel_mixer(
                        be,
                        src,
                        &p,
                        (h, m, scales),
                        heads,
                        (attention_width, cache_layer),
                        dtype,
                    )
                    .with_context(|| format!("loading the Mamba mixer of {p}"))?;
                    let parts = super::falcon_h1::projection_parts(
                        qkv_parts("weight"),
                        &p,
                        (h, m, scales),
                        heads,
                    );
                    let qkv = load_stacked(be, src, &parts, dtype)?;
                    (Some(mixer), Some(qkv))
                }
                _ => (None, latent_qkv),
            };
            let layer = Layer {
                input_norm: if c.post_norm {
                    None
                } else {
                    Some(norm("input_layernorm")?)
                },
                qkv: match latent_qkv {
                    Some(qkv) => qkv,
                    None => load_stacked(be, src, &qkv_parts("weight"), dtype)?,
                },
                qkv_bias: if c.qkv_bias {
                    Some(load_stacked(be, src, &qkv_parts("bias"), dtype)?)
                } else {
                    None
                },
                q_norm: if mixes { None } else { head_norm("q")? },
                k_norm: if mixes { None } else { head_norm("k")? },
                o_proj: match latent_o {
                    Some(o) => o,
                    None => load_stacked(
                        be,
                        src,
                        &[cols_part(
                            format!("{p}.self_attn.{o_name}.weight"),
                            vec![h, q],
                            q_cols.clone(),
                        )
                        .scaled(
                            c.falcon_h1
                                .as_ref()
                                .map_or(residual_scale, |s| s.attention_out),
                        )],
                        dtype,
                    )?,
                },
                o_bias: if c.o_bias && layout.shard.rank == 0 {
                    let name = format!("{p}.self_attn.{o_name}.bias");
                    Some(load(be, src, &name, &[h], dtype)?)
                } else {
                    None
                },
                sinks: if c.attention_sinks {
                    let name = format!("{p}.self_attn.sinks");
                    let heads = layout.q_heads.clone();
                    let part = rows_part(name, vec![c.num_heads], heads);
                    Some(load_stacked(be, src, &[part], DType::F32)?)
                } else {
                    None
                },
                latent,
                // GLM-4 names its sandwich differently: its post_attention_layernorm opens
                // the MLP, post_self_attn_layernorm closes the attention block.
                norm_biases: if c.layer_norm {
                    let bias = |n: &str| norm_bias(be, src, &format!("{p}.{n}.bias"), h, dtype);
                    // A parallel layer has one norm (GPT-NeoX's two): the second bias of the
                    // others goes unread.
                    let second = if c.parallel_block && !c.parallel_two_norms {
                        "input_layernorm"
                    } else {
                        "post_attention_layernorm"
                    };
                    Some((bias("input_layernorm")?, bias(second)?))
                } else {
                    None
                },
                post_attention_norm: norm(match c.architecture {
                    Architecture::Glm4 => "post_self_attn_layernorm",
                    // A parallel layer has one norm (GPT-NeoX's two): this copy goes unread.
                    _ if c.parallel_block && !c.parallel_two_norms => "input_layernorm",
                    _ => "post_attention_layernorm",
                })?,
                sandwich: match (
                    c.architecture,
                    c.gemma.as_ref().is_some_and(|g| g.sandwich) || c.post_norm,
                ) {
                    (Architecture::Glm4, _) => Some(SandwichNorms {
                        pre_feedforward: Some(norm("post_attention_layernorm")?),
                        post_feedforward: norm("post_mlp_layernorm")?,
                    }),
                    (_, true) => Some(SandwichNorms {
                        pre_feedforward: if c.post_norm {
                            None
                        } else {
                            Some(norm("pre_feedforward_layernorm")?)
                        },
                        post_feedforward: norm("post_feedforward_layernorm")?,
                    }),
                    (_, false) => None,
                },
                mlp: match (&c.moe, c.ungated_mlp) {
                    _ if !c.has_mlp(i) => Mlp::Absent,
                    (Some(moe), _) if moe.is_sparse(i) => {
                        Mlp::Sparse(SparseMlp::load(be, src, c, moe, &p, &layout, dtype)?)
                    }
                    (_, Some(act)) => ungated_mlp(be, src, c, &p, &layout, dtype, act)?,
                    _ => dense_mlp(be, src, c, &p, &layout, dtype)?,
                },
                window: c.layer_key_window(i),
                rope: if c.gemma.as_ref().is_some_and(|g| g.sliding_layers[i])
                    || (c.architecture == Architecture::Olmo3 && c.layer_window(i).is_some())
                {
                    LayerRope::Local
                } else if c.rope_layers.as_ref().is_some_and(|r| !r[i]) {
                    LayerRope::Off
                } else {
                    LayerRope::Global
                },
                conv,
                mamba,
                gated_delta,
                selective,
                parallel_mixer,
            };
            layers.push(layer);
            on_layer(i);
        }
        let final_norm = if c.architecture == Architecture::Phi {
            "model.final_layernorm"
        } else {
            "model.norm"
        };
        let norm = load_norm(be, src, c, &format!("{final_norm}.weight"), h, dtype, 1.0)?;
        let norm_bias = if c.layer_norm {
            Some(norm_bias(be, src, &format!("{final_norm}.bias"), h, dtype)?)
        } else {
            None
        };
        // Phi's head has a bias: this rank's vocabulary entries of it.
        let lm_head_bias = if c.lm_head_bias {
            let part = rows_part(
                "lm_head.bias".into(),
                vec![c.vocab_size],
                layout.vocab.clone(),
            );
            Some(load_stacked(be, src, &[part], dtype)?)
        } else {
            None
        };
        // Some checkpoints of tied models still carry lm_head.weight; the config decides.
        let lm_head = if c.tie_word_embeddings || !src.contains("lm_head.weight") {
            None
        } else {
            let part = rows_part(
                "lm_head.weight".to_string(),
                vec![c.vocab_size, h],
                layout.vocab.clone(),
            );
            Some(load_stacked(be, src, &[part], dtype)?)
        };
        let score = match &c.classifier {
            Some(classifier) => {
                let shape = [classifier.labels.len(), h];
                Some(load(be, src, "score.weight", &shape, dtype)?)
            }
            None => None,
        };
        let rope = be.prepare_rope(&rope_for(c).context("building the rotary embedding table")?)?;
        // The sliding layers' table: Gemma's own base, unscaled; OLMo 3's base, unscaled
        // (its RoPE scaling is for the full layers only).
        let local_theta = match (&c.gemma, c.architecture) {
            (Some(g), _) => Some(g.local_rope_theta),
            (None, Architecture::Olmo3) => Some(c.rope_theta),
            _ => None,
        };
        let rope_local = match local_theta {
            None => None,
            Some(rope_theta) => {
                let local = ModelConfig {
                    rope_theta,
                    rope_scaling: None,
                    ..c.clone()
                };
                Some(be.prepare_rope(&rope_for(&local).context("building the local RoPE table")?)?)
            }
        };
        let rope_off = match &c.rope_layers {
            Some(layers) if layers.iter().any(|&on| !on) => Some(be.prepare_rope(&Rope {
                inv_freq: vec![0.0; hd / 2],
                neox: true,
                scale: 1.0,
                query_temperature: c.query_temperature,
            })?),
            _ => None,
        };
        let embed_scale = match (&c.gemma, &c.granite, &c.falcon_h1) {
            // Gemma rounds its scale to the dtype first; Granite and Falcon-H1 multiply by
            // their own.
            (Some(_), _, _) => Some(dtype.round((h as f32).sqrt())),
            (None, Some(g), _) if g.embedding != 1.0 => Some(g.embedding as f32),
            (None, None, Some(f)) if f.embedding != 1.0 => Some(f.embedding as f32),
            _ => None,
        };
        // Granite divides the logits by its scaling, Cohere multiplies them by its scale;
        // the head is linear, so either is a multiple of the last hidden state.
        let logit_scale = match (&c.granite, c.logit_scale, &c.falcon_h1) {
            (Some(g), _, _) if g.logits != 1.0 => Some((1.0 / g.logits) as f32),
            (_, Some(scale), _) if scale != 1.0 => Some(scale as f32),
            (_, _, Some(f)) if f.lm_head != 1.0 => Some(f.lm_head as f32),
            _ => None,
        };
        let attention = AttentionShape {
            num_heads: layout.q_heads.len(),
            num_kv_heads: layout.kv_heads.len(),
            head_dim: hd,
            window: KeyWindow::sliding(c.sliding_window),
            logit_softcap: c.gemma.as_ref().and_then(|g| g.attn_softcap),
        };
        let final_softcap = c.gemma.as_ref().and_then(|g| g.final_softcap);
        Ok(LlamaModel {
            config,
            dtype,
            layout,
            embed,
            layers,
            norm,
            norm_bias,
            positions,
            lm_head,
            lm_head_bias,
            score,
            rope,
            rope_local,
            rope_off,
            embed_scale,
            alibi,
            embed_norm,
            logit_scale,
            final_softcap,
            attention,
            adapters: Vec::new(),
        })
    }

    /// Adds a LoRA adapter, laid out for this rank (see `model/lora.rs`), in a new slot;
    /// returns the slot, which requests name it by.
    pub fn add_adapter(&mut self, adapter: LoraAdapter<B::Tensor>) -> Result<usize> {
        self.place_adapter(self.adapters.len(), adapter)?;
        Ok(self.adapters.len() - 1)
    }

    /// Puts a LoRA adapter in slot `slot`, which must be free (tensor-parallel ranks are
    /// told the slot, so they agree on it even after a load failed on some of them).
    pub fn place_adapter(&mut self, slot: usize, adapter: LoraAdapter<B::Tensor>) -> Result<()> {
        anyhow::ensure!(
            adapter.layers.len() == self.layers.len(),
            "adapter {} has {} layers, the model {}",
            adapter.name,
            adapter.layers.len(),
            self.layers.len()
        );
        if self.adapters.len() <= slot {
            self.adapters.resize_with(slot + 1, || None);
        }
        anyhow::ensure!(
            self.adapters[slot].is_none(),
            "adapter slot {slot} is taken"
        );
        self.adapters[slot] = Some(adapter);
        Ok(())
    }

    /// Frees adapter `slot`'s weights; the slot stays taken.
    pub fn remove_adapter(&mut self, slot: usize) -> Result<()> {
        match self.adapters.get_mut(slot) {
            Some(adapter @ Some(_)) => {
                *adapter = None;
                Ok(())
            }
            _ => anyhow::bail!("no adapter is loaded in slot {slot}"),
        }
    }

    /// Whether an adapter is loaded in `slot`.
    pub fn has_adapter(&self, slot: usize) -> bool {
        self.adapters.get(slot).is_some_and(Option::is_some)
    }

    /// Row of this rank's embedding for each token: its own rows, or the zero row for the
    /// tokens other ranks hold.
    fn local_ids(&self, tokens: &[u32]) -> Vec<u32> {
        let vocab = &self.layout.vocab;
        let zero_row = vocab.len() as u32;
        tokens
            .iter()
            .map(|&t| {
                if vocab.contains(&(t as usize)) {
                    t - vocab.start as u32
                } else {
                    zero_row
                }
            })
            .collect()
    }

    pub fn attention_shape(&self) -> AttentionShape {
        self.attention
    }

    /// The paged KV cache this rank needs: its own KV heads only, and for Mamba mixers a
    /// recurrent state for each of `state_slots` sequences running at once.
    pub fn kv_cache_spec(
        &self,
        num_blocks: usize,
        block_size: usize,
        state_slots: usize,
    ) -> KvCacheSpec {
        KvCacheSpec {
            num_layers: self.config.cache_layers(),
            num_blocks,
            block_size,
            num_kv_heads: self.attention.num_kv_heads,
            head_dim: self.config.head_dim,
            dtype: self.dtype,
            conv_layers: self
                .layers
                .iter()
                .enumerate()
                .filter_map(|(i, layer)| layer.conv.as_ref().map(|conv| (i, conv.channels)))
                .collect(),
            state_layers: self
                .layers
                .iter()
                .enumerate()
                .filter_map(|(i, layer)| {
                    let mamba = layer.mamba.as_ref().map(|m| m.shape.slot_values());
                    let delta = layer.gated_delta.as_ref().map(|g| g.shape.slot_values());
                    let selective = layer.selective.as_ref().map(|s| s.shape.slot_values());
                    mamba.or(delta).or(selective).map(|values| (i, values))
                })
                .chain(self.layers.iter().filter_map(|layer| {
                    let beside = layer.parallel_mixer.as_ref()?;
                    Some((beside.cache_layer, beside.mixer.shape.slot_values()))
                }))
                .collect(),
            state_slots,
        }
    }

    /// Runs the batch through the model, writing its K/V into `cache`, and returns the logits
    /// of `batch.logits_rows` as f32, `[rows, vocab]` row-major. On a tensor-parallel rank
    /// (every rank calls this with the same input and its own `comm`), the columns are the
    /// rank's vocabulary rows, `layout.vocab`.
    pub fn forward(
        &self,
        be: &B,
        tokens: &[u32],
        batch: &BatchLayout,
        cache: &mut B::KvCache,
        comm: &dyn Communicator<B>,
    ) -> Result<Vec<f32>> {
        let logits = self.logits(be, tokens, batch, cache, comm)?;
        let values = be.to_host_f32(&logits)?;
        Ok(self.strip_zero_row(values, batch.logits_rows.len()))
    }

    /// Like [`LlamaModel::forward`] on an unsharded model, but rows marked in `pick_argmax`
    /// get their argmax picked on the device: only the token travels to the host.
    pub fn forward_picking(
        &self,
        be: &B,
        tokens: &[u32],
        batch: &BatchLayout,
        cache: &mut B::KvCache,
        pick_argmax: &[bool],
        device_draws: &[Option<DeviceDraw>],
    ) -> Result<StepOutput> {
        let rows = batch.logits_rows.len();
        let logits = self.logits(be, tokens, batch, cache, &SingleRank)?;
        let mut picked = vec![None; rows];
        let argmax_rows: Vec<usize> = (0..rows)
            .filter(|&r| pick_argmax.get(r).copied().unwrap_or(false))
            .collect();
        if !argmax_rows.is_empty() {
            for (&r, t) in argmax_rows
                .iter()
                .zip(be.argmax_rows(&logits, &argmax_rows)?)
            {
                picked[r] = Some(t);
            }
        }
        let (draw_rows, draws): (Vec<usize>, Vec<_>) = (0..rows)
            .filter(|&r| picked[r].is_none())
            .filter_map(|r| device_draws.get(r)?.as_ref().map(|d| (r, d.as_row())))
            .unzip();
        if !draw_rows.is_empty() {
            // None: this backend leaves sampling to the host; the rows go back as logits.
            if let Some(drawn) = be.draw_rows(&logits, &draw_rows, &draws)? {
                for (&r, t) in draw_rows.iter().zip(drawn) {
                    picked[r] = Some(t);
                }
            }
        }
        let rest: Vec<usize> = (0..rows).filter(|r| picked[*r].is_none()).collect();
        let logits = if rest.is_empty() {
            Vec::new()
        } else if rest.len() == rows {
            be.to_host_f32(&logits)?
        } else {
            be.to_host_f32(&be.select_rows(&logits, &rest)?)?
        };
        Ok(StepOutput { picked, logits })
    }

    /// The logits of `batch.logits_rows` on the device, `[rows, local vocab]` (plus the
    /// zero row's column for a tied head over a split vocabulary).
    fn logits(
        &self,
        be: &B,
        tokens: &[u32],
        batch: &BatchLayout,
        cache: &mut B::KvCache,
        comm: &dyn Communicator<B>,
    ) -> Result<B::Tensor> {
        anyhow::ensure!(tokens.len() == batch.num_tokens(), "one position per token");
        // Checked here, not only by the embedding: a replayed step reads ids no op checks.
        if let Some(bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            anyhow::bail!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            );
        }
        // Decode steps of a single rank may be replayed from a recording (CUDA graphs); the
        // ranks of a sharded model meet in all-reduces a recording cannot hold.
        // Mixture-of-experts layers route on the host (which a recording cannot hold either)
        // unless the backend routes this many tokens on the device.
        let routing_recordable = match &self.config.moe {
            None => true,
            Some(moe) => be.routes_experts_on_device(tokens.len(), moe.scoring),
        };
        // Steps with adapters gather their rows on the host's say: run eagerly.
        let base_only = batch.adapters.iter().all(|&a| a == 0);
        if self.layout.shard.world == 1 && comm.world_size() == 1 && routing_recordable && base_only
        {
            let mut body = |meta: &B::BatchMeta, tokens: &[u32], batch: &BatchLayout| {
                self.logits_from_meta(be, meta, tokens, batch, cache, comm)
            };
            if let Some(logits) = be.forward_recorded(tokens, batch, &mut body)? {
                return Ok(logits);
            }
        }
        let meta = be.prepare_batch(batch)?;
        self.logits_from_meta(be, &meta, tokens, batch, cache, comm)
    }

    /// The last hidden state (after the final norm) of each of `batch.logits_rows`, f32
    /// `[rows, hidden]` row-major: what embedding models pool; for a classifier, its score
    /// head's logits of those states, `[rows, labels]`. On a tensor-parallel rank (every rank
    /// calls this with its `comm`) each rank gets the whole rows: the layers' outputs are
    /// all-reduced.
    pub fn hidden_rows(
        &self,
        be: &B,
        tokens: &[u32],
        batch: &BatchLayout,
        cache: &mut B::KvCache,
        comm: &dyn Communicator<B>,
    ) -> Result<Vec<f32>> {
        let meta = be.prepare_batch(batch)?;
        let x = self.final_hidden(be, &meta, tokens, batch, cache, comm)?;
        match &self.score {
            Some(score) => be.to_host_f32(&be.linear(&x, score, None)?),
            None => be.to_host_f32(&x),
        }
    }

    /// [`LlamaModel::logits`] from prepared batch metadata.
    fn logits_from_meta(
        &self,
        be: &B,
        meta: &B::BatchMeta,
        tokens: &[u32],
        batch: &BatchLayout,
        cache: &mut B::KvCache,
        comm: &dyn Communicator<B>,
    ) -> Result<B::Tensor> {
        let x = self.final_hidden(be, meta, tokens, batch, cache, comm)?;
        let x = match self.logit_scale {
            Some(scale) => be.mul_scalar(&x, scale)?,
            None => x,
        };
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let logits = be.linear(&x, head, self.lm_head_bias.as_ref())?;
        match self.final_softcap {
            Some(cap) => be.softcap(logits, cap),
            None => Ok(logits),
        }
    }

    /// The final norm's output at `batch.logits_rows`: the layers, then the norm.
    fn final_hidden(
        &self,
        be: &B,
        meta: &B::BatchMeta,
        tokens: &[u32],
        batch: &BatchLayout,
        cache: &mut B::KvCache,
        comm: &dyn Communicator<B>,
    ) -> Result<B::Tensor> {
        let c = &self.config;
        anyhow::ensure!(tokens.len() == batch.num_tokens(), "one position per token");
        anyhow::ensure!(
            comm.world_size() == self.layout.shard.world && comm.rank() == self.layout.shard.rank,
            "communicator of rank {}/{} for a shard of rank {}/{}",
            comm.rank(),
            comm.world_size(),
            self.layout.shard.rank,
            self.layout.shard.world
        );
        let mut hidden = if self.layout.splits_vocab() {
            // Each token's row lives on one rank; the others contribute zeros.
            let partial = be.embedding(&self.embed, &self.local_ids(tokens))?;
            comm.all_reduce_sum(be, partial)?
        } else {
            be.embed_batch(&self.embed, meta, tokens)?
        };
        if let Some(scale) = self.embed_scale {
            hidden = be.mul_scalar(&hidden, scale)?;
        }
        if let Some((weight, bias)) = &self.embed_norm {
            hidden = be.layer_norm(&hidden, weight, bias, c.rms_norm_eps)?;
        }
        if let Some((table, offset)) = &self.positions {
            // Checked on the host: a device reads positions no op checks.
            let rows = c.max_position_embeddings;
            if let Some(bad) = batch.positions.iter().find(|&&p| p as usize >= rows) {
                anyhow::bail!("position {bad} is past the model's {rows} learned positions");
            }
            hidden = be.add_position_embeddings(hidden, table, meta, *offset)?;
        }
        let mut residual: Option<B::Tensor> = None;
        let eps = c.rms_norm_eps;
        let lora = AdapterRows::of(batch);
        if let Some(bad) = lora.adapters().find(|&a| !self.has_adapter(a)) {
            anyhow::bail!("no LoRA adapter is loaded in slot {bad}");
        }
        // A base linear's output plus the adapters' updates of it, on their rows.
        let adapt = |y: B::Tensor, x: &B::Tensor, i: usize, site: Site| -> Result<B::Tensor> {
            if lora.is_empty() {
                return Ok(y);
            }
            add_updates(be, &self.adapters, y, x, (i, site), &lora, self.dtype)
        };
        for (i, layer) in self.layers.iter().enumerate() {
            if c.parallel_block {
                // Cohere, Phi: one norm feeds both blocks, whose outputs join the stream.
                let (bias, _) = layer
                    .norm_biases
                    .as_ref()
                    .context("a parallel layer without its norm")?;
                let norm = layer
                    .input_norm
                    .as_ref()
                    .context("a parallel layer's norm")?;
                let stream = match residual.take() {
                    Some(r) => be.add_tensors(&hidden, &r)?,
                    None => hidden,
                };
                let x = be.layer_norm(&stream, norm, bias, eps)?;
                // GPT-NeoX's and Falcon-40B's MLP reads its own norm of the stream.
                let mlp_in = match (c.parallel_two_norms, &layer.norm_biases) {
                    (true, Some((_, mlp_bias))) => {
                        Some(be.layer_norm(&stream, &layer.post_attention_norm, mlp_bias, eps)?)
                    }
                    _ => None,
                };
                let qkv = be.linear(&x, &layer.qkv, layer.qkv_bias.as_ref())?;
                let qkv = adapt(qkv, &x, i, Site::Qkv)?;
                let attn = self.attention_block(be, layer, i, qkv, meta, cache)?;
                let out = be.linear(&attn, &layer.o_proj, layer.o_bias.as_ref())?;
                let attn = comm.all_reduce_sum(be, adapt(out, &attn, i, Site::O)?)?;
                let x = mlp_in.as_ref().unwrap_or(&x);
                let mlp = match &layer.mlp {
                    Mlp::Dense { gate_up, down } => {
                        let gate_up = adapt(be.linear(x, gate_up, None)?, x, i, Site::GateUp)?;
                        let act = be.silu_mul(&gate_up)?;
                        adapt(be.linear(&act, down, None)?, &act, i, Site::Down)?
                    }
                    ungated @ Mlp::Ungated { .. } => ungated.ungated_forward(be, x)?,
                    Mlp::Sparse(_) | Mlp::Absent => {
                        anyhow::bail!("parallel layers have dense MLPs")
                    }
                };
                let mlp = comm.all_reduce_sum(be, mlp)?;
                // The next layer adds `hidden` to `residual`, so each model's own order of
                // additions holds: Cohere's (stream + attention) + MLP, Phi's (attention +
                // MLP) + stream, GPT-NeoX's (MLP + attention) + stream.
                if matches!(
                    c.architecture,
                    Architecture::Phi
                        | Architecture::GptNeoX
                        | Architecture::GptJ
                        | Architecture::Falcon
                ) {
                    residual = Some(stream);
                    hidden = be.add_tensors(&attn, &mlp)?;
                } else {
                    residual = Some(be.add_tensors(&stream, &attn)?);
                    hidden = mlp;
                }
                continue;
            }
            // The norms go through `add_rms_norm_linear` with the projection after them, so a
            // device can fuse the two (not when adapters need the normed input too).
            let qkv_bias = layer.qkv_bias.as_ref();
            let qkv = match (residual.take(), &layer.input_norm) {
                // StarCoder2's LayerNorms: the residual add, then the norm (no fused op).
                (r, Some(input_norm)) if layer.norm_biases.is_some() => {
                    let (bias, _) = layer.norm_biases.as_ref().expect("matched");
                    let sum = match r {
                        Some(r) => be.add_tensors(&hidden, &r)?,
                        None => hidden,
                    };
                    let x = be.layer_norm(&sum, input_norm, bias, eps)?;
                    residual = Some(sum);
                    adapt(be.linear(&x, &layer.qkv, qkv_bias)?, &x, i, Site::Qkv)?
                }
                (None, Some(input_norm)) => {
                    let x = be.rms_norm(&hidden, input_norm, eps)?;
                    residual = Some(hidden);
                    adapt(be.linear(&x, &layer.qkv, qkv_bias)?, &x, i, Site::Qkv)?
                }
                (Some(r), Some(input_norm)) if !lora.is_empty() => {
                    let (x, sum) = be.add_rms_norm(hidden, r, input_norm, eps)?;
                    residual = Some(sum);
                    adapt(be.linear(&x, &layer.qkv, qkv_bias)?, &x, i, Site::Qkv)?
                }
                (Some(r), Some(input_norm)) => {
                    let norm = (input_norm, eps);
                    let (qkv, sum) =
                        be.add_rms_norm_linear(hidden, r, norm, &layer.qkv, qkv_bias)?;
                    residual = Some(sum);
                    qkv
                }
                // OLMo 2: the block reads the residual stream itself.
                (r, None) => {
                    let stream = match r {
                        Some(r) => be.add_tensors(&hidden, &r)?,
                        None => hidden,
                    };
                    let qkv = adapt(
                        be.linear(&stream, &layer.qkv, qkv_bias)?,
                        &stream,
                        i,
                        Site::Qkv,
                    )?;
                    residual = Some(stream);
                    qkv
                }
            };
            let attn = match &layer.parallel_mixer {
                // Falcon-H1: the attention's and the mixer's outputs, added.
                Some(beside) => {
                    let widths = [
                        beside.attention_width,
                        beside.mixer.shape.projection_width(),
                    ];
                    let mut parts = be.split_columns(&qkv, &widths)?.into_iter();
                    let (Some(qkv), Some(zxbcdt)) = (parts.next(), parts.next()) else {
                        anyhow::bail!("split_columns returned fewer than two parts");
                    };
                    let attn = self.attention_block(be, layer, i, qkv, meta, cache)?;
                    let attn = be.linear(&attn, &layer.o_proj, None)?;
                    let mixed = beside.forward(be, &zxbcdt, cache, meta)?;
                    be.add_tensors(&attn, &mixed)?
                }
                None => {
                    let attn = self.attention_block(be, layer, i, qkv, meta, cache)?;
                    adapt(
                        be.linear(&attn, &layer.o_proj, layer.o_bias.as_ref())?,
                        &attn,
                        i,
                        Site::O,
                    )?
                }
            };
            let attn = comm.all_reduce_sum(be, attn)?;
            let residual_in = residual.take().expect("set above");
            // A layer without an MLP: its block's output joins the stream in the next add.
            if matches!(layer.mlp, Mlp::Absent) {
                residual = Some(residual_in);
                hidden = attn;
                continue;
            }
            if let Some(sandwich) = &layer.sandwich {
                // Gemma: norm the attention output, add it, norm into the MLP, norm its
                // output; that output is what the next layer (or the final norm) adds.
                // OLMo 2 the same without the norm into the MLP.
                let attn = be.rms_norm(&attn, &layer.post_attention_norm, eps)?;
                let (normed, sum) = match &sandwich.pre_feedforward {
                    Some(pre) => {
                        let (x, sum) = be.add_rms_norm(attn, residual_in, pre, eps)?;
                        (Some(x), sum)
                    }
                    None => (None, be.add_tensors(&attn, &residual_in)?),
                };
                let Mlp::Dense { gate_up, down } = &layer.mlp else {
                    anyhow::bail!("Gemma, GLM-4 and OLMo 2 layers have dense MLPs");
                };
                let x = normed.as_ref().unwrap_or(&sum);
                let gate_up = adapt(be.linear(x, gate_up, None)?, x, i, Site::GateUp)?;
                residual = Some(sum);
                let act = if c.gemma.is_some() {
                    be.gelu_tanh_mul(&gate_up)?
                } else {
                    be.silu_mul(&gate_up)?
                };
                let out = adapt(be.linear(&act, down, None)?, &act, i, Site::Down)?;
                let out = comm.all_reduce_sum(be, out)?;
                hidden = be.rms_norm(&out, &sandwich.post_feedforward, eps)?;
                continue;
            }
            let partial = match &layer.mlp {
                // OLMo's LayerNorm into a gated MLP.
                Mlp::Dense { gate_up, down } if layer.norm_biases.is_some() => {
                    let (_, bias) = layer.norm_biases.as_ref().expect("matched");
                    let sum = be.add_tensors(&attn, &residual_in)?;
                    let x = be.layer_norm(&sum, &layer.post_attention_norm, bias, eps)?;
                    residual = Some(sum);
                    let gate_up = adapt(be.linear(&x, gate_up, None)?, &x, i, Site::GateUp)?;
                    let act = be.silu_mul(&gate_up)?;
                    adapt(be.linear(&act, down, None)?, &act, i, Site::Down)?
                }
                // Gemma's GeGLU has no fused op: the norm, then the projections.
                Mlp::Dense { gate_up, down } if !lora.is_empty() || c.gemma.is_some() => {
                    let (x, sum) =
                        be.add_rms_norm(attn, residual_in, &layer.post_attention_norm, eps)?;
                    residual = Some(sum);
                    let gate_up = adapt(be.linear(&x, gate_up, None)?, &x, i, Site::GateUp)?;
                    let act = if c.gemma.is_some() {
                        be.gelu_tanh_mul(&gate_up)?
                    } else {
                        be.silu_mul(&gate_up)?
                    };
                    adapt(be.linear(&act, down, None)?, &act, i, Site::Down)?
                }
                Mlp::Dense { gate_up, down } => {
                    let (act, sum) = be.add_rms_norm_swiglu(
                        attn,
                        residual_in,
                        (&layer.post_attention_norm, eps),
                        gate_up,
                        None,
                    )?;
                    residual = Some(sum);
                    be.linear(&act, down, None)?
                }
                // Experts behind RMS norms, or LayerNorms (Phi-3.5-MoE).
                Mlp::Sparse(experts) => {
                    let (x, sum) = post_attention_norm(be, layer, attn, residual_in, eps)?;
                    residual = Some(sum);
                    experts.forward(be, &x, self.dtype)?
                }
                // LayerNorm models (GPT-2's family), or RMS norms (Arcee).
                ungated @ Mlp::Ungated { .. } => {
                    let (x, sum) = post_attention_norm(be, layer, attn, residual_in, eps)?;
                    residual = Some(sum);
                    ungated.ungated_forward(be, &x)?
                }
                Mlp::Absent => unreachable!("MLP-less layers continue above"),
            };
            hidden = comm.all_reduce_sum(be, partial)?;
        }
        let residual = residual.context("model has no layers")?;
        // Decode steps want every row in order: no gather.
        let every_row = batch.logits_rows.len() == batch.num_tokens()
            && batch.logits_rows.iter().enumerate().all(|(i, &r)| i == r);
        let (last, last_residual) = if every_row {
            (hidden, residual)
        } else {
            (
                be.select_rows(&hidden, &batch.logits_rows)?,
                be.select_rows(&residual, &batch.logits_rows)?,
            )
        };
        let x = match &self.norm_bias {
            Some(bias) => {
                let sum = be.add_tensors(&last, &last_residual)?;
                be.layer_norm(&sum, &self.norm, bias, c.rms_norm_eps)?
            }
            None => {
                be.add_rms_norm(last, last_residual, &self.norm, c.rms_norm_eps)?
                    .0
            }
        };
        Ok(x)
    }

    /// Host logits without the zero row's column, where a tied head scored it.
    fn strip_zero_row(&self, values: Vec<f32>, rows: usize) -> Vec<f32> {
        if self.lm_head.is_none() && self.layout.splits_vocab() {
            drop_last_column(values, rows, self.layout.vocab.len() + 1)
        } else {
            values
        }
    }

    /// The attention block up to its output projection: q/k/v split, normed and rotated,
    /// k/v cached, attention over the cache (the caller projects and adapts the output).
    fn attention_block(
        &self,
        be: &B,
        layer: &Layer<B>,
        index: usize,
        qkv: B::Tensor,
        batch: &B::BatchMeta,
        cache: &mut B::KvCache,
    ) -> Result<B::Tensor> {
        let c = &self.config;
        // LFM2's convolution layers: `qkv` is the convolution's B, C and x.
        if let Some(conv) = &layer.conv {
            return be.gated_short_conv(&qkv, &conv.weight, cache, index, batch);
        }
        // Mamba mixers: `qkv` is the mixer's z, x / B / C and dt.
        if let Some(mixer) = &layer.mamba {
            return be.mamba_mixer(&qkv, &mixer.params(), cache, index, batch);
        }
        // Gated delta rule mixers: `qkv` is their q, k, v, z, b and a.
        if let Some(mixer) = &layer.gated_delta {
            return be.gated_delta_net(&qkv, &mixer.params(), cache, index, batch);
        }
        // Mamba-1 mixers: `qkv` is their x and gate z.
        if let Some(mixer) = &layer.selective {
            return mixer.forward(be, &qkv, cache, index, batch);
        }
        let (q_width, kv_width) = (
            self.attention.num_heads * c.head_dim,
            self.attention.num_kv_heads * c.head_dim,
        );
        // Qwen3-Next: the gate rows follow q / k / v; the output is gated by them.
        let (qkv, gate) = if c.attention_output_gate {
            let mut parts = be
                .split_columns(&qkv, &[q_width + 2 * kv_width, q_width])?
                .into_iter();
            match (parts.next(), parts.next()) {
                (Some(qkv), gate @ Some(_)) => (qkv, gate),
                _ => anyhow::bail!("split_columns returned fewer than two parts"),
            }
        } else {
            (qkv, None)
        };
        // Qwen3's per-head q / k norms come between the split and the rotation.
        let norms = match (&layer.q_norm, &layer.k_norm) {
            (Some(qn), Some(kn)) => Some((qn, kn, c.rms_norm_eps)),
            _ => None,
        };
        let head = QkvHeads {
            head_dim: c.head_dim,
            norms,
            norm_after_rope: c.qk_norm_after_rope,
            layer_norm: c.qk_layer_norm,
        };
        let rope = match (layer.rope, &self.rope_local, &self.rope_off) {
            (LayerRope::Local, Some(local), _) => local,
            (LayerRope::Off, _, Some(off)) => off,
            _ => &self.rope,
        };
        let q = match &layer.latent {
            Some(latent) => {
                let [q, k, v] = latent.project(be, &qkv)?;
                let (q, k) = be.rope(q, k, c.head_dim, rope, batch)?;
                be.write_kv(cache, index, &k, &v, batch)?;
                q
            }
            None => {
                be.qkv_rope_write(&qkv, (q_width, kv_width), &head, rope, cache, index, batch)?
            }
        };
        let shape = AttentionShape {
            window: layer.window,
            ..self.attention
        };
        let terms = HeadTerms {
            sinks: layer.sinks.as_ref(),
            alibi: self.alibi.as_ref(),
        };
        let out = be.attention(&q, cache, index, batch, &shape, terms)?;
        match gate {
            Some(gate) => be.sigmoid_gate(&out, &gate),
            None => Ok(out),
        }
    }
}

/// A sequential layer's norm before its MLP, over the stream plus the attention's output:
/// `(normed, sum)`, by LayerNorm where the layer's norms have biases, else RMS norm.
fn post_attention_norm<B: Backend>(
    be: &B,
    layer: &Layer<B>,
    attn: B::Tensor,
    residual_in: B::Tensor,
    eps: f64,
) -> Result<(B::Tensor, B::Tensor)> {
    match &layer.norm_biases {
        Some((_, bias)) => {
            let sum = be.add_tensors(&attn, &residual_in)?;
            let x = be.layer_norm(&sum, &layer.post_attention_norm, bias, eps)?;
            Ok((x, sum))
        }
        None => be.add_rms_norm(attn, residual_in, &layer.post_attention_norm, eps),
    }
}

/// `values` (`rows` rows of `width`) without each row's last element.
fn drop_last_column(values: Vec<f32>, rows: usize, width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * (width - 1));
    for row in values.chunks_exact(width).take(rows) {
        out.extend_from_slice(&row[..width - 1]);
    }
    out
}
