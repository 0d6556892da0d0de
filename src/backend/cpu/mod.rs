//! The CPU reference backend: candle tensors for the dense math, plain loops for paged
//! attention. Every CUDA op is checked against this.

pub(crate) mod attention;
mod draw;
pub mod gated_delta;
mod image_ops;
mod kv_cache;
pub mod mamba;
pub mod selective_scan;
mod short_conv;
pub mod slot_conv;

pub use kv_cache::CpuKvCache;

use super::{AttentionShape, Backend, BatchLayout, HeadTerms, KvCacheSpec, QueryTemperature, Rope};
use anyhow::{Context, Result};
use candle_core::{DType as CDType, Device, Tensor};

/// Pins candle's CPU thread count once, at process start, before any thread exists.
/// Without `RAYON_NUM_THREADS` candle recomputes the count on every matmul by reading
/// `/proc/cpuinfo` (measured: ~3% of a decode step's CPU time spent formatting that file).
/// Call it from `main` only: it writes the process environment.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle's own choice (physical cores), computed once.
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// The CPU backend. The candle CPU device needs no context; the one setting says whether
/// decode steps run on padded batches.
#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    pad_decode: bool,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend::default()
    }

    /// A CPU backend that runs every decode step on the padded batch the CUDA backend records
    /// and replays (`Backend::forward_recorded`: extra sequences that store nothing), eagerly,
    /// keeping the real rows' logits. How the padding's contract (the model's results for
    /// the real sequences do not change) is tested without a GPU.
    pub fn padding_decode_batches() -> Self {
        CpuBackend { pad_decode: true }
    }
}

/// Flattens any tensor to f32 values, row-major.
fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(CDType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Backend for CpuBackend {
    type Tensor = Tensor;
    type KvCache = CpuKvCache;
    // The CPU reads the layout and the table where they are: a copy is all it takes.
    type BatchMeta = BatchLayout;
    type RopeTable = Rope;
    /// The host path reads the expert tensors themselves.
    type ExpertIndex = ();

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn computes_on_host(&self) -> bool {
        true
    }

    fn upload(&self, host: Tensor) -> Result<Tensor> {
        Ok(host)
    }

    fn to_host_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        host_f32(t)
    }

    fn tensor_dims(&self, t: &Tensor) -> Result<Vec<usize>> {
        Ok(t.dims().to_vec())
    }

    fn replace_from_f32(&self, t: Tensor, values: &[f32]) -> Result<Tensor> {
        anyhow::ensure!(
            values.len() == t.elem_count(),
            "{} values for a {:?} tensor",
            values.len(),
            t.dims()
        );
        Ok(Tensor::from_slice(values, t.dims(), t.device())?.to_dtype(t.dtype())?)
    }

    fn forward_recorded(
        &self,
        tokens: &[u32],
        batch: &BatchLayout,
        body: &mut super::RecordedBody<'_, BatchLayout, Tensor>,
    ) -> Result<Option<Tensor>> {
        if !self.pad_decode {
            return Ok(None);
        }
        let Some(padded) = crate::backend::cuda::decode_graphs::pad_decode(batch, tokens) else {
            return Ok(None);
        };
        let meta = self.prepare_batch(&padded.layout)?;
        let logits = body(&meta, &padded.tokens, &padded.layout)?;
        self.select_rows(&logits, &batch.logits_rows).map(Some)
    }

    fn prepare_batch(&self, batch: &BatchLayout) -> Result<BatchLayout> {
        batch.validate()?;
        Ok(batch.clone())
    }

    fn prepare_rope(&self, rope: &Rope) -> Result<Rope> {
        Ok(rope.clone())
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let vocab = table.dim(0)?;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            anyhow::bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let ids = Tensor::from_slice(ids, ids.len(), &Device::Cpu)?;
        Ok(table.index_select(&ids, 0)?)
    }

    fn add_position_embeddings(
        &self,
        x: Tensor,
        table: &Tensor,
        batch: &BatchLayout,
        offset: usize,
    ) -> Result<Tensor> {
        let rows = table.dim(0)?;
        let at: Vec<u32> = batch
            .positions
            .iter()
            .map(|&p| p as usize + offset)
            .map(|at| {
                anyhow::ensure!(
                    at < rows,
                    "position {at} is past the {rows} learned positions"
                );
                Ok(at as u32)
            })
            .collect::<Result<_>>()?;
        let at = Tensor::from_slice(&at, at.len(), &Device::Cpu)?;
        Ok((x + table.index_select(&at, 0)?)?)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = x.matmul(&w.t()?).context("linear")?;
        Ok(match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn linear_f32(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (x, w) = (x.to_dtype(CDType::F32)?, w.to_dtype(CDType::F32)?);
        x.matmul(&w.t()?).context("linear_f32")
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let dims = x.dims().to_vec();
        let d = weight.dim(0)?;
        let xf = x.to_dtype(CDType::F32)?.reshape(((), d))?;
        let mean_sq = xf.sqr()?.mean_keepdim(1)?;
        // As HF does: normalise in f32, round to the model dtype, then scale by the weight.
        let normed = xf
            .broadcast_div(&(mean_sq + eps)?.sqrt()?)?
            .to_dtype(dtype)?;
        Ok(normed.broadcast_mul(weight)?.reshape(dims)?)
    }

    fn add_rms_norm(
        &self,
        x: Tensor,
        residual: Tensor,
        weight: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor)> {
        let sum = (x + residual)?;
        Ok((self.rms_norm(&sum, weight, eps)?, sum))
    }

    fn rope(
        &self,
        q: Tensor,
        k: Tensor,
        head_dim: usize,
        rope: &Rope,
        batch: &BatchLayout,
    ) -> Result<(Tensor, Tensor)> {
        Ok((
            rotate(&q, head_dim, &batch.positions, rope, rope.query_temperature)?,
            rotate(&k, head_dim, &batch.positions, rope, None)?,
        ))
    }

    fn silu_mul(&self, gate_up: &Tensor) -> Result<Tensor> {
        let width = gate_up.dim(1)?;
        anyhow::ensure!(width % 2 == 0, "silu_mul: odd width {width}");
        let half = width / 2;
        let gate = gate_up.narrow(1, 0, half)?;
        let up = gate_up.narrow(1, half, half)?;
        Ok((gate.silu()? * up)?)
    }

    fn gelu_tanh_mul(&self, gate_up: &Tensor) -> Result<Tensor> {
        let width = gate_up.dim(1)?;
        anyhow::ensure!(width % 2 == 0, "gelu_tanh_mul: odd width {width}");
        let half = width / 2;
        let gate = gate_up.narrow(1, 0, half)?;
        let up = gate_up.narrow(1, half, half)?;
        // candle's `gelu` is the tanh approximation (`gelu_erf` is the exact one). In f32,
        // rounded once, as PyTorch computes it for 16-bit inputs: candle's own 16-bit gelu
        // rounds after every step of the formula.
        let act = gate.to_dtype(CDType::F32)?.gelu()?.to_dtype(gate.dtype())?;
        Ok((act * up)?)
    }

    fn head_layer_norm(
        &self,
        x: &Tensor,
        weight: &Tensor,
        head_dim: usize,
        eps: f64,
    ) -> Result<Tensor> {
        let (n, width) = x.dims2()?;
        anyhow::ensure!(
            head_dim > 0 && width % head_dim == 0 && weight.elem_count() == width,
            "head_layer_norm: rows of {width} are not heads of {head_dim} with a weight each \
             ({} weights)",
            weight.elem_count()
        );
        let heads = x.reshape((n * (width / head_dim), head_dim))?;
        let w = weight.reshape((1, width / head_dim, head_dim))?;
        // Each head's own weight row: the normed heads as [n, heads, head_dim] times w.
        let normed = image_ops::f32_of(&heads)?;
        let mean = normed.mean_keepdim(candle_core::D::Minus1)?;
        let centred = normed.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let y = centred
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .reshape((n, width / head_dim, head_dim))?
            .broadcast_mul(&image_ops::f32_of(&w)?)?
            .reshape((n, width))?;
        Ok(y.to_dtype(x.dtype())?)
    }

    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        let xf = image_ops::f32_of(x)?;
        let mean = xf.mean_keepdim(candle_core::D::Minus1)?;
        let centred = xf.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let y = centred
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(&image_ops::f32_of(weight)?)?
            .broadcast_add(&image_ops::f32_of(bias)?)?;
        Ok(y.to_dtype(x.dtype())?)
    }

    fn activation(&self, x: &Tensor, act: crate::backend::image_ops::Activation) -> Result<Tensor> {
        Ok(image_ops::activate(&image_ops::f32_of(x)?, act)?.to_dtype(x.dtype())?)
    }

    fn clamped_swiglu(&self, gate_up: &Tensor, limit: f32, alpha: f32) -> Result<Tensor> {
        let (n, width) = gate_up.dims2()?;
        anyhow::ensure!(width % 2 == 0, "clamped_swiglu: odd width {width}");
        let half = width / 2;
        let values = host_f32(gate_up)?;
        let out: Vec<f32> = values
            .chunks_exact(width)
            .flat_map(|row| {
                let (gate, up) = row.split_at(half);
                gate.iter().zip(up).map(|(&g, &u)| {
                    let (g, u) = (g.min(limit), u.clamp(-limit, limit));
                    (u + 1.0) * (g / (1.0 + (-alpha * g).exp()))
                })
            })
            .collect();
        Ok(Tensor::from_vec(out, (n, half), &Device::Cpu)?.to_dtype(gate_up.dtype())?)
    }

    fn softcap(&self, x: Tensor, cap: f32) -> Result<Tensor> {
        anyhow::ensure!(
            cap > 0.0 && cap.is_finite(),
            "softcap: the cap must be positive, got {cap}"
        );
        let dtype = x.dtype();
        let capped = ((x.to_dtype(candle_core::DType::F32)? / cap as f64)?.tanh()? * cap as f64)?;
        Ok(capped.to_dtype(dtype)?)
    }

    fn add_tensors(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    fn mul_scalar(&self, x: &Tensor, factor: f32) -> Result<Tensor> {
        Ok(x.affine(factor as f64, 0.0)?)
    }

    fn split_columns(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
        let total: usize = widths.iter().sum();
        anyhow::ensure!(
            x.dim(1)? == total,
            "split_columns: width {} != {total}",
            x.dim(1)?
        );
        let mut start = 0;
        let mut parts = Vec::with_capacity(widths.len());
        for &w in widths {
            parts.push(x.narrow(1, start, w)?.contiguous()?);
            start += w;
        }
        Ok(parts)
    }

    fn join_heads(&self, shared: &Tensor, own: &Tensor, heads: usize) -> Result<Tensor> {
        let (n, s) = shared.dims2()?;
        let (own_n, own_width) = own.dims2()?;
        anyhow::ensure!(
            heads > 0 && own_n == n && own_width % heads == 0,
            "join_heads: {own_width} columns of {own_n} rows are not {heads} heads of {n} rows"
        );
        let o = own_width / heads;
        let shared = shared.unsqueeze(1)?.broadcast_as((n, heads, s))?;
        let own = own.reshape((n, heads, o))?;
        Ok(Tensor::cat(&[&shared, &own], 2)?.reshape((n, heads * (s + o)))?)
    }

    fn draw_rows(
        &self,
        logits: &Tensor,
        rows: &[usize],
        draws: &[crate::backend::cuda::sampling_draw_rows::DrawRow],
    ) -> Result<Option<Vec<u32>>> {
        let vocab = logits.dims().last().copied().unwrap_or(0);
        draw::draw_rows(&host_f32(logits)?, vocab, rows, draws).map(Some)
    }

    fn index_experts(
        &self,
        _gate_up: &[Tensor],
        _down: &[Tensor],
        _biases: crate::backend::moe::ExpertBiases<'_, Tensor>,
    ) -> Result<()> {
        Ok(())
    }

    fn select_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &Device::Cpu)?;
        Ok(x.index_select(&idx, 0)?)
    }

    fn new_kv_cache(&self, spec: &KvCacheSpec) -> Result<CpuKvCache> {
        Ok(CpuKvCache::new(spec.clone()))
    }

    fn write_kv(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        batch: &BatchLayout,
    ) -> Result<()> {
        cache.write(layer, &host_f32(k)?, &host_f32(v)?, &batch.slots)
    }

    fn gated_short_conv(
        &self,
        bcx: &Tensor,
        weight: &Tensor,
        cache: &mut CpuKvCache,
        layer: usize,
        batch: &BatchLayout,
    ) -> Result<Tensor> {
        let (n, width) = bcx.dims2()?;
        let channels = width / 3;
        let (w_channels, taps) = weight.dims2()?;
        anyhow::ensure!(
            width == 3 * channels && w_channels == channels,
            "gated_short_conv: a weight of {w_channels} channels for rows of {width} (B, C, x)"
        );
        // candle's 16-bit products round once, as PyTorch's do.
        let part = |i: usize| bcx.narrow(1, i * channels, channels);
        let (b, c, x) = (part(0)?, part(1)?, part(2)?);
        let bx = (b * x)?;
        cache.write_conv(layer, &host_f32(&bx)?, &batch.slots)?;
        let conv = short_conv::causal_depthwise(
            cache,
            layer,
            batch,
            (&host_f32(weight)?, taps),
            channels,
        )?;
        let conv = Tensor::from_vec(conv, (n, channels), &Device::Cpu)?.to_dtype(bcx.dtype())?;
        Ok((c * conv)?)
    }

    fn mamba_mixer(
        &self,
        zxbcdt: &Tensor,
        params: &crate::backend::mamba::MambaParams<'_, Tensor>,
        cache: &mut CpuKvCache,
        layer: usize,
        batch: &BatchLayout,
    ) -> Result<Tensor> {
        let (n, _) = zxbcdt.dims2()?;
        let (conv_dim, taps) = params.conv_weight.dims2()?;
        anyhow::ensure!(
            conv_dim == params.shape.conv_dim() && taps == params.shape.taps,
            "mamba: a convolution weight of [{conv_dim}, {taps}] for {:?}",
            params.shape
        );
        let host = mamba::HostMambaParams {
            shape: params.shape,
            conv_weight: host_f32(params.conv_weight)?,
            conv_bias: params.conv_bias.map(host_f32).transpose()?,
            dt_bias: host_f32(params.dt_bias)?,
            a: host_f32(params.a)?,
            d: host_f32(params.d)?,
            norm: host_f32(params.norm)?,
        };
        let dtype = crate::backend::DType::from_candle(zxbcdt.dtype())?;
        let out = mamba::mamba_mixer(cache, layer, batch, &host_f32(zxbcdt)?, &host, dtype)?;
        let inner = params.shape.inner();
        Ok(Tensor::from_vec(out, (n, inner), &Device::Cpu)?.to_dtype(zxbcdt.dtype())?)
    }

    fn gated_delta_net(
        &self,
        qkvzba: &Tensor,
        params: &crate::backend::gated_delta::GatedDeltaParams<'_, Tensor>,
        cache: &mut CpuKvCache,
        layer: usize,
        batch: &BatchLayout,
    ) -> Result<Tensor> {
        let (n, _) = qkvzba.dims2()?;
        let host = gated_delta::HostGatedDeltaParams {
            shape: params.shape,
            conv_weight: host_f32(params.conv_weight)?,
            dt_bias: host_f32(params.dt_bias)?,
            a: host_f32(params.a)?,
            norm: host_f32(params.norm)?,
        };
        let dtype = crate::backend::DType::from_candle(qkvzba.dtype())?;
        let qkvzba_host = host_f32(qkvzba)?;
        let out = gated_delta::gated_delta_net(cache, layer, batch, &qkvzba_host, &host, dtype)?;
        let width = params.shape.value_dim();
        Ok(Tensor::from_vec(out, (n, width), &Device::Cpu)?.to_dtype(qkvzba.dtype())?)
    }

    fn slot_conv(
        &self,
        src: &Tensor,
        conv: &crate::backend::slot_conv::SlotConvParams<'_, Tensor>,
        cache: &mut CpuKvCache,
        layer: usize,
        batch: &BatchLayout,
    ) -> Result<Tensor> {
        let (n, width) = src.dims2()?;
        let weight = host_f32(conv.weight)?;
        let bias = conv.bias.map(host_f32).transpose()?;
        anyhow::ensure!(
            weight.len() == conv.channels * conv.taps,
            "slot_conv: the weight is not [{}, {}]",
            conv.channels,
            conv.taps
        );
        let host = slot_conv::SlotConv {
            offset: conv.offset,
            width,
            channels: conv.channels,
            taps: conv.taps,
            window_at: conv.state_values,
            weight: &weight,
            bias: bias.as_deref(),
        };
        let dtype = crate::backend::DType::from_candle(src.dtype())?;
        let rows = host_f32(src)?;
        let conv_of = (&host, conv.slot_values());
        let out = selective_scan::slot_conv(cache, layer, batch, &rows, conv_of, dtype)?;
        Ok(Tensor::from_vec(out, (n, conv.channels), &Device::Cpu)?.to_dtype(src.dtype())?)
    }

    fn selective_scan(
        &self,
        x: &Tensor,
        dt: &Tensor,
        (b, c): (&Tensor, &Tensor),
        xz: &Tensor,
        params: &crate::backend::selective_scan::SelectiveParams<'_, Tensor>,
        cache: &mut CpuKvCache,
        layer: usize,
        batch: &BatchLayout,
    ) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        let host = [x, dt, b, c, xz]
            .into_iter()
            .map(host_f32)
            .collect::<Result<Vec<_>>>()?;
        let inputs = selective_scan::ScanInputs {
            x: &host[0],
            dt: &host[1],
            b: &host[2],
            c: &host[3],
            xz: &host[4],
        };
        let (a, d) = (host_f32(params.a)?, host_f32(params.d)?);
        let dtype = crate::backend::DType::from_candle(x.dtype())?;
        let sh = &params.shape;
        let out =
            selective_scan::selective_scan(cache, layer, batch, &inputs, (sh, &a, &d), dtype)?;
        Ok(Tensor::from_vec(out, (n, sh.inner), &Device::Cpu)?.to_dtype(x.dtype())?)
    }

    fn sigmoid_gate(&self, x: &Tensor, gate: &Tensor) -> Result<Tensor> {
        anyhow::ensure!(
            x.dims() == gate.dims(),
            "sigmoid_gate: x {:?} and gate {:?} differ",
            x.dims(),
            gate.dims()
        );
        // The sigmoid in f32, rounded once; candle's 16-bit product rounds once too.
        let g = gate.to_dtype(CDType::F32)?;
        let sig = (g.neg()?.exp()? + 1.0)?.recip()?.to_dtype(gate.dtype())?;
        Ok((x * sig)?)
    }

    fn attention(
        &self,
        q: &Tensor,
        cache: &CpuKvCache,
        layer: usize,
        batch: &BatchLayout,
        shape: &AttentionShape,
        terms: HeadTerms<'_, Tensor>,
    ) -> Result<Tensor> {
        let q_host = host_f32(q)?;
        let sinks = terms.sinks.map(host_f32).transpose()?;
        let alibi = terms.alibi.map(host_f32).transpose()?;
        let terms = HeadTerms {
            sinks: sinks.as_deref(),
            alibi: alibi.as_deref(),
        };
        let out = attention::paged_attention(&q_host, cache, layer, batch, shape, terms)?;
        let n = batch.num_tokens();
        Ok(
            Tensor::from_vec(out, (n, shape.num_heads * shape.head_dim), &Device::Cpu)?
                .to_dtype(q.dtype())?,
        )
    }
}

/// Rotary embedding of `x: [n, heads * head_dim]`, one position per row, computed in f32.
/// `x`'s heads rotated by each row's position, then multiplied by `temperature`'s factor at
/// that position where one is given (queries of Llama 4's layers without rotary); in f32,
/// rounded once.
fn rotate(
    x: &Tensor,
    head_dim: usize,
    positions: &[u32],
    rope: &Rope,
    temperature: Option<QueryTemperature>,
) -> Result<Tensor> {
    let (n, width) = x.dims2()?;
    anyhow::ensure!(
        positions.len() == n,
        "rope: {} positions for {n} tokens",
        positions.len()
    );
    // The first `2 * inv_freq.len()` values of each head rotate (fewer than the head under
    // partial rotary, GLM-4); the rest pass through.
    let rot = rope.inv_freq.len() * 2;
    anyhow::ensure!(
        rot > 0 && rot <= head_dim,
        "rope: a table of {} pairs does not fit head_dim {head_dim}",
        rope.inv_freq.len()
    );
    let mut data = host_f32(x)?;
    let half = rot / 2;
    for (row, &pos) in data.chunks_mut(width).zip(positions) {
        for head in row.chunks_mut(head_dim) {
            for (i, &f) in rope.inv_freq.iter().enumerate() {
                // f32 angle as HF computes it (position * inv_freq in f32).
                let angle = pos as f32 * f;
                let (sin, cos) = angle.sin_cos();
                let (sin, cos) = (sin * rope.scale, cos * rope.scale);
                let (ia, ib) = if rope.neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * cos - b * sin;
                head[ib] = b * cos + a * sin;
            }
        }
        if let Some(t) = temperature {
            let factor = t.factor(pos);
            row.iter_mut().for_each(|v| *v *= factor);
        }
    }
    Ok(Tensor::from_vec(data, (n, width), &Device::Cpu)?.to_dtype(x.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamped_swiglu_clamps_gate_above_and_up_both_ways() {
        let be = CpuBackend::new();
        // Rows of [gate | up]: inside the limit, then gate and up past it.
        let x = Tensor::new(&[[1.0f32, 2.0], [9.0, -8.0], [-9.0, 8.0]], &Device::Cpu).unwrap();
        let got: Vec<f32> = be
            .clamped_swiglu(&x, 7.0, 1.702)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let act = |g: f32, u: f32| (u + 1.0) * g / (1.0 + (-1.702 * g).exp());
        // The gate is only clamped from above: -9 stays -9.
        let want = [act(1.0, 2.0), act(7.0, -7.0), act(-9.0, 7.0)];
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn the_cpu_backend_draws_rows_as_the_host_sampler() {
        use crate::backend::cuda::sampling_draw_rows::DrawRow;
        let logits = Tensor::new(
            &[[0.5f32, 1.0, -1.0], [3.0, 2.0, 1.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let row = DrawRow {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            prompt: &[],
            output: &[],
            masked: &[],
            u: 0.5,
        };
        let be = CpuBackend::new();
        // Greedy with token 1 masked (min_tokens hold): the next best, token 0.
        let greedy = DrawRow {
            masked: &[1],
            ..row
        };
        // A draw at u = 0 takes the most likely candidate; near 1, the least likely kept one.
        let first = DrawRow {
            temperature: 1.0,
            u: 0.0,
            ..row
        };
        let last = DrawRow {
            temperature: 1.0,
            u: 0.999_999,
            ..row
        };
        let drawn = be
            .draw_rows(&logits, &[0, 1, 1], &[greedy, first, last])
            .unwrap();
        assert_eq!(drawn, Some(vec![0, 0, 2]));
        assert!(be.draw_rows(&logits, &[0], &[]).is_err());
    }
}
