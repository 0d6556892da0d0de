//! Reference paged attention: every query token attends causally to its sequence's cached
//! tokens, found through the block table. Covers prefill, chunked prefill and decode alike.

use super::kv_cache::CpuKvCache;
use crate::backend::{AttentionShape, BatchLayout};
use anyhow::Result;
use rayon::prelude::*;

pub fn paged_attention(
    q: &[f32],
    cache: &CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    shape: &AttentionShape,
) -> Result<Vec<f32>> {
    batch.validate()?;
    let (hq, hk, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    anyhow::ensure!(
        hq % hk == 0,
        "attention: {hq} heads not a multiple of {hk} kv heads"
    );
    anyhow::ensure!(
        q.len() == batch.num_tokens() * hq * hd,
        "attention: query shape mismatch"
    );
    let group = hq / hk;
    let scale = 1.0 / (hd as f32).sqrt();
    let token_seq = batch.token_seq();
    let (k_cache, v_cache) = (&cache.k[layer], &cache.v[layer]);
    let width = cache.token_width();
    let block_size = batch.block_size;

    let mut out = vec![0.0f32; q.len()];
    out.par_chunks_mut(hd)
        .enumerate()
        .for_each(|(row, out_head)| {
            let (token, head) = (row / hq, row % hq);
            let seq = token_seq[token];
            let q_len = batch.query_start[seq + 1] - batch.query_start[seq];
            let pos = batch.context_lens[seq] - q_len + (token - batch.query_start[seq]);
            let first = match shape.sliding_window {
                Some(w) if pos >= w => pos + 1 - w,
                _ => 0,
            };
            let table = &batch.block_tables[seq];
            let kv_head = head / group;
            let qv = &q[row * hd..(row + 1) * hd];
            let offset_of = |p: usize| {
                let slot = table[p / block_size] as usize * block_size + p % block_size;
                slot * width + kv_head * hd
            };
            let scores: Vec<f32> = (first..=pos)
                .map(|p| {
                    let k = &k_cache[offset_of(p)..offset_of(p) + hd];
                    qv.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let denom: f32 = weights.iter().sum();
            for (p, w) in (first..=pos).zip(&weights) {
                let v = &v_cache[offset_of(p)..offset_of(p) + hd];
                let w = w / denom;
                for (o, x) in out_head.iter_mut().zip(v) {
                    *o += w * x;
                }
            }
        });
    Ok(out)
}
