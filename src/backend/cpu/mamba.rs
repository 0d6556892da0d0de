//! The Mamba-2 mixer on the host, in f32: the CPU backend's implementation and the
//! reference the CUDA kernels are checked against. Each sequence's convolution window and
//! state live in its state slot; the recurrence runs token by token (the state-space
//! "scan"), which is what the chunked algorithms of the fast kernels compute too.

use super::kv_cache::CpuKvCache;
use super::slot_conv::{for_each_slot, SlotConv};
use crate::backend::mamba::{silu, step_size, MambaShape};
use crate::backend::{BatchLayout, DType};
use anyhow::Result;

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
/// reads and leaves each sequence's convolution window and state in its slot of layer
/// `layer` of `cache`.
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
    let (inner, width) = (sh.inner(), sh.projection_width());
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
    anyhow::ensure!(
        p.conv_weight.len() == sh.conv_dim() * sh.taps,
        "mamba: the convolution weight is not [{}, {}]",
        sh.conv_dim(),
        sh.taps
    );
    let conv = SlotConv {
        offset: inner,
        width,
        channels: sh.conv_dim(),
        taps: sh.taps,
        window_at: sh.state_values(),
        weight: &p.conv_weight,
        bias: p.conv_bias.as_deref(),
    };
    let mut y = vec![0.0f32; n * inner];
    for_each_slot(
        cache,
        layer,
        batch,
        (sh.slot_values(), 0..sh.slot_values()),
        "mamba",
        |tokens, state| {
            let rows = &zxbcdt[tokens.start * width..tokens.end * width];
            let xbc = conv.convolve(rows, state, dtype);
            scan(
                &xbc,
                rows,
                state,
                p,
                &mut y[tokens.start * inner..tokens.end * inner],
            );
            conv.slide_window(rows, state);
            Ok(())
        },
    )?;
    Ok(gated_norm(&y, zxbcdt, p, dtype))
}

/// The recurrence over one sequence's step: `y` (`[tokens, inner]`) gets `h C + D x`
/// (before the gate), from and into the state-space part of `state`.
fn scan(xbc: &[f32], rows: &[f32], state: &mut [f32], p: &HostMambaParams, y: &mut [f32]) {
    let sh = &p.shape;
    let (inner, conv_dim, width) = (sh.inner(), sh.conv_dim(), sh.projection_width());
    let heads_per_group = sh.heads / sh.groups;
    let n_state = sh.state;
    let h = &mut state[..sh.state_values()];
    for t in 0..rows.len() / width {
        let row = &xbc[t * conv_dim..(t + 1) * conv_dim];
        let (x, bc) = row.split_at(inner);
        let (b_all, c_all) = bc.split_at(sh.groups * n_state);
        for head in 0..sh.heads {
            let raw = rows[t * width + inner + conv_dim + head];
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
}

/// `norm * rms_norm(y * silu(z))` over groups of `norm_group` values, rounded to `dtype`;
/// `y * silu(z)` where the shape is not normed (the SiLU rounded to the dtype first, as
/// transformers' Falcon-H1 computes it).
fn gated_norm(y: &[f32], zxbcdt: &[f32], p: &HostMambaParams, dtype: DType) -> Vec<f32> {
    let sh = &p.shape;
    let (inner, width, group) = (sh.inner(), sh.projection_width(), sh.norm_group);
    let mut out = vec![0.0f32; y.len()];
    for t in 0..y.len() / inner.max(1) {
        let z = &zxbcdt[t * width..t * width + inner];
        if !sh.normed {
            for i in 0..inner {
                out[t * inner + i] = dtype.round(y[t * inner + i] * dtype.round(silu(z[i])));
            }
            continue;
        }
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
