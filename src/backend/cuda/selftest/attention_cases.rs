//! Selftest of the paged KV write and attention: decode batches of 1, 8 and 32 sequences
//! at mixed context lengths, a prefill, and a chunked prefill continuing a cached prefix
//! batched with a decode; and the decode x8 and chunked batches again with a sliding window
//! shorter than their contexts (Mistral). Cache blocks are handed out in shuffled order so
//! the block tables really are exercised.

use super::compare::Check;
use super::suite::Suite;
use crate::backend::cuda::reference::{self, AttentionShape};
use crate::backend::cuda::{AttentionMetadata, CudaTensor, DType};
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::Rng;

/// A batch: per sequence `(context length after this step, new tokens this step)`.
struct Scenario {
    name: &'static str,
    seqs: Vec<(usize, usize)>,
    sliding_window: Option<usize>,
}

fn scenarios(s: &mut Suite<'_>) -> Vec<Scenario> {
    let max_ctx = s.sizes.max_context;
    let mut decode = |count: usize| -> Vec<(usize, usize)> {
        let mut seqs: Vec<(usize, usize)> = (0..count)
            .map(|_| (s.rng.random_range(1..=max_ctx), 1))
            .collect();
        seqs[0].0 = 1;
        if count > 1 {
            seqs[count - 1].0 = max_ctx;
        }
        seqs
    };
    let (d1, d8, d32) = (vec![(max_ctx * 3 / 4, 1)], decode(8), decode(32));
    let prefill = s.sizes.prefill_tokens;
    let chunk = prefill / 4;
    let chunked = vec![(prefill * 3 / 5 + chunk, chunk), (77, 1)];
    let plain = |name, seqs| Scenario {
        name,
        seqs,
        sliding_window: None,
    };
    vec![
        plain("decode x1", d1),
        plain("decode x8", d8.clone()),
        plain("decode x32", d32),
        plain("prefill", vec![(prefill, prefill)]),
        plain("chunked prefill+decode", chunked.clone()),
        // Windows shorter than most contexts, not a multiple of the block size, so the
        // first key falls inside a block.
        Scenario {
            name: "decode x8 window",
            seqs: d8,
            sliding_window: Some(max_ctx / 4 + 3),
        },
        Scenario {
            name: "chunked+decode window",
            seqs: chunked,
            sliding_window: Some(chunk / 2 + 5),
        },
    ]
}

pub fn run(suite: &mut Suite<'_>, dtype: DType) {
    for scenario in scenarios(suite) {
        if let Err(err) = run_scenario(suite, dtype, &scenario) {
            suite.error(&format!("attention {}", scenario.name), dtype, &err);
        }
    }
}

fn run_scenario(s: &mut Suite<'_>, dtype: DType, sc: &Scenario) -> Result<()> {
    let sz = s.sizes;
    let (hq, hk, hd, bs) = (sz.q_heads, sz.kv_heads, sz.head_dim, sz.block_size);
    let width = hk * hd;
    let num_seqs = sc.seqs.len();

    // Block tables over a shuffled pool of blocks, plus a few spare blocks nobody owns.
    let blocks_per_seq: Vec<usize> = sc.seqs.iter().map(|&(ctx, _)| ctx.div_ceil(bs)).collect();
    let max_blocks = *blocks_per_seq.iter().max().unwrap_or(&1);
    let num_blocks = blocks_per_seq.iter().sum::<usize>() + 3;
    let mut pool: Vec<i32> = (0..num_blocks as i32).collect();
    pool.shuffle(&mut s.rng);
    let mut block_tables = vec![0i32; num_seqs * max_blocks];
    let mut next = 0;
    for (seq, &count) in blocks_per_seq.iter().enumerate() {
        block_tables[seq * max_blocks..seq * max_blocks + count]
            .copy_from_slice(&pool[next..next + count]);
        next += count;
    }

    // Query layout and the slots of the new tokens; one extra padding row (slot -1).
    let mut query_start = vec![0i32];
    let mut slots = Vec::new();
    for (seq, &(ctx, q_len)) in sc.seqs.iter().enumerate() {
        for p in ctx - q_len..ctx {
            slots.push(block_tables[seq * max_blocks + p / bs] * bs as i32 + (p % bs) as i32);
        }
        query_start.push(slots.len() as i32);
    }
    let n = slots.len();
    slots.push(-1);
    let context_lens: Vec<i32> = sc.seqs.iter().map(|&(ctx, _)| ctx as i32).collect();

    let cache_len = num_blocks * bs * width;
    let mut k_cache_host = s.random(cache_len, 1.0, dtype);
    let mut v_cache_host = s.random(cache_len, 1.0, dtype);
    let k_new = s.random((n + 1) * width, 1.0, dtype);
    let v_new = s.random((n + 1) * width, 1.0, dtype);
    let q_host = s.random(n * hq * hd, 2.0, dtype);

    let dev = s.dev;
    let cache_shape = [num_blocks, bs, hk, hd];
    let mut k_cache = CudaTensor::from_f32(dev, dtype, &cache_shape, &k_cache_host)?;
    let mut v_cache = CudaTensor::from_f32(dev, dtype, &cache_shape, &v_cache_host)?;
    let k = CudaTensor::from_f32(dev, dtype, &[n + 1, hk, hd], &k_new)?;
    let v = CudaTensor::from_f32(dev, dtype, &[n + 1, hk, hd], &v_new)?;
    let slots_dev = dev.upload(&slots)?;
    dev.kv_write(&mut k_cache, &mut v_cache, &k, &v, &slots_dev)?;
    reference::kv_write(
        &mut k_cache_host,
        &mut v_cache_host,
        &k_new,
        &v_new,
        &slots,
        width,
    );
    let mut gpu_caches = k_cache.to_f32(dev)?;
    gpu_caches.extend(v_cache.to_f32(dev)?);
    let mut ref_caches = k_cache_host.clone();
    ref_caches.extend_from_slice(&v_cache_host);
    let label = format!("{} ({n}+1 pad tokens)", sc.name);
    let row = s.check(
        "kv_write",
        label,
        dtype,
        Check::Exact,
        &gpu_caches,
        &ref_caches,
    );
    s.time(row, || {
        dev.kv_write(&mut k_cache, &mut v_cache, &k, &v, &slots_dev)
    })?;

    let q = CudaTensor::from_f32(dev, dtype, &[n, hq, hd], &q_host)?;
    let (tables_dev, starts_dev, lens_dev) = (
        dev.upload(&block_tables)?,
        dev.upload(&query_start)?,
        dev.upload(&context_lens)?,
    );
    let meta = AttentionMetadata {
        block_tables: &tables_dev,
        max_blocks_per_seq: max_blocks,
        query_start: &starts_dev,
        context_lens: &lens_dev,
        num_seqs,
        sliding_window: sc.sliding_window,
    };
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = CudaTensor::zeros(dev, dtype, &[n, hq, hd])?;
    dev.attention(&q, &k_cache, &v_cache, &meta, scale, &mut out)?;
    let shape = AttentionShape {
        q_heads: hq,
        kv_heads: hk,
        head_dim: hd,
        block_size: bs,
        max_blocks_per_seq: max_blocks,
        sliding_window: sc.sliding_window,
    };
    let expected = reference::attention(
        &q_host,
        &k_cache_host,
        &v_cache_host,
        &block_tables,
        &query_start,
        &context_lens,
        shape,
        scale,
    );
    let total_ctx: usize = sc.seqs.iter().map(|&(ctx, _)| ctx).sum();
    let window = sc
        .sliding_window
        .map(|w| format!(", window {w}"))
        .unwrap_or_default();
    let label = format!("{} ({n} tok, ctx sum {total_ctx}{window})", sc.name);
    let row = s.check(
        "attention",
        label,
        dtype,
        Check::Reduction,
        &out.to_f32(dev)?,
        &expected,
    );
    let us = s.time(row, || {
        dev.attention(&q, &k_cache, &v_cache, &meta, scale, &mut out)
    })?;
    // Every key and value in some token's window is read at least once.
    let keys_read: usize = sc
        .seqs
        .iter()
        .map(|&(ctx, q_len)| sc.sliding_window.map_or(ctx, |w| ctx.min(w + q_len - 1)))
        .sum();
    let kv_bytes = (keys_read * width * 2 * dtype.size_in_bytes()) as f64;
    s.rows[row].note = format!("{:.0} GB/s of KV", kv_bytes / (us * 1e-6) / 1e9);
    Ok(())
}
