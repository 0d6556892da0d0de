//! Launches of the data-movement kernels of the image models (`kernels/image_layout.cu`:
//! nearest upsampling, axis copies for concat / narrow, the NCHW <-> tokens transpose,
//! im2col and its weights), as methods of [`CudaDevice`] writing into a given output. Each checks that its
//! tensors hold what the kernel will index; the op semantics live in `image_ops.rs`.

use super::device::CudaDevice;
use super::image_geometry::{AxisView, ConvShape};
use super::image_launch::GatherLaunch;
use super::launch::{self, as_i32};
use super::tensor::CudaTensor;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::PushKernelArg;

impl CudaDevice {
    /// Nearest-neighbour resize of NCHW `x` to `y`'s height and width.
    pub fn upsample_nearest_into(&self, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
        let (&[n, c, h, w], &[yn, yc, oh, ow]) = (x.shape(), y.shape()) else {
            bail!(
                "upsample_nearest: {:?} to {:?} is not NCHW",
                x.shape(),
                y.shape()
            );
        };
        ensure!(
            (yn, yc) == (n, c) && h > 0 && w > 0 && oh > 0 && ow > 0,
            "upsample_nearest: {:?} to {:?}",
            x.shape(),
            y.shape()
        );
        y.expect_dtype(x.dtype(), "upsample output")?;
        if y.numel() == 0 {
            return Ok(());
        }
        let l = GatherLaunch::new(n * c, (oh, ow), x.dtype().size_in_bytes())?;
        let ints = [
            as_i32(l.planes, "planes")?,
            as_i32(h, "height")?,
            as_i32(w, "width")?,
            as_i32(oh, "output height")?,
            as_i32(ow, "output width")?,
            i32::from(l.vectorised),
        ];
        let f = self.kernels().get("upsample_nearest", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut()).arg(x.data());
        for v in &ints {
            args.arg(v);
        }
        // SAFETY: matches kernels/image_layout.cu; shapes checked above.
        unsafe { args.launch(l.config) }.context("upsample_nearest launch")?;
        Ok(())
    }

    /// Copies entries `src_offset .. src_offset + count` of `src`'s middle axis to entries
    /// `dst_offset ..` of `dst`'s (both viewed as `[outer, len, inner]` with equal outer and
    /// inner sizes).
    pub fn copy_axis(
        &self,
        (src, src_view, src_offset): (&CudaTensor, AxisView, usize),
        (dst, dst_view, dst_offset): (&mut CudaTensor, AxisView, usize),
        count: usize,
    ) -> Result<()> {
        let fits = |t: &CudaTensor, v: AxisView, offset: usize| {
            v.outer * v.len * v.inner == t.numel() && offset + count <= v.len
        };
        ensure!(
            src_view.outer == dst_view.outer
                && src_view.inner == dst_view.inner
                && fits(src, src_view, src_offset)
                && fits(dst, dst_view, dst_offset),
            "copy_axis: {count} entries from {:?} ({src_view:?} at {src_offset}) to {:?} \
             ({dst_view:?} at {dst_offset})",
            src.shape(),
            dst.shape()
        );
        dst.expect_dtype(src.dtype(), "copy_axis destination")?;
        let total = (src_view.outer * count * src_view.inner) as i64;
        if total == 0 {
            return Ok(());
        }
        let inner = src_view.inner as i64;
        let ints = [
            as_i32(count, "copied entries")?,
            as_i32(src_view.len, "source axis")?,
            as_i32(src_offset, "source offset")?,
            as_i32(dst_view.len, "destination axis")?,
            as_i32(dst_offset, "destination offset")?,
        ];
        let f = self.kernels().get("copy_axis", src.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(dst.data_mut())
            .arg(src.data())
            .arg(&total)
            .arg(&inner);
        for v in &ints {
            args.arg(v);
        }
        // SAFETY: matches kernels/image_layout.cu; extents checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("copy_axis launch")?;
        Ok(())
    }

    /// `y[b, cols, rows] = x[b, rows, cols]` for `x` of `batch * rows * cols` elements.
    pub fn transpose_last2_into(
        &self,
        x: &CudaTensor,
        (batch, rows, cols): (usize, usize, usize),
        y: &mut CudaTensor,
    ) -> Result<()> {
        ensure!(
            x.numel() == batch * rows * cols && y.numel() == x.numel(),
            "transpose: {:?} -> {:?} as [{batch}, {rows}, {cols}]",
            x.shape(),
            y.shape()
        );
        y.expect_dtype(x.dtype(), "transpose output")?;
        let total = x.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let ints = [as_i32(rows, "rows")?, as_i32(cols, "columns")?];
        let f = self.kernels().get("transpose_last2", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut()).arg(x.data()).arg(&total);
        args.arg(&ints[0]).arg(&ints[1]);
        // SAFETY: matches kernels/image_layout.cu; sizes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("transpose launch")?;
        Ok(())
    }

    /// The im2col matrices of images `first .. first + count` of `x` into
    /// `col[count, patch + bias_rows, pixels]` (at least that many elements): with
    /// `bias_rows`, each image's matrix ends in a row of ones and `bias_rows - 1` rows of
    /// zeros (the conv's bias in its GEMM, against [`Self::conv_weight_bias_into`]'s weights).
    pub fn im2col_into(
        &self,
        x: &CudaTensor,
        s: &ConvShape,
        (first, count): (usize, usize),
        bias_rows: usize,
        col: &mut CudaTensor,
    ) -> Result<()> {
        x.expect_shape(&[s.n, s.c_in, s.h, s.w], "im2col input")?;
        let needed = count * (s.patch() + bias_rows) * s.pixels();
        ensure!(
            first + count <= s.n && col.numel() >= needed,
            "im2col: images {first}..{} of {}, {} elements for {needed}",
            first + count,
            s.n,
            col.numel()
        );
        col.expect_dtype(x.dtype(), "im2col output")?;
        if needed == 0 {
            return Ok(());
        }
        let l = GatherLaunch::new(
            count * (s.patch() + bias_rows),
            (s.out_h, s.out_w),
            x.dtype().size_in_bytes(),
        )?;
        let ints = [
            as_i32(l.planes, "im2col planes")?,
            as_i32(first, "first image")?,
            as_i32(s.c_in, "channels")?,
            as_i32(s.h, "height")?,
            as_i32(s.w, "width")?,
            as_i32(s.kh, "kernel height")?,
            as_i32(s.kw, "kernel width")?,
            as_i32(s.stride, "stride")?,
            as_i32(s.pad, "padding")?,
            as_i32(s.out_h, "output height")?,
            as_i32(s.out_w, "output width")?,
            as_i32(bias_rows, "bias rows")?,
            i32::from(l.vectorised),
        ];
        let f = self.kernels().get("im2col", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(col.data_mut()).arg(x.data());
        for v in &ints {
            args.arg(v);
        }
        // SAFETY: matches kernels/image_layout.cu; extents checked above.
        unsafe { args.launch(l.config) }.context("im2col launch")?;
        Ok(())
    }

    /// `out[c_out, patch + bias_rows]`: the conv weights `w[c_out, c_in, kh, kw]` with the
    /// bias `b[c_out]` as column `patch` and zeros after it (`bias_rows > 0`).
    pub fn conv_weight_bias_into(
        &self,
        (w, b): (&CudaTensor, &CudaTensor),
        s: &ConvShape,
        bias_rows: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let k = s.patch() + bias_rows;
        ensure!(bias_rows > 0, "conv_weight_bias without bias rows");
        w.expect_shape(&[s.c_out, s.c_in, s.kh, s.kw], "conv weight")?;
        b.expect_shape(&[s.c_out], "conv bias")?;
        out.expect_shape(&[s.c_out, k], "conv weight with bias")?;
        for (t, what) in [(b, "conv bias"), (&*out, "conv weight with bias")] {
            t.expect_dtype(w.dtype(), what)?;
        }
        let l = GatherLaunch::new(1, (s.c_out, k), w.dtype().size_in_bytes())?;
        let ints = [
            as_i32(s.c_out, "output channels")?,
            as_i32(s.patch(), "patch")?,
            as_i32(bias_rows, "bias rows")?,
            i32::from(l.vectorised),
        ];
        let f = self.kernels().get("conv_weight_bias", w.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut()).arg(w.data()).arg(b.data());
        for v in &ints {
            args.arg(v);
        }
        // SAFETY: matches kernels/image_layout.cu; shapes checked above.
        unsafe { args.launch(l.config) }.context("conv_weight_bias launch")?;
        Ok(())
    }
}
