//! The UNet's arithmetic, counted analytically from its config and the latent size (for the
//! image bench's achieved TFLOP/s), and parameter counts of a pipeline's components (by
//! loading them against shape-only weights, so the count is what kiln loads).
//!
//! The count, for one UNet forward of batch `B` (a multiply-add is 2 FLOPs):
//! - a k x k convolution from `Cin` to `Cout` channels with an `H' x W'` output:
//!   `2 * B * H' * W' * Cin * Cout * k^2` (1x1 `proj_in` / `proj_out` and shortcuts too);
//! - a linear layer from `in` to `out` over `T` rows: `2 * T * in * out` (T is `B * tokens`
//!   in the transformers, `B` for the time embedding and each resnet's `time_emb_proj`);
//! - attention of `n` queries over `m` keys, `inner` = heads * head width: `2 * B * n * m *
//!   inner` for `Q K^T` plus as much for `P V` (self-attention: `n = m = H * W`; cross:
//!   `m` = the text's tokens, 77).
//!
//! Not counted: norms, activations, softmax, residual adds, resampling copies and the
//! sinusoidal embeddings (memory-bound, well under 1% of the total for SD shapes).

use super::config::UNetConfig;
use anyhow::Result;

/// FLOPs of one forward by kind, and the parameters the walk met.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub conv: f64,
    pub linear: f64,
    pub attention: f64,
    /// Parameters of every layer walked (weights, biases, norm scales and shifts).
    pub params: u64,
}

impl Cost {
    pub fn flops(&self) -> f64 {
        self.conv + self.linear + self.attention
    }

    fn conv(&mut self, b: usize, h: usize, w: usize, cin: usize, cout: usize, k: usize) {
        self.conv += 2.0 * (b * h * w) as f64 * (cin * cout * k * k) as f64;
        self.params += (cin * cout * k * k + cout) as u64;
    }

    fn linear(&mut self, rows: usize, input: usize, output: usize, bias: bool) {
        self.linear += 2.0 * rows as f64 * (input * output) as f64;
        self.params += (input * output + if bias { output } else { 0 }) as u64;
    }

    fn norm(&mut self, channels: usize) {
        self.params += 2 * channels as u64;
    }

    fn attention(&mut self, b: usize, n: usize, m: usize, inner: usize) {
        self.attention += 4.0 * (b * n) as f64 * (m * inner) as f64;
    }
}

/// The input of one UNet forward.
#[derive(Clone, Copy, Debug)]
pub struct UNetInput {
    /// Samples in the UNet batch (with classifier-free guidance, twice the images).
    pub batch: usize,
    /// Latent height and width.
    pub height: usize,
    pub width: usize,
    /// Tokens of the text conditioning (77 for CLIP).
    pub context_len: usize,
}

/// A downsampler's output side: 3x3, stride 2, padding 1.
fn halved(side: usize) -> usize {
    (side + 2 - 3) / 2 + 1
}

/// The cost of one forward of the UNet `c` describes, walked as `unet.rs` builds it.
pub fn unet_cost(c: &UNetConfig, x: UNetInput) -> Result<Cost> {
    c.validate()?;
    let mut cost = Cost::default();
    let b = x.batch;
    let ch = &c.block_out_channels;
    let n = ch.len();
    let layers = c.layers_per_block.per_block(n, "layers_per_block")?;
    let t_layers = c
        .transformer_layers_per_block
        .per_block(n, "transformer_layers_per_block")?;
    let temb = 4 * ch[0];
    let ctx = c.context_dim();
    let m = x.context_len;

    let resnet = |cost: &mut Cost, cin: usize, cout: usize, h: usize, w: usize| {
        cost.norm(cin);
        cost.conv(b, h, w, cin, cout, 3);
        cost.linear(b, temb, cout, true);
        cost.norm(cout);
        cost.conv(b, h, w, cout, cout, 3);
        if cin != cout {
            cost.conv(b, h, w, cin, cout, 1);
        }
    };
    // Transformer2DModel with `layers` BasicTransformerBlocks of width `c`.
    let transformer = |cost: &mut Cost, ch: usize, layers: usize, h: usize, w: usize| {
        let tokens = b * h * w;
        let projection = |cost: &mut Cost| {
            if c.use_linear_projection {
                cost.linear(tokens, ch, ch, true);
            } else {
                cost.conv(b, h, w, ch, ch, 1);
            }
        };
        cost.norm(ch);
        projection(cost);
        for _ in 0..layers {
            cost.norm(ch);
            for _ in 0..3 {
                cost.linear(tokens, ch, ch, false); // to_q, to_k, to_v
            }
            cost.attention(b, h * w, h * w, ch);
            cost.linear(tokens, ch, ch, true); // to_out
            cost.norm(ch);
            cost.linear(tokens, ch, ch, false); // to_q
            cost.linear(b * m, ctx, ch, false); // to_k
            cost.linear(b * m, ctx, ch, false); // to_v
            cost.attention(b, h * w, m, ch);
            cost.linear(tokens, ch, ch, true); // to_out
            cost.norm(ch);
            cost.linear(tokens, ch, 8 * ch, true); // GEGLU: value and gate, 4 * ch each
            cost.linear(tokens, 4 * ch, ch, true);
        }
        projection(cost);
    };
    // Heads split `inner` into slices: they do not change the count.

    cost.linear(b, ch[0], temb, true);
    cost.linear(b, temb, temb, true);
    // SDXL's add_embedding (validate() checks both dims are there with text_time).
    if let (Some(_), Some(input)) = (
        &c.addition_embed_type,
        c.projection_class_embeddings_input_dim,
    ) {
        cost.linear(b, input, temb, true);
        cost.linear(b, temb, temb, true);
    }

    let (mut h, mut w) = (x.height, x.width);
    cost.conv(b, h, w, c.in_channels, ch[0], 3);
    // (channels, height, width) of each skip connection.
    let mut skips = vec![(ch[0], h, w)];
    let mut output = ch[0];
    for i in 0..n {
        let input = output;
        output = ch[i];
        let cross = c.down_block_types[i] == "CrossAttnDownBlock2D";
        for j in 0..layers[i] {
            resnet(&mut cost, if j == 0 { input } else { output }, output, h, w);
            if cross {
                transformer(&mut cost, output, t_layers[i], h, w);
            }
            skips.push((output, h, w));
        }
        if i + 1 < n {
            let (h2, w2) = (halved(h), halved(w));
            cost.conv(b, h2, w2, output, output, 3);
            (h, w) = (h2, w2);
            skips.push((output, h, w));
        }
    }

    let last = ch[n - 1];
    resnet(&mut cost, last, last, h, w);
    transformer(&mut cost, last, t_layers[n - 1], h, w);
    resnet(&mut cost, last, last, h, w);

    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    let rev_layers: Vec<usize> = layers.iter().rev().copied().collect();
    let rev_t_layers: Vec<usize> = t_layers.iter().rev().copied().collect();
    let mut output = rev[0];
    for i in 0..n {
        let prev_output = output;
        output = rev[i];
        let cross = c.up_block_types[i] == "CrossAttnUpBlock2D";
        for j in 0..rev_layers[i] + 1 {
            let (skip, sh, sw) = skips
                .pop()
                .ok_or_else(|| anyhow::anyhow!("the UNet walk ran out of skips"))?;
            debug_assert_eq!((sh, sw), (h, w));
            let r_in = if j == 0 { prev_output } else { output };
            resnet(&mut cost, r_in + skip, output, h, w);
            if cross {
                transformer(&mut cost, output, rev_t_layers[i], h, w);
            }
        }
        if i + 1 < n {
            let &(_, nh, nw) = skips
                .last()
                .ok_or_else(|| anyhow::anyhow!("the UNet walk ran out of skips"))?;
            (h, w) = (nh, nw);
            cost.conv(b, h, w, output, output, 3);
        }
    }
    cost.norm(ch[0]);
    cost.conv(b, h, w, ch[0], c.out_channels, 3);
    Ok(cost)
}

/// Parameters of a pipeline's components as kiln loads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParameterCounts {
    pub text_encoder: u64,
    /// SDXL's second text encoder.
    pub text_encoder_2: Option<u64>,
    pub unet: u64,
    /// The VAE's decoder and `post_quant_conv` (kiln does not load the encoder).
    pub vae_decoder: u64,
}

/// Weights of the asked shapes that hold one element each (broadcast), counting what is
/// asked: the models load without allocating their size.
struct ShapeCounter {
    count: std::sync::atomic::AtomicU64,
    projection: bool,
}

impl crate::model::weights::WeightSource for ShapeCounter {
    fn tensor(
        &self,
        _name: &str,
        shape: &[usize],
        dtype: crate::backend::DType,
    ) -> Result<candle_core::Tensor> {
        let n: usize = shape.iter().product();
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        let one = candle_core::Tensor::zeros((), dtype.to_candle(), &candle_core::Device::Cpu)?;
        Ok(one.broadcast_as(shape)?)
    }

    fn contains(&self, name: &str) -> bool {
        self.projection || name != "text_projection.weight"
    }
}

/// Loads each component of the pipeline in `files` against shape-only weights (on the CPU
/// backend, without allocating them) and counts the parameters.
pub fn parameter_counts(files: &super::presets::PipelineFiles) -> Result<ParameterCounts> {
    use super::config::{ClipConfig, ModelIndex, VaeConfig};
    use super::nn::Weights;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::DType;
    let be = CpuBackend::new();
    let index = ModelIndex::from_files(files)?;
    let counter = |component: &str| ShapeCounter {
        count: Default::default(),
        projection: index
            .components
            .get(component)
            .is_some_and(|class| class == "CLIPTextModelWithProjection"),
    };
    let total = |c: &ShapeCounter| c.count.load(std::sync::atomic::Ordering::Relaxed);
    let clip = |component: &str| -> Result<u64> {
        let src = counter(component);
        let config = ClipConfig::from_files(files, component)?;
        super::clip::ClipTextModel::load(&Weights::new(&be, &src, DType::F32), &config)?;
        Ok(total(&src))
    };
    let unet_src = counter("unet");
    super::unet::UNet::load(
        &Weights::new(&be, &unet_src, DType::F32),
        &UNetConfig::from_files(files)?,
    )?;
    let vae_src = counter("vae");
    super::vae::VaeDecoder::load(
        &Weights::new(&be, &vae_src, DType::F32),
        &VaeConfig::from_files(files)?,
    )?;
    Ok(ParameterCounts {
        text_encoder: clip("text_encoder")?,
        text_encoder_2: match index.kind {
            super::config::PipelineKind::StableDiffusionXL => Some(clip("text_encoder_2")?),
            super::config::PipelineKind::StableDiffusion => None,
        },
        unet: total(&unet_src),
        vae_decoder: total(&vae_src),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::presets::{preset, PipelineFiles, PRESETS};
    use std::path::PathBuf;

    /// The UNet's parameters as kiln loads them.
    fn loaded_unet_params(config: &UNetConfig) -> u64 {
        let src = ShapeCounter {
            count: Default::default(),
            projection: false,
        };
        let be = crate::backend::cpu::CpuBackend::new();
        let vb = super::super::nn::Weights::new(&be, &src, crate::backend::DType::F32);
        super::super::unet::UNet::load(&vb, config).unwrap();
        src.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn at(batch: usize, side: usize) -> UNetInput {
        UNetInput {
            batch,
            height: side,
            width: side,
            context_len: 77,
        }
    }

    /// The published sizes, which diffusers' `from_config` (0.35) and transformers' (4.57)
    /// give for these very config files: UNet, text encoder, VAE decoder + post_quant_conv.
    #[test]
    fn preset_parameter_counts_are_the_real_models() {
        for p in &PRESETS {
            let files = PipelineFiles::Preset(p);
            let counts = parameter_counts(&files).unwrap();
            let unet = UNetConfig::from_files(&files).unwrap();
            let walk = unet_cost(&unet, at(2, 64)).unwrap();
            println!(
                "{}: UNet {} ({:.1}M), text encoder {} ({:.1}M), VAE decoder {} ({:.1}M); \
                 UNet {:.1} GFLOP per CFG step at 512x512",
                p.name,
                counts.unet,
                counts.unet as f64 / 1e6,
                counts.text_encoder,
                counts.text_encoder as f64 / 1e6,
                counts.vae_decoder,
                counts.vae_decoder as f64 / 1e6,
                walk.flops() / 1e9
            );
            let expected = match p.name {
                "sd-1.5" => (859_520_964, 123_060_480),
                "sd-turbo" => (865_910_724, 340_387_840),
                other => panic!("no expected size for {other}"),
            };
            assert_eq!((counts.unet, counts.text_encoder), expected, "{}", p.name);
            // The full AutoencoderKL is 83,653,863: 49,490,199 of it is the decoder side.
            assert_eq!(counts.vae_decoder, 49_490_199, "{}", p.name);
            assert_eq!(
                walk.params, counts.unet,
                "{}: the FLOP walk's layers",
                p.name
            );
        }
    }

    #[test]
    fn flop_walk_meets_the_layers_kiln_loads() {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/diffusion")
            .join("tiny-sdxl/unet/config.json");
        let config = UNetConfig::read(&fixture).unwrap();
        // Odd latent sides too: the downsamplers round up and the up path follows.
        for side in [8, 11] {
            let walk = unet_cost(&config, at(2, side)).unwrap();
            assert_eq!(walk.params, loaded_unet_params(&config));
            assert!(walk.flops() > 0.0);
        }
    }

    /// One block of 32 channels, 4x4 latents, batch 1, 3 text tokens of width 16, counted by
    /// hand (T = 16 pixels, time embedding 128 wide).
    #[test]
    fn flop_count_matches_a_hand_count() {
        let config: UNetConfig = serde_json::from_str(
            r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [32],
                "down_block_types": ["CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D"], "layers_per_block": 1,
                "cross_attention_dim": 16, "attention_head_dim": 2, "norm_num_groups": 8}"#,
        )
        .unwrap();
        let cost = unet_cost(
            &config,
            UNetInput {
                batch: 1,
                height: 4,
                width: 4,
                context_len: 3,
            },
        )
        .unwrap();
        let t = 16.0;
        // conv_in, 3 resnets 32->32 (down, mid x2) with two 3x3 convs, 2 up resnets 64->32
        // (two 3x3 convs and a 1x1 shortcut), 4 transformers' 1x1 proj_in + proj_out, conv_out.
        let resnet_32 = 2.0 * (2.0 * t * 32.0 * 32.0 * 9.0);
        let resnet_64 =
            2.0 * t * 64.0 * 32.0 * 9.0 + 2.0 * t * 32.0 * 32.0 * 9.0 + 2.0 * t * 64.0 * 32.0;
        let projections = 2.0 * (2.0 * t * 32.0 * 32.0);
        let conv = 2.0 * t * 4.0 * 32.0 * 9.0
            + 3.0 * resnet_32
            + 2.0 * resnet_64
            + 4.0 * projections
            + 2.0 * t * 32.0 * 4.0 * 9.0;
        // Time embedding (32->128->128), 5 resnets' time_emb_proj (128->32) on one row;
        // per transformer: self-attention q, k, v, out; cross q, out on 16 tokens and k, v
        // from 3 tokens of 16; GEGLU 32->256 and 128->32.
        let transformer = 4.0 * (2.0 * t * 32.0 * 32.0)
            + 2.0 * (2.0 * t * 32.0 * 32.0)
            + 2.0 * (2.0 * 3.0 * 16.0 * 32.0)
            + 2.0 * t * 32.0 * 256.0
            + 2.0 * t * 128.0 * 32.0;
        let linear = 2.0 * 32.0 * 128.0
            + 2.0 * 128.0 * 128.0
            + 5.0 * (2.0 * 128.0 * 32.0)
            + 4.0 * transformer;
        // QK^T and PV: 16x16 (self) and 16x3 (cross) scores of width 32, four transformers.
        let attention = 4.0 * (4.0 * t * 16.0 * 32.0 + 4.0 * t * 3.0 * 32.0);
        assert_eq!(cost.conv, conv);
        assert_eq!(cost.linear, linear);
        assert_eq!(cost.attention, attention);
        assert_eq!(
            (conv, linear, attention),
            (4_005_888.0, 2_465_792.0, 155_648.0)
        );
        assert_eq!(cost.params, loaded_unet_params(&config));
    }

    #[test]
    fn sd15_unet_costs_about_what_is_published() {
        // Commonly quoted: about 0.8 TFLOP (0.4 T multiply-adds) per sample at 512x512 for
        // SD 1.5's UNet, so about 1.6 TFLOP per step with CFG (batch 2).
        let files = PipelineFiles::Preset(preset("sd-1.5").unwrap());
        let config = UNetConfig::from_files(&files).unwrap();
        let one = unet_cost(&config, at(1, 64)).unwrap().flops() / 1e12;
        assert!((0.6..1.0).contains(&one), "{one} TFLOP");
        let cfg = unet_cost(&config, at(2, 64)).unwrap().flops() / 1e12;
        assert!((cfg - 2.0 * one).abs() < 1e-9, "{cfg} TFLOP");
    }
}
