//! CLIP's text encoder (HF `CLIPTextModel` / `CLIPTextModelWithProjection`): token and
//! position embeddings, pre-norm transformer layers with causal self-attention, a final layer
//! norm, and the pooled state at each sequence's end token.

use super::config::ClipConfig;
use super::nn::{LayerNorm, Linear, Weights};
use crate::backend::image_ops::{Activation, ImageOps};
use anyhow::Result;

struct ClipLayer<B: ImageOps> {
    norm1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// What the pipelines read from the encoder, all for the same `[b, n]` token ids.
pub struct ClipOutput<T> {
    /// After the final layer norm, `[b, n, hidden]` (SD 1.x / 2.x conditioning).
    pub last_hidden: T,
    /// The input of the last layer, `[b, n, hidden]` (SDXL's conditioning, "clip skip").
    pub penultimate: T,
    /// `last_hidden` at each sequence's end token, `[b, hidden]`.
    pub pooled: T,
    /// `pooled` through `text_projection`, where the model has it, `[b, projection_dim]`.
    pub projected: Option<T>,
}

pub struct ClipTextModel<B: ImageOps> {
    config: ClipConfig,
    token_embedding: B::Tensor,
    position_embedding: B::Tensor,
    layers: Vec<ClipLayer<B>>,
    final_norm: LayerNorm<B>,
    projection: Option<Linear<B>>,
    act: Activation,
}

impl<B: ImageOps> ClipTextModel<B> {
    /// Loads from HF names (`text_model.*`, `text_projection.weight`).
    pub fn load(vb: &Weights<B>, config: &ClipConfig) -> Result<Self> {
        let c = config;
        let d = c.hidden_size;
        let tm = vb.at("text_model");
        let emb = tm.at("embeddings");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = tm.at("encoder.layers").at(i);
            let attn = l.at("self_attn");
            layers.push(ClipLayer {
                norm1: LayerNorm::load(&l.at("layer_norm1"), d, c.layer_norm_eps)?,
                q: Linear::load(&attn.at("q_proj"), d, d, true)?,
                k: Linear::load(&attn.at("k_proj"), d, d, true)?,
                v: Linear::load(&attn.at("v_proj"), d, d, true)?,
                out: Linear::load(&attn.at("out_proj"), d, d, true)?,
                norm2: LayerNorm::load(&l.at("layer_norm2"), d, c.layer_norm_eps)?,
                fc1: Linear::load(&l.at("mlp.fc1"), d, c.intermediate_size, true)?,
                fc2: Linear::load(&l.at("mlp.fc2"), c.intermediate_size, d, true)?,
            });
        }
        let projection = match c.projection_dim {
            Some(p) if vb.contains("text_projection.weight") => {
                Some(Linear::load(&vb.at("text_projection"), d, p, false)?)
            }
            _ => None,
        };
        Ok(ClipTextModel {
            token_embedding: emb.get("token_embedding.weight", &[c.vocab_size, d])?,
            position_embedding: emb
                .get("position_embedding.weight", &[c.max_position_embeddings, d])?,
            layers,
            final_norm: LayerNorm::load(&tm.at("final_layer_norm"), d, c.layer_norm_eps)?,
            projection,
            act: Activation::from_hf(&c.hidden_act)?,
            config: config.clone(),
        })
    }

    /// Whether the model has `text_projection` (and so fills [`ClipOutput::projected`]).
    pub fn has_projection(&self) -> bool {
        self.projection.is_some()
    }

    /// Encodes `batch` sequences of equal length (`ids` row-major `[batch, n]`).
    pub fn forward(&self, be: &B, ids: &[u32], batch: usize) -> Result<ClipOutput<B::Tensor>> {
        anyhow::ensure!(
            batch > 0 && ids.len().is_multiple_of(batch),
            "{} token ids do not split into {batch} sequences",
            ids.len()
        );
        let n = ids.len() / batch;
        let d = self.config.hidden_size;
        anyhow::ensure!(
            n <= self.config.max_position_embeddings,
            "{n} tokens exceed the text encoder's {} positions",
            self.config.max_position_embeddings
        );
        let positions: Vec<u32> = (0..n as u32).collect();
        let pos = be.embedding(&self.position_embedding, &positions)?;
        let mut rows = Vec::with_capacity(batch);
        for seq in ids.chunks(n) {
            rows.push(be.add(&be.embedding(&self.token_embedding, seq)?, &pos)?);
        }
        let refs: Vec<&B::Tensor> = rows.iter().collect();
        let mut x = be.reshape(&be.concat(&refs, 0)?, &[batch, n, d])?;
        let mut penultimate = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == self.layers.len() {
                penultimate = Some(be.reshape(&x, &[batch, n, d])?);
            }
            x = self.layer(be, layer, &x)?;
        }
        // A model without layers has no penultimate state; its embeddings stand in.
        let penultimate = match penultimate {
            Some(p) => p,
            None => be.reshape(&x, &[batch, n, d])?,
        };
        let last_hidden = self.final_norm.forward(be, &x)?;
        let pooled = self.pool(be, &last_hidden, ids, batch, n)?;
        let projected = match &self.projection {
            Some(p) => Some(p.forward(be, &pooled)?),
            None => None,
        };
        Ok(ClipOutput {
            last_hidden,
            penultimate,
            pooled,
            projected,
        })
    }

    fn layer(&self, be: &B, l: &ClipLayer<B>, x: &B::Tensor) -> Result<B::Tensor> {
        let h = l.norm1.forward(be, x)?;
        let (q, k, v) = (
            l.q.forward(be, &h)?,
            l.k.forward(be, &h)?,
            l.v.forward(be, &h)?,
        );
        let attn = be.dense_attention(&q, &k, &v, self.config.num_attention_heads, true)?;
        let x = be.add(x, &l.out.forward(be, &attn)?)?;
        let h = l.norm2.forward(be, &x)?;
        let h = be.activation(&l.fc1.forward(be, &h)?, self.act)?;
        be.add(&x, &l.fc2.forward(be, &h)?)
    }

    /// The hidden state at each sequence's end token. Configs with `eos_token_id` 2 predate
    /// HF's fix and pool at the largest token id (the end token in CLIP's vocabulary), as HF
    /// still does for them; others at the first end token.
    fn pool(
        &self,
        be: &B,
        hidden: &B::Tensor,
        ids: &[u32],
        batch: usize,
        n: usize,
    ) -> Result<B::Tensor> {
        let eos = self.config.eos_token_id;
        let mut rows = Vec::with_capacity(batch);
        for (b, seq) in ids.chunks(n).enumerate() {
            let at = if eos == 2 {
                // First position of the maximum, as torch's argmax.
                let max = seq.iter().copied().max().unwrap_or(0);
                seq.iter().position(|&t| t == max).unwrap_or(0)
            } else {
                seq.iter().position(|&t| t == eos).unwrap_or(n - 1)
            };
            rows.push(b * n + at);
        }
        let flat = be.reshape(hidden, &[batch * n, self.config.hidden_size])?;
        be.select_rows(&flat, &rows)
    }
}
