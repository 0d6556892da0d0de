//! LFM2's short convolution on the CPU: each token's row joins the layer's paged cache, then
//! every channel of every token sums its sequence's last `L` rows, weighted per channel
//! (causal, depthwise). The rows of earlier steps come from the cache through the block
//! table, as keys do for attention.

use super::kv_cache::CpuKvCache;
use crate::backend::BatchLayout;
use anyhow::Result;

/// `[n, channels]` outputs for the batch's rows (`[n, channels]`, already written to
/// `cache`), with `weight` `[channels, taps]`, in f32.
pub fn causal_depthwise(
    cache: &CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    (weight, taps): (&[f32], usize),
    channels: usize,
) -> Result<Vec<f32>> {
    let n = batch.num_tokens();
    anyhow::ensure!(
        taps > 0 && weight.len() == channels * taps,
        "short_conv: {} weights for {channels} channels of {taps} taps",
        weight.len()
    );
    let rows = &cache.k[layer];
    let block_size = batch.block_size;
    let mut out = vec![0.0f32; n * channels];
    for seq in 0..batch.num_seqs() {
        let (start, end) = (batch.query_start[seq], batch.query_start[seq + 1]);
        let table = &batch.block_tables[seq];
        for token in start..end {
            let pos = batch.context_lens[seq] - (end - start) + (token - start);
            let acc = &mut out[token * channels..(token + 1) * channels];
            // A padding token (no slot) gets zeros, as on a GPU.
            if batch.slots[token] < 0 {
                continue;
            }
            // Tap j reads position pos - (taps - 1) + j; positions before 0 are zeros.
            for j in 0..taps {
                let Some(p) = (pos + j).checked_sub(taps - 1) else {
                    continue;
                };
                let slot = table[p / block_size] as usize * block_size + p % block_size;
                let row = &rows[slot * channels..(slot + 1) * channels];
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += weight[c * taps + j] * row[c];
                }
            }
        }
    }
    Ok(out)
}
