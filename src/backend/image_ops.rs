//! The ops image models need (diffusion: CLIP text encoder, UNet, VAE), on top of the LLM op
//! set of [`Backend`]. Models in `crate::diffusion` call these and `Backend`'s ops only, so
//! the same code runs on the CPU reference backend and, later, on CUDA.
//!
//! Layouts, fixed here so that every backend agrees:
//! - images are NCHW, `[batch, channels, height, width]` (diffusers' layout); conv weights are
//!   `[out, in, kh, kw]`;
//! - token sequences are `[batch, tokens, width]`;
//! - attention reads q `[b, nq, heads * d]`, k and v `[b, nk, heads * d]` (that is
//!   `[b, n, heads, d]`, row-major), not paged;
//! - norms and activations compute in f32 whatever the storage dtype.

use super::{Backend, DType};
use anyhow::Result;

/// How [`ImageOps::timestep_embedding`] lays out its sinusoids (diffusers' `Timesteps`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepEmbedding {
    /// Width of the embedding (even).
    pub dim: usize,
    /// `[cos, sin]` instead of `[sin, cos]`.
    pub flip_sin_to_cos: bool,
    /// The frequencies are `exp(-ln(10000) * i / (dim / 2 - shift))`.
    pub downscale_freq_shift: f64,
}

impl TimestepEmbedding {
    /// The embedding of each timestep, row-major `[timesteps.len(), dim]`, in f32 as
    /// diffusers computes it.
    pub fn host_values(&self, timesteps: &[f32]) -> Vec<f32> {
        let half = self.dim / 2;
        // In f32 and in diffusers' order of operations, so the values agree to the last bit.
        let log_max_period = -(10000f64.ln()) as f32;
        let divisor = (half as f64 - self.downscale_freq_shift) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (log_max_period * i as f32 / divisor).exp())
            .collect();
        let mut out = Vec::with_capacity(timesteps.len() * self.dim);
        for &t in timesteps {
            let angles = freqs.iter().map(|&f| t * f);
            let (sin, cos): (Vec<f32>, Vec<f32>) = angles.map(|a| (a.sin(), a.cos())).unzip();
            if self.flip_sin_to_cos {
                out.extend(cos.iter().chain(&sin));
            } else {
                out.extend(sin.iter().chain(&cos));
            }
        }
        out
    }
}

/// The input index that nearest-neighbour resizing from `input` to `output` entries reads for
/// output entry `i`: PyTorch's legacy `nearest` rule, `floor(i * (input / output))` computed
/// in f32 (as PyTorch does, so the rare rounding cases agree too), clamped to the input.
pub fn nearest_source_index(i: usize, input: usize, output: usize) -> usize {
    if output == input {
        i
    } else if output == 2 * input {
        i / 2
    } else {
        let scale = input as f32 / output as f32;
        ((i as f32 * scale).floor() as usize).min(input.saturating_sub(1))
    }
}

/// The image-model op set. Every op returns a new tensor; inputs are left as they were.
pub trait ImageOps: Backend {
    /// The tensor's shape.
    fn dims(&self, t: &Self::Tensor) -> Vec<usize>;
    /// The storage dtype.
    fn dtype_of(&self, t: &Self::Tensor) -> DType;
    /// The same elements, viewed (or copied) with a new shape of the same size.
    fn reshape(&self, t: &Self::Tensor, dims: &[usize]) -> Result<Self::Tensor>;
    /// A tensor of the given f32 values, converted to `dtype`, on the device.
    fn tensor_from_f32(&self, data: Vec<f32>, dims: &[usize], dtype: DType)
        -> Result<Self::Tensor>;

    /// 2-D convolution of NCHW `x` with `w: [out, in, k, k]` and optional `b: [out]`; zero
    /// padding on every side.
    fn conv2d(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self::Tensor>;
    /// Group norm of `x: [n, c, ...]` over `groups` groups of channels, then the per-channel
    /// affine `weight`, `bias: [c]`. With `silu`, applies SiLU after (the common fusion).
    fn group_norm(
        &self,
        x: &Self::Tensor,
        groups: usize,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f64,
        silu: bool,
    ) -> Result<Self::Tensor>;
    /// `x W^T + b` over the last dimension of a tensor of any rank.
    fn linear_nd(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let mut dims = self.dims(x);
        let width = dims.pop().unwrap_or(1);
        let rows: usize = dims.iter().product();
        let y = self.linear(&self.reshape(x, &[rows, width])?, w, b)?;
        dims.push(self.dims(&y)[1]);
        self.reshape(&y, &dims)
    }

    /// GEGLU: the last dimension holds `[hidden, gate]`; returns `hidden * gelu(gate)`.
    fn geglu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// `alpha * a + beta * b`, elementwise, same shapes (residuals, guidance, scheduler steps).
    fn lincomb(
        &self,
        a: &Self::Tensor,
        alpha: f32,
        b: &Self::Tensor,
        beta: f32,
    ) -> Result<Self::Tensor>;
    /// `s * x`, elementwise.
    fn scale(&self, x: &Self::Tensor, s: f32) -> Result<Self::Tensor> {
        self.lincomb(x, s, x, 0.0)
    }
    /// `a + b`, elementwise, same shapes.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        self.lincomb(a, 1.0, b, 1.0)
    }
    /// Adds `bias: [n, c]` to every pixel of NCHW `x` (a resnet's time embedding).
    fn add_channel_bias(&self, x: &Self::Tensor, bias: &Self::Tensor) -> Result<Self::Tensor>;
    /// `x: [rows, w]` plus `row: [w]` added to every row (position embeddings).
    fn add_row(&self, x: &Self::Tensor, row: &Self::Tensor) -> Result<Self::Tensor>;

    /// Nearest-neighbour upsampling of NCHW `x` by 2 in height and width.
    fn upsample_nearest2x(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        let dims = self.dims(x);
        anyhow::ensure!(dims.len() == 4, "upsample_nearest2x: {dims:?} is not NCHW");
        self.upsample_nearest(x, 2 * dims[2], 2 * dims[3])
    }
    /// Nearest-neighbour resize of NCHW `x` to `height` x `width`, as PyTorch's
    /// `F.interpolate(mode="nearest", size=...)`: output row `i` reads input row
    /// [`nearest_source_index`]`(i, in, out)`, and the same for columns. diffusers' UNet
    /// upsamples to its skip connection's size this way when a downsample halved an odd side.
    fn upsample_nearest(
        &self,
        x: &Self::Tensor,
        height: usize,
        width: usize,
    ) -> Result<Self::Tensor>;
    /// Concatenation along `axis` (channels of a skip connection: 1; a batch: 0).
    fn concat(&self, parts: &[&Self::Tensor], axis: usize) -> Result<Self::Tensor>;
    /// `len` entries of `axis` from `start` on, as a new tensor.
    fn narrow(
        &self,
        x: &Self::Tensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor>;
    /// NCHW `[n, c, h, w]` to tokens `[n, h * w, c]`.
    fn nchw_to_tokens(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Tokens `[n, h * w, c]` back to NCHW `[n, c, h, w]`.
    fn tokens_to_nchw(&self, x: &Self::Tensor, h: usize, w: usize) -> Result<Self::Tensor>;

    /// Softmax attention `softmax(q k^T / sqrt(d)) v` per batch entry and head, with q
    /// `[b, nq, heads * d]` and k, v `[b, nk, heads * d]`; `causal` masks keys after the query
    /// (needs `nq == nk`). Returns `[b, nq, heads * d]`.
    fn dense_attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        causal: bool,
    ) -> Result<Self::Tensor>;

    /// Sinusoidal embeddings of the timesteps, `[timesteps.len(), spec.dim]`, in `dtype`.
    fn timestep_embedding(
        &self,
        timesteps: &[f32],
        spec: &TimestepEmbedding,
        dtype: DType,
    ) -> Result<Self::Tensor> {
        let values = spec.host_values(timesteps);
        self.tensor_from_f32(values, &[timesteps.len(), spec.dim], dtype)
    }
}

/// Elementwise activations of the image models and of ungated LLM MLPs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Silu,
    /// Exact GELU (erf), PyTorch's default.
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// `max(x, 0)` (OPT).
    Relu,
    /// `max(x, 0)^2` (Nemotron, Arcee's AFM).
    Relu2,
    /// xIELU (Apertus), with a layer's learned parameters.
    Xielu(Xielu),
}

/// xIELU's parameters as the activation applies them (the learned ones already through
/// their softplus): `alpha_p x^2 + beta x` for x > 0, else
/// `alpha_n (expm1(min(x, eps)) - x) + beta x`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Xielu {
    pub alpha_p: f32,
    pub alpha_n: f32,
    pub beta: f32,
    pub eps: f32,
}

impl Xielu {
    /// transformers' `XIELUActivation` from its stored parameters: `alpha_p` and `alpha_n`
    /// before their softplus, `beta`, `eps`. It keeps them in bf16, so the softplus results
    /// and `beta + softplus(alpha_n)` are rounded to bf16 as there.
    pub fn from_stored(alpha_p: f32, alpha_n: f32, beta: f32, eps: f32) -> Xielu {
        let bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
        // torch's softplus: x itself above 20, where log1p(exp(x)) is x in f32.
        let softplus = |v: f32| if v > 20.0 { v } else { v.exp().ln_1p() };
        Xielu {
            alpha_p: bf16(softplus(alpha_p)),
            alpha_n: bf16(beta + bf16(softplus(alpha_n))),
            beta,
            eps,
        }
    }

    /// The stored parameters of `XIELUActivation()`'s defaults (alpha_p 0.8, alpha_n 0.8,
    /// beta 0.5, eps -1e-6, each stored in bf16), for configs whose checkpoints lack them.
    pub fn transformers_default() -> Xielu {
        let bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
        let inverse_softplus = |v: f32| bf16(bf16(bf16(v).exp_m1()).ln());
        Xielu::from_stored(
            inverse_softplus(0.8),
            inverse_softplus(0.8 - 0.5),
            bf16(0.5),
            bf16(-1e-6),
        )
    }

    /// The activation of one value.
    pub fn apply(&self, x: f32) -> f32 {
        if x > 0.0 {
            self.alpha_p * x * x + self.beta * x
        } else {
            (x.min(self.eps).exp_m1() - x) * self.alpha_n + self.beta * x
        }
    }
}

impl Activation {
    /// Parses HF's `hidden_act` / diffusers' `act_fn` names.
    pub fn from_hf(name: &str) -> Result<Activation> {
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "relu2" => Activation::Relu2,
            // Its parameters are per layer, in the checkpoint: the loader sets them.
            "xielu" => Activation::Xielu(Xielu::transformers_default()),
            other => anyhow::bail!("activation '{other}' is not supported"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `XIELUActivation()` (bf16 parameters): softplus(alpha_p) = 0.80078125
    /// and beta + softplus(alpha_n) = 0.80078125 after bf16 rounding; values by its formula.
    #[test]
    fn xielu_defaults_and_values_follow_transformers() {
        let p = Xielu::transformers_default();
        assert_eq!(
            (p.alpha_p, p.alpha_n, p.beta),
            (0.80078125, 0.80078125, 0.5)
        );
        assert_eq!(p.eps, half::bf16::from_f32(-1e-6).to_f32());
        assert!((p.apply(2.0) - (0.80078125 * 4.0 + 1.0)).abs() < 1e-6);
        let neg = ((-2.0f32).exp_m1() + 2.0) * 0.80078125 - 1.0;
        assert!((p.apply(-2.0) - neg).abs() < 1e-6);
        // At 0 and just below, min(x, eps) keeps expm1's argument at eps.
        assert!(p.apply(0.0).abs() < 1e-6);
    }

    #[test]
    fn timestep_embedding_matches_the_formula() {
        let spec = TimestepEmbedding {
            dim: 4,
            flip_sin_to_cos: true,
            downscale_freq_shift: 0.0,
        };
        let v = spec.host_values(&[10.0]);
        // freqs: exp(0) = 1 and exp(-ln(10000) / 2) = 0.01.
        let expect = [10f32.cos(), 0.1f32.cos(), 10f32.sin(), 0.1f32.sin()];
        for (a, b) in v.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
    }

    #[test]
    fn nearest_source_index_follows_pytorch() {
        // F.interpolate(torch.arange(3.).view(1, 1, 1, 3), size=(1, 5)) reads 0, 0, 1, 1, 2;
        // size 6 doubles; size 2 reads 0, 1 (floor(1 * 1.5)).
        let read = |input, output| -> Vec<usize> {
            (0..output)
                .map(|i| nearest_source_index(i, input, output))
                .collect()
        };
        assert_eq!(read(3, 5), [0, 0, 1, 1, 2]);
        assert_eq!(read(3, 6), [0, 0, 1, 1, 2, 2]);
        assert_eq!(read(3, 2), [0, 1]);
        assert_eq!(read(4, 4), [0, 1, 2, 3]);
        assert_eq!(read(8, 15), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7]);
    }

    #[test]
    fn unknown_activation_is_an_error() {
        assert!(Activation::from_hf("relu6").is_err());
        assert_eq!(
            Activation::from_hf("quick_gelu").unwrap(),
            Activation::QuickGelu
        );
    }
}
