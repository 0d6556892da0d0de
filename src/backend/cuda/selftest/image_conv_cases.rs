//! Selftest of the implicit-GEMM conv (kernels/conv_implicit.cu) at the diffusion models'
//! real shapes, run whatever `KILN_CONV_IMPLICIT` says, in both orders of K where c_in
//! allows the tap-major one (`conv2d(implicit taps)` beside `conv2d(implicit)`), each
//! beside the same conv on the im2col + cuBLAS path so the timings can be compared. 16-bit dtypes on sm_80+
//! only (where the kernel exists); elsewhere the rows are left out.
//!
//! The CPU reference of a whole SD VAE conv at 512x512 is ~40 G multiply-adds, so it
//! computes 16 output channels only, straddling the kernel's first 128-channel tile
//! boundary where there is one; the GPU output is narrowed to the same channels.

use super::compare::Check;
use super::image_cases::ImageSuite;
use crate::backend::cuda::image_conv_implicit::{k_order, KOrder, TILE_CHANNELS};
use crate::backend::cuda::image_geometry::ConvShape;
use crate::backend::cuda::{CudaTensor, DType};
use crate::backend::image_ops::ImageOps;
use anyhow::Result;

/// Output channels compared with the CPU.
const CHECKED_CHANNELS: usize = 16;

/// `(first, count)` of the channels compared: across the first channel-tile boundary
/// when there is a second tile, else from channel 0.
pub fn checked_channels(c_out: usize) -> (usize, usize) {
    let count = CHECKED_CHANNELS.min(c_out);
    let first = if c_out > TILE_CHANNELS {
        (TILE_CHANNELS - count / 2).min(c_out - count)
    } else {
        0
    };
    (first, count)
}

pub fn run(t: &mut ImageSuite<'_, '_>) -> Result<()> {
    if t.dtype == DType::F32 {
        return Ok(()); // the kernel has no f32 instantiation
    }
    let be = t.gpu;
    // (x, weight, stride, padding): SD VAE decoder convs at 512x512 output (128 channels
    // at full size, 256 at half, 512 at 64x64), SD 1.5 UNet convs of a CFG batch at 64x64
    // and 32x32 latents, the UNet's stride-2 downsampler, the VAE's conv_in (4 channels)
    // and a 1x1 skip projection.
    for (x_dims, w_dims, stride, pad) in [
        ([1, 128, 512, 512], [128, 128, 3, 3], 1, 1),
        ([1, 256, 256, 256], [256, 256, 3, 3], 1, 1),
        ([1, 512, 64, 64], [512, 512, 3, 3], 1, 1),
        ([2, 320, 64, 64], [320, 320, 3, 3], 1, 1),
        ([2, 640, 32, 32], [640, 640, 3, 3], 1, 1),
        ([2, 320, 64, 64], [320, 320, 3, 3], 2, 1),
        ([1, 4, 64, 64], [512, 4, 3, 3], 1, 1),
        ([2, 640, 32, 32], [320, 640, 1, 1], 1, 0),
    ] {
        let x = t.input(&x_dims, 1.0)?;
        let w = t.input(&w_dims, 0.5)?;
        let b = t.input(&[w_dims[0]], 1.0)?;
        let s = ConvShape::new(&x_dims, &w_dims, stride, pad)?;
        if !be.conv_implicit_usable(&x.gpu, &s) {
            return Ok(()); // before sm_80: no kernel to check
        }
        let (first, count) = checked_channels(s.c_out);
        let cpu = t.cpu.conv2d(
            &x.cpu,
            &w.cpu.narrow(0, first, count)?.contiguous()?,
            Some(&b.cpu.narrow(0, first, count)?),
            stride,
            pad,
        )?;
        let shape = format!(
            "{x_dims:?} * {w_dims:?} s{stride} p{pad} (ch {first}..{})",
            first + count
        );
        let inputs = (&x.gpu, &w.gpu, Some(&b.gpu));
        let implicit = |order| be.conv2d_implicit_ordered(inputs, &s, order);
        let taps = || implicit(k_order(&s));
        let by_weights = || implicit(KOrder::Weights);
        let im2col = || be.conv2d_im2col(&x.gpu, &w.gpu, Some(&b.gpu), stride, pad);
        // The chosen order; where that is tap-major, the weights' order beside it (the
        // kernel's A/B); then im2col + cuBLAS.
        let mut paths: Vec<(&str, &dyn Fn() -> Result<CudaTensor>)> = vec![];
        if k_order(&s) == KOrder::Weights {
            paths.push(("conv2d(implicit)", &by_weights));
        } else {
            paths.push(("conv2d(implicit taps)", &taps));
            paths.push(("conv2d(implicit)", &by_weights));
        }
        paths.push(("conv2d(im2col)", &im2col));
        for (op, path) in paths {
            let gpu = be.narrow(&path()?, 1, first, count)?;
            let row = t.compare(op, shape.clone(), Check::Reduction, &gpu, &cpu)?;
            t.time(row, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_channels_straddle_the_first_tile_boundary() {
        assert_eq!(checked_channels(128), (0, 16));
        assert_eq!(checked_channels(256), (120, 16));
        assert_eq!(checked_channels(320), (120, 16));
        assert_eq!(checked_channels(136), (120, 16));
        assert_eq!(checked_channels(130), (114, 16));
        assert_eq!(checked_channels(3), (0, 3));
    }
}
