//! conv2d as an implicit GEMM on tensor cores (`kernels/conv_implicit.cu`): each CTA
//! gathers its patch tile from the image into shared memory, so the im2col matrix of
//! [`super::image_conv`] (9x the image for a 3x3 conv, ~11 GB written and read back per
//! 512x512 SD VAE decode) never exists, and the bias is added in the kernel's epilogue.
//!
//! Opt-in with `KILN_CONV_IMPLICIT=1` until a GPU run has checked and timed it (`kiln
//! selftest`'s `conv2d(implicit)` rows always run it). Where it applies (16-bit dtypes,
//! sm_80+, sizes within the kernel's 32-bit indices and the grid), the launch geometry
//! and the order of K (tap-major where c_in is a multiple of 32, see [`KOrder`]) are pure
//! functions, tested on the CPU.

use super::attention_kernels::compiled_arch;
use super::backend::CudaBackend;
use super::device::CudaDevice;
use super::image_geometry::ConvShape;
use super::launch::{self, as_i32};
use super::tensor::CudaTensor;
use crate::backend::DType;
use anyhow::{ensure, Context, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Threads of a CTA: `CI_THREADS` in kernels/conv_implicit.cu (8 warps).
pub const THREADS: u32 = 256;
/// Output pixels per CTA (`CI_BM`).
pub const TILE_PIXELS: usize = 128;
/// Output channels per CTA (`CI_BN`).
pub const TILE_CHANNELS: usize = 128;
/// Values of k per k tile (`CI_BK`).
pub const TILE_K: usize = 32;
/// Largest grid y and z.
const GRID_YZ_MAX: usize = 65_535;

/// The order of the GEMM's K in which the kernel runs a conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KOrder {
    /// The weights' own order, k = (ci * kh + ky) * kw + kx (`conv_implicit`): the gather
    /// tests and steps each value's tap.
    Weights,
    /// Tap-major, k = tap * c_in + ci, with c_in a multiple of [`TILE_K`] so that a k tile
    /// is one tap (`conv_implicit_taps`): one test per tile. The weights are reordered
    /// first (`conv_weight_taps`, one pass over them) unless the conv is 1x1.
    Taps { reorder_weights: bool },
}

/// Tap-major wherever c_in allows it (every VAE and UNet conv but the VAE's conv_in).
pub fn k_order(s: &ConvShape) -> KOrder {
    if s.c_in.is_multiple_of(TILE_K) {
        KOrder::Taps {
            reorder_weights: s.kh * s.kw > 1,
        }
    } else {
        KOrder::Weights
    }
}

/// Kernel taps a conv may have: the kernel keeps one bit per tap (`CiGather::inside`).
pub const MAX_TAPS: usize = 32;

/// Whether the kernel can run conv `s` in this dtype on kernels built for `arch`: it has
/// only 16-bit instantiations with mma.sync m16n8k16 (sm_80+), a mask of at most
/// [`MAX_TAPS`] kernel taps, indexes within an image (padding around it included) and the
/// output's pixels with 32-bit ints, and takes images and channel tiles as grid z / y.
/// Alignment is no condition: the kernel falls back to scalar loads and stores itself.
pub fn implicit_conv_usable(s: &ConvShape, dtype: DType, arch: u32) -> bool {
    let fits = |v: usize| i32::try_from(v).is_ok();
    let padded = |side: usize, taps: usize| side + 2 * s.pad + taps + s.stride;
    dtype != DType::F32
        && arch >= 80
        && s.kh * s.kw <= MAX_TAPS
        && s.n > 0
        && s.c_in > 0
        && s.pixels() > 0
        && s.n <= GRID_YZ_MAX
        && s.c_out.div_ceil(TILE_CHANNELS) <= GRID_YZ_MAX
        && fits((s.c_in + 1) * padded(s.h, s.kh) * padded(s.w, s.kw))
        && fits(s.pixels() + TILE_PIXELS)
        && fits(s.patch())
}

/// The `KILN_CONV_IMPLICIT` switch: only "1" routes conv2d to the kernel (opt-in).
pub fn implicit_switch(value: Option<&str>) -> bool {
    value == Some("1")
}

/// The kernel's grid: pixel tiles x channel tiles x images, [`THREADS`] each; all shared
/// memory is static.
pub fn implicit_launch(s: &ConvShape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            s.pixels().div_ceil(TILE_PIXELS) as u32,
            s.c_out.div_ceil(TILE_CHANNELS) as u32,
            s.n as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    /// `out[c_out, kh * kw, c_in]`: the conv weights `w[c_out, c_in, kh, kw]` in
    /// [`KOrder::Taps`]'s order.
    pub fn conv_weight_taps_into(
        &self,
        w: &CudaTensor,
        s: &ConvShape,
        out: &mut CudaTensor,
    ) -> Result<()> {
        w.expect_shape(&[s.c_out, s.c_in, s.kh, s.kw], "conv weight")?;
        out.expect_shape(&[s.c_out, s.patch()], "tap-major conv weight")?;
        out.expect_dtype(w.dtype(), "tap-major conv weight")?;
        let total = w.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let ints = [
            as_i32(s.c_in, "input channels")?,
            as_i32(s.kh * s.kw, "kernel taps")?,
        ];
        let f = self.kernels().get("conv_weight_taps", w.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut()).arg(w.data()).arg(&total);
        args.arg(&ints[0]).arg(&ints[1]);
        // SAFETY: matches kernels/conv_implicit.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }
            .context("conv_weight_taps launch")?;
        Ok(())
    }

    /// `out = conv2d(x, w) + b` for conv `s` on kernels/conv_implicit.cu, K in `order` (`w`
    /// reordered by [`Self::conv_weight_taps_into`] where that order asks for it); the caller
    /// checked [`implicit_conv_usable`].
    pub fn conv_implicit_into(
        &self,
        (x, w, b): (&CudaTensor, &CudaTensor, Option<&CudaTensor>),
        s: &ConvShape,
        order: KOrder,
        out: &mut CudaTensor,
    ) -> Result<()> {
        x.expect_shape(&[s.n, s.c_in, s.h, s.w], "implicit conv input")?;
        ensure!(
            w.numel() == s.c_out * s.patch(),
            "implicit conv: weights {:?} for {s:?}",
            w.shape()
        );
        ensure!(
            order == KOrder::Weights || s.c_in.is_multiple_of(TILE_K),
            "implicit conv: tap-major K needs c_in % {TILE_K} == 0, {s:?}"
        );
        out.expect_shape(&s.out_dims(), "implicit conv output")?;
        if let Some(b) = b {
            b.expect_shape(&[s.c_out], "implicit conv bias")?;
            b.expect_dtype(x.dtype(), "implicit conv bias")?;
        }
        w.expect_dtype(x.dtype(), "implicit conv weight")?;
        out.expect_dtype(x.dtype(), "implicit conv output")?;
        let arch = compiled_arch(self.kernels().target());
        ensure!(
            implicit_conv_usable(s, x.dtype(), arch),
            "implicit conv: {s:?} in {:?} on sm_{arch} is not supported",
            x.dtype()
        );
        let ints = [
            as_i32(s.c_in, "input channels")?,
            as_i32(s.h, "height")?,
            as_i32(s.w, "width")?,
            as_i32(s.c_out, "output channels")?,
            as_i32(s.kh, "kernel height")?,
            as_i32(s.kw, "kernel width")?,
            as_i32(s.stride, "stride")?,
            as_i32(s.pad, "padding")?,
            as_i32(s.out_h, "output height")?,
            as_i32(s.out_w, "output width")?,
            i32::from(b.is_some()),
        ];
        let op = match order {
            KOrder::Weights => "conv_implicit",
            KOrder::Taps { .. } => "conv_implicit_taps",
        };
        let f = self.kernels().get(op, x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        // Without a bias the kernel never reads that pointer: pass the weights.
        args.arg(out.data_mut())
            .arg(x.data())
            .arg(w.data())
            .arg(b.unwrap_or(w).data());
        for v in &ints {
            args.arg(v);
        }
        // SAFETY: matches kernels/conv_implicit.cu; shapes, dtypes and sizes checked above.
        unsafe { args.launch(implicit_launch(s)) }.context("conv_implicit launch")?;
        Ok(())
    }
}

impl CudaBackend {
    /// Whether conv2d of `x` with `w` can run on the implicit-GEMM kernel here.
    pub fn conv_implicit_usable(&self, x: &CudaTensor, s: &ConvShape) -> bool {
        let arch = compiled_arch(self.device().kernels().target());
        implicit_conv_usable(s, x.dtype(), arch)
    }

    /// `conv2d(x, w) + b` for conv `s` on the implicit-GEMM kernel with K in `order`
    /// ([`k_order`] unless the selftest compares both), whatever `KILN_CONV_IMPLICIT` says:
    /// an error where [`implicit_conv_usable`] refuses it.
    pub fn conv2d_implicit_ordered(
        &self,
        (x, w, b): (&CudaTensor, &CudaTensor, Option<&CudaTensor>),
        s: &ConvShape,
        order: KOrder,
    ) -> Result<CudaTensor> {
        w.expect_shape(&[s.c_out, s.c_in, s.kh, s.kw], "implicit conv weight")?;
        w.expect_dtype(x.dtype(), "implicit conv weight")?;
        let mut out = self.output(x.dtype(), &s.out_dims())?;
        if out.numel() == 0 {
            return Ok(out);
        }
        let dev = self.device();
        let reordered = match order {
            KOrder::Taps {
                reorder_weights: true,
            } => {
                let mut wt = self.output(x.dtype(), &[s.c_out, s.patch()])?;
                dev.conv_weight_taps_into(w, s, &mut wt)?;
                Some(wt)
            }
            _ => None,
        };
        dev.conv_implicit_into((x, reordered.as_ref().unwrap_or(w), b), s, order, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(x: [usize; 4], w: [usize; 4], stride: usize, pad: usize) -> ConvShape {
        ConvShape::new(&x, &w, stride, pad).unwrap()
    }

    #[test]
    fn diffusion_convs_are_usable_in_16_bit_on_sm80_and_later() {
        let vae = conv([1, 128, 512, 512], [128, 128, 3, 3], 1, 1);
        let down = conv([2, 320, 64, 64], [320, 320, 3, 3], 2, 1);
        let conv_in = conv([1, 4, 64, 64], [512, 4, 3, 3], 1, 1);
        let pointwise = conv([2, 640, 32, 32], [320, 640, 1, 1], 1, 0);
        for s in [vae, down, conv_in, pointwise] {
            for dtype in [DType::F16, DType::BF16] {
                for arch in [80, 86, 89, 90] {
                    assert!(implicit_conv_usable(&s, dtype, arch), "{s:?} {dtype:?}");
                }
            }
            assert!(!implicit_conv_usable(&s, DType::F32, 90));
            assert!(!implicit_conv_usable(&s, DType::F16, 75));
        }
    }

    #[test]
    fn sizes_past_the_kernel_indices_or_the_grid_are_refused() {
        // An image of 2^31 values: the in-image offset is a 32-bit int.
        let huge = conv([1, 512, 2048, 2048], [8, 512, 3, 3], 1, 1);
        assert!(!implicit_conv_usable(&huge, DType::F16, 90));
        // Just under, but not with the padding around each channel counted.
        let edge = conv([1, 511, 2048, 2048], [8, 511, 3, 3], 1, 1);
        assert!(!implicit_conv_usable(&edge, DType::F16, 90));
        let many = conv([65_536, 4, 8, 8], [8, 4, 3, 3], 1, 1);
        assert!(!implicit_conv_usable(&many, DType::F16, 90));
        let wide = conv([1, 1, 8, 8], [65_536 * 128 + 1, 1, 1, 1], 1, 0);
        assert!(!implicit_conv_usable(&wide, DType::F16, 90));
        // 7x7 = 49 taps: more than the tap mask holds; 5x5 fits.
        let big_kernel = conv([1, 4, 16, 16], [8, 4, 7, 7], 1, 3);
        assert!(!implicit_conv_usable(&big_kernel, DType::F16, 90));
        let five = conv([1, 4, 16, 16], [8, 4, 5, 5], 1, 2);
        assert!(implicit_conv_usable(&five, DType::F16, 90));
        let empty = conv([0, 4, 8, 8], [8, 4, 3, 3], 1, 1);
        assert!(!implicit_conv_usable(&empty, DType::F16, 90));
        let most = conv([65_535, 4, 8, 8], [65_535 * 128, 4, 1, 1], 1, 0);
        assert!(implicit_conv_usable(&most, DType::BF16, 80));
    }

    #[test]
    fn the_grid_covers_every_pixel_channel_and_image() {
        // SD VAE at 512x512: 2048 pixel tiles of one 128-channel tile.
        let l = implicit_launch(&conv([1, 128, 512, 512], [128, 128, 3, 3], 1, 1));
        assert_eq!((l.grid_dim, l.block_dim), ((2048, 1, 1), (256, 1, 1)));
        // Odd: 165 pixels -> 2 tiles, 136 channels -> 2 tiles, 2 images.
        let l = implicit_launch(&conv([2, 5, 11, 15], [136, 5, 3, 3], 1, 1));
        assert_eq!(l.grid_dim, (2, 2, 2));
        // The stride-2 downsampler of a 64x64 UNet level: 32x32 = 1024 pixels.
        let l = implicit_launch(&conv([2, 320, 64, 64], [320, 320, 3, 3], 2, 1));
        assert_eq!(l.grid_dim, (8, 3, 2));
        assert_eq!(l.shared_mem_bytes, 0);
    }

    #[test]
    fn k_is_tap_major_where_c_in_fills_whole_k_tiles() {
        let taps = |reorder_weights| KOrder::Taps { reorder_weights };
        // VAE and UNet 3x3 convs; the 1x1 skip needs no reordered weights.
        assert_eq!(
            k_order(&conv([1, 128, 64, 64], [128, 128, 3, 3], 1, 1)),
            taps(true)
        );
        assert_eq!(
            k_order(&conv([2, 320, 64, 64], [320, 320, 3, 3], 2, 1)),
            taps(true)
        );
        assert_eq!(
            k_order(&conv([2, 640, 8, 8], [320, 640, 1, 1], 1, 0)),
            taps(false)
        );
        // The VAE's conv_in (4 channels), odd channel counts: the weights' order.
        for c_in in [3, 4, 16, 48, 100] {
            let s = conv([1, c_in, 16, 16], [8, c_in, 3, 3], 1, 1);
            assert_eq!(k_order(&s), KOrder::Weights, "{c_in}");
        }
    }

    #[test]
    fn the_env_switch_is_opt_in() {
        assert!(!implicit_switch(None));
        assert!(!implicit_switch(Some("0")));
        assert!(!implicit_switch(Some("yes")));
        assert!(implicit_switch(Some("1")));
    }

    #[test]
    fn the_kernel_file_is_registered_with_its_tile_sizes() {
        use crate::backend::cuda::kernel_sources::all_kernel_files;
        let file = all_kernel_files()
            .find(|f| f.file == "conv_implicit.cu")
            .expect("conv_implicit.cu is registered");
        assert_eq!(
            file.ops,
            ["conv_implicit", "conv_implicit_taps", "conv_weight_taps"]
        );
        for define in [
            format!("#define CI_THREADS {THREADS}"),
            format!("#define CI_BM {TILE_PIXELS}"),
            format!("#define CI_BN {TILE_CHANNELS}"),
            format!("#define CI_BK {TILE_K}"),
        ] {
            assert!(file.body.contains(&define), "{define}");
        }
    }
}
