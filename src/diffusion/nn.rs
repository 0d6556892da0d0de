//! Layers shared by the CLIP encoder, the UNet and the VAE: named weights loaded under a
//! prefix, linear, conv, norms and diffusers' `Attention`.

use crate::backend::image_ops::ImageOps;
use crate::backend::DType;
use crate::model::weights::WeightSource;
use anyhow::{Context, Result};

/// Weights under a name prefix (`unet.down_blocks.0.`), uploaded to the backend as loaded.
pub struct Weights<'a, B: ImageOps> {
    pub be: &'a B,
    src: &'a dyn WeightSource,
    dtype: DType,
    prefix: String,
}

impl<'a, B: ImageOps> Weights<'a, B> {
    pub fn new(be: &'a B, src: &'a dyn WeightSource, dtype: DType) -> Self {
        Weights {
            be,
            src,
            dtype,
            prefix: String::new(),
        }
    }

    /// The weights under `prefix.name.`.
    pub fn at(&self, name: impl std::fmt::Display) -> Self {
        Weights {
            be: self.be,
            src: self.src,
            dtype: self.dtype,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.src.contains(&format!("{}{name}", self.prefix))
    }

    /// One tensor, checked against `shape`. Generated (dummy) weights are computed on the
    /// device where the backend can, as the LLM loader does: no host values, no upload.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<B::Tensor> {
        let full = format!("{}{name}", self.prefix);
        if let Some(part) = self.src.generated(&full, shape, None) {
            if let Some(t) = self.be.generate(&[part], shape, self.dtype) {
                return t.with_context(|| format!("generating {full} on {}", self.be.name()));
            }
        }
        self.be.upload(self.src.tensor(&full, shape, self.dtype)?)
    }
}

/// `x W^T + b` over the last dimension.
pub struct Linear<B: ImageOps> {
    w: B::Tensor,
    b: Option<B::Tensor>,
}

impl<B: ImageOps> Linear<B> {
    pub fn load(vb: &Weights<B>, input: usize, output: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            w: vb.get("weight", &[output, input])?,
            b: if bias {
                Some(vb.get("bias", &[output])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        be.linear_nd(x, &self.w, self.b.as_ref())
    }
}

/// A square-kernel 2-D convolution with bias.
pub struct Conv2d<B: ImageOps> {
    w: B::Tensor,
    b: B::Tensor,
    stride: usize,
    padding: usize,
}

impl<B: ImageOps> Conv2d<B> {
    pub fn load(
        vb: &Weights<B>,
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Conv2d {
            w: vb.get("weight", &[output, input, kernel, kernel])?,
            b: vb.get("bias", &[output])?,
            stride,
            padding,
        })
    }

    /// The 3x3, padding 1 convolution most layers use.
    pub fn load3(vb: &Weights<B>, input: usize, output: usize) -> Result<Self> {
        Self::load(vb, input, output, 3, 1, 1)
    }

    pub fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        be.conv2d(x, &self.w, Some(&self.b), self.stride, self.padding)
    }
}

/// Group norm with its affine weights.
pub struct GroupNorm<B: ImageOps> {
    w: B::Tensor,
    b: B::Tensor,
    groups: usize,
    eps: f64,
}

impl<B: ImageOps> GroupNorm<B> {
    pub fn load(vb: &Weights<B>, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        anyhow::ensure!(
            groups > 0 && channels.is_multiple_of(groups),
            "{channels} channels do not split into {groups} norm groups"
        );
        Ok(GroupNorm {
            w: vb.get("weight", &[channels])?,
            b: vb.get("bias", &[channels])?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor, silu: bool) -> Result<B::Tensor> {
        be.group_norm(x, self.groups, &self.w, &self.b, self.eps, silu)
    }
}

/// Layer norm over the last dimension.
pub struct LayerNorm<B: ImageOps> {
    w: B::Tensor,
    b: B::Tensor,
    eps: f64,
}

impl<B: ImageOps> LayerNorm<B> {
    pub fn load(vb: &Weights<B>, width: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            w: vb.get("weight", &[width])?,
            b: vb.get("bias", &[width])?,
            eps,
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        be.layer_norm(x, &self.w, &self.b, self.eps)
    }
}

/// diffusers' `Attention` over token sequences: `to_q`, `to_k`, `to_v`, `to_out.0`.
/// Self-attention when no context is given, cross-attention otherwise.
pub struct Attention<B: ImageOps> {
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    heads: usize,
}

impl<B: ImageOps> Attention<B> {
    /// `qkv_bias`: the VAE's attention has biases on q, k, v, the UNet's has not.
    /// Old VAE checkpoints name the projections `query`, `key`, `value`, `proj_attn`; both
    /// spellings load.
    pub fn load(
        vb: &Weights<B>,
        query_dim: usize,
        context_dim: usize,
        inner: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        anyhow::ensure!(
            heads > 0 && inner.is_multiple_of(heads),
            "attention width {inner} is not {heads} heads"
        );
        let old_names = !vb.contains("to_q.weight") && vb.contains("query.weight");
        let name = |new: &'static str, old: &'static str| if old_names { old } else { new };
        Ok(Attention {
            q: Linear::load(&vb.at(name("to_q", "query")), query_dim, inner, qkv_bias)?,
            k: Linear::load(&vb.at(name("to_k", "key")), context_dim, inner, qkv_bias)?,
            v: Linear::load(&vb.at(name("to_v", "value")), context_dim, inner, qkv_bias)?,
            out: Linear::load(
                &vb.at(name("to_out.0", "proj_attn")),
                inner,
                query_dim,
                true,
            )?,
            heads,
        })
    }

    /// `x: [b, n, query_dim]`, `context: [b, m, context_dim]` (or `x` itself).
    pub fn forward(&self, be: &B, x: &B::Tensor, context: Option<&B::Tensor>) -> Result<B::Tensor> {
        let context = context.unwrap_or(x);
        let q = self.q.forward(be, x)?;
        let k = self.k.forward(be, context)?;
        let v = self.v.forward(be, context)?;
        let y = be.dense_attention(&q, &k, &v, self.heads, false)?;
        self.out.forward(be, &y)
    }
}
