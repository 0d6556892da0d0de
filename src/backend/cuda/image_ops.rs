//! [`ImageOps`] on a GPU: the diffusion models' ops over [`CudaTensor`]s, with the CPU
//! backend's semantics (same shapes accepted, errors where it has errors, f32 arithmetic).
//! Kernels are launched through `image_kernels.rs` and `image_layout_kernels.rs`; conv2d and
//! dense attention are cuBLAS GEMMs around kernels (`image_conv.rs`, `image_attention.rs`).
//! Every op writes a new pooled tensor; a reshape is a device copy (a tensor owns its
//! buffer).

use super::backend::CudaBackend;
use super::gemm_batched::{Operand, OperandMut, StridedGemm};
use super::image_geometry::{concat_dims, nchw, AxisView};
use super::image_kernels::GroupNormSpec;
use super::image_launch::GroupNormLaunch;
use super::tensor::CudaTensor;
use crate::backend::image_ops::ImageOps;
use crate::backend::DType;
use anyhow::{bail, ensure, Context, Result};

impl CudaBackend {
    /// A new tensor of `x`'s dtype and `dims`, filled by `fill`.
    pub(super) fn new_output(
        &self,
        x: &CudaTensor,
        dims: &[usize],
        fill: impl FnOnce(&mut CudaTensor) -> Result<()>,
    ) -> Result<CudaTensor> {
        let mut out = self.output(x.dtype(), dims)?;
        fill(&mut out)?;
        Ok(out)
    }
}

impl ImageOps for CudaBackend {
    fn dims(&self, t: &CudaTensor) -> Vec<usize> {
        t.shape().to_vec()
    }

    fn dtype_of(&self, t: &CudaTensor) -> DType {
        t.dtype()
    }

    fn reshape(&self, t: &CudaTensor, dims: &[usize]) -> Result<CudaTensor> {
        ensure!(
            dims.iter().product::<usize>() == t.numel(),
            "reshape {:?} to {dims:?}",
            t.shape()
        );
        self.new_output(t, dims, |out| {
            let bytes = t.num_bytes();
            if bytes > 0 {
                let src = t.data().slice(0..bytes);
                let mut dst = out.data_mut().slice_mut(0..bytes);
                self.device()
                    .stream()
                    .memcpy_dtod(&src, &mut dst)
                    .context("reshape copy")?;
            }
            Ok(())
        })
    }

    fn tensor_from_f32(&self, data: Vec<f32>, dims: &[usize], dtype: DType) -> Result<CudaTensor> {
        ensure!(
            data.len() == dims.iter().product::<usize>(),
            "{} values for a {dims:?} tensor",
            data.len()
        );
        self.bind()?;
        let mut out = self.output(dtype, dims)?;
        out.overwrite_from_f32(self.device(), &data)?;
        Ok(out)
    }

    fn conv2d(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        b: Option<&CudaTensor>,
        stride: usize,
        padding: usize,
    ) -> Result<CudaTensor> {
        self.conv2d_gpu(x, w, b, stride, padding)
            .with_context(|| format!("conv2d of {:?} with {:?}", x.shape(), w.shape()))
    }

    fn group_norm(
        &self,
        x: &CudaTensor,
        groups: usize,
        weight: &CudaTensor,
        bias: &CudaTensor,
        eps: f64,
        silu: bool,
    ) -> Result<CudaTensor> {
        let (n, c) = match x.shape() {
            [n, c, ..] => (*n, *c),
            other => bail!("group_norm: rank {} < 2 ({other:?})", other.len()),
        };
        ensure!(
            groups > 0 && c % groups == 0,
            "group_norm: {c} channels do not split into {groups} groups"
        );
        let spatial: usize = x.shape()[2..].iter().product();
        if n * c * spatial == 0 {
            return self.output(x.dtype(), x.shape());
        }
        let l = GroupNormLaunch::new((n, c, spatial), groups, x.dtype().size_in_bytes())?;
        let mut partials = self.output(DType::F32, &[l.rows * l.chunks * 3])?;
        let mut stats = self.output(DType::F32, &[l.rows * 2])?;
        let norm = GroupNormSpec {
            groups,
            eps: eps as f32,
            silu,
        };
        self.new_output(x, x.shape(), |y| {
            self.device()
                .group_norm_into(x, (weight, bias), norm, (&mut partials, &mut stats), y)
        })
    }

    /// One GEMM over all leading dimensions (no reshape copies), then the bias.
    fn linear_nd(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        b: Option<&CudaTensor>,
    ) -> Result<CudaTensor> {
        let (&[n, k], Some(&width)) = (w.shape(), x.shape().last()) else {
            bail!("linear: x {:?} and w {:?}", x.shape(), w.shape());
        };
        ensure!(
            width == k,
            "linear: x {:?} does not end in w {:?}'s {k}",
            x.shape(),
            w.shape()
        );
        let rows = x.numel() / k.max(1);
        let mut dims = x.shape().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        let mut out = self.output(x.dtype(), &dims)?;
        if rows * n == 0 {
            return Ok(out);
        }
        ensure!(k > 0, "linear over an empty dimension");
        self.bind()?; // cuBLAS uses the thread's current context
        self.device().blas().gemm_strided(
            &StridedGemm::linear(rows, k, n),
            Operand {
                tensor: w,
                offset: 0,
            },
            Operand {
                tensor: x,
                offset: 0,
            },
            OperandMut {
                tensor: &mut out,
                offset: 0,
            },
        )?;
        if let Some(b) = b {
            self.device().add_bias(&mut out, b)?;
        }
        Ok(out)
    }

    fn geglu(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let mut dims = x.shape().to_vec();
        match dims.last_mut() {
            Some(width) if *width % 2 == 0 => *width /= 2,
            _ => bail!("geglu: {:?} does not end in an even width", x.shape()),
        }
        self.new_output(x, &dims, |y| self.device().geglu_into(x, y))
    }

    fn lincomb(&self, a: &CudaTensor, alpha: f32, b: &CudaTensor, beta: f32) -> Result<CudaTensor> {
        self.new_output(a, a.shape(), |y| {
            self.device().lincomb_into((a, alpha), Some((b, beta)), y)
        })
    }

    fn scale(&self, x: &CudaTensor, s: f32) -> Result<CudaTensor> {
        self.new_output(x, x.shape(), |y| {
            self.device().lincomb_into((x, s), None, y)
        })
    }

    fn add_channel_bias(&self, x: &CudaTensor, bias: &CudaTensor) -> Result<CudaTensor> {
        let fits = matches!((x.shape(), bias.shape()),
            (&[n, c, _, _], &[bn, bc]) if (n, c) == (bn, bc));
        ensure!(
            fits,
            "add_channel_bias: {:?} and bias {:?}",
            x.shape(),
            bias.shape()
        );
        self.new_output(x, x.shape(), |y| {
            self.device().channel_bias_into(x, bias, y)
        })
    }

    fn add_row(&self, x: &CudaTensor, row: &CudaTensor) -> Result<CudaTensor> {
        self.new_output(x, x.shape(), |y| self.device().add_row_into(x, row, y))
    }

    fn upsample_nearest(&self, x: &CudaTensor, height: usize, width: usize) -> Result<CudaTensor> {
        let [n, c, h, w] = nchw(x.shape(), "upsample_nearest")?;
        ensure!(
            height > 0 && width > 0,
            "upsample_nearest: {h}x{w} to {height}x{width}"
        );
        self.new_output(x, &[n, c, height, width], |y| {
            self.device().upsample_nearest_into(x, y)
        })
    }

    fn concat(&self, parts: &[&CudaTensor], axis: usize) -> Result<CudaTensor> {
        let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
        let dims = concat_dims(&shapes, axis).context("concat")?;
        let first = parts[0]; // concat_dims refuses an empty list
        let joined = AxisView::of(&dims, axis)?;
        self.new_output(first, &dims, |out| {
            let mut offset = 0;
            for part in parts {
                part.expect_dtype(first.dtype(), "concat part")?;
                let view = AxisView::of(part.shape(), axis)?;
                self.device()
                    .copy_axis((part, view, 0), (out, joined, offset), view.len)?;
                offset += view.len;
            }
            Ok(())
        })
    }

    fn narrow(&self, x: &CudaTensor, axis: usize, start: usize, len: usize) -> Result<CudaTensor> {
        let view = AxisView::of(x.shape(), axis)?;
        ensure!(
            start + len <= view.len,
            "narrow: entries {start}..{} of axis {axis} of {:?}",
            start + len,
            x.shape()
        );
        let mut dims = x.shape().to_vec();
        dims[axis] = len;
        let narrowed = AxisView { len, ..view };
        self.new_output(x, &dims, |out| {
            self.device()
                .copy_axis((x, view, start), (out, narrowed, 0), len)
        })
    }

    fn nchw_to_tokens(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let [n, c, h, w] = nchw(x.shape(), "nchw_to_tokens")?;
        self.new_output(x, &[n, h * w, c], |y| {
            self.device().transpose_last2_into(x, (n, c, h * w), y)
        })
    }

    fn tokens_to_nchw(&self, x: &CudaTensor, h: usize, w: usize) -> Result<CudaTensor> {
        let &[n, hw, c] = x.shape() else {
            bail!("tokens_to_nchw: {:?} is not [n, tokens, c]", x.shape());
        };
        ensure!(hw == h * w, "tokens_to_nchw: {hw} tokens for {h}x{w}");
        self.new_output(x, &[n, c, h, w], |y| {
            self.device().transpose_last2_into(x, (n, hw, c), y)
        })
    }

    fn dense_attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        heads: usize,
        causal: bool,
    ) -> Result<CudaTensor> {
        self.image_attention_gpu(q, k, v, heads, causal, true)
    }
}
