//! The gated delta rule mixer on the host, in f32: the CPU backend's implementation and the
//! reference the CUDA kernels are checked against. The recurrence runs token by token,
//! which transformers' chunked algorithm computes too (in another order of sums).

use super::kv_cache::CpuKvCache;
use super::slot_conv::{for_each_slot, SlotConv};
use crate::backend::gated_delta::{log_decay, sigmoid, GatedDeltaShape, L2_NORM_EPS};
use crate::backend::mamba::silu;
use crate::backend::{BatchLayout, DType};
use anyhow::Result;

/// A mixer's parameters as host f32 values (`conv_weight` `[conv_dim, taps]`).
pub struct HostGatedDeltaParams {
    pub shape: GatedDeltaShape,
    pub conv_weight: Vec<f32>,
    pub dt_bias: Vec<f32>,
    pub a: Vec<f32>,
    pub norm: Vec<f32>,
}

/// `[n, value_dim]` mixer outputs of `qkvzba` (`[n, projection_width]`), rounded to
/// `dtype`; reads and leaves each sequence's window and state in its slot of layer `layer`.
pub fn gated_delta_net(
    cache: &mut CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    qkvzba: &[f32],
    p: &HostGatedDeltaParams,
    dtype: DType,
) -> Result<Vec<f32>> {
    let sh = &p.shape;
    sh.validate()?;
    let (width, value_dim) = (sh.projection_width(), sh.value_dim());
    let n = batch.num_tokens();
    anyhow::ensure!(
        qkvzba.len() == n * width,
        "gated delta net: {} values for {n} tokens of {width}",
        qkvzba.len()
    );
    anyhow::ensure!(
        p.dt_bias.len() == sh.v_heads && p.a.len() == sh.v_heads,
        "gated delta net: dt_bias and A need one value per value head ({})",
        sh.v_heads
    );
    anyhow::ensure!(
        p.norm.len() == sh.v_dim,
        "gated delta net: the norm weight is not [{}]",
        sh.v_dim
    );
    anyhow::ensure!(
        p.conv_weight.len() == sh.conv_dim() * sh.taps,
        "gated delta net: the convolution weight is not [{}, {}]",
        sh.conv_dim(),
        sh.taps
    );
    let conv = SlotConv {
        offset: 0,
        width,
        channels: sh.conv_dim(),
        taps: sh.taps,
        window_at: sh.state_values(),
        weight: &p.conv_weight,
        bias: None,
    };
    let mut o = vec![0.0f32; n * value_dim];
    let what = "gated delta net";
    for_each_slot(
        cache,
        layer,
        batch,
        (sh.slot_values(), 0..sh.slot_values()),
        what,
        |tokens, state| {
            let rows = &qkvzba[tokens.start * width..tokens.end * width];
            let qkv = conv.convolve(rows, state, dtype);
            let out = &mut o[tokens.start * value_dim..tokens.end * value_dim];
            recur(&qkv, rows, state, p, dtype, out);
            conv.slide_window(rows, state);
            Ok(())
        },
    )?;
    Ok(gated_norm(&o, qkvzba, p, dtype))
}

/// `x` over its L2 norm, rounded as transformers' eager `l2norm` rounds in the model dtype:
/// each square, their (f32-accumulated) sum, the sum plus epsilon, its inverse square root
/// and each product. (fla's fused kernel norms in f32; the difference is within the dtype's
/// noise, and this is the reference kiln is checked against.)
fn l2_normed(x: &[f32], dtype: DType) -> Vec<f32> {
    let sum = dtype.round(x.iter().map(|v| dtype.round(v * v)).sum::<f32>());
    let inv = dtype.round(1.0 / dtype.round(sum + L2_NORM_EPS).sqrt());
    x.iter().map(|v| dtype.round(v * inv)).collect()
}

/// The recurrence over one sequence's step (`qkv` its convolved rows, `rows` its
/// projection rows): `o` (`[tokens, value_dim]`) gets each head's `S^T q`, from and into the
/// state part of `state`.
fn recur(
    qkv: &[f32],
    rows: &[f32],
    state: &mut [f32],
    p: &HostGatedDeltaParams,
    dtype: DType,
    o: &mut [f32],
) {
    let sh = &p.shape;
    let (key_dim, value_dim, conv_dim) = (sh.key_dim(), sh.value_dim(), sh.conv_dim());
    let (dk, dv, width) = (sh.k_dim, sh.v_dim, sh.projection_width());
    let scale = 1.0 / (dk as f32).sqrt();
    for t in 0..rows.len() / width {
        let row = &qkv[t * conv_dim..(t + 1) * conv_dim];
        let (q_all, rest) = row.split_at(key_dim);
        let (k_all, v_all) = rest.split_at(key_dim);
        let q: Vec<f32> = q_all
            .chunks(dk)
            .flat_map(|h| l2_normed(h, dtype))
            .map(|v| v * scale)
            .collect();
        let k: Vec<f32> = k_all.chunks(dk).flat_map(|h| l2_normed(h, dtype)).collect();
        let ba = &rows[t * width + conv_dim + value_dim..(t + 1) * width];
        for h in 0..sh.v_heads {
            let kh = h / sh.heads_per_key();
            let (q, k) = (&q[kh * dk..(kh + 1) * dk], &k[kh * dk..(kh + 1) * dk]);
            let v = &v_all[h * dv..(h + 1) * dv];
            let beta = dtype.round(sigmoid(ba[h]));
            let decay = log_decay(ba[sh.v_heads + h], p.dt_bias[h], p.a[h]).exp();
            let s = &mut state[h * dk * dv..(h + 1) * dk * dv];
            s.iter_mut().for_each(|x| *x *= decay);
            // Column j of S is all that v[j], the correction and o[j] touch.
            for j in 0..dv {
                let recalled: f32 = (0..dk).map(|i| s[i * dv + j] * k[i]).sum();
                let delta = (v[j] - recalled) * beta;
                let mut out = 0.0f32;
                for i in 0..dk {
                    s[i * dv + j] += k[i] * delta;
                    out += s[i * dv + j] * q[i];
                }
                o[t * value_dim + h * dv + j] = out;
            }
        }
    }
}

/// Per head: `x` = the output rounded, RMS-normed and rounded, times the norm weight
/// (rounded), times `silu(z)` (rounded): transformers' `Qwen3NextRMSNormGated`.
fn gated_norm(o: &[f32], qkvzba: &[f32], p: &HostGatedDeltaParams, dtype: DType) -> Vec<f32> {
    let sh = &p.shape;
    let (value_dim, width, dv) = (sh.value_dim(), sh.projection_width(), sh.v_dim);
    let z_at = sh.conv_dim();
    let mut out = vec![0.0f32; o.len()];
    for t in 0..o.len() / value_dim.max(1) {
        for h in 0..sh.v_heads {
            let at = t * value_dim + h * dv;
            let x: Vec<f32> = o[at..at + dv].iter().map(|&v| dtype.round(v)).collect();
            let mean = x.iter().map(|v| v * v).sum::<f32>() / dv as f32;
            let inv = 1.0 / (mean + sh.norm_eps).sqrt();
            let z = &qkvzba[t * width + z_at + h * dv..];
            for j in 0..dv {
                let scaled = dtype.round(p.norm[j] * dtype.round(x[j] * inv));
                out[at + j] = dtype.round(scaled * silu(z[j]));
            }
        }
    }
    out
}
