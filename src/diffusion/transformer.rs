//! diffusers' `Transformer2DModel` as the UNet uses it: group norm, a projection into tokens,
//! `BasicTransformerBlock`s (self-attention, cross-attention on the text, GEGLU feed-forward,
//! each pre-norm with a residual), the projection back, plus the input.

use super::nn::{Attention, Conv2d, GroupNorm, LayerNorm, Linear, Weights};
use crate::backend::image_ops::ImageOps;
use anyhow::Result;

struct BasicTransformerBlock<B: ImageOps> {
    norm1: LayerNorm<B>,
    attn1: Attention<B>,
    norm2: LayerNorm<B>,
    attn2: Attention<B>,
    norm3: LayerNorm<B>,
    ff_in: Linear<B>,
    ff_out: Linear<B>,
}

impl<B: ImageOps> BasicTransformerBlock<B> {
    fn load(vb: &Weights<B>, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let eps = 1e-5;
        let inner_ff = 4 * dim;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&vb.at("norm1"), dim, eps)?,
            attn1: Attention::load(&vb.at("attn1"), dim, dim, dim, heads, false)?,
            norm2: LayerNorm::load(&vb.at("norm2"), dim, eps)?,
            attn2: Attention::load(&vb.at("attn2"), dim, context_dim, dim, heads, false)?,
            norm3: LayerNorm::load(&vb.at("norm3"), dim, eps)?,
            ff_in: Linear::load(&vb.at("ff.net.0.proj"), dim, 2 * inner_ff, true)?,
            ff_out: Linear::load(&vb.at("ff.net.2"), inner_ff, dim, true)?,
        })
    }

    fn forward(&self, be: &B, x: &B::Tensor, context: &B::Tensor) -> Result<B::Tensor> {
        let h = self.attn1.forward(be, &self.norm1.forward(be, x)?, None)?;
        let x = be.add(x, &h)?;
        let h = self
            .attn2
            .forward(be, &self.norm2.forward(be, &x)?, Some(context))?;
        let x = be.add(&x, &h)?;
        let h = be.geglu(&self.ff_in.forward(be, &self.norm3.forward(be, &x)?)?)?;
        be.add(&x, &self.ff_out.forward(be, &h)?)
    }
}

/// `proj_in` / `proj_out`: 1x1 convolutions on the image (SD 1.x) or linear layers on the
/// tokens (`use_linear_projection`, SD 2.x and SDXL).
enum Projection<B: ImageOps> {
    Conv(Conv2d<B>),
    Linear(Linear<B>),
}

impl<B: ImageOps> Projection<B> {
    fn load(vb: &Weights<B>, input: usize, output: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::load(vb, input, output, true)?)
        } else {
            Projection::Conv(Conv2d::load(vb, input, output, 1, 1, 0)?)
        })
    }
}

pub struct Transformer2D<B: ImageOps> {
    norm: GroupNorm<B>,
    proj_in: Projection<B>,
    blocks: Vec<BasicTransformerBlock<B>>,
    proj_out: Projection<B>,
}

/// The shape of one `Transformer2DModel`.
#[derive(Clone, Copy, Debug)]
pub struct TransformerSpec {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl<B: ImageOps> Transformer2D<B> {
    pub fn load(vb: &Weights<B>, s: TransformerSpec) -> Result<Self> {
        let c = s.channels;
        let blocks = (0..s.layers)
            .map(|i| {
                BasicTransformerBlock::load(
                    &vb.at("transformer_blocks").at(i),
                    c,
                    s.context_dim,
                    s.heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Transformer2D {
            // diffusers builds this norm with eps 1e-6 whatever the UNet's norm_eps.
            norm: GroupNorm::load(&vb.at("norm"), c, s.groups, 1e-6)?,
            proj_in: Projection::load(&vb.at("proj_in"), c, c, s.linear_projection)?,
            blocks,
            proj_out: Projection::load(&vb.at("proj_out"), c, c, s.linear_projection)?,
        })
    }

    /// `x: [b, c, h, w]`, `context: [b, m, context_dim]`.
    pub fn forward(&self, be: &B, x: &B::Tensor, context: &B::Tensor) -> Result<B::Tensor> {
        let dims = be.dims(x);
        let (h, w) = (dims[2], dims[3]);
        let normed = self.norm.forward(be, x, false)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(c) => be.nchw_to_tokens(&c.forward(be, &normed)?)?,
            Projection::Linear(l) => l.forward(be, &be.nchw_to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(be, &tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(c) => c.forward(be, &be.tokens_to_nchw(&tokens, h, w)?)?,
            Projection::Linear(l) => be.tokens_to_nchw(&l.forward(be, &tokens)?, h, w)?,
        };
        be.add(&out, x)
    }
}
