//! Paged KV cache write and paged causal attention (prefill, chunked prefill, decode).

use super::attention_kernels::{compiled_arch, AttentionCall, AttentionInts};
use super::attention_plan::{self, AttentionPath, AttentionProblem};
use super::device::CudaDevice;
use super::device_pools::DevicePools;
use super::launch::{self, as_i32, ATTENTION_MAX_HEAD_DIM};
use super::ops::dims3;
use super::tensor::CudaTensor;
use crate::backend::{DType, KeyWindow};
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, PushKernelArg};

/// Where each sequence's tokens and cache blocks are, for one attention call.
pub struct AttentionMetadata<'a> {
    /// `[num_seqs, max_blocks_per_seq]` row-major: cache block of each 16-token page.
    pub block_tables: &'a CudaSlice<i32>,
    pub max_blocks_per_seq: usize,
    /// `[num_seqs + 1]`: sequence s owns query rows `query_start[s]..query_start[s+1]`.
    pub query_start: &'a CudaSlice<i32>,
    /// `[num_seqs]`: tokens in the cache for s after this step's K/V were written.
    pub context_lens: &'a CudaSlice<i32>,
    pub num_seqs: usize,
    /// Which earlier positions a query sees: all, a sliding window or its chunk.
    pub window: KeyWindow,
    /// Gemma 2's soft-cap of the scaled scores (`cap * tanh(s / cap)`); `None`: none.
    pub softcap: Option<f32>,
    /// gpt-oss's attention sinks, f32 `[hq]`: one more logit per head's softmax, with no
    /// value. `None`: none.
    pub sinks: Option<&'a CudaTensor>,
    /// ALiBi slopes, f32 `[hq]`: head h's score for the key at position p from the query at
    /// position i gains `alibi[h] * (p - i)`. `None`: none.
    pub alibi: Option<&'a CudaTensor>,
    /// How many leading sequences have one query token each, as the host laid the batch
    /// out ([`attention_plan::leading_decode_seqs`]); 0 when unknown. A mixed batch's
    /// decode rows then run on the decode kernel, apart from its prefill chunks.
    pub decode_prefix: usize,
}

impl CudaDevice {
    /// Writes `k, v [n, hk, hd]` (or `[n, hk * hd]`) into caches `[num_blocks, block_size, hk, hd]` at
    /// `slot_mapping[n]` (slot = block * block_size + offset; negative = skip).
    pub fn kv_write(
        &self,
        k_cache: &mut CudaTensor,
        v_cache: &mut CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        slot_mapping: &CudaSlice<i32>,
    ) -> Result<()> {
        let (num_slots, cache_hk, cache_hd) = cache_geometry(k_cache)?;
        let [n, hk, hd] = token_heads(k, cache_hd, "kv_write k")?;
        v.expect_shape(k.shape(), "kv_write v")?;
        v_cache.expect_shape(k_cache.shape(), "kv_write v cache")?;
        if (cache_hk, cache_hd) != (hk, hd) {
            bail!(
                "kv_write: k {:?} does not fit cache {:?}",
                k.shape(),
                k_cache.shape()
            );
        }
        for (t, what) in [(v, "v"), (&*k_cache, "k cache"), (&*v_cache, "v cache")] {
            t.expect_dtype(k.dtype(), what)?;
        }
        if slot_mapping.len() < n {
            bail!("kv_write: {} slots for {n} tokens", slot_mapping.len());
        }
        if n == 0 {
            return Ok(());
        }
        let width = as_i32(hk * hd, "kv width")?;
        let slots = num_slots as i64;
        let f = self.kernels().get("kv_write", k.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(k_cache.data_mut())
            .arg(v_cache.data_mut())
            .arg(k.data())
            .arg(v.data());
        args.arg(slot_mapping)
            .arg(&width)
            .arg(&width)
            .arg(&width)
            .arg(&slots);
        let threads = (hk * hd).next_power_of_two().clamp(32, 1024) as u32;
        // SAFETY: matches kernels/kv_cache.cu; shapes checked above, slots bounds-checked
        // in the kernel.
        unsafe { args.launch(launch::per_row(n, threads)?) }.context("kv_write launch")?;
        Ok(())
    }

    /// `out[n, hq, hd] = softmax(q k^T * scale) v` (q and out may also be `[n, hq * hd]`)
    /// over each token's causal window of the paged cache, cut to the sliding window if
    /// there is one. Block indices in `block_tables` are trusted. The kernel is chosen by
    /// [`attention_plan::choose`] (split-K decode, tensor-core prefill or the generic
    /// kernel); split-K scratch comes from `pools`.
    #[allow(clippy::too_many_arguments)] // the op's tensors, its metadata and the pools
    pub fn attention(
        &self,
        q: &CudaTensor,
        k_cache: &CudaTensor,
        v_cache: &CudaTensor,
        meta: &AttentionMetadata<'_>,
        scale: f32,
        pools: &DevicePools,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let (_, hk, cache_hd) = cache_geometry(k_cache)?;
        let [n, hq, hd] = token_heads(q, cache_hd, "attention q")?;
        let block_size = k_cache.shape()[1];
        v_cache.expect_shape(k_cache.shape(), "attention v cache")?;
        out.expect_shape(q.shape(), "attention output")?;
        for (t, what) in [
            (k_cache, "k cache"),
            (v_cache, "v cache"),
            (&*out, "output"),
        ] {
            t.expect_dtype(q.dtype(), what)?;
        }
        if cache_hd != hd || hd > ATTENTION_MAX_HEAD_DIM || hk == 0 || hq % hk != 0 {
            bail!(
                "attention: q {:?} vs cache {:?} (head dim <= {ATTENTION_MAX_HEAD_DIM}, q heads a multiple of kv heads)",
                q.shape(),
                k_cache.shape()
            );
        }
        let seqs = meta.num_seqs;
        if seqs == 0
            || meta.query_start.len() < seqs + 1
            || meta.context_lens.len() < seqs
            || meta.block_tables.len() < seqs * meta.max_blocks_per_seq
            || meta.max_blocks_per_seq == 0
        {
            bail!("attention: metadata buffers too small for {seqs} sequences");
        }
        let window = meta.window.kernel_arg()?;
        for (terms, what) in [
            (meta.sinks, "attention sinks"),
            (meta.alibi, "ALiBi slopes"),
        ] {
            if let Some(terms) = terms {
                terms.expect_shape(&[hq], what)?;
                terms.expect_dtype(DType::F32, what)?;
            }
        }
        let softcap = match meta.softcap {
            None => 0.0, // the kernels' "no cap"
            Some(cap) if cap > 0.0 && cap.is_finite() => cap,
            Some(cap) => bail!("attention: a logit soft-cap of {cap} (must be positive)"),
        };
        if n == 0 {
            return Ok(());
        }
        let problem = self.attention_problem(q, k_cache, v_cache, meta)?;
        let ints = |num_seqs: usize| -> Result<AttentionInts> {
            Ok(AttentionInts {
                num_seqs: as_i32(num_seqs, "num_seqs")?,
                max_blocks_per_seq: as_i32(meta.max_blocks_per_seq, "max_blocks_per_seq")?,
                block_size: as_i32(block_size, "block_size")?,
                hq: as_i32(hq, "hq")?,
                hk: as_i32(hk, "hk")?,
                hd: as_i32(hd, "hd")?,
                q_stride: as_i32(hq * hd, "q row")?,
                window,
            })
        };
        let call = AttentionCall {
            q,
            k_cache,
            v_cache,
            meta,
            scale,
            softcap,
            ints: ints(seqs)?,
            tokens: n,
            first_seq: 0,
        };
        let mixed = if self.split_mixed_attention() {
            attention_plan::mixed_decode_part(&problem, meta.decode_prefix)?
        } else {
            None
        };
        if let Some(plan) = mixed {
            // Decode rows 0..d (sequences 0..d, one token each), then the prefill chunks of
            // sequences d.. (tokens d..n): each kernel writes only its own rows of `out`.
            let d = meta.decode_prefix;
            let decode = AttentionCall {
                ints: ints(d)?,
                tokens: d,
                ..call
            };
            self.attention_decode(&decode, &plan, pools, out)?;
            let prefill = AttentionCall {
                q,
                k_cache,
                v_cache,
                meta,
                scale,
                softcap,
                ints: ints(seqs - d)?,
                tokens: n - d,
                first_seq: d,
            };
            return self.attention_prefill(&prefill, out);
        }
        match attention_plan::choose(&problem)? {
            AttentionPath::Generic => self.attention_generic(&call, out),
            AttentionPath::Prefill => self.attention_prefill(&call, out),
            AttentionPath::Decode(plan) => self.attention_decode(&call, &plan, pools, out),
        }
    }

    /// The kernel [`CudaDevice::attention`] runs for these arguments (for reports).
    pub fn attention_path(
        &self,
        q: &CudaTensor,
        k_cache: &CudaTensor,
        v_cache: &CudaTensor,
        meta: &AttentionMetadata<'_>,
    ) -> Result<AttentionPath> {
        attention_plan::choose(&self.attention_problem(q, k_cache, v_cache, meta)?)
    }

    fn attention_problem(
        &self,
        q: &CudaTensor,
        k_cache: &CudaTensor,
        v_cache: &CudaTensor,
        meta: &AttentionMetadata<'_>,
    ) -> Result<AttentionProblem> {
        let (_, hk, hd) = cache_geometry(k_cache)?;
        let [n, hq, _] = token_heads(q, hd, "attention q")?;
        let capacity = meta.max_blocks_per_seq * k_cache.shape()[1];
        Ok(AttentionProblem {
            tokens: n,
            num_seqs: meta.num_seqs,
            q_heads: hq,
            kv_heads: hk,
            head_dim: hd,
            sixteen_bit: q.dtype() != DType::F32,
            arch: compiled_arch(self.kernels().target()),
            sm_count: self.sm_count()?,
            max_keys: meta.window.max_keys(capacity),
            caches_aligned: self.is_16_byte_aligned(k_cache) && self.is_16_byte_aligned(v_cache),
            split_k_decode: self.split_k_decode(),
        })
    }
}

/// `[tokens, heads, head_dim]` of `t`, which is either that or `[tokens, heads * head_dim]`
/// (the model's flat rows; `head_dim` then comes from the cache).
fn token_heads(t: &CudaTensor, head_dim: usize, what: &str) -> Result<[usize; 3]> {
    match *t.shape() {
        [n, width] if head_dim > 0 && width % head_dim == 0 => Ok([n, width / head_dim, head_dim]),
        [_, _] => bail!(
            "{what}: row width {:?} is not a multiple of head dim {head_dim}",
            t.shape()
        ),
        _ => dims3(t, what),
    }
}

/// `(num_slots, kv_heads, head_dim)` of a cache `[num_blocks, block_size, hk, hd]`.
pub(super) fn cache_geometry(cache: &CudaTensor) -> Result<(usize, usize, usize)> {
    match cache.shape() {
        &[blocks, block_size, hk, hd] => Ok((blocks * block_size, hk, hd)),
        other => {
            bail!("KV cache must be [num_blocks, block_size, kv_heads, head_dim], got {other:?}")
        }
    }
}
