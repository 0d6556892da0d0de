//! Launches of the image-model kernels that compute (`kernels/image_norm.cu`,
//! `image_pointwise.cu`), as methods of [`CudaDevice`] writing into a given output; the
//! data-movement ones are in `image_layout_kernels.rs`. Each checks that its tensors hold
//! what the kernel will index (errors, never out-of-bounds launches); the op semantics
//! (which shapes an op accepts) live in `image_ops.rs`.

use super::device::CudaDevice;
use super::image_launch::{plane_map, GroupNormLaunch};
use super::launch::{self, as_i32};
use super::tensor::CudaTensor;
use crate::backend::image_ops::Activation;
use crate::backend::DType;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::PushKernelArg;

/// `act` code of kernels/image_pointwise.cu (`KILN_ACT_*`).
pub fn activation_code(act: Activation) -> i32 {
    match act {
        Activation::Silu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::QuickGelu => 3,
        Activation::Relu => 4,
        Activation::Relu2 => 5,
        Activation::Xielu(_) => 6,
    }
}

/// The `p0..p3` arguments of kernels/image_pointwise.cu's `activation`: xIELU's
/// parameters, zeros for the activations that take none.
fn activation_params(act: Activation) -> [f32; 4] {
    match act {
        Activation::Xielu(p) => [p.alpha_p, p.alpha_n, p.beta, p.eps],
        _ => [0.0; 4],
    }
}

/// What a group norm computes: `groups` groups, `eps`, SiLU after the affine or not.
#[derive(Debug, Clone, Copy)]
pub struct GroupNormSpec {
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

/// Fails unless `t` has `x`'s dtype.
fn same_dtype(t: &CudaTensor, x: &CudaTensor, what: &str) -> Result<()> {
    t.expect_dtype(x.dtype(), what)
}

/// Fails unless `t` is 1-d of length `len`.
fn vector_of(t: &CudaTensor, len: usize, what: &str) -> Result<()> {
    t.expect_shape(&[len], what)
}

impl CudaDevice {
    /// Group norm of `x: [n, c, ...]` (+ SiLU) into `y` of the same shape, in the three
    /// launches of `launch` (the [`GroupNormLaunch`] of `x`'s shape), with f32 scratch
    /// `partials` (`rows * chunks * 3`) and `stats` (`rows * 2`).
    pub fn group_norm_into(
        &self,
        x: &CudaTensor,
        (w, b): (&CudaTensor, &CudaTensor),
        norm: GroupNormSpec,
        (partials, stats): (&mut CudaTensor, &mut CudaTensor),
        y: &mut CudaTensor,
    ) -> Result<()> {
        let (n, c) = match x.shape() {
            [n, c, ..] => (*n, *c),
            other => bail!("group_norm: rank {} < 2 ({other:?})", other.len()),
        };
        let spatial: usize = x.shape()[2..].iter().product();
        vector_of(w, c, "group_norm weight")?;
        vector_of(b, c, "group_norm bias")?;
        for (t, what) in [(w, "group_norm weight"), (b, "group_norm bias")] {
            same_dtype(t, x, what)?;
        }
        y.expect_shape(x.shape(), "group_norm output")?;
        same_dtype(y, x, "group_norm output")?;
        if n * c * spatial == 0 {
            return Ok(());
        }
        let l = GroupNormLaunch::new((n, c, spatial), norm.groups, x.dtype().size_in_bytes())?;
        vector_of(partials, l.rows * l.chunks * 3, "group_norm partials")?;
        vector_of(stats, l.rows * 2, "group_norm statistics")?;
        partials.expect_dtype(DType::F32, "group_norm partials")?;
        stats.expect_dtype(DType::F32, "group_norm statistics")?;
        let (count, chunks, rows) = (
            l.count as i64,
            as_i32(l.chunks, "chunks")?,
            as_i32(l.rows, "groups")?,
        );
        let f = self.kernels().get("group_norm_stats", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(partials.data_mut())
            .arg(x.data())
            .arg(&count)
            .arg(&chunks);
        // SAFETY: matches kernels/image_norm.cu; partials sized for the grid above.
        unsafe { args.launch(l.stats) }.context("group_norm_stats launch")?;

        let f = self.kernels().get("group_norm_finalize", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(stats.data_mut())
            .arg(partials.data())
            .arg(&rows)
            .arg(&chunks)
            .arg(&norm.eps);
        // SAFETY: as above; one thread per row, past `rows` they return.
        unsafe { args.launch(l.finalize) }.context("group_norm_finalize launch")?;

        let ints = [
            as_i32(c, "channels")?,
            as_i32(c / norm.groups, "channels per group")?,
            as_i32(l.planes, "planes")?,
            i32::from(norm.silu),
        ];
        let spatial = spatial as i64;
        let f = self.kernels().get("group_norm_apply", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut())
            .arg(x.data())
            .arg(stats.data())
            .arg(w.data())
            .arg(b.data());
        args.arg(&ints[0])
            .arg(&ints[1])
            .arg(&spatial)
            .arg(&ints[2])
            .arg(&ints[3]);
        // SAFETY: matches kernels/image_norm.cu; shapes checked above.
        unsafe { args.launch(l.apply) }.context("group_norm_apply launch")?;
        Ok(())
    }

    /// Layer norm over the last dimension of `x` into `y`.
    pub fn layer_norm_into(
        &self,
        x: &CudaTensor,
        (w, b): (&CudaTensor, &CudaTensor),
        eps: f32,
        y: &mut CudaTensor,
    ) -> Result<()> {
        let Some(&d) = x.shape().last() else {
            bail!("layer_norm of a scalar");
        };
        vector_of(w, d, "layer_norm weight")?;
        vector_of(b, d, "layer_norm bias")?;
        for (t, what) in [(w, "layer_norm weight"), (b, "layer_norm bias")] {
            same_dtype(t, x, what)?;
        }
        y.expect_shape(x.shape(), "layer_norm output")?;
        same_dtype(y, x, "layer_norm output")?;
        if x.numel() == 0 {
            return Ok(());
        }
        let d_i = as_i32(d, "layer_norm width")?;
        let f = self.kernels().get("layer_norm", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut())
            .arg(x.data())
            .arg(w.data())
            .arg(b.data());
        args.arg(&d_i).arg(&eps);
        // SAFETY: matches kernels/image_norm.cu; shapes checked above.
        unsafe { args.launch(launch::per_row(x.numel() / d, launch::row_threads(d))?) }
            .context("layer_norm launch")?;
        Ok(())
    }

    /// `y` = each `head_dim`-wide head of `x` (rows `[n, heads * head_dim]`) layer-normed and
    /// scaled by its head's row of `w` (`heads * head_dim` values), no bias.
    pub fn head_layer_norm_into(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        head_dim: usize,
        eps: f32,
        y: &mut CudaTensor,
    ) -> Result<()> {
        let Some(&width) = x.shape().last() else {
            bail!("head_layer_norm of a scalar");
        };
        if head_dim == 0 || width % head_dim != 0 || w.numel() != width {
            bail!(
                "head_layer_norm: rows of {width} are not heads of {head_dim} with a weight \
                 each ({} weights)",
                w.numel()
            );
        }
        same_dtype(w, x, "head_layer_norm weight")?;
        y.expect_shape(x.shape(), "head_layer_norm output")?;
        same_dtype(y, x, "head_layer_norm output")?;
        if x.numel() == 0 {
            return Ok(());
        }
        let (d_i, heads_i) = (
            as_i32(head_dim, "head_layer_norm head dim")?,
            as_i32(width / head_dim, "head_layer_norm heads")?,
        );
        let f = self.kernels().get("head_layer_norm", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut()).arg(x.data()).arg(w.data());
        args.arg(&d_i).arg(&heads_i).arg(&eps);
        // SAFETY: matches kernels/image_norm.cu; shapes checked above (one block per head
        // row, rows head-major within a token, so row % heads is the head).
        unsafe {
            args.launch(launch::per_row(
                x.numel() / head_dim,
                launch::row_threads(head_dim),
            )?)
        }
        .context("head_layer_norm launch")?;
        Ok(())
    }

    /// `y = act(x)`, elementwise.
    pub fn activation_into(
        &self,
        x: &CudaTensor,
        act: Activation,
        y: &mut CudaTensor,
    ) -> Result<()> {
        y.expect_shape(x.shape(), "activation output")?;
        same_dtype(y, x, "activation output")?;
        let total = x.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let code = activation_code(act);
        let [p0, p1, p2, p3] = activation_params(act);
        let f = self.kernels().get("activation", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut()).arg(x.data()).arg(&total).arg(&code);
        args.arg(&p0).arg(&p1).arg(&p2).arg(&p3);
        // SAFETY: matches kernels/image_pointwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("activation launch")?;
        Ok(())
    }

    /// `y[.., h] = x[.., :h] * gelu(x[.., h:])` for `x[.., 2h]`.
    pub fn geglu_into(&self, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
        let Some(&width) = x.shape().last() else {
            bail!("geglu of a scalar");
        };
        ensure!(width % 2 == 0, "geglu: odd width {width}");
        let mut half_dims = x.shape().to_vec();
        if let Some(last) = half_dims.last_mut() {
            *last = width / 2;
        }
        y.expect_shape(&half_dims, "geglu output")?;
        same_dtype(y, x, "geglu output")?;
        let total = y.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let half = as_i32(width / 2, "geglu width")?;
        let f = self.kernels().get("geglu", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut()).arg(x.data()).arg(&total).arg(&half);
        // SAFETY: matches kernels/image_pointwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("geglu launch")?;
        Ok(())
    }

    /// `y = alpha * a + beta * b`, or `alpha * a` without `b`.
    pub fn lincomb_into(
        &self,
        (a, alpha): (&CudaTensor, f32),
        b: Option<(&CudaTensor, f32)>,
        y: &mut CudaTensor,
    ) -> Result<()> {
        if let Some((b, _)) = b {
            ensure!(
                b.shape() == a.shape(),
                "lincomb: shapes {:?} and {:?} differ",
                a.shape(),
                b.shape()
            );
            same_dtype(b, a, "lincomb rhs")?;
        }
        y.expect_shape(a.shape(), "lincomb output")?;
        same_dtype(y, a, "lincomb output")?;
        let total = a.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let (b_tensor, beta) = b.unwrap_or((a, 0.0));
        let has_b = i32::from(b.is_some());
        let f = self.kernels().get("lincomb", a.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut()).arg(a.data()).arg(b_tensor.data());
        args.arg(&total).arg(&alpha).arg(&beta).arg(&has_b);
        // SAFETY: matches kernels/image_pointwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("lincomb launch")?;
        Ok(())
    }

    /// `y[n, c, ..] = x[n, c, ..] + bias[n, c]` (`bias: [n, c]`) or `+ bias[c]` (`bias: [c]`,
    /// a conv bias).
    pub fn channel_bias_into(
        &self,
        x: &CudaTensor,
        bias: &CudaTensor,
        y: &mut CudaTensor,
    ) -> Result<()> {
        let (n, c) = match x.shape() {
            [n, c, ..] => (*n, *c),
            other => bail!("channel bias: input {other:?} has no channel axis"),
        };
        let batch_stride = match bias.shape() {
            [bn, bc] if (*bn, *bc) == (n, c) => c,
            [bc] if *bc == c => 0,
            other => bail!("channel bias {other:?} does not fit {:?}", x.shape()),
        };
        same_dtype(bias, x, "channel bias")?;
        y.expect_shape(x.shape(), "channel bias output")?;
        same_dtype(y, x, "channel bias output")?;
        if x.numel() == 0 {
            return Ok(());
        }
        let spatial = x.numel() / (n * c);
        let config = plane_map(n * c, spatial, x.dtype().size_in_bytes())?;
        let ints = [
            as_i32(n * c, "planes")?,
            as_i32(c, "channels")?,
            as_i32(batch_stride, "bias stride")?,
        ];
        let spatial = spatial as i64;
        let f = self.kernels().get("add_channel_bias", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut()).arg(x.data()).arg(bias.data());
        args.arg(&ints[0]).arg(&ints[1]).arg(&spatial).arg(&ints[2]);
        // SAFETY: matches kernels/image_pointwise.cu; shapes checked above.
        unsafe { args.launch(config) }.context("add_channel_bias launch")?;
        Ok(())
    }

    /// `y = x + row`, `row` repeated over every row of `x`'s last dimension.
    pub fn add_row_into(&self, x: &CudaTensor, row: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
        let Some(&width) = x.shape().last() else {
            bail!("add_row to a scalar");
        };
        vector_of(row, width, "add_row row")?;
        same_dtype(row, x, "add_row row")?;
        y.expect_shape(x.shape(), "add_row output")?;
        same_dtype(y, x, "add_row output")?;
        let total = x.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let width = as_i32(width, "row width")?;
        let f = self.kernels().get("add_row", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut()).arg(x.data()).arg(row.data());
        args.arg(&total).arg(&width);
        // SAFETY: matches kernels/image_pointwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("add_row launch")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernel_sources::all_kernel_files;

    /// The activation codes must be the `KILN_ACT_*` values the kernel switches on.
    #[test]
    fn activation_codes_match_the_kernel() {
        let body = all_kernel_files()
            .find(|f| f.file == "image_pointwise.cu")
            .expect("image_pointwise.cu is registered")
            .body;
        for (act, name) in [
            (Activation::Silu, "KILN_ACT_SILU"),
            (Activation::Gelu, "KILN_ACT_GELU_ERF"),
            (Activation::GeluTanh, "KILN_ACT_GELU_TANH"),
            (Activation::QuickGelu, "KILN_ACT_QUICK_GELU"),
            (Activation::Relu, "KILN_ACT_RELU"),
            (Activation::Relu2, "KILN_ACT_RELU2"),
            (
                Activation::Xielu(crate::backend::image_ops::Xielu::transformers_default()),
                "KILN_ACT_XIELU",
            ),
        ] {
            let define = format!("#define {name} {}", activation_code(act));
            assert!(body.contains(&define), "missing `{define}`");
        }
    }
}
