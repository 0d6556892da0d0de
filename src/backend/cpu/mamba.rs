//! The Mamba-2 mixer on the host, in f32: the CPU backend's implementation and the
//! reference the CUDA kernels are checked against. Each sequence's convolution window and
//! state live in its state slot; the recurrence runs token by token (the state-space
//! "scan"), which is what the chunked algorithms of the fast kernels compute too.

use super::kv_cache::CpuKvCache;
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
    let values = cache
        .spec
        .state_values(layer)
        .with_context(|| format!("mamba: layer {layer} keeps no states"))?;
    anyhow::ensure!(
        values == sh.slot_values(),
        "mamba: the cache keeps states of {values}, the mixer's have {}",
        sh.slot_values()
    );
    let states = &mut cache.v[layer];
    let num_slots = states.len() / values.max(1);
    let mut y = vec![0.0f32; n * inner];
    for seq in 0..batch.num_seqs() {
        let (start, end) = (batch.query_start[seq], batch.query_start[seq + 1]);
        // No tokens, or a padding sequence (no slots): nothing to run or store.
        if start == end || batch.slots[start] < 0 {
            continue;
        }
        let slot = batch.state_slot(seq);
        anyhow::ensure!(
            slot < num_slots,
            "mamba: state slot {slot} outside the cache's {num_slots}"
        );
        let first = batch.context_lens[seq] - (end - start);
        let state = &mut states[slot * values..(slot + 1) * values];
        if first == 0 {
            state.fill(0.0);
        }
        let rows = &zxbcdt[start * width..end * width];
        let xbc = convolve(rows, state, p, dtype);
        scan(&xbc, rows, state, p, &mut y[start * inner..end * inner]);
        slide_window(rows, state, sh);
    }
    Ok(gated_norm(&y, zxbcdt, p, dtype))
}

/// One sequence's step: its tokens' x / B / C row `q` (the step's own from its first
/// position on, before it the window in `state`, which holds zeros at position 0).
fn xbc_row<'a>(rows: &'a [f32], state: &'a [f32], sh: &MambaShape, q: isize) -> &'a [f32] {
    let (inner, conv_dim, width) = (sh.inner(), sh.conv_dim(), sh.projection_width());
    if q >= 0 {
        let t = q as usize;
        &rows[t * width + inner..t * width + inner + conv_dim]
    } else {
        // Row -1 is the window's last.
        let j = (sh.taps as isize - 1 + q) as usize;
        let window = &state[sh.state_values()..];
        &window[j * conv_dim..(j + 1) * conv_dim]
    }
}

/// The step's convolution (plus the bias), rounded, SiLU'd, rounded: `[tokens, conv_dim]`.
fn convolve(rows: &[f32], state: &[f32], p: &HostMambaParams, dtype: DType) -> Vec<f32> {
    let sh = &p.shape;
    let (conv_dim, taps) = (sh.conv_dim(), sh.taps);
    let tokens = rows.len() / sh.projection_width();
    let mut out = vec![0.0f32; tokens * conv_dim];
    for t in 0..tokens {
        let acc = &mut out[t * conv_dim..(t + 1) * conv_dim];
        for j in 0..taps {
            let row = xbc_row(rows, state, sh, t as isize - (taps - 1 - j) as isize);
            for (c, a) in acc.iter_mut().enumerate() {
                *a += p.conv_weight[c * taps + j] * row[c];
            }
        }
        for (c, v) in acc.iter_mut().enumerate() {
            let bias = p.conv_bias.as_ref().map_or(0.0, |b| b[c]);
            *v = dtype.round(silu(dtype.round(*v + bias)));
        }
    }
    out
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

/// The window after the step: its sequence's last `taps - 1` rows.
fn slide_window(rows: &[f32], state: &mut [f32], sh: &MambaShape) {
    let (conv_dim, taps) = (sh.conv_dim(), sh.taps);
    let tokens = (rows.len() / sh.projection_width()) as isize;
    let window: Vec<f32> = (0..taps - 1)
        .flat_map(|j| {
            let q = tokens - (taps - 1) as isize + j as isize;
            xbc_row(rows, state, sh, q).to_vec()
        })
        .collect();
    state[sh.state_values()..sh.state_values() + window.len()].copy_from_slice(&window);
    debug_assert_eq!(window.len(), (taps - 1) * conv_dim);
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
