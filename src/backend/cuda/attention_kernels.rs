//! Launches of the three attention kernels (generic, split-K decode + merge, tensor-core
//! prefill) once [`super::attention_plan::choose`] has picked one. Argument lists match the
//! kernels' signatures in kernels/attention*.cu one for one.

use super::attention_plan::{self, DecodePlan};
use super::device::CudaDevice;
use super::device_pools::DevicePools;
use super::jit_cache::CompileTarget;
use super::launch;
use super::ops_attention::AttentionMetadata;
use super::tensor::CudaTensor;
use anyhow::{Context, Result};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaView, DevicePtr, LaunchArgs, PushKernelArg};

/// The `int` arguments shared by the kernels, already range-checked.
pub struct AttentionInts {
    pub num_seqs: i32,
    pub max_blocks_per_seq: i32,
    pub block_size: i32,
    pub hq: i32,
    pub hk: i32,
    pub hd: i32,
    pub q_stride: i32,
    /// 0 = no sliding window.
    pub window: i32,
}

/// One validated attention call.
pub struct AttentionCall<'a> {
    pub q: &'a CudaTensor,
    pub k_cache: &'a CudaTensor,
    pub v_cache: &'a CudaTensor,
    pub meta: &'a AttentionMetadata<'a>,
    pub scale: f32,
    /// Gemma 2's soft-cap of the scaled scores (`cap * tanh(s / cap)`); 0 = none.
    pub softcap: f32,
    pub ints: AttentionInts,
    pub tokens: usize,
    /// The call covers sequences `first_seq .. first_seq + ints.num_seqs` of `meta` (a part
    /// of a mixed batch); token indices stay absolute, as `query_start` holds them.
    pub first_seq: usize,
}

/// The call's rows of the metadata: `(block_tables, query_start, context_lens)` from
/// `first_seq` on.
type MetaViews<'a> = (CudaView<'a, i32>, CudaView<'a, i32>, CudaView<'a, i32>);

impl<'a> AttentionCall<'a> {
    fn meta_views(&self) -> MetaViews<'a> {
        let m = self.meta;
        let s = self.first_seq;
        (
            m.block_tables.slice(s * m.max_blocks_per_seq..),
            m.query_start.slice(s..),
            m.context_lens.slice(s..),
        )
    }
}

/// The compute capability the kernels were built for (`sm_90` and `compute_90` -> 90).
pub fn compiled_arch(target: CompileTarget) -> u32 {
    match target {
        CompileTarget::Sass(cc) | CompileTarget::Ptx(cc) => cc,
    }
}

/// The null pointer the kernels read as "no such per-head term" (no sinks, no ALiBi).
const NO_TERM: u64 = 0;

/// Pushes one per-head term: its device pointer, or null.
fn push_term<'a>(args: &mut LaunchArgs<'a>, term: Option<&'a CudaTensor>) {
    match term {
        Some(t) => args.arg(t.data()),
        None => args.arg(&NO_TERM),
    };
}

/// Pushes `sinks, alibi`, the last two arguments of the three attention kernels (the
/// merge takes the sinks alone: ALiBi is in the partial scores already).
fn push_head_terms<'a>(args: &mut LaunchArgs<'a>, c: &'a AttentionCall<'a>) {
    push_term(args, c.meta.sinks);
    push_term(args, c.meta.alibi);
}

/// Pushes `q, k_cache, v_cache, block_tables, query_start, context_lens` in kernel order.
fn push_inputs<'a>(args: &mut LaunchArgs<'a>, c: &'a AttentionCall<'a>, views: &'a MetaViews<'a>) {
    args.arg(c.q.data())
        .arg(c.k_cache.data())
        .arg(c.v_cache.data());
    args.arg(&views.0).arg(&views.1).arg(&views.2);
}

impl CudaDevice {
    /// Streaming multiprocessors of this GPU (split-K sizing).
    pub fn sm_count(&self) -> Result<usize> {
        let count = self
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .context("querying the SM count")?;
        Ok(count.max(1) as usize)
    }

    /// Whether `t`'s device address allows 16-byte vector loads (whole allocations always
    /// do; the check guards against views).
    pub fn is_16_byte_aligned(&self, t: &CudaTensor) -> bool {
        let (ptr, _sync) = t.data().device_ptr(self.stream());
        ptr % 16 == 0
    }

    /// kernels/attention.cu: one block per (token, q head).
    pub(crate) fn attention_generic(
        &self,
        c: &AttentionCall<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let n = &c.ints;
        let f = self.kernels().get("attention", c.q.dtype())?;
        let views = c.meta_views();
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut());
        push_inputs(&mut args, c, &views);
        args.arg(&n.num_seqs)
            .arg(&n.max_blocks_per_seq)
            .arg(&n.block_size)
            .arg(&n.hq)
            .arg(&n.hk)
            .arg(&n.hd)
            .arg(&n.q_stride)
            .arg(&n.window)
            .arg(&c.scale)
            .arg(&c.softcap);
        push_head_terms(&mut args, c);
        let cfg = launch::attention(c.tokens, n.hq as usize)?;
        // SAFETY: matches kernels/attention.cu; shapes checked by the caller.
        unsafe { args.launch(cfg) }.context("attention launch")?;
        Ok(())
    }

    /// kernels/attention_prefill.cu: 64-query tiles on tensor cores.
    pub(crate) fn attention_prefill(
        &self,
        c: &AttentionCall<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.attention_prefill_masked(c, true, out)
    }

    /// The same kernel with or without the causal mask (`causal` false: every query sees
    /// every key of its sequence's context; the image models' attention, no window).
    pub(crate) fn attention_prefill_masked(
        &self,
        c: &AttentionCall<'_>,
        causal: bool,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let n = &c.ints;
        let causal = i32::from(causal);
        let op = attention_plan::kernel_op("prefill", n.hd as usize);
        let f = self.kernels().get(&op, c.q.dtype())?;
        let views = c.meta_views();
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut());
        push_inputs(&mut args, c, &views);
        args.arg(&n.num_seqs)
            .arg(&n.max_blocks_per_seq)
            .arg(&n.block_size)
            .arg(&n.hq)
            .arg(&n.hk)
            .arg(&n.q_stride)
            .arg(&n.window)
            .arg(&c.scale)
            .arg(&c.softcap)
            .arg(&causal);
        push_head_terms(&mut args, c);
        let cfg = attention_plan::prefill_launch(c.tokens, n.num_seqs as usize, n.hq as usize)?;
        // SAFETY: matches kernels/attention_prefill.cu; the path is only chosen for 16-bit
        // dtypes on sm_80+ with a head dim it is instantiated for and aligned caches.
        unsafe { args.launch(cfg) }.context("attention prefill launch")?;
        Ok(())
    }

    /// kernels/attention_decode.cu: split-K over the keys, then the merge when split.
    pub(crate) fn attention_decode(
        &self,
        c: &AttentionCall<'_>,
        plan: &DecodePlan,
        pools: &DevicePools,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let n = &c.ints;
        let (hq, hd) = (n.hq as usize, n.hd as usize);
        // With one split the kernel writes `out` itself and never touches the scratch;
        // it still needs a valid pointer argument.
        let floats = plan.scratch_floats(c.tokens, hq, hd).max(1);
        let mut scratch = pools
            .bytes(floats * std::mem::size_of::<f32>())
            .context("split-K attention scratch")?;
        let heads_per_cta = launch::as_i32(plan.heads_per_cta, "heads per CTA")?;
        let keys_per_split = launch::as_i32(plan.keys_per_split, "keys per split")?;
        let op = attention_plan::kernel_op("decode", hd);
        let f = self.kernels().get(&op, c.q.dtype())?;
        let views = c.meta_views();
        let mut args = self.stream().launch_builder(f);
        args.arg(&mut *scratch).arg(out.data_mut());
        push_inputs(&mut args, c, &views);
        args.arg(&n.num_seqs)
            .arg(&n.max_blocks_per_seq)
            .arg(&n.block_size)
            .arg(&n.hq)
            .arg(&n.hk)
            .arg(&n.q_stride)
            .arg(&n.window)
            .arg(&c.scale)
            .arg(&c.softcap)
            .arg(&heads_per_cta)
            .arg(&keys_per_split);
        push_head_terms(&mut args, c);
        // SAFETY: matches kernels/attention_decode.cu; the scratch holds
        // `scratch_floats` f32 values, the layout both kernels index.
        unsafe { args.launch(plan.launch(c.tokens, hq)?) }.context("attention decode launch")?;

        if let Some(cfg) = plan.merge_launch(c.tokens, hq)? {
            let splits = launch::as_i32(plan.num_splits, "splits")?;
            let f = self.kernels().get("attention_decode_merge", c.q.dtype())?;
            let mut args = self.stream().launch_builder(f);
            args.arg(out.data_mut())
                .arg(&*scratch)
                .arg(&n.hq)
                .arg(&n.hd)
                .arg(&splits);
            push_term(&mut args, c.meta.sinks);
            // SAFETY: matches attention_decode_merge in kernels/attention_decode.cu; same
            // grid x (tokens) and split count as the kernel that filled the scratch.
            unsafe { args.launch(cfg) }.context("attention merge launch")?;
        }
        // The scratch returns to the pool here; the next user is queued after the merge
        // on the same stream (see pool.rs).
        Ok(())
    }
}
