//! Selftest case of the fused attention entry (`qkv_rope_cache`): the rotated q and the
//! caches after the kernel, against the reference's rope and cache write on the split rows,
//! at a decode batch and a prefill batch of the real shape, with a padding token (slot -1),
//! with and without per-head q/k RMS norms, before the rotation (Qwen3) or after it
//! (HunYuan) (the reference rounds the normalised heads to the dtype, as the unfused
//! rms_norm stores them).

use super::compare::Check;
use super::suite::Suite;
use crate::backend::cuda::ops_qkv::QkvRopeCache;
use crate::backend::cuda::{reference, CudaTensor, DType, RopeStyle};
use crate::backend::QueryTemperature;
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::Rng;

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    for n in [32, s.sizes.prefill_tokens] {
        for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
            case(s, dtype, n, style, None, 1.0, None)?;
        }
    }
    // YaRN's or LongRoPE's attention factor on cos and sin; with the norms, Qwen3 + YaRN;
    // HunYuan's norms after the rotation.
    case(s, dtype, 32, RopeStyle::Neox, None, 1.19, None)?;
    case(s, dtype, 32, RopeStyle::Neox, Some(false), 1.0, None)?;
    case(s, dtype, 32, RopeStyle::Neox, Some(false), 1.19, None)?;
    case(s, dtype, 32, RopeStyle::Neox, Some(true), 1.0, None)?;
    case(
        s,
        dtype,
        s.sizes.prefill_tokens,
        RopeStyle::Neox,
        Some(true),
        1.0,
        None,
    )?;
    // Llama 4's layers without rotary: an all-zero table and each query times its
    // temperature (positions past several of its 8192-position steps).
    let temperature = QueryTemperature {
        floor_scale: 8192.0,
        attn_scale: 0.1,
    };
    case(
        s,
        dtype,
        32,
        RopeStyle::Interleaved,
        None,
        1.0,
        Some(temperature),
    )
}

fn case(
    s: &mut Suite<'_>,
    dtype: DType,
    n: usize,
    style: RopeStyle,
    norm_after_rope: Option<bool>,
    scale: f32,
    temperature: Option<QueryTemperature>,
) -> Result<()> {
    let norm = norm_after_rope.is_some();
    let after = norm_after_rope == Some(true);
    let sz = s.sizes;
    let (hq, hk, hd) = (sz.q_heads, sz.kv_heads, sz.head_dim);
    let (q_width, kv_width) = (hq * hd, hk * hd);
    let row = q_width + 2 * kv_width;
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| match temperature {
            Some(_) => 0.0,
            None => 1.0 / 500_000f32.powf(2.0 * i as f32 / hd as f32),
        })
        .collect();
    let max_position = if temperature.is_some() { 40_000 } else { 8192 };
    let positions: Vec<i32> = (0..n)
        .map(|_| s.rng.random_range(0..max_position))
        .collect();
    // Distinct slots in a cache twice the batch, the last token a padding one.
    let blocks = (2 * n).div_ceil(sz.block_size);
    let num_slots = blocks * sz.block_size;
    let mut slots: Vec<i32> = (0..num_slots as i32).collect();
    slots.shuffle(&mut s.rng);
    slots.truncate(n);
    slots[n - 1] = -1;

    let qkv_host = s.random(n * row, 1.0, dtype);
    let (q_norm_host, k_norm_host) = (s.random(hd, 1.5, dtype), s.random(hd, 1.5, dtype));
    let eps = 1e-6f32;
    let mut k_cache_host = s.random(num_slots * kv_width, 1.0, dtype);
    let mut v_cache_host = s.random(num_slots * kv_width, 1.0, dtype);
    let dev = s.dev;
    let cache_shape = [blocks, sz.block_size, hk, hd];
    let qkv = CudaTensor::from_f32(dev, dtype, &[n, row], &qkv_host)?;
    let mut q = CudaTensor::zeros(dev, dtype, &[n, q_width])?;
    let mut k_cache = CudaTensor::from_f32(dev, dtype, &cache_shape, &k_cache_host)?;
    let mut v_cache = CudaTensor::from_f32(dev, dtype, &cache_shape, &v_cache_host)?;
    let q_norm = CudaTensor::from_f32(dev, dtype, &[hd], &q_norm_host)?;
    let k_norm = CudaTensor::from_f32(dev, dtype, &[hd], &k_norm_host)?;
    let (pos_dev, slots_dev, freq_dev) = (
        dev.upload(&positions)?,
        dev.upload(&slots)?,
        dev.upload(&inv_freq)?,
    );
    let params = QkvRopeCache {
        positions: &pos_dev,
        slot_mapping: &slots_dev,
        inv_freq: &freq_dev,
        style,
        scale,
        head_dim: hd,
        norms: norm.then_some((&q_norm, &k_norm, eps)),
        norm_after_rope: after,
        temperature,
    };
    dev.qkv_rope_cache(&qkv, &mut q, &mut k_cache, &mut v_cache, &params)?;

    // The unfused reference: split, rotate q and k, write k and v.
    let column = |from: usize, width: usize| -> Vec<f32> {
        qkv_host
            .chunks(row)
            .flat_map(|r| r[from..from + width].iter().copied())
            .collect()
    };
    let (mut q_ref, mut k_ref, v_ref) = (
        column(0, q_width),
        column(q_width, kv_width),
        column(q_width + kv_width, kv_width),
    );
    let rounded = |v: Vec<f32>| v.into_iter().map(|x| dtype.round(x)).collect::<Vec<_>>();
    if norm && !after {
        q_ref = rounded(reference::rms_norm(&q_ref, &q_norm_host, eps));
        k_ref = rounded(reference::rms_norm(&k_ref, &k_norm_host, eps));
    }
    let neox = style == RopeStyle::Neox;
    reference::rope(&mut q_ref, &positions, &inv_freq, hq, hd, neox, scale);
    reference::rope(&mut k_ref, &positions, &inv_freq, hk, hd, neox, scale);
    if let Some(t) = temperature {
        for (row, &pos) in q_ref.chunks_mut(q_width).zip(&positions) {
            let factor = t.factor(pos as u32);
            row.iter_mut().for_each(|v| *v *= factor);
        }
    }
    if after {
        // The kernel stores the rotated head in the dtype, then norms it.
        q_ref = rounded(reference::rms_norm(&rounded(q_ref), &q_norm_host, eps));
        k_ref = rounded(reference::rms_norm(&rounded(k_ref), &k_norm_host, eps));
    }
    reference::kv_write(
        &mut k_cache_host,
        &mut v_cache_host,
        &k_ref,
        &v_ref,
        &slots,
        kv_width,
    );
    let mut gpu = q.to_f32(dev)?;
    gpu.extend(k_cache.to_f32(dev)?);
    gpu.extend(v_cache.to_f32(dev)?);
    q_ref.extend(k_cache_host);
    q_ref.extend(v_cache_host);
    let label = format!(
        "qkv_rope_cache({}{}{})",
        if neox { "neox" } else { "interleaved" },
        match norm_after_rope {
            None => "",
            Some(false) => ", q/k norm",
            Some(true) => ", q/k norm after rope",
        },
        match (scale != 1.0, temperature.is_some()) {
            (true, _) => ", attention factor",
            (_, true) => ", no rotary, query temperature",
            _ => "",
        }
    );
    let shape = format!("qkv[{n}, {hq}+{hk}+{hk} x {hd}], 1 pad token");
    // The norm's sum of squares may round a normalised value the other way: a reduction.
    let check = if norm {
        Check::Reduction
    } else {
        Check::Elementwise
    };
    let check_row = s.check(&label, shape, dtype, check, &gpu, &q_ref);
    s.time(check_row, || {
        dev.qkv_rope_cache(&qkv, &mut q, &mut k_cache, &mut v_cache, &params)
    })?;
    Ok(())
}
