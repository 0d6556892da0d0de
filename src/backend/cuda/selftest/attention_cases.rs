//! Selftest of the paged KV write and attention over the batches of
//! [`super::attention_scenarios`]: each row names the kernel path that ran (split-K
//! decode with its split count, tensor-core prefill, or the generic kernel). Cache blocks
//! are handed out in shuffled order so the block tables really are exercised.

use super::attention_scenarios::{scenarios, Scenario};
use super::compare::Check;
use super::suite::Suite;
use crate::backend::cuda::attention_plan::{self, AttentionPath};
use crate::backend::cuda::device_pools::DevicePools;
use crate::backend::cuda::reference::{self, AttentionShape};
use crate::backend::cuda::{AttentionMetadata, CudaTensor, DType};
use crate::backend::KeyWindow;
use anyhow::Result;
use rand::seq::SliceRandom;

pub fn run(suite: &mut Suite<'_>, dtype: DType) {
    for scenario in scenarios(suite) {
        if let Err(err) = run_scenario(suite, dtype, &scenario) {
            suite.error(&format!("attention {}", scenario.name), dtype, &err);
        }
    }
}

fn run_scenario(s: &mut Suite<'_>, dtype: DType, sc: &Scenario) -> Result<()> {
    let (hq, hk, hd, bs) = (sc.heads.q, sc.heads.kv, sc.heads.dim, s.sizes.block_size);
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
    // Sinks around the scores' own range, so they take a real share of each softmax.
    let sinks_host = sc.sinks.then(|| s.random(hq, 3.0, DType::F32));
    let alibi_host = sc.alibi.then(|| alibi_slopes(hq));
    let per_head = |v: &Vec<f32>| CudaTensor::from_f32(dev, DType::F32, &[hq], v);
    let sinks_dev = sinks_host.as_ref().map(per_head).transpose()?;
    let alibi_dev = alibi_host.as_ref().map(per_head).transpose()?;
    let meta = AttentionMetadata {
        block_tables: &tables_dev,
        max_blocks_per_seq: max_blocks,
        query_start: &starts_dev,
        context_lens: &lens_dev,
        num_seqs,
        window: sc.window,
        softcap: sc.softcap,
        sinks: sinks_dev.as_ref(),
        alibi: alibi_dev.as_ref(),
        decode_prefix: attention_plan::leading_decode_seqs(&query_start),
    };
    let scale = 1.0 / (hd as f32).sqrt();
    let pools = DevicePools::new(dev.stream());
    let path = match dev.attention_path(&q, &k_cache, &v_cache, &meta)? {
        AttentionPath::Generic => "generic".to_string(),
        AttentionPath::Prefill if meta.decode_prefix > 0 && dev.split_mixed_attention() => {
            format!(
                "split-K rows of {} decode seqs + prefill tiles",
                meta.decode_prefix
            )
        }
        AttentionPath::Prefill => "prefill tiles".to_string(),
        AttentionPath::Decode(plan) => format!(
            "split-K {}x{} keys, {} heads/CTA",
            plan.num_splits, plan.keys_per_split, plan.heads_per_cta
        ),
    };
    let mut out = CudaTensor::zeros(dev, dtype, &[n, hq, hd])?;
    dev.attention(&q, &k_cache, &v_cache, &meta, scale, &pools, &mut out)?;
    let shape = AttentionShape {
        q_heads: hq,
        kv_heads: hk,
        head_dim: hd,
        block_size: bs,
        max_blocks_per_seq: max_blocks,
        window: sc.window,
        softcap: sc.softcap,
        sinks: sinks_host.as_deref(),
        alibi: alibi_host.as_deref(),
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
    let window = match sc.window {
        KeyWindow::Full => String::new(),
        KeyWindow::Sliding(w) => format!(", window {w}"),
        KeyWindow::Chunked(c) => format!(", chunk {c}"),
    };
    let sinks = if sc.sinks { ", sinks" } else { "" };
    let alibi = if sc.alibi { ", alibi" } else { "" };
    let label = format!(
        "{} ({n} tok, ctx sum {total_ctx}{window}{sinks}{alibi}, {hq}/{hk} heads x {hd}; {path})",
        sc.name
    );
    let row = s.check(
        "attention",
        label,
        dtype,
        Check::Reduction,
        &out.to_f32(dev)?,
        &expected,
    );
    let us = s.time(row, || {
        dev.attention(&q, &k_cache, &v_cache, &meta, scale, &pools, &mut out)
    })?;
    // Every key and value in some token's window is read at least once.
    let keys_read: usize = sc
        .seqs
        .iter()
        .map(|&(ctx, q_len)| ctx - sc.window.first_key(ctx - q_len))
        .sum();
    let kv_bytes = (keys_read * width * 2 * dtype.size_in_bytes()) as f64;
    s.rows[row].note = format!("{:.0} GB/s of KV", kv_bytes / (us * 1e-6) / 1e9);
    Ok(())
}

/// The standard ALiBi slopes of `hq` heads, `2^(-8 (h + 1) / hq)`: from nearly 1 (a head
/// that sees only the last few keys) down to 1/256 (one that sees thousands).
fn alibi_slopes(hq: usize) -> Vec<f32> {
    (1..=hq)
        .map(|h| (-8.0 * h as f32 / hq as f32).exp2())
        .collect()
}
