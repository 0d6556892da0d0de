//! diffusers' `UNet2DConditionModel` (Stable Diffusion 1.x / 2.x): a sinusoidal time
//! embedding, down blocks that keep their outputs for the skip connections, a cross-attention
//! mid block, up blocks that concatenate those skips, and an output norm + conv.

use super::config::UNetConfig;
use super::nn::{Conv2d, GroupNorm, Linear, Weights};
use super::resnet::{Downsample, ResnetBlock, ResnetSpec, Upsample};
use super::transformer::{Transformer2D, TransformerSpec};
use crate::backend::image_ops::{Activation, ImageOps, TimestepEmbedding};
use anyhow::{Context, Result};

/// One down or up block: resnets, each followed by a transformer in the cross-attention
/// kinds, then an optional resampler.
struct Block<B: ImageOps> {
    resnets: Vec<ResnetBlock<B>>,
    attentions: Vec<Transformer2D<B>>,
    down: Option<Downsample<B>>,
    up: Option<Upsample<B>>,
}

struct MidBlock<B: ImageOps> {
    first: ResnetBlock<B>,
    /// Each transformer is followed by a resnet.
    rest: Vec<(Transformer2D<B>, ResnetBlock<B>)>,
}

/// SDXL's added conditioning ("text_time"): the pooled, projected text embedding
/// `[b, projection_dim]` and per sample `[orig_h, orig_w, crop_top, crop_left, h, w]`.
pub struct TextTime<'a, T> {
    pub text_embeds: &'a T,
    /// Row-major `[b, 6]`.
    pub time_ids: &'a [f32],
}

/// `add_time_proj` + `add_embedding`: sinusoids of the time ids, joined to the text embeds,
/// through two linear layers; the result is added to the time embedding.
struct AddEmbedding<B: ImageOps> {
    time_spec: TimestepEmbedding,
    linear1: Linear<B>,
    linear2: Linear<B>,
}

pub struct UNet<B: ImageOps> {
    config: UNetConfig,
    add_embedding: Option<AddEmbedding<B>>,
    time_spec: TimestepEmbedding,
    time_linear1: Linear<B>,
    time_linear2: Linear<B>,
    conv_in: Conv2d<B>,
    down: Vec<Block<B>>,
    mid: MidBlock<B>,
    up: Vec<Block<B>>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: ImageOps> UNet<B> {
    pub fn load(vb: &Weights<B>, config: &UNetConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let heads = c.heads_per_block()?;
        let layers = c.layers_per_block.per_block(n, "layers_per_block")?;
        let t_layers = c
            .transformer_layers_per_block
            .per_block(n, "transformer_layers_per_block")?;
        let temb = 4 * ch[0];
        let resnet = |input, output| ResnetSpec {
            input,
            output,
            temb: Some(temb),
            groups: c.norm_num_groups,
            eps: c.norm_eps,
        };
        let transformer = |channels, heads, layers| TransformerSpec {
            channels,
            heads,
            layers,
            context_dim: c.context_dim(),
            groups: c.norm_num_groups,
            linear_projection: c.use_linear_projection,
        };

        let mut down = Vec::with_capacity(n);
        let mut output = ch[0];
        for i in 0..n {
            let input = output;
            output = ch[i];
            let bv = vb.at("down_blocks").at(i);
            let cross = c.down_block_types[i] == "CrossAttnDownBlock2D";
            let mut block = Block::empty();
            for j in 0..layers[i] {
                let r_in = if j == 0 { input } else { output };
                block.resnets.push(ResnetBlock::load(
                    &bv.at("resnets").at(j),
                    resnet(r_in, output),
                )?);
                if cross {
                    let spec = transformer(output, heads[i], t_layers[i]);
                    block
                        .attentions
                        .push(Transformer2D::load(&bv.at("attentions").at(j), spec)?);
                }
            }
            if i + 1 < n {
                block.down = Some(Downsample::load(&bv, output)?);
            }
            down.push(block);
        }

        // UNetMidBlock2DCrossAttn (the only mid block the config accepts).
        let mv = vb.at("mid_block");
        let last = ch[n - 1];
        let spec = transformer(last, heads[n - 1], t_layers[n - 1]);
        let mid = MidBlock {
            first: ResnetBlock::load(&mv.at("resnets.0"), resnet(last, last))?,
            rest: vec![(
                Transformer2D::load(&mv.at("attentions.0"), spec)?,
                ResnetBlock::load(&mv.at("resnets.1"), resnet(last, last))?,
            )],
        };

        let mut up = Vec::with_capacity(n);
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let (rev_heads, rev_layers, rev_t_layers): (Vec<_>, Vec<_>, Vec<_>) = (
            heads.iter().rev().copied().collect(),
            layers.iter().rev().copied().collect(),
            t_layers.iter().rev().copied().collect(),
        );
        let mut output = rev[0];
        for i in 0..n {
            let prev_output = output;
            output = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let bv = vb.at("up_blocks").at(i);
            let cross = c.up_block_types[i] == "CrossAttnUpBlock2D";
            let num = rev_layers[i] + 1;
            let mut block = Block::empty();
            for j in 0..num {
                let skip = if j + 1 == num { input } else { output };
                let r_in = if j == 0 { prev_output } else { output };
                block.resnets.push(ResnetBlock::load(
                    &bv.at("resnets").at(j),
                    resnet(r_in + skip, output),
                )?);
                if cross {
                    let spec = transformer(output, rev_heads[i], rev_t_layers[i]);
                    block
                        .attentions
                        .push(Transformer2D::load(&bv.at("attentions").at(j), spec)?);
                }
            }
            if i + 1 < n {
                block.up = Some(Upsample::load(&bv, output)?);
            }
            up.push(block);
        }

        let add_embedding = match (
            c.addition_time_embed_dim,
            c.projection_class_embeddings_input_dim,
        ) {
            (Some(dim), Some(input)) if c.addition_embed_type.is_some() => Some(AddEmbedding {
                time_spec: TimestepEmbedding {
                    dim,
                    flip_sin_to_cos: c.flip_sin_to_cos,
                    downscale_freq_shift: c.freq_shift,
                },
                linear1: Linear::load(&vb.at("add_embedding.linear_1"), input, temb, true)?,
                linear2: Linear::load(&vb.at("add_embedding.linear_2"), temb, temb, true)?,
            }),
            _ => None,
        };
        Ok(UNet {
            add_embedding,
            time_spec: TimestepEmbedding {
                dim: ch[0],
                flip_sin_to_cos: c.flip_sin_to_cos,
                downscale_freq_shift: c.freq_shift,
            },
            time_linear1: Linear::load(&vb.at("time_embedding.linear_1"), ch[0], temb, true)?,
            time_linear2: Linear::load(&vb.at("time_embedding.linear_2"), temb, temb, true)?,
            conv_in: Conv2d::load3(&vb.at("conv_in"), c.in_channels, ch[0])?,
            down,
            mid,
            up,
            norm_out: GroupNorm::load(
                &vb.at("conv_norm_out"),
                ch[0],
                c.norm_num_groups,
                c.norm_eps,
            )?,
            conv_out: Conv2d::load3(&vb.at("conv_out"), ch[0], c.out_channels)?,
            config: config.clone(),
        })
    }

    /// How many times the UNet halves the latents (an odd side rounds up, and the up path
    /// matches the skip connections' sizes, so latents of any size run).
    pub fn downsamples(&self) -> usize {
        self.config.block_out_channels.len() - 1
    }

    /// The model output (noise, or v) for `sample: [b, c, h, w]` at `timestep`, conditioned on
    /// `context: [b, m, cross_attention_dim]`, plus SDXL's added conditioning where the model
    /// has it.
    pub fn forward(
        &self,
        be: &B,
        sample: &B::Tensor,
        timestep: f32,
        context: &B::Tensor,
        added: Option<&TextTime<B::Tensor>>,
    ) -> Result<B::Tensor> {
        let dims = be.dims(sample);
        anyhow::ensure!(
            dims.len() == 4 && dims[2] > 0 && dims[3] > 0,
            "UNet input {dims:?} is not NCHW"
        );
        let batch = dims[0];
        let dtype = be.dtype_of(sample);
        let t = be.timestep_embedding(&vec![timestep; batch], &self.time_spec, dtype)?;
        let emb = self.time_linear1.forward(be, &t)?;
        let mut emb = self
            .time_linear2
            .forward(be, &be.activation(&emb, Activation::Silu)?)?;
        match (&self.add_embedding, added) {
            (Some(add), Some(tt)) => {
                let aug = add.forward(be, tt, batch, dtype)?;
                emb = be.add(&emb, &aug)?;
            }
            (Some(_), None) => anyhow::bail!("this UNet needs text_embeds and time_ids (SDXL)"),
            (None, Some(_)) => anyhow::bail!("this UNet takes no added conditioning"),
            (None, None) => {}
        }
        // Every resnet applies silu to the embedding first: do it once.
        let temb = be.activation(&emb, Activation::Silu)?;

        // Every block output is a skip connection and the next block's input, so the skips
        // stack holds the running activation on top.
        let mut skips = vec![self.conv_in.forward(be, sample)?];
        for block in &self.down {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let mut x = resnet.forward(be, top(&skips)?, Some(&temb))?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(be, &x, context)?;
                }
                skips.push(x);
            }
            if let Some(d) = &block.down {
                let x = d.forward(be, top(&skips)?)?;
                skips.push(x);
            }
        }

        let mut h = self.mid.first.forward(be, top(&skips)?, Some(&temb))?;
        for (attn, resnet) in &self.mid.rest {
            h = attn.forward(be, &h, context)?;
            h = resnet.forward(be, &h, Some(&temb))?;
        }

        for block in &self.up {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().context("UNet ran out of skip connections")?;
                h = resnet.forward(be, &be.concat(&[&h, &skip], 1)?, Some(&temb))?;
                if let Some(attn) = block.attentions.get(j) {
                    h = attn.forward(be, &h, context)?;
                }
            }
            if let Some(u) = &block.up {
                // As diffusers: upsample to the size of the skip connection the next block
                // reads. That is twice the size unless a downsample halved an odd side
                // (rounding up), which latents of any multiple of 8 pixels may have.
                let next_skip = be.dims(top(&skips)?);
                h = u.forward_to(be, &h, next_skip[2], next_skip[3])?;
            }
        }
        anyhow::ensure!(
            skips.is_empty(),
            "UNet left {} skip connections",
            skips.len()
        );
        let h = self.norm_out.forward(be, &h, true)?;
        self.conv_out.forward(be, &h)
    }
}

fn top<T>(skips: &[T]) -> Result<&T> {
    skips.last().context("UNet has no activation")
}

impl<B: ImageOps> AddEmbedding<B> {
    fn forward(
        &self,
        be: &B,
        tt: &TextTime<B::Tensor>,
        batch: usize,
        dtype: crate::backend::DType,
    ) -> Result<B::Tensor> {
        anyhow::ensure!(
            !tt.time_ids.is_empty() && tt.time_ids.len() % batch == 0,
            "{} time ids for a batch of {batch}",
            tt.time_ids.len()
        );
        let per_sample = tt.time_ids.len() / batch;
        let ids = be.timestep_embedding(tt.time_ids, &self.time_spec, dtype)?;
        let ids = be.reshape(&ids, &[batch, per_sample * self.time_spec.dim])?;
        let joined = be.concat(&[tt.text_embeds, &ids], 1)?;
        let h = self.linear1.forward(be, &joined)?;
        self.linear2
            .forward(be, &be.activation(&h, Activation::Silu)?)
    }
}

impl<B: ImageOps> Block<B> {
    fn empty() -> Self {
        Block {
            resnets: Vec::new(),
            attentions: Vec::new(),
            down: None,
            up: None,
        }
    }
}
