//! The Llama family (Llama 2/3/3.1, Mistral, Qwen2, Qwen3), written once against the op set.
//!
//! Differences between the architectures are config switches: QKV bias (Qwen2), per-head
//! q/k RMS norm before RoPE (Qwen3), sliding window (Mistral), tied embeddings, RoPE scaling.

use super::config::ModelConfig;
use super::rope::rope_for;
use super::weights::WeightSource;
use crate::backend::{AttentionShape, Backend, BatchLayout, DType};
use anyhow::{Context, Result};
use candle_core::Tensor;

struct Layer<B: Backend> {
    input_norm: B::Tensor,
    /// q, k and v projections stacked into one `[q + 2 kv, hidden]` matrix: one GEMM.
    qkv: B::Tensor,
    qkv_bias: Option<B::Tensor>,
    q_norm: Option<B::Tensor>,
    k_norm: Option<B::Tensor>,
    o_proj: B::Tensor,
    post_attention_norm: B::Tensor,
    /// gate and up projections stacked into `[2 * intermediate, hidden]`.
    gate_up: B::Tensor,
    down: B::Tensor,
}

pub struct LlamaModel<B: Backend> {
    pub config: ModelConfig,
    pub dtype: DType,
    embed: B::Tensor,
    layers: Vec<Layer<B>>,
    norm: B::Tensor,
    /// None when the LM head is tied to the embedding.
    lm_head: Option<B::Tensor>,
    rope: B::RopeTable,
    attention: AttentionShape,
}

/// Loads one named tensor and uploads it.
fn load<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<B::Tensor> {
    be.upload(src.tensor(name, shape, dtype)?)
}

/// Loads several tensors and stacks them along the output dimension.
fn load_stacked<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    parts: &[(String, Vec<usize>)],
    dtype: DType,
) -> Result<B::Tensor> {
    let host: Vec<Tensor> = parts
        .iter()
        .map(|(name, shape)| src.tensor(name, shape, dtype))
        .collect::<Result<_>>()?;
    be.upload(Tensor::cat(&host, 0)?)
}

impl<B: Backend> LlamaModel<B> {
    /// Builds the model from a weight source; `on_layer` is called after each layer (progress).
    pub fn load(
        be: &B,
        config: ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        mut on_layer: impl FnMut(usize),
    ) -> Result<Self> {
        let c = &config;
        let (h, q, kv, inter) = (
            c.hidden_size,
            c.q_width(),
            c.kv_width(),
            c.intermediate_size,
        );
        let embed = load(
            be,
            src,
            "model.embed_tokens.weight",
            &[c.vocab_size, h],
            dtype,
        )?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let proj =
                |n: &str, rows: usize| (format!("{p}.self_attn.{n}_proj.weight"), vec![rows, h]);
            let bias = |n: &str, rows: usize| (format!("{p}.self_attn.{n}_proj.bias"), vec![rows]);
            let layer = Layer {
                input_norm: load(be, src, &format!("{p}.input_layernorm.weight"), &[h], dtype)?,
                qkv: load_stacked(
                    be,
                    src,
                    &[proj("q", q), proj("k", kv), proj("v", kv)],
                    dtype,
                )?,
                qkv_bias: if c.qkv_bias {
                    Some(load_stacked(
                        be,
                        src,
                        &[bias("q", q), bias("k", kv), bias("v", kv)],
                        dtype,
                    )?)
                } else {
                    None
                },
                q_norm: if c.qk_norm {
                    Some(load(
                        be,
                        src,
                        &format!("{p}.self_attn.q_norm.weight"),
                        &[c.head_dim],
                        dtype,
                    )?)
                } else {
                    None
                },
                k_norm: if c.qk_norm {
                    Some(load(
                        be,
                        src,
                        &format!("{p}.self_attn.k_norm.weight"),
                        &[c.head_dim],
                        dtype,
                    )?)
                } else {
                    None
                },
                o_proj: load(
                    be,
                    src,
                    &format!("{p}.self_attn.o_proj.weight"),
                    &[h, q],
                    dtype,
                )?,
                post_attention_norm: load(
                    be,
                    src,
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    dtype,
                )?,
                gate_up: load_stacked(
                    be,
                    src,
                    &[
                        (format!("{p}.mlp.gate_proj.weight"), vec![inter, h]),
                        (format!("{p}.mlp.up_proj.weight"), vec![inter, h]),
                    ],
                    dtype,
                )?,
                down: load(
                    be,
                    src,
                    &format!("{p}.mlp.down_proj.weight"),
                    &[h, inter],
                    dtype,
                )?,
            };
            layers.push(layer);
            on_layer(i);
        }
        let norm = load(be, src, "model.norm.weight", &[h], dtype)?;
        // Some checkpoints of tied models still carry lm_head.weight; the config decides.
        let lm_head = if c.tie_word_embeddings || !src.contains("lm_head.weight") {
            None
        } else {
            Some(load(be, src, "lm_head.weight", &[c.vocab_size, h], dtype)?)
        };
        let rope = be.prepare_rope(&rope_for(c).context("building the rotary embedding table")?)?;
        let attention = AttentionShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            sliding_window: c.sliding_window,
        };
        Ok(LlamaModel {
            config,
            dtype,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            attention,
        })
    }

    pub fn attention_shape(&self) -> AttentionShape {
        self.attention
    }

    /// Runs the batch through the model, writing its K/V into `cache`, and returns the logits
    /// of `batch.logits_rows` as f32, `[rows, vocab]` row-major.
    pub fn forward(
        &self,
        be: &B,
        tokens: &[u32],
        batch: &BatchLayout,
        cache: &mut B::KvCache,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        anyhow::ensure!(tokens.len() == batch.num_tokens(), "one position per token");
        let meta = be.prepare_batch(batch)?;
        let mut hidden = be.embedding(&self.embed, tokens)?;
        let mut residual: Option<B::Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let x = match residual.take() {
                None => {
                    let x = be.rms_norm(&hidden, &layer.input_norm, c.rms_norm_eps)?;
                    residual = Some(hidden);
                    x
                }
                Some(r) => {
                    let (x, sum) = be.add_rms_norm(hidden, r, &layer.input_norm, c.rms_norm_eps)?;
                    residual = Some(sum);
                    x
                }
            };
            let attn = self.attention_block(be, layer, i, &x, &meta, cache)?;
            let (x, sum) = be.add_rms_norm(
                attn,
                residual.take().expect("set above"),
                &layer.post_attention_norm,
                c.rms_norm_eps,
            )?;
            residual = Some(sum);
            let gate_up = be.linear(&x, &layer.gate_up, None)?;
            hidden = be.linear(&be.silu_mul(&gate_up)?, &layer.down, None)?;
        }
        let last = be.select_rows(&hidden, &batch.logits_rows)?;
        let last_residual = be.select_rows(
            residual.as_ref().context("model has no layers")?,
            &batch.logits_rows,
        )?;
        let (x, _) = be.add_rms_norm(last, last_residual, &self.norm, c.rms_norm_eps)?;
        let logits = be.linear(&x, self.lm_head.as_ref().unwrap_or(&self.embed), None)?;
        be.to_host_f32(&logits)
    }

    fn attention_block(
        &self,
        be: &B,
        layer: &Layer<B>,
        index: usize,
        x: &B::Tensor,
        batch: &B::BatchMeta,
        cache: &mut B::KvCache,
    ) -> Result<B::Tensor> {
        let c = &self.config;
        let qkv = be.linear(x, &layer.qkv, layer.qkv_bias.as_ref())?;
        let mut parts = be
            .split_columns(&qkv, &[c.q_width(), c.kv_width(), c.kv_width()])?
            .into_iter();
        let (mut q, mut k, v) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = be.rms_norm(&q, qn, c.rms_norm_eps)?;
            k = be.rms_norm(&k, kn, c.rms_norm_eps)?;
        }
        let (q, k) = be.rope(q, k, c.head_dim, &self.rope, batch)?;
        be.write_kv(cache, index, &k, &v, batch)?;
        let attn = be.attention(&q, cache, index, batch, &self.attention)?;
        be.linear(&attn, &layer.o_proj, None)
    }
}
