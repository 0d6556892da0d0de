//! [`ImageOps`] on the CPU: candle tensor ops, norms and softmax in f32.

use super::CpuBackend;
use crate::backend::image_ops::{nearest_source_index, Activation, ImageOps};
use crate::backend::DType;
use anyhow::{Context, Result};
use candle_core::{DType as CDType, Device, Tensor, D};

/// Bytes of f32 attention scores one chunk of queries may take ([`CpuBackend::dense_attention`]).
/// Under glibc's largest mmap threshold (32 MiB), so the chunks' buffers are reused from the
/// heap: 256 MiB chunks were mapped and unmapped each time, and page faults took most of
/// a 65,536-token attention's time.
const SCORE_BYTES: usize = 16 << 20;

pub(super) fn f32_of(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(CDType::F32)?)
}

/// Softmax over the last dimension, in f32.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

pub(super) fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        // x * sigmoid(1.702 x) = x / (1 + exp(-1.702 x))
        Activation::QuickGelu => (x / (x.affine(-1.702, 0.0)?.exp()? + 1.0)?)?,
        Activation::Relu => x.relu()?,
        Activation::Relu2 => x.relu()?.sqr()?,
        Activation::Xielu(p) => {
            let values: Vec<f32> = x
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            let out: Vec<f32> = values.iter().map(|&v| p.apply(v)).collect();
            Tensor::from_vec(out, x.dims(), x.device())?.to_dtype(x.dtype())?
        }
    })
}

impl ImageOps for CpuBackend {
    fn dims(&self, t: &Tensor) -> Vec<usize> {
        t.dims().to_vec()
    }

    fn dtype_of(&self, t: &Tensor) -> DType {
        match t.dtype() {
            CDType::F16 => DType::F16,
            CDType::BF16 => DType::BF16,
            _ => DType::F32,
        }
    }

    fn reshape(&self, t: &Tensor, dims: &[usize]) -> Result<Tensor> {
        t.reshape(dims)
            .with_context(|| format!("reshape {:?} to {dims:?}", t.dims()))
    }

    fn tensor_from_f32(&self, data: Vec<f32>, dims: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(Tensor::from_vec(data, dims, &Device::Cpu)?.to_dtype(dtype.to_candle())?)
    }

    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        let y = x
            .contiguous()?
            .conv2d(w, padding, stride, 1, 1)
            .with_context(|| format!("conv2d of {:?} with {:?}", x.dims(), w.dims()))?;
        Ok(match b {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
            None => y,
        })
    }

    fn group_norm(
        &self,
        x: &Tensor,
        groups: usize,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        anyhow::ensure!(dims.len() >= 2, "group_norm: rank {} < 2", dims.len());
        let (n, c) = (dims[0], dims[1]);
        anyhow::ensure!(
            groups > 0 && c % groups == 0,
            "group_norm: {c} channels do not split into {groups} groups"
        );
        let xf = f32_of(x)?.reshape((n, groups, ()))?;
        let mean = xf.mean_keepdim(2)?;
        let centred = xf.broadcast_sub(&mean)?;
        // Biased variance, as torch's group_norm.
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .reshape(dims.clone())?;
        let mut affine_shape = vec![1, c];
        affine_shape.resize(dims.len(), 1);
        let y = normed
            .broadcast_mul(&f32_of(weight)?.reshape(affine_shape.clone())?)?
            .broadcast_add(&f32_of(bias)?.reshape(affine_shape)?)?;
        let y = if silu { y.silu()? } else { y };
        Ok(y.to_dtype(x.dtype())?)
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        let width = x.dim(D::Minus1)?;
        anyhow::ensure!(width % 2 == 0, "geglu: odd width {width}");
        let xf = f32_of(x)?;
        let hidden = xf.narrow(D::Minus1, 0, width / 2)?;
        let gate = xf.narrow(D::Minus1, width / 2, width / 2)?;
        Ok((hidden * gate.gelu_erf()?)?.to_dtype(x.dtype())?)
    }

    fn lincomb(&self, a: &Tensor, alpha: f32, b: &Tensor, beta: f32) -> Result<Tensor> {
        anyhow::ensure!(
            a.dims() == b.dims(),
            "lincomb: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        );
        let y = (f32_of(a)?.affine(alpha as f64, 0.0)? + f32_of(b)?.affine(beta as f64, 0.0)?)?;
        Ok(y.to_dtype(a.dtype())?)
    }

    fn scale(&self, x: &Tensor, s: f32) -> Result<Tensor> {
        Ok(x.affine(s as f64, 0.0)?)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        anyhow::ensure!(
            a.dims() == b.dims(),
            "add: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        );
        Ok((a + b)?)
    }

    fn add_channel_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (n, c) = bias.dims2()?;
        anyhow::ensure!(
            x.dims().len() == 4 && x.dim(0)? == n && x.dim(1)? == c,
            "add_channel_bias: {:?} and bias {:?}",
            x.dims(),
            bias.dims()
        );
        Ok(x.broadcast_add(&bias.reshape((n, c, 1, 1))?)?)
    }

    fn add_row(&self, x: &Tensor, row: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_add(row)?)
    }

    fn upsample_nearest(&self, x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        anyhow::ensure!(
            height > 0 && width > 0,
            "upsample_nearest: {h}x{w} to {height}x{width}"
        );
        if (height, width) == (2 * h, 2 * w) {
            return Ok(x.upsample_nearest2d(height, width)?);
        }
        // Any other size: gather rows then columns by PyTorch's index rule (candle's own
        // resize computes the indices in f64, which could round differently).
        let gather = |x: &Tensor, axis: usize, input: usize, output: usize| -> Result<Tensor> {
            let idx: Vec<u32> = (0..output)
                .map(|i| nearest_source_index(i, input, output) as u32)
                .collect();
            let idx = Tensor::from_vec(idx, output, x.device())?;
            Ok(x.index_select(&idx, axis)?)
        };
        let rows = gather(&x.contiguous()?, 2, h, height)?;
        gather(&rows, 3, w, width)
    }

    fn concat(&self, parts: &[&Tensor], axis: usize) -> Result<Tensor> {
        Tensor::cat(parts, axis).context("concat")
    }

    fn narrow(&self, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(x.narrow(axis, start, len)?.contiguous()?)
    }

    fn nchw_to_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        Ok(x.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()?)
    }

    fn tokens_to_nchw(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (n, hw, c) = x.dims3()?;
        anyhow::ensure!(hw == h * w, "tokens_to_nchw: {hw} tokens for {h}x{w}");
        Ok(x.transpose(1, 2)?.contiguous()?.reshape((n, c, h, w))?)
    }

    fn dense_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        causal: bool,
    ) -> Result<Tensor> {
        chunked_attention(q, k, v, heads, causal, SCORE_BYTES)
    }
}

/// `softmax(q k^T / sqrt(d)) v` per batch entry and head (see [`ImageOps::dense_attention`]),
/// with queries in chunks whose f32 scores take about `score_bytes`.
fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
    score_bytes: usize,
) -> Result<Tensor> {
    let (b, nq, width) = q.dims3()?;
    let (_, nk, _) = k.dims3()?;
    anyhow::ensure!(
        width % heads == 0,
        "attention: width {width} is not {heads} heads"
    );
    anyhow::ensure!(
        k.dims() == v.dims() && k.dim(0)? == b && k.dim(2)? == width,
        "attention: q {:?}, k {:?}, v {:?}",
        q.dims(),
        k.dims(),
        v.dims()
    );
    anyhow::ensure!(!causal || nq == nk, "causal attention needs nq == nk");
    let d = width / heads;
    // [b, n, heads, d] -> [b, heads, n, d], in f32.
    let split = |t: &Tensor, n: usize| -> Result<Tensor> {
        Ok(f32_of(t)?
            .reshape((b, n, heads, d))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let (qh, kh, vh) = (split(q, nq)?, split(k, nk)?, split(v, nk)?);
    let kt = kh.transpose(2, 3)?.contiguous()?;
    // Queries in chunks, so the f32 scores stay near `score_bytes` whatever the sequence
    // length: a 512x512 image through a VAE that only halves it attends over 65,536
    // tokens, whose whole score matrix (16 GiB per head) would not fit in memory.
    let rows = (score_bytes / (b * heads * nk * 4).max(1)).clamp(1, nq.max(1));
    let mut parts = Vec::with_capacity(nq.div_ceil(rows));
    for i0 in (0..nq).step_by(rows) {
        let len = rows.min(nq - i0);
        let mut scores = qh
            .narrow(2, i0, len)?
            .matmul(&kt)?
            .affine(1.0 / (d as f64).sqrt(), 0.0)?;
        if causal {
            let mask: Vec<f32> = (i0..i0 + len)
                .flat_map(|i| (0..nk).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (len, nk), &Device::Cpu)?;
            scores = scores.broadcast_add(&mask)?;
        }
        parts.push(softmax_last(&scores)?.matmul(&vh)?);
    }
    let out = Tensor::cat(&parts, 2)?;
    Ok(out
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, nq, width))?
        .to_dtype(q.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(data: &[f32], dims: &[usize]) -> Tensor {
        Tensor::from_slice(data, dims, &Device::Cpu).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn relu_family_activations_clamp_then_square() {
        let x = t(&[-2.0, -0.0, 0.5, 3.0], &[4]);
        let relu = vals(&activate(&x, Activation::Relu).unwrap());
        assert_eq!(relu, [0.0, 0.0, 0.5, 3.0]);
        let relu2 = vals(&activate(&x, Activation::Relu2).unwrap());
        assert_eq!(relu2, [0.0, 0.0, 0.25, 9.0]);
        assert_eq!(Activation::from_hf("relu2").unwrap(), Activation::Relu2);
    }

    #[test]
    fn group_norm_normalises_each_group() {
        let be = CpuBackend::new();
        // 1 sample, 4 channels of 2 pixels, 2 groups.
        let x = t(&[1., 2., 3., 4., 10., 10., 10., 30.], &[1, 4, 2]);
        let ones = t(&[1.; 4], &[4]);
        let zeros = t(&[0.; 4], &[4]);
        let y = vals(&be.group_norm(&x, 2, &ones, &zeros, 0.0, false).unwrap());
        let s = (1.25f32).sqrt(); // group 1: mean 2.5, var 1.25
        let expect1 = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
        for (a, b) in y[..4].iter().zip(expect1) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        // group 2: mean 15, var 75.
        assert!((y[7] - 15.0 / 75f32.sqrt()).abs() < 1e-5);
    }

    #[test]
    fn attention_in_query_chunks_equals_one_chunk() {
        let (b, nq, nk, heads, d) = (2, 37, 29, 2, 3);
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n)
                .map(|i| (i as f32 * 0.37 + seed).sin() * 2.0)
                .collect()
        };
        let tokens = |n: usize, seed: f32| t(&values(b * n * heads * d, seed), &[b, n, heads * d]);
        // 5 query rows per chunk (the last chunk shorter) against all rows at once.
        let chunks_agree = |k: &Tensor, v: &Tensor, causal: bool| {
            let q = tokens(nq, 0.1);
            let five_rows = 5 * b * heads * k.dim(1).unwrap() * 4;
            let whole = vals(&chunked_attention(&q, k, v, heads, causal, usize::MAX).unwrap());
            let chunked = vals(&chunked_attention(&q, k, v, heads, causal, five_rows).unwrap());
            let worst = whole
                .iter()
                .zip(&chunked)
                .map(|(a, c)| (a - c).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "causal {causal}: {worst}");
        };
        chunks_agree(&tokens(nk, 0.2), &tokens(nk, 0.3), false);
        // Causal: each chunk's mask starts at its own first query.
        chunks_agree(&tokens(nq, 0.4), &tokens(nq, 0.5), true);
    }

    #[test]
    fn causal_attention_of_the_first_query_is_the_first_value() {
        let be = CpuBackend::new();
        let q = t(&[1., 0., 0., 1.], &[1, 2, 2]);
        let k = t(&[1., 0., 0., 1.], &[1, 2, 2]);
        let v = t(&[5., 6., 7., 8.], &[1, 2, 2]);
        let y = vals(&be.dense_attention(&q, &k, &v, 1, true).unwrap());
        assert_eq!(&y[..2], &[5., 6.]);
        // Second query: softmax([0, 1] / sqrt(2)) over the two values.
        let p = 1.0 / (1.0 + (-1.0f32 / 2f32.sqrt()).exp());
        assert!((y[3] - (6.0 * (1.0 - p) + 8.0 * p)).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn geglu_gates_with_exact_gelu() {
        let be = CpuBackend::new();
        let y = vals(&be.geglu(&t(&[2., 1.], &[1, 2])).unwrap());
        let gelu1 = 0.5 * (1.0 + erf_series(1.0 / 2f64.sqrt()));
        assert!((y[0] as f64 - 2.0 * gelu1).abs() < 1e-6, "{y:?}");
    }

    fn erf_series(x: f64) -> f64 {
        // erf(1/sqrt(2)) for the test above, from its series (converges fast for |x| < 1).
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..30 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn upsample_nearest_to_an_odd_size_repeats_like_pytorch() {
        let be = CpuBackend::new();
        // A 2x3 map to 3x5: rows read 0, 0, 1; columns 0, 0, 1, 1, 2.
        let x = t(&[1., 2., 3., 4., 5., 6.], &[1, 1, 2, 3]);
        let y = be.upsample_nearest(&x, 3, 5).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 5]);
        #[rustfmt::skip]
        let want = [
            1., 1., 2., 2., 3.,
            1., 1., 2., 2., 3.,
            4., 4., 5., 5., 6.,
        ];
        assert_eq!(vals(&y), want);
        // Twice the size is the plain 2x upsampling.
        let y = be.upsample_nearest2x(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 6]);
        assert_eq!(vals(&y)[..6], [1., 1., 2., 2., 3., 3.]);
        assert!(be.upsample_nearest(&x, 0, 5).is_err());
    }

    #[test]
    fn tokens_round_trip_nchw() {
        let be = CpuBackend::new();
        let data: Vec<f32> = (0..24).map(|x| x as f32).collect();
        let x = t(&data, &[2, 3, 2, 2]);
        let tokens = be.nchw_to_tokens(&x).unwrap();
        assert_eq!(tokens.dims(), &[2, 4, 3]);
        // Token 1 of sample 0 holds pixel (0, 1) of each channel.
        assert_eq!(vals(&tokens)[3..6], [1., 5., 9.]);
        assert_eq!(vals(&be.tokens_to_nchw(&tokens, 2, 2).unwrap()), data);
    }
}
