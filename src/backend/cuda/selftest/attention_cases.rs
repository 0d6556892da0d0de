//! Selftest of the paged KV write and attention: decode batches of 1, 8 and 32 sequences
//! at mixed context lengths, a prefill, and a chunked prefill continuing a cached prefix
//! batched with a decode. Cache blocks are handed out in shuffled order so the block
//! tables really are exercised.

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
    vec![
        Scenario {
            name: "decode x1",
            seqs: d1,
        },
        Scenario {
            name: "decode x8",
            seqs: d8,
        },
        Scenario {
            name: "decode x32",
            seqs: d32,
        },
        Scenario {
            name: "prefill",
            seqs: vec![(prefill, prefill)],
        },
        Scenario {
            name: "chunked prefill+decode",
            seqs: vec![(prefill * 3 / 5 + chunk, chunk), (77, 1)],
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
    let label = format!("{} ({n} tok, ctx sum {total_ctx})", sc.name);
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
    // Every sequence's cached K and V are read at least once.
    let kv_bytes = (total_ctx * width * 2 * dtype.size_in_bytes()) as f64;
    s.rows[row].note = format!("{:.0} GB/s of KV", kv_bytes / (us * 1e-6) / 1e9);
    Ok(())
}
