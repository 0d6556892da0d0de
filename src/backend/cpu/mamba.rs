//! The Mamba-2 mixer on the host, in f32: the CPU backend's implementation and the
//! reference the CUDA kernels are checked against. The recurrence runs token by token (the
//! state-space "scan"), which is what the chunked algorithms of the fast kernels compute too.

use super::kv_cache::CpuKvCache;
use super::short_conv::causal_depthwise;
use crate::backend::mamba::{silu, step_size, MambaShape};
use crate::backend::{BatchLayout, DType};
use anyhow::{Context, Result};

/// A mixer's parameters as host f32 values (`conv_weight` `[conv_dim, taps]`).
pub struct HostMambaParams {
    pub shape: MambaShape,
    pub conv_weight: Vec<f32>,
    pub conv_bias: Option<Vec<f32>>,
    pub dt_bias: Vec<f32>,
    pub a: Vec<f32>,
    pub d: Vec<f32>,
    pub norm: Vec<f32>,
}

/// `[n, inner]` mixer outputs of `zxbcdt` (`[n, projection_width]`), rounded to `dtype`;
/// writes the step's convolution rows and states into layer `layer` of `cache`.
pub fn mamba_mixer(
    cache: &mut CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    zxbcdt: &[f32],
    p: &HostMambaParams,
    dtype: DType,
) -> Result<Vec<f32>> {
    let sh = &p.shape;
    sh.validate()?;
    let (inner, conv_dim, width) = (sh.inner(), sh.conv_dim(), sh.projection_width());
    let n = batch.num_tokens();
    anyhow::ensure!(
        zxbcdt.len() == n * width,
        "mamba: {} values for {n} tokens of {width}",
        zxbcdt.len()
    );
    anyhow::ensure!(
        p.dt_bias.len() == sh.heads && p.a.len() == sh.heads && p.d.len() == sh.heads,
        "mamba: dt_bias, A and D need one value per head ({})",
        sh.heads
    );
    anyhow::ensure!(
        p.norm.len() == inner,
        "mamba: the norm weight is not [{inner}]"
    );
    let rows: Vec<f32> = (0..n)
        .flat_map(|t| {
            zxbcdt[t * width + inner..t * width + inner + conv_dim]
                .iter()
                .copied()
        })
        .collect();
    cache
        .write_conv(layer, &rows, &batch.slots)
        .context("mamba")?;
    let mut xbc = causal_depthwise(cache, layer, batch, (&p.conv_weight, sh.taps), conv_dim)?;
    for (i, v) in xbc.iter_mut().enumerate() {
        let bias = p.conv_bias.as_ref().map_or(0.0, |b| b[i % conv_dim]);
        *v = dtype.round(silu(dtype.round(*v + bias)));
    }
    let y = scan(cache, layer, batch, zxbcdt, &xbc, p)?;
    Ok(gated_norm(&y, zxbcdt, p, dtype))
}

/// The recurrence over each sequence's tokens: `[n, inner]` outputs `h C + D x` (before the
/// gate), from and into each sequence's state slot of layer `layer`.
fn scan(
    cache: &mut CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    zxbcdt: &[f32],
    xbc: &[f32],
    p: &HostMambaParams,
) -> Result<Vec<f32>> {
    let sh = &p.shape;
    let (inner, conv_dim, width) = (sh.inner(), sh.conv_dim(), sh.projection_width());
    let values = cache
        .spec
        .state_values(layer)
        .with_context(|| format!("mamba: layer {layer} keeps no states"))?;
    anyhow::ensure!(
        values == sh.state_values(),
        "mamba: the cache keeps states of {values}, the mixer's have {}",
        sh.state_values()
    );
    let states = &mut cache.v[layer];
    let slots = states.len() / values.max(1);
    let heads_per_group = sh.heads / sh.groups;
    let n_state = sh.state;
    let mut y = vec![0.0f32; batch.num_tokens() * inner];
    let mut h = vec![0.0f32; values];
    for seq in 0..batch.num_seqs() {
        let (start, end) = (batch.query_start[seq], batch.query_start[seq + 1]);
        // No tokens, or a padding sequence (no slots): nothing to run or store.
        if start == end || batch.slots[start] < 0 {
            continue;
        }
        let slot = batch.state_slot(seq);
        anyhow::ensure!(
            slot < slots,
            "mamba: state slot {slot} outside the cache's {slots}"
        );
        let state = &mut states[slot * values..(slot + 1) * values];
        let first = batch.context_lens[seq] - (end - start);
        if first == 0 {
            h.fill(0.0);
        } else {
            h.copy_from_slice(state);
        }
        for t in start..end {
            let row = &xbc[t * conv_dim..(t + 1) * conv_dim];
            let (x, bc) = row.split_at(inner);
            let (b_all, c_all) = bc.split_at(sh.groups * n_state);
            for head in 0..sh.heads {
                let raw = zxbcdt[t * width + inner + conv_dim + head];
                let dt = step_size(raw, p.dt_bias[head], sh);
                let decay = (dt * p.a[head]).exp();
                let g = head / heads_per_group;
                let (b, c) = (
                    &b_all[g * n_state..(g + 1) * n_state],
                    &c_all[g * n_state..(g + 1) * n_state],
                );
                for i in head * sh.head_dim..(head + 1) * sh.head_dim {
                    let xv = x[i];
                    let hrow = &mut h[i * n_state..(i + 1) * n_state];
                    let mut acc = 0.0f32;
                    for k in 0..n_state {
                        hrow[k] = decay * hrow[k] + dt * xv * b[k];
                        acc += hrow[k] * c[k];
                    }
                    y[t * inner + i] = acc + p.d[head] * xv;
                }
            }
        }
        // The state after the step's last token, which the sequence's next step resumes.
        state.copy_from_slice(&h);
    }
    Ok(y)
}

/// `norm * rms_norm(y * silu(z))` over groups of `norm_group` values, rounded to `dtype`.
fn gated_norm(y: &[f32], zxbcdt: &[f32], p: &HostMambaParams, dtype: DType) -> Vec<f32> {
    let sh = &p.shape;
    let (inner, width, group) = (sh.inner(), sh.projection_width(), sh.norm_group);
    let mut out = vec![0.0f32; y.len()];
    for t in 0..y.len() / inner.max(1) {
        let z = &zxbcdt[t * width..t * width + inner];
        let gated: Vec<f32> = (0..inner).map(|i| y[t * inner + i] * silu(z[i])).collect();
        for (g0, chunk) in gated.chunks(group).enumerate() {
            let mean = chunk.iter().map(|v| v * v).sum::<f32>() / group as f32;
            let inv = 1.0 / (mean + sh.norm_eps).sqrt();
            for (j, v) in chunk.iter().enumerate() {
                let i = g0 * group + j;
                out[t * inner + i] = dtype.round(p.norm[i] * v * inv);
            }
        }
    }
    out
}
