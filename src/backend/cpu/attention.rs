//! Reference paged attention: every query token attends causally to its sequence's cached
//! tokens, found through the block table. Covers prefill, chunked prefill and decode alike.

use super::kv_cache::CpuKvCache;
use crate::backend::{AttentionShape, BatchLayout, HeadTerms};
use anyhow::Result;
use rayon::prelude::*;

/// Gemma 2's soft-capping of a scaled score (`cap * tanh(s / cap)`), or the score.
pub fn softcap(score: f32, cap: Option<f32>) -> f32 {
    match cap {
        Some(cap) => cap * (score / cap).tanh(),
        None => score,
    }
}

pub fn paged_attention(
    q: &[f32],
    cache: &CpuKvCache,
    layer: usize,
    batch: &BatchLayout,
    shape: &AttentionShape,
    terms: HeadTerms<'_, [f32]>,
) -> Result<Vec<f32>> {
    batch.validate()?;
    let (hq, hk, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let HeadTerms { sinks, alibi } = terms;
    for (what, t) in [("sinks", sinks), ("ALiBi slopes", alibi)] {
        if let Some(t) = t {
            anyhow::ensure!(
                t.len() == hq,
                "attention: {} {what} for {hq} heads",
                t.len()
            );
        }
    }
    anyhow::ensure!(
        hq % hk == 0,
        "attention: {hq} heads not a multiple of {hk} kv heads"
    );
    anyhow::ensure!(
        q.len() == batch.num_tokens() * hq * hd,
        "attention: query shape mismatch"
    );
    let group = hq / hk;
    let scale = shape.scale();
    let token_seq = batch.token_seq();
    let (k_cache, v_cache) = (&cache.k[layer], &cache.v[layer]);
    let width = cache.token_width();
    let block_size = batch.block_size;

    let mut out = vec![0.0f32; q.len()];
    // One task per (token, kv head): the query heads sharing that kv head are contiguous in
    // the output row and read each cached K/V vector once between them.
    out.par_chunks_mut(group * hd).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (task, out_group)| {
            let (token, kv_head) = (task / hk, task % hk);
            let seq = token_seq[token];
            let q_len = batch.query_start[seq + 1] - batch.query_start[seq];
            let pos = batch.context_lens[seq] - q_len + (token - batch.query_start[seq]);
            let first = shape.window.first_key(pos);
            let n = pos + 1 - first;
            let table = &batch.block_tables[seq];
            let offset_of = |p: usize| {
                let slot = table[p / block_size] as usize * block_size + p % block_size;
                slot * width + kv_head * hd
            };
            let q_group = &q[(token * hq + kv_head * group) * hd..][..group * hd];
            scores.clear();
            scores.resize(group * n, 0.0);
            for (i, p) in (first..=pos).enumerate() {
                let k = &k_cache[offset_of(p)..][..hd];
                // How far back the key is, for ALiBi (<= 0).
                let distance = p as f32 - pos as f32;
                for (g, qh) in q_group.chunks_exact(hd).enumerate() {
                    let bias = alibi.map_or(0.0, |a| a[kv_head * group + g] * distance);
                    scores[g * n + i] = softcap(dot(qh, k) * scale, shape.logit_softcap) + bias;
                }
            }
            for (g, row) in scores.chunks_exact_mut(n).enumerate() {
                // A sink joins the softmax as one more logit whose value is dropped.
                let sink = sinks.map(|s| s[kv_head * group + g]);
                let max = row
                    .iter()
                    .copied()
                    .chain(sink)
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut denom = sink.map_or(0.0, |s| (s - max).exp());
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    denom += *s;
                }
                row.iter_mut().for_each(|s| *s /= denom);
            }
            for (i, p) in (first..=pos).enumerate() {
                let v = &v_cache[offset_of(p)..][..hd];
                for (g, o) in out_group.chunks_exact_mut(hd).enumerate() {
                    let w = scores[g * n + i];
                    for (o, x) in o.iter_mut().zip(v) {
                        *o += w * x;
                    }
                }
            }
        },
    );
    Ok(out)
}

/// Dot product with eight independent partial sums, so the compiler can vectorise it
/// (a single running sum is a serial dependency chain).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
