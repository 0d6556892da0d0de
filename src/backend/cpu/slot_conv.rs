//! What the recurrent mixers (Mamba-2's, the gated delta rule's) share on the host: the
//! walk over the batch's sequences and their state slots, and the causal depthwise
//! convolution over a sequence's step and the window its slot keeps.

use super::kv_cache::CpuKvCache;
use crate::backend::mamba::silu;
use crate::backend::{BatchLayout, DType};
use anyhow::{Context, Result};
use std::ops::Range;

/// Runs `step` for each sequence of the batch that has tokens and a state slot, with its
/// tokens' range and its slot's `values` f32 values in layer `layer`, whose part `fresh`
/// (what `step` reads) is zeroed when the step starts the sequence. `what` names the mixer
/// in errors.
pub fn for_each_slot(
    cache: &mut CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    (values, fresh): (usize, Range<usize>),
    what: &str,
    mut step: impl FnMut(Range<usize>, &mut [f32]) -> Result<()>,
) -> Result<()> {
    let kept = cache
        .spec
        .state_values(layer)
        .with_context(|| format!("{what}: layer {layer} keeps no states"))?;
    anyhow::ensure!(
        kept == values,
        "{what}: the cache keeps states of {kept}, the mixer's have {values}"
    );
    let states = &mut cache.v[layer];
    let num_slots = states.len() / values.max(1);
    for seq in 0..batch.num_seqs() {
        let (start, end) = (batch.query_start[seq], batch.query_start[seq + 1]);
        // No tokens, or a padding sequence (no slots): nothing to run or store.
        if start == end || batch.slots[start] < 0 {
            continue;
        }
        let slot = batch.state_slot(seq);
        anyhow::ensure!(
            slot < num_slots,
            "{what}: state slot {slot} outside the cache's {num_slots}"
        );
        let state = &mut states[slot * values..(slot + 1) * values];
        if batch.context_lens[seq] == end - start {
            state[fresh.clone()].fill(0.0);
        }
        step(start..end, state)?;
    }
    Ok(())
}

/// A mixer's causal convolution: its `channels` start at `offset` of each `width`-wide
/// projection row; the slot keeps the last `taps - 1` rows of them from `window_at` on.
pub struct SlotConv<'a> {
    pub offset: usize,
    pub width: usize,
    pub channels: usize,
    pub taps: usize,
    pub window_at: usize,
    /// `[channels, taps]`.
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

impl SlotConv<'_> {
    /// Row `q` of one sequence's step, counted from its first token (`rows`); before it the
    /// window's (which holds zeros at position 0).
    fn row<'r>(&self, rows: &'r [f32], slot: &'r [f32], q: isize) -> &'r [f32] {
        if q >= 0 {
            let at = q as usize * self.width + self.offset;
            &rows[at..at + self.channels]
        } else {
            // Row -1 is the window's last.
            let j = (self.taps as isize - 1 + q) as usize;
            let at = self.window_at + j * self.channels;
            &slot[at..at + self.channels]
        }
    }

    /// The step's convolution (plus the bias), rounded, SiLU'd, rounded:
    /// `[tokens, channels]`.
    pub fn convolve(&self, rows: &[f32], slot: &[f32], dtype: DType) -> Vec<f32> {
        let tokens = rows.len() / self.width;
        let mut out = vec![0.0f32; tokens * self.channels];
        for t in 0..tokens {
            let acc = &mut out[t * self.channels..(t + 1) * self.channels];
            for j in 0..self.taps {
                let row = self.row(rows, slot, t as isize - (self.taps - 1 - j) as isize);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += self.weight[c * self.taps + j] * row[c];
                }
            }
            for (c, v) in acc.iter_mut().enumerate() {
                let bias = self.bias.map_or(0.0, |b| b[c]);
                *v = dtype.round(silu(dtype.round(*v + bias)));
            }
        }
        out
    }

    /// Leaves the sequence's last `taps - 1` rows in the slot's window.
    pub fn slide_window(&self, rows: &[f32], slot: &mut [f32]) {
        let tokens = (rows.len() / self.width) as isize;
        let window: Vec<f32> = (0..self.taps - 1)
            .flat_map(|j| {
                let q = tokens - (self.taps - 1) as isize + j as isize;
                self.row(rows, slot, q).to_vec()
            })
            .collect();
        slot[self.window_at..self.window_at + window.len()].copy_from_slice(&window);
    }
}
