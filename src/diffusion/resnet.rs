//! diffusers' `ResnetBlock2D` and the 2x down / up samplers, shared by the UNet and the VAE.

use super::nn::{Conv2d, GroupNorm, Linear, Weights};
use crate::backend::image_ops::ImageOps;
use anyhow::Result;

/// `norm1 -> silu -> conv1 (+ time embedding) -> norm2 -> silu -> conv2`, plus the input
/// (through a 1x1 `conv_shortcut` when the channel count changes).
pub struct ResnetBlock<B: ImageOps> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    time_proj: Option<Linear<B>>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    shortcut: Option<Conv2d<B>>,
}

/// The shape of one resnet block.
#[derive(Clone, Copy, Debug)]
pub struct ResnetSpec {
    pub input: usize,
    pub output: usize,
    /// Width of the time embedding, or `None` (the VAE has none).
    pub temb: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

impl<B: ImageOps> ResnetBlock<B> {
    pub fn load(vb: &Weights<B>, s: ResnetSpec) -> Result<Self> {
        Ok(ResnetBlock {
            norm1: GroupNorm::load(&vb.at("norm1"), s.input, s.groups, s.eps)?,
            conv1: Conv2d::load3(&vb.at("conv1"), s.input, s.output)?,
            time_proj: match s.temb {
                Some(t) => Some(Linear::load(&vb.at("time_emb_proj"), t, s.output, true)?),
                None => None,
            },
            norm2: GroupNorm::load(&vb.at("norm2"), s.output, s.groups, s.eps)?,
            conv2: Conv2d::load3(&vb.at("conv2"), s.output, s.output)?,
            shortcut: if s.input != s.output {
                Some(Conv2d::load(
                    &vb.at("conv_shortcut"),
                    s.input,
                    s.output,
                    1,
                    1,
                    0,
                )?)
            } else {
                None
            },
        })
    }

    /// `silu_temb` is `silu(time embedding)`, `[b, temb]`, computed once per UNet forward.
    pub fn forward(
        &self,
        be: &B,
        x: &B::Tensor,
        silu_temb: Option<&B::Tensor>,
    ) -> Result<B::Tensor> {
        let h = self.conv1.forward(be, &self.norm1.forward(be, x, true)?)?;
        let h = match (&self.time_proj, silu_temb) {
            (Some(proj), Some(t)) => be.add_channel_bias(&h, &proj.forward(be, t)?)?,
            (Some(_), None) => anyhow::bail!("resnet block needs a time embedding"),
            (None, _) => h,
        };
        let h = self.conv2.forward(be, &self.norm2.forward(be, &h, true)?)?;
        match &self.shortcut {
            Some(s) => be.add(&s.forward(be, x)?, &h),
            None => be.add(x, &h),
        }
    }
}

/// `downsamplers.0`: a 3x3 convolution of stride 2.
pub struct Downsample<B: ImageOps> {
    conv: Conv2d<B>,
}

impl<B: ImageOps> Downsample<B> {
    pub fn load(vb: &Weights<B>, channels: usize) -> Result<Self> {
        Ok(Downsample {
            conv: Conv2d::load(&vb.at("downsamplers.0.conv"), channels, channels, 3, 2, 1)?,
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        self.conv.forward(be, x)
    }
}

/// `upsamplers.0`: nearest 2x upsampling, then a 3x3 convolution.
pub struct Upsample<B: ImageOps> {
    conv: Conv2d<B>,
}

impl<B: ImageOps> Upsample<B> {
    pub fn load(vb: &Weights<B>, channels: usize) -> Result<Self> {
        Ok(Upsample {
            conv: Conv2d::load3(&vb.at("upsamplers.0.conv"), channels, channels)?,
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        self.conv.forward(be, &be.upsample_nearest2x(x)?)
    }

    /// Nearest upsampling to exactly `height` x `width` (diffusers' `output_size`), then the
    /// convolution: a UNet up block matches its skip connection's size this way.
    pub fn forward_to(
        &self,
        be: &B,
        x: &B::Tensor,
        height: usize,
        width: usize,
    ) -> Result<B::Tensor> {
        self.conv
            .forward(be, &be.upsample_nearest(x, height, width)?)
    }
}
