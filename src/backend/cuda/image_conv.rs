//! conv2d on the GPU: im2col (`kernels/image_layout.cu`) then one strided-batched cuBLAS
//! GEMM per chunk of images, `out_i[c_out, pixels] = W[c_out, patch] col_i[patch, pixels]`,
//! then the bias. A 1x1 stride-1 conv needs no im2col: the image is its own matrix. The
//! im2col scratch is bounded ([`COL_BUDGET`]), so large images go a few at a time.

use super::backend::CudaBackend;
use super::gemm_batched::{Operand, OperandMut, StridedGemm};
use super::image_geometry::{entries_per_chunk, ConvShape};
use super::tensor::CudaTensor;
use anyhow::{ensure, Result};

/// Elements of im2col scratch per chunk of images (512 MiB in f32): an SDXL VAE layer at
/// 1024x1024 (128 channels, 3x3) needs 1.2 G elements per image, and goes one image at a
/// time over a larger buffer; UNet layers fit a whole CFG batch.
pub const COL_BUDGET: usize = 1 << 27;

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

/// The GEMMs of conv `s`, with im2col scratch of at most `budget` elements where possible.
pub fn conv_chunks(s: &ConvShape, budget: usize) -> Vec<ConvChunk> {
    let (patch, pixels) = (s.patch(), s.pixels());
    let per_chunk = if s.is_pointwise() {
        s.n // no scratch: one GEMM over the whole batch
    } else {
        entries_per_chunk(s.n, patch * pixels, budget)
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
                    k: patch,
                    lda: pixels,
                    ldb: patch,
                    ldc: pixels,
                    stride_a: patch * pixels,
                    stride_b: 0, // every image uses the same weights
                    stride_c: s.c_out * pixels,
                    batch: count,
                    alpha: 1.0,
                },
                a_offset: if s.is_pointwise() {
                    first * patch * pixels
                } else {
                    0
                },
                c_offset: first * s.c_out * pixels,
            }
        })
        .collect()
}

impl CudaBackend {
    /// `conv2d(x, w) + b`, as [`crate::backend::image_ops::ImageOps::conv2d`].
    pub(super) fn conv2d_gpu(
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
        let chunks = conv_chunks(&s, COL_BUDGET);
        let mut col = match s.is_pointwise() {
            true => None,
            false => {
                let images = chunks.iter().map(|c| c.count).max().unwrap_or(1);
                Some(self.output(x.dtype(), &[images * s.patch() * s.pixels()])?)
            }
        };
        for chunk in &chunks {
            let a = match col.as_mut() {
                Some(col) => {
                    dev.im2col_into(x, &s, (chunk.first, chunk.count), col)?;
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
                    tensor: w,
                    offset: 0,
                },
                OperandMut {
                    tensor: &mut out,
                    offset: chunk.c_offset,
                },
            )?;
        }
        match b {
            Some(b) => {
                let mut biased = self.output(x.dtype(), &s.out_dims())?;
                dev.channel_bias_into(&out, b, &mut biased)?;
                Ok(biased)
            }
            None => Ok(out),
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

    /// The im2col matrices of images `first .. first + count`, as the kernel writes them.
    fn im2col(x: &[f32], s: &ConvShape, first: usize, count: usize) -> Vec<f32> {
        let mut col = Vec::with_capacity(count * s.patch() * s.pixels());
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
        }
        col
    }

    /// The chunked plan run on the host (im2col + GEMMs) against the CPU backend's conv2d.
    fn check(x_dims: [usize; 4], w_dims: [usize; 4], stride: usize, pad: usize, budget: usize) {
        let s = ConvShape::new(&x_dims, &w_dims, stride, pad).unwrap();
        let x = values(x_dims.iter().product(), 1);
        let w = values(w_dims.iter().product(), 2);
        let mut out = vec![f32::NAN; s.out_dims().iter().product()];
        let chunks = conv_chunks(&s, budget);
        assert_eq!(chunks.iter().map(|c| c.count).sum::<usize>(), s.n);
        for chunk in &chunks {
            let col;
            let a = if s.is_pointwise() {
                &x[chunk.a_offset..]
            } else {
                col = im2col(&x, &s, chunk.first, chunk.count);
                &col[chunk.a_offset..]
            };
            chunk.gemm.run_on_host(a, &w, &mut out[chunk.c_offset..]);
        }
        let t = |v: &[f32], d: &[usize]| Tensor::from_slice(v, d, &Device::Cpu).unwrap();
        let cpu = CpuBackend::new();
        let want = cpu
            .conv2d(&t(&x, &x_dims), &t(&w, &w_dims), None, stride, pad)
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
        check([3, 5, 11, 15], [7, 5, 3, 3], 1, 1, 5 * 9 * 165 + 1);
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
        let chunks = conv_chunks(&s, 1);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].gemm.batch, 4);
        let s = ConvShape::new(&[4, 8, 3, 3], &[2, 8, 3, 3], 1, 1).unwrap();
        let chunks = conv_chunks(&s, 2 * s.patch() * s.pixels());
        assert_eq!(
            chunks
                .iter()
                .map(|c| (c.first, c.count))
                .collect::<Vec<_>>(),
            [(0, 2), (2, 2)]
        );
    }
}
