//! Element-wise and per-row ops of the model, as methods of [`CudaDevice`]. Each checks
//! shapes and dtypes (errors, never panics) and queues one kernel on the device's stream.

use super::device::CudaDevice;
use super::launch::{self, as_i32};
use super::tensor::CudaTensor;
use crate::backend::{DType, QueryTemperature};
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Rotary-embedding variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// HF `rotate_half`: pairs (i, i + hd/2). Llama, Mistral, Qwen.
    Neox,
    /// GPT-J style: pairs (2i, 2i + 1).
    Interleaved,
}

impl CudaDevice {
    /// `out[n, hidden] = table[ids[n], :]` for the first `n` of `ids` (a pooled buffer may
    /// be longer); ids outside the vocabulary give zero rows.
    pub fn embedding(
        &self,
        table: &CudaTensor,
        ids: &CudaSlice<u32>,
        n: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let [vocab, hidden] = dims2(table, "embedding table")?;
        if ids.len() < n {
            bail!("embedding: {} ids on the device for {n} rows", ids.len());
        }
        out.expect_shape(&[n, hidden], "embedding output")?;
        out.expect_dtype(table.dtype(), "embedding output")?;
        if n == 0 {
            return Ok(());
        }
        let (hidden_i, vocab_i) = (as_i32(hidden, "hidden")?, as_i32(vocab, "vocab")?);
        let f = self.kernels().get("embedding", table.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(table.data())
            .arg(ids)
            .arg(&hidden_i)
            .arg(&vocab_i);
        // SAFETY: argument types and sizes match kernels/embedding.cu; shapes checked above.
        unsafe { args.launch(launch::per_row(n, 256)?) }.context("embedding launch")?;
        Ok(())
    }

    /// `y = x * rsqrt(mean(x^2) + eps) * w` over the last dim of `x[rows, d]`
    /// (also `[tokens, heads, head_dim]` with `w[head_dim]`: per-head q/k norm).
    pub fn rms_norm(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        eps: f32,
        y: &mut CudaTensor,
    ) -> Result<()> {
        let (rows, d) = rows_and_width(x, w, "rms_norm")?;
        y.expect_shape(x.shape(), "rms_norm output")?;
        y.expect_dtype(x.dtype(), "rms_norm output")?;
        if rows == 0 {
            return Ok(());
        }
        let d_i = as_i32(d, "rms_norm width")?;
        let f = self.kernels().get("rms_norm", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(y.data_mut())
            .arg(x.data())
            .arg(w.data())
            .arg(&eps)
            .arg(&d_i);
        // SAFETY: matches kernels/norm.cu; shapes checked above.
        unsafe { args.launch(launch::per_row(rows, launch::row_threads(d))?) }
            .context("rms_norm launch")?;
        Ok(())
    }

    /// In place: `residual += x` (rounded to the dtype), then `x = rms_norm(residual)`.
    pub fn fused_add_rms_norm(
        &self,
        x: &mut CudaTensor,
        residual: &mut CudaTensor,
        w: &CudaTensor,
        eps: f32,
    ) -> Result<()> {
        let (rows, d) = rows_and_width(x, w, "fused_add_rms_norm")?;
        residual.expect_shape(x.shape(), "fused_add_rms_norm residual")?;
        residual.expect_dtype(x.dtype(), "fused_add_rms_norm residual")?;
        if rows == 0 {
            return Ok(());
        }
        let d_i = as_i32(d, "rms_norm width")?;
        let f = self.kernels().get("fused_add_rms_norm", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(x.data_mut())
            .arg(residual.data_mut())
            .arg(w.data())
            .arg(&eps)
            .arg(&d_i);
        // SAFETY: matches kernels/norm.cu; shapes checked above.
        unsafe { args.launch(launch::per_row(rows, launch::row_threads(d))?) }
            .context("fused_add_rms_norm launch")?;
        Ok(())
    }

    /// Rotary embedding in place on `q[n, hq, hd]` and `k[n, hk, hd]`. `positions[n]`,
    /// `inv_freq[rot/2]` (any frequency scaling, e.g. llama3, is already applied): the first
    /// `rot` values of each head rotate (all of them unless partial rotary, GLM-4); cos and
    /// sin are multiplied by `scale` (the rope's attention factor); q by `temperature`'s
    /// factor at each position where one is given (Llama 4's layers without rotary).
    #[allow(clippy::too_many_arguments)] // the rotation's parts, as the kernel takes them
    pub fn rope(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        positions: &CudaSlice<i32>,
        inv_freq: &CudaSlice<f32>,
        style: RopeStyle,
        scale: f32,
        temperature: Option<QueryTemperature>,
    ) -> Result<()> {
        let [n, hq, hd] = dims3(q, "rope q")?;
        let [n_k, hk, hd_k] = dims3(k, "rope k")?;
        if n_k != n || hd_k != hd || hd % 2 != 0 {
            bail!(
                "rope: q {:?} and k {:?} disagree or head dim is odd",
                q.shape(),
                k.shape()
            );
        }
        k.expect_dtype(q.dtype(), "rope k")?;
        let rot = 2 * inv_freq.len();
        if positions.len() < n || rot == 0 || rot > hd {
            bail!(
                "rope: {} positions / {} inv_freq for {n} tokens, head dim {hd}",
                positions.len(),
                inv_freq.len()
            );
        }
        if n == 0 {
            return Ok(());
        }
        let (hq_i, hk_i, hd_i) = (as_i32(hq, "hq")?, as_i32(hk, "hk")?, as_i32(hd, "hd")?);
        let rot_i = as_i32(rot, "rotary dims")?;
        let (q_stride, k_stride) = (as_i32(hq * hd, "q row")?, as_i32(hk * hd, "k row")?);
        let neox = i32::from(style == RopeStyle::Neox);
        // One block per (token, head), a thread per rotated pair: a decode step's 40 heads
        // run on 40 SMs instead of looping in one block.
        let heads = hq + hk;
        if heads > 65_535 {
            bail!("rope: {heads} heads exceed the grid's y limit");
        }
        let config = LaunchConfig {
            grid_dim: (as_i32(n, "rope tokens")? as u32, heads as u32, 1),
            block_dim: ((hd / 2).next_power_of_two().clamp(32, 1024) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.kernels().get("rope", q.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(q.data_mut())
            .arg(k.data_mut())
            .arg(positions)
            .arg(inv_freq);
        args.arg(&hq_i)
            .arg(&hk_i)
            .arg(&hd_i)
            .arg(&rot_i)
            .arg(&q_stride)
            .arg(&k_stride)
            .arg(&neox)
            .arg(&scale);
        let (temp_floor, temp_scale) = super::ops_qkv::temperature_args(temperature);
        args.arg(&temp_floor).arg(&temp_scale);
        // SAFETY: matches kernels/rope.cu; shapes checked above.
        unsafe { args.launch(config) }.context("rope launch")?;
        Ok(())
    }

    /// `out[n, I] = silu(gate_up[:, :I]) * gate_up[:, I:]`.
    pub fn silu_mul(&self, gate_up: &CudaTensor, out: &mut CudaTensor) -> Result<()> {
        self.gated_mul("silu_mul", gate_up, out)
    }

    /// `out = gelu_tanh(gate) * up`, laid out as for [`CudaDevice::silu_mul`].
    pub fn gelu_tanh_mul(&self, gate_up: &CudaTensor, out: &mut CudaTensor) -> Result<()> {
        self.gated_mul("gelu_tanh_mul", gate_up, out)
    }

    /// gpt-oss's clamped SwiGLU, laid out as for [`CudaDevice::silu_mul`].
    pub fn clamped_swiglu(
        &self,
        gate_up: &CudaTensor,
        (limit, alpha): (f32, f32),
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.gated_mul_with("clamped_swiglu", gate_up, out, Some((limit, alpha)))
    }

    /// One of kernels/activation.cu's gated activations, by kernel name.
    fn gated_mul(&self, op: &str, gate_up: &CudaTensor, out: &mut CudaTensor) -> Result<()> {
        self.gated_mul_with(op, gate_up, out, None)
    }

    /// A gated activation, with the clamped SwiGLU's two parameters where it takes them.
    fn gated_mul_with(
        &self,
        op: &str,
        gate_up: &CudaTensor,
        out: &mut CudaTensor,
        params: Option<(f32, f32)>,
    ) -> Result<()> {
        let [n, two_i] = dims2(gate_up, "gated activation input")?;
        if two_i % 2 != 0 {
            bail!("{op}: width {two_i} is odd");
        }
        let inter = two_i / 2;
        out.expect_shape(&[n, inter], "gated activation output")?;
        out.expect_dtype(gate_up.dtype(), "gated activation output")?;
        let total = (n * inter) as i64;
        if total == 0 {
            return Ok(());
        }
        let inter_i = as_i32(inter, "intermediate size")?;
        let f = self.kernels().get(op, gate_up.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(gate_up.data())
            .arg(&total)
            .arg(&inter_i);
        if let Some((limit, alpha)) = &params {
            args.arg(limit).arg(alpha);
        }
        // SAFETY: matches kernels/activation.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }
            .with_context(|| format!("{op} launch"))?;
        Ok(())
    }

    /// `out = a + b`, all of one shape and dtype.
    pub fn add(&self, a: &CudaTensor, b: &CudaTensor, out: &mut CudaTensor) -> Result<()> {
        b.expect_shape(a.shape(), "add rhs")?;
        out.expect_shape(a.shape(), "add output")?;
        b.expect_dtype(a.dtype(), "add rhs")?;
        out.expect_dtype(a.dtype(), "add output")?;
        let total = a.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let f = self.kernels().get("add", a.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(a.data())
            .arg(b.data())
            .arg(&total);
        // SAFETY: matches kernels/elementwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("add launch")?;
        Ok(())
    }

    /// In place `x[i, :] += table[positions[i] + offset, :]` for the first `n` rows (learned
    /// position embeddings); rows whose position falls outside the table are left as they
    /// are (callers check positions first).
    pub fn add_position_embedding(
        &self,
        x: &mut CudaTensor,
        table: &CudaTensor,
        positions: &CudaSlice<i32>,
        offset: usize,
    ) -> Result<()> {
        let [rows, hidden] = dims2(table, "position table")?;
        let n = x.shape().first().copied().unwrap_or(0);
        x.expect_shape(&[n, hidden], "position embedding input")?;
        x.expect_dtype(table.dtype(), "position embedding input")?;
        if positions.len() < n {
            bail!(
                "add_position_embedding: {} positions for {n} rows",
                positions.len()
            );
        }
        if n == 0 {
            return Ok(());
        }
        let hidden_i = as_i32(hidden, "hidden")?;
        let (offset_i, rows_i) = (as_i32(offset, "offset")?, as_i32(rows, "table rows")?);
        let f = self
            .kernels()
            .get("add_position_embedding", table.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(x.data_mut())
            .arg(table.data())
            .arg(positions)
            .arg(&hidden_i)
            .arg(&offset_i)
            .arg(&rows_i);
        // SAFETY: argument types and sizes match kernels/embedding.cu; shapes checked above.
        unsafe { args.launch(launch::per_row(n, 256)?) }
            .context("add_position_embedding launch")?;
        Ok(())
    }

    /// In place `x[n, d] += bias[d]`.
    pub fn add_bias(&self, x: &mut CudaTensor, bias: &CudaTensor) -> Result<()> {
        let (rows, d) = rows_and_width(x, bias, "add_bias")?;
        if x.shape().last() != Some(&d) {
            bail!("add_bias: x {:?} does not end in {d}", x.shape());
        }
        let total = (rows * d) as i64;
        if total == 0 {
            return Ok(());
        }
        let d_i = as_i32(d, "bias width")?;
        let f = self.kernels().get("add_bias", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(x.data_mut())
            .arg(bias.data())
            .arg(&total)
            .arg(&d_i);
        // SAFETY: matches kernels/elementwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("add_bias launch")?;
        Ok(())
    }

    /// `x[r, :] *= scales[r]` in place, each product rounded to the dtype (`scales`: f32,
    /// one per row of `x`).
    pub fn scale_rows(&self, x: &mut CudaTensor, scales: &CudaTensor) -> Result<()> {
        let (&d, rows) = match x.shape().split_last() {
            Some((d, rest)) => (d, rest.iter().product::<usize>()),
            None => bail!("scale_rows of a scalar"),
        };
        scales.expect_shape(&[rows], "scale_rows scales")?;
        scales.expect_dtype(DType::F32, "scale_rows scales")?;
        let total = (rows * d) as i64;
        if total == 0 {
            return Ok(());
        }
        let d_i = as_i32(d, "row width")?;
        let f = self.kernels().get("scale_rows", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(x.data_mut())
            .arg(scales.data())
            .arg(&total)
            .arg(&d_i);
        // SAFETY: matches kernels/elementwise.cu; shapes checked above.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("scale_rows launch")?;
        Ok(())
    }

    /// `x` as f32 into `out` (same shape): exact widening.
    pub fn widen(&self, x: &CudaTensor, out: &mut CudaTensor) -> Result<()> {
        out.expect_shape(x.shape(), "widen output")?;
        out.expect_dtype(DType::F32, "widen output")?;
        let total = x.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let f = self.kernels().get("widen", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut()).arg(x.data()).arg(&total);
        // SAFETY: matches kernels/elementwise.cu; both hold `total` elements (checked).
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("widen launch")?;
        Ok(())
    }

    /// `x = cap * tanh(x / cap)` in place (Gemma 2's final logit soft-capping).
    pub fn softcap(&self, x: &mut CudaTensor, cap: f32) -> Result<()> {
        if !(cap > 0.0 && cap.is_finite()) {
            bail!("softcap: the cap must be positive, got {cap}");
        }
        let total = x.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let f = self.kernels().get("softcap", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(x.data_mut()).arg(&total).arg(&cap);
        // SAFETY: matches kernels/elementwise.cu; the kernel touches `total` elements of x.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("softcap launch")?;
        Ok(())
    }
}

/// `[a, b]` of a rank-2 tensor.
pub(super) fn dims2(t: &CudaTensor, what: &str) -> Result<[usize; 2]> {
    match t.shape() {
        &[a, b] => Ok([a, b]),
        other => bail!("{what}: expected rank 2, got {other:?}"),
    }
}

/// `[a, b, c]` of a rank-3 tensor.
pub(super) fn dims3(t: &CudaTensor, what: &str) -> Result<[usize; 3]> {
    match t.shape() {
        &[a, b, c] => Ok([a, b, c]),
        other => bail!("{what}: expected rank 3, got {other:?}"),
    }
}

/// Rows and width of `x` normalised in groups of the 1-d `w`'s length: the last dim is that
/// length, or a multiple of it (per-head norms of `[n, heads * head_dim]`, e.g. Qwen3's q/k).
fn rows_and_width(x: &CudaTensor, w: &CudaTensor, what: &str) -> Result<(usize, usize)> {
    let d = match w.shape() {
        &[d] => d,
        other => bail!("{what}: weight must be 1-d, got {other:?}"),
    };
    w.expect_dtype(x.dtype(), what)?;
    match x.shape().last() {
        Some(&last) if d > 0 && last % d == 0 => Ok((x.numel() / d, d)),
        _ => bail!("{what}: x {:?} does not end in {d}", x.shape()),
    }
}
