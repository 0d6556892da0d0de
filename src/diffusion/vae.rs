//! The decoder of diffusers' `AutoencoderKL`: `post_quant_conv`, `conv_in`, a mid block
//! (resnet, single-head spatial self-attention, resnet), up blocks of resnets with 2x
//! upsampling, and an output norm + conv to RGB.

use super::config::VaeConfig;
use super::nn::{Attention, Conv2d, GroupNorm, Weights};
use super::resnet::{ResnetBlock, ResnetSpec, Upsample};
use crate::backend::image_ops::ImageOps;
use anyhow::Result;

/// The mid block's attention: group norm, one head over all pixels, plus the input.
struct SpatialAttention<B: ImageOps> {
    norm: GroupNorm<B>,
    attn: Attention<B>,
}

impl<B: ImageOps> SpatialAttention<B> {
    fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let dims = be.dims(x);
        let tokens = be.nchw_to_tokens(&self.norm.forward(be, x, false)?)?;
        let y = self.attn.forward(be, &tokens, None)?;
        be.add(&be.tokens_to_nchw(&y, dims[2], dims[3])?, x)
    }
}

struct UpBlock<B: ImageOps> {
    resnets: Vec<ResnetBlock<B>>,
    up: Option<Upsample<B>>,
}

pub struct VaeDecoder<B: ImageOps> {
    config: VaeConfig,
    post_quant_conv: Option<Conv2d<B>>,
    conv_in: Conv2d<B>,
    mid_first: ResnetBlock<B>,
    mid_attn: Option<SpatialAttention<B>>,
    mid_second: ResnetBlock<B>,
    up: Vec<UpBlock<B>>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: ImageOps> VaeDecoder<B> {
    /// Loads `post_quant_conv.*` and `decoder.*` (the encoder's weights are not read).
    pub fn load(vb: &Weights<B>, config: &VaeConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let eps = 1e-6;
        let groups = c.norm_num_groups;
        let latent = c.latent_channels;
        let dec = vb.at("decoder");
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let top = rev[0];
        let resnet = |input, output| ResnetSpec {
            input,
            output,
            temb: None,
            groups,
            eps,
        };
        let mid = dec.at("mid_block");
        let mid_attn = if c.mid_block_add_attention {
            let av = mid.at("attentions.0");
            Some(SpatialAttention {
                norm: GroupNorm::load(&av.at("group_norm"), top, groups, eps)?,
                attn: Attention::load(&av, top, top, top, 1, true)?,
            })
        } else {
            None
        };
        let mut up = Vec::with_capacity(rev.len());
        let mut output = top;
        for (i, &channels) in rev.iter().enumerate() {
            let input = output;
            output = channels;
            let bv = dec.at("up_blocks").at(i);
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| {
                    let r_in = if j == 0 { input } else { output };
                    ResnetBlock::load(&bv.at("resnets").at(j), resnet(r_in, output))
                })
                .collect::<Result<_>>()?;
            let up_sampler = if i + 1 < rev.len() {
                Some(Upsample::load(&bv, output)?)
            } else {
                None
            };
            up.push(UpBlock {
                resnets,
                up: up_sampler,
            });
        }
        let bottom = c.block_out_channels[0];
        Ok(VaeDecoder {
            post_quant_conv: if c.use_post_quant_conv {
                Some(Conv2d::load(
                    &vb.at("post_quant_conv"),
                    latent,
                    latent,
                    1,
                    1,
                    0,
                )?)
            } else {
                None
            },
            conv_in: Conv2d::load3(&dec.at("conv_in"), latent, top)?,
            mid_first: ResnetBlock::load(&mid.at("resnets.0"), resnet(top, top))?,
            mid_attn,
            mid_second: ResnetBlock::load(&mid.at("resnets.1"), resnet(top, top))?,
            up,
            norm_out: GroupNorm::load(&dec.at("conv_norm_out"), bottom, groups, eps)?,
            conv_out: Conv2d::load3(&dec.at("conv_out"), bottom, c.out_channels)?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Decodes latents already divided by the scaling factor (`vae.decode(z)` in diffusers):
    /// `[b, latent, h, w]` to `[b, out, h * f, w * f]`, roughly in [-1, 1].
    pub fn decode(&self, be: &B, z: &B::Tensor) -> Result<B::Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(be, z)?,
            None => be.reshape(z, &be.dims(z))?,
        };
        let mut h = self.conv_in.forward(be, &z)?;
        h = self.mid_first.forward(be, &h, None)?;
        if let Some(attn) = &self.mid_attn {
            h = attn.forward(be, &h)?;
        }
        h = self.mid_second.forward(be, &h, None)?;
        for block in &self.up {
            for resnet in &block.resnets {
                h = resnet.forward(be, &h, None)?;
            }
            if let Some(u) = &block.up {
                h = u.forward(be, &h)?;
            }
        }
        let h = self.norm_out.forward(be, &h, true)?;
        self.conv_out.forward(be, &h)
    }
}
