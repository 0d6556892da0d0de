//! conv2d on the GPU: im2col (`kernels/image_layout.cu`) then one strided-batched cuBLAS
//! GEMM per chunk of images, `out_i[c_out, pixels] = W[c_out, k] col_i[k, pixels]`. With a
//! bias, the GEMM adds it: col gets [`BIAS_ROWS`] more rows (ones, then zeros) and W the
//! matching columns (the bias, then zeros), so no pass over the output is left. A 1x1
//! stride-1 conv needs no im2col: the image is its own matrix, and its bias is a separate
//! pass. The im2col scratch is bounded ([`COL_BUDGET`]), so large images go a few at a time.
//! With `KILN_CONV_IMPLICIT=1`, 16-bit convs on sm_80+ take the implicit-GEMM kernel of
//! [`super::image_conv_implicit`] instead (no im2col matrix).

use super::backend::CudaBackend;
use super::gemm_batched::{Operand, OperandMut, StridedGemm};
use super::image_conv_implicit::{implicit_switch, k_order};
use super::image_geometry::{entries_per_chunk, ConvShape};
use super::tensor::CudaTensor;
use anyhow::{ensure, Result};

/// Elements of im2col scratch per chunk of images (512 MiB in f32): an SDXL VAE layer at
/// 1024x1024 (128 channels, 3x3) needs 1.2 G elements per image, and goes one image at a
/// time over a larger buffer; UNet layers fit a whole CFG batch.
pub const COL_BUDGET: usize = 1 << 27;

/// Rows added to the im2col matrix to carry a bias into the GEMM: one row of ones against a
/// column of biases, then zeros, so K stays a multiple of 8 (tensor-core alignment) when the
/// patch is; 8 of ~1152+ rows is under 1% more GEMM work for a whole pass saved.
pub const BIAS_ROWS: usize = 8;

/// One GEMM of a conv: images `first .. first + count`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvChunk {
    pub first: usize,
    pub count: usize,
    pub gemm: StridedGemm,
    /// Where A starts: in the im2col scratch (0), or in the input for a 1x1 conv.
    pub a_offset: usize,
    /// Where this chunk's output starts.
    pub c_offset: usize,
}

/// The GEMMs of conv `s` whose im2col matrices carry `bias_rows` extra rows (0 for a 1x1
/// conv, which has none), with im2col scratch of at most `budget` elements where possible.
pub fn conv_chunks(s: &ConvShape, budget: usize, bias_rows: usize) -> Vec<ConvChunk> {
    let (k, pixels) = (s.patch() + bias_rows, s.pixels());
    let per_chunk = if s.is_pointwise() {
        s.n // no scratch: one GEMM over the whole batch
    } else {
        entries_per_chunk(s.n, k * pixels, budget)
    };
    (0..s.n)
        .step_by(per_chunk.max(1))
        .map(|first| {
            let count = per_chunk.min(s.n - first);
            ConvChunk {
                first,
                count,
                gemm: StridedGemm {
                    transa: false,
                    transb: false,
                    m: pixels,
                    n: s.c_out,
                    k,
                    lda: pixels,
                    ldb: k,
                    ldc: pixels,
                    stride_a: k * pixels,
                    stride_b: 0, // every image uses the same weights
                    stride_c: s.c_out * pixels,
                    batch: count,
                    alpha: 1.0,
                },
                a_offset: if s.is_pointwise() {
                    first * k * pixels
                } else {
                    0
                },
                c_offset: first * s.c_out * pixels,
            }
        })
        .collect()
}

/// Extra im2col rows for conv `s`: [`BIAS_ROWS`] when its bias can ride in the GEMM.
pub fn bias_rows(s: &ConvShape, has_bias: bool) -> usize {
    if has_bias && !s.is_pointwise() {
        BIAS_ROWS
    } else {
        0
    }
}

impl CudaBackend {
    /// `conv2d(x, w) + b`, as [`crate::backend::image_ops::ImageOps::conv2d`]: im2col +
    /// cuBLAS, or the implicit-GEMM kernel where `KILN_CONV_IMPLICIT=1` and it applies.
    pub(super) fn conv2d_gpu(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        b: Option<&CudaTensor>,
        stride: usize,
        padding: usize,
    ) -> Result<CudaTensor> {
        let s = ConvShape::new(x.shape(), w.shape(), stride, padding)?;
        let opt_in = implicit_switch(std::env::var("KILN_CONV_IMPLICIT").ok().as_deref());
        if opt_in && w.dtype() == x.dtype() && self.conv_implicit_usable(x, &s) {
            return self.conv2d_implicit_ordered((x, w, b), &s, k_order(&s));
        }
        self.conv2d_im2col(x, w, b, stride, padding)
    }

    /// `conv2d(x, w) + b` as im2col + strided-batched cuBLAS GEMMs, whatever
    /// `KILN_CONV_IMPLICIT` says.
    pub fn conv2d_im2col(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        b: Option<&CudaTensor>,
        stride: usize,
        padding: usize,
    ) -> Result<CudaTensor> {
        let s = ConvShape::new(x.shape(), w.shape(), stride, padding)?;
        w.expect_dtype(x.dtype(), "conv2d weight")?;
        ensure!(s.c_in > 0, "conv2d of {:?}: no input channels", x.shape());
        let dev = self.device();
        let mut out = self.output(x.dtype(), &s.out_dims())?;
        if out.numel() == 0 {
            return Ok(out);
        }
        self.bind()?; // cuBLAS uses the thread's current context
        let extra = bias_rows(&s, b.is_some());
        let chunks = conv_chunks(&s, COL_BUDGET, extra);
        let weights = match b {
            Some(b) if extra > 0 => {
                let mut wb = self.output(x.dtype(), &[s.c_out, s.patch() + extra])?;
                dev.conv_weight_bias_into((w, b), &s, extra, &mut wb)?;
                Some(wb)
            }
            _ => None,
        };
        let mut col = match s.is_pointwise() {
            true => None,
            false => {
                let images = chunks.iter().map(|c| c.count).max().unwrap_or(1);
                Some(self.output(x.dtype(), &[images * (s.patch() + extra) * s.pixels()])?)
            }
        };
        for chunk in &chunks {
            let a = match col.as_mut() {
                Some(col) => {
                    dev.im2col_into(x, &s, (chunk.first, chunk.count), extra, col)?;
                    &*col
                }
                None => x,
            };
            dev.blas().gemm_strided(
                &chunk.gemm,
                Operand {
                    tensor: a,
                    offset: chunk.a_offset,
                },
                Operand {
                    tensor: weights.as_ref().unwrap_or(w),
                    offset: 0,
                },
                OperandMut {
                    tensor: &mut out,
                    offset: chunk.c_offset,
                },
            )?;
        }
        match b {
            Some(b) if extra == 0 => {
                let mut biased = self.output(x.dtype(), &s.out_dims())?;
                dev.channel_bias_into(&out, b, &mut biased)?;
                Ok(biased)
            }
            _ => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::cuda::test_values::{max_abs_error, values};
    use crate::backend::image_ops::ImageOps;
    use candle_core::{Device, Tensor};

    /// The im2col matrices of images `first .. first + count`, as the kernel writes them:
    /// `bias_rows` rows after each image's patch, ones then zeros.
    fn im2col(
        x: &[f32],
        s: &ConvShape,
        (first, count): (usize, usize),
        bias_rows: usize,
    ) -> Vec<f32> {
        let mut col = Vec::with_capacity(count * (s.patch() + bias_rows) * s.pixels());
        for image in first..first + count {
            for c in 0..s.c_in {
                for ky in 0..s.kh {
                    for kx in 0..s.kw {
                        for oy in 0..s.out_h {
                            for ox in 0..s.out_w {
                                let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                let inside = (0..s.h as isize).contains(&iy)
                                    && (0..s.w as isize).contains(&ix);
                                col.push(if inside {
                                    x[((image * s.c_in + c) * s.h + iy as usize) * s.w
                                        + ix as usize]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
            }
            for row in 0..bias_rows {
                let fill = if row == 0 { 1.0 } else { 0.0 };
                col.extend(std::iter::repeat_n(fill, s.pixels()));
            }
        }
        col
    }

    /// The weights with the bias columns, as `conv_weight_bias` writes them.
    fn weight_bias(w: &[f32], b: &[f32], s: &ConvShape, bias_rows: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(s.c_out * (s.patch() + bias_rows));
        for (row, &bias) in w.chunks(s.patch()).zip(b) {
            out.extend_from_slice(row);
            out.push(bias);
            out.extend(std::iter::repeat_n(0.0, bias_rows - 1));
        }
        out
    }

    /// The chunked plan run on the host (im2col + GEMMs, + the bias pass of a 1x1 conv)
    /// against the CPU backend's conv2d with bias.
    fn check(x_dims: [usize; 4], w_dims: [usize; 4], stride: usize, pad: usize, budget: usize) {
        let s = ConvShape::new(&x_dims, &w_dims, stride, pad).unwrap();
        let x = values(x_dims.iter().product(), 1);
        let w = values(w_dims.iter().product(), 2);
        let b = values(s.c_out, 3);
        let extra = bias_rows(&s, true);
        let mut out = vec![f32::NAN; s.out_dims().iter().product()];
        let chunks = conv_chunks(&s, budget, extra);
        assert_eq!(chunks.iter().map(|c| c.count).sum::<usize>(), s.n);
        let weights = match extra {
            0 => w.clone(),
            _ => weight_bias(&w, &b, &s, extra),
        };
        for chunk in &chunks {
            let col;
            let a = if s.is_pointwise() {
                &x[chunk.a_offset..]
            } else {
                col = im2col(&x, &s, (chunk.first, chunk.count), extra);
                &col[chunk.a_offset..]
            };
            chunk
                .gemm
                .run_on_host(a, &weights, &mut out[chunk.c_offset..]);
        }
        if extra == 0 {
            for (i, v) in out.iter_mut().enumerate() {
                *v += b[(i / s.pixels()) % s.c_out];
            }
        }
        let t = |v: &[f32], d: &[usize]| Tensor::from_slice(v, d, &Device::Cpu).unwrap();
        let cpu = CpuBackend::new();
        let bias = t(&b, &[s.c_out]);
        let want = cpu
            .conv2d(&t(&x, &x_dims), &t(&w, &w_dims), Some(&bias), stride, pad)
            .unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(out.len(), want.len());
        let err = max_abs_error(&out, &want);
        assert!(
            err < 1e-4,
            "{x_dims:?} * {w_dims:?} s{stride} p{pad}: error {err}"
        );
    }

    #[test]
    fn chunked_im2col_gemms_match_the_cpu_conv() {
        // 3x3 padding 1, one image per chunk (budget below two images' scratch).
        check(
            [3, 5, 11, 15],
            [7, 5, 3, 3],
            1,
            1,
            (5 * 9 + BIAS_ROWS) * 165 + 1,
        );
        // Stride 2 (a UNet downsample at 22x30 pixels), all images in one chunk.
        check([2, 5, 11, 15], [7, 5, 3, 3], 2, 1, usize::MAX);
        // 1x1: the input is the GEMM operand, one GEMM over the batch.
        check([3, 6, 4, 5], [2, 6, 1, 1], 1, 0, 1);
        // Non-square kernel, no padding.
        check([1, 3, 6, 9], [4, 3, 3, 2], 1, 0, usize::MAX);
    }

    #[test]
    fn pointwise_convs_take_one_gemm_over_the_batch() {
        let s = ConvShape::new(&[4, 8, 3, 3], &[2, 8, 1, 1], 1, 0).unwrap();
        let chunks = conv_chunks(&s, 1, bias_rows(&s, true));
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].gemm.batch, 4);
        assert_eq!(chunks[0].gemm.k, 8); // a 1x1 conv's bias is a separate pass
        let s = ConvShape::new(&[4, 8, 3, 3], &[2, 8, 3, 3], 1, 1).unwrap();
        let chunks = conv_chunks(&s, 2 * s.patch() * s.pixels(), 0);
        assert_eq!(
            chunks
                .iter()
                .map(|c| (c.first, c.count))
                .collect::<Vec<_>>(),
            [(0, 2), (2, 2)]
        );
        // The bias rows count against the budget: the same budget now holds one image.
        let chunks = conv_chunks(&s, 2 * s.patch() * s.pixels(), bias_rows(&s, true));
        assert_eq!(chunks.len(), 4);
        assert_eq!((chunks[0].gemm.k, chunks[0].gemm.ldb), (80, 80));
        assert_eq!(chunks[0].gemm.stride_a, 80 * 9);
        assert_eq!(bias_rows(&s, false), 0);
    }
}
