//! Mamba-1's causal convolution and selective scan on the host, in f32: the CPU backend's
//! implementation and the reference the CUDA kernels are checked against.

use super::kv_cache::CpuKvCache;
use super::slot_conv::{for_each_slot, SlotConv};
use crate::backend::mamba::silu;
use crate::backend::selective_scan::{softplus, SelectiveShape};
use crate::backend::{BatchLayout, DType};
use anyhow::Result;

/// `[n, channels]`: `conv`'s channels of `src` (`[n, conv.width]`) convolved over each
/// sequence's step and window, SiLU'd; the windows slide (slots of `slot_values`).
pub fn slot_conv(
    cache: &mut CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    src: &[f32],
    (conv, slot_values): (&SlotConv<'_>, usize),
    dtype: DType,
) -> Result<Vec<f32>> {
    let (width, channels) = (conv.width, conv.channels);
    let n = batch.num_tokens();
    anyhow::ensure!(
        src.len() == n * width && conv.offset + channels <= width,
        "slot_conv: {} values for {n} rows of {width}, {channels} channels from {}",
        src.len(),
        conv.offset
    );
    let mut out = vec![0.0f32; n * channels];
    let window = conv.window_at..slot_values;
    let values = (slot_values, window);
    for_each_slot(cache, layer, batch, values, "slot_conv", |tokens, slot| {
        let rows = &src[tokens.start * width..tokens.end * width];
        let convolved = conv.convolve(rows, slot, dtype);
        out[tokens.start * channels..tokens.end * channels].copy_from_slice(&convolved);
        conv.slide_window(rows, slot);
        Ok(())
    })?;
    Ok(out)
}

/// A scan's inputs as host values: `x`, `dt` `[n, inner]`, `b`, `c` `[n, state]`, `xz`
/// `[n, 2 * inner]`.
pub struct ScanInputs<'a> {
    pub x: &'a [f32],
    pub dt: &'a [f32],
    pub b: &'a [f32],
    pub c: &'a [f32],
    pub xz: &'a [f32],
}

/// `[n, inner]` gated scan outputs ([`crate::backend::Backend::selective_scan`]); `a`
/// `[inner, state]` and `d` `[inner]`.
pub fn selective_scan(
    cache: &mut CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    inputs: &ScanInputs<'_>,
    (sh, a, d): (&SelectiveShape, &[f32], &[f32]),
    dtype: DType,
) -> Result<Vec<f32>> {
    sh.validate()?;
    let (inner, state) = (sh.inner, sh.state);
    let n = batch.num_tokens();
    anyhow::ensure!(
        inputs.x.len() == n * inner
            && inputs.dt.len() == n * inner
            && inputs.b.len() == n * state
            && inputs.c.len() == n * state
            && inputs.xz.len() == n * 2 * inner,
        "selective scan: inputs are not [{n}, {inner}] (x, dt), [{n}, {state}] (B, C) and \
         [{n}, {}] (x, z)",
        2 * inner
    );
    anyhow::ensure!(
        a.len() == inner * state && d.len() == inner,
        "selective scan: A is not [{inner}, {state}] or D not [{inner}]"
    );
    let mut out = vec![0.0f32; n * inner];
    let values = (sh.slot_values(), 0..sh.state_values());
    for_each_slot(
        cache,
        layer,
        batch,
        values,
        "selective scan",
        |tokens, slot| {
            for t in tokens {
                let (b, c) = (
                    &inputs.b[t * state..(t + 1) * state],
                    &inputs.c[t * state..(t + 1) * state],
                );
                for ch in 0..inner {
                    let dt = dtype.round(softplus(inputs.dt[t * inner + ch]));
                    let x = inputs.x[t * inner + ch];
                    let h = &mut slot[ch * state..(ch + 1) * state];
                    let mut y = 0.0f32;
                    for s in 0..state {
                        h[s] = (a[ch * state + s] * dt).exp() * h[s] + dt * b[s] * x;
                        // transformers multiplies the state, rounded to the dtype, by C.
                        y += dtype.round(h[s]) * c[s];
                    }
                    let y = dtype.round(dtype.round(y) + dtype.round(x * d[ch]));
                    let z = inputs.xz[t * 2 * inner + inner + ch];
                    out[t * inner + ch] = dtype.round(y * dtype.round(silu(z)));
                }
            }
            Ok(())
        },
    )?;
    Ok(out)
}
