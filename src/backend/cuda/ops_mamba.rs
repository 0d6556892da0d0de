//! The Mamba-2 mixer (`kernels/mamba.cu`) as a method of [`CudaDevice`]: the causal
//! convolution and SiLU over the step's x / B / C rows and the sequence's window, the new
//! window, the recurrence per (sequence, head) from and into the sequence's state slot,
//! and the gated RMS norm.

use super::device::CudaDevice;
use super::launch::as_i32;
use super::ops_short_conv::{per_channel, ConvBatch};
use super::tensor::CudaTensor;
use crate::backend::mamba::MambaParams;
use crate::backend::DType;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Threads of the scan kernel (`MAMBA_SCAN_THREADS`): 8 warps, each owning rows of a head.
const SCAN_THREADS: usize = 256;
/// State values one scan thread holds (`MAMBA_SCAN_MAX_PER_THREAD`).
const SCAN_MAX_PER_THREAD: usize = 64;
/// The most convolution taps the window kernel holds (`MAMBA_MAX_TAPS`).
const MAX_TAPS: usize = 8;

/// The step's scratch: the convolution's output `[n, conv_dim]` (model dtype) and the scan's
/// `[n, inner]` (f32).
pub struct MambaScratch<'a> {
    pub xbc: &'a mut CudaTensor,
    pub y: &'a mut CudaTensor,
}

/// The layer's states `[slots, slot_values]` f32 (state-space state, then convolution
/// window) and each sequence's slot among them.
pub struct MambaCache<'a> {
    pub states: &'a mut CudaTensor,
    pub state_slots: &'a CudaSlice<i32>,
}

impl CudaDevice {
    /// `out[n, inner]`: the mixer of `zxbcdt[n, projection_width]`
    /// ([`crate::backend::Backend::mamba_mixer`]).
    pub fn mamba_mixer(
        &self,
        zxbcdt: &CudaTensor,
        params: &MambaParams<'_, CudaTensor>,
        cache: MambaCache<'_>,
        batch: &ConvBatch<'_>,
        scratch: MambaScratch<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let sh = params.shape;
        sh.validate()?;
        let (inner, conv_dim, width) = (sh.inner(), sh.conv_dim(), sh.projection_width());
        let &[n, w] = zxbcdt.shape() else {
            bail!("mamba: zxbcdt must be 2-d, got {:?}", zxbcdt.shape());
        };
        ensure!(
            w == width,
            "mamba: zxbcdt rows of {w}, the shape needs {width}"
        );
        let dtype = zxbcdt.dtype();
        let &[num_state_slots, slot_values] = cache.states.shape() else {
            bail!(
                "mamba: the states must be [slots, values], got {:?}",
                cache.states.shape()
            );
        };
        ensure!(
            slot_values == sh.slot_values(),
            "mamba: cached states of {slot_values}, the mixer's have {}",
            sh.slot_values()
        );
        ensure!(
            (2..=MAX_TAPS).contains(&sh.taps),
            "mamba: {} convolution taps (the kernels take 2 to {MAX_TAPS})",
            sh.taps
        );
        cache.states.expect_dtype(DType::F32, "mamba states")?;
        params
            .conv_weight
            .expect_shape(&[conv_dim, sh.taps], "mamba conv weight")?;
        for (t, what) in [
            (params.conv_weight, "conv weight"),
            (params.norm, "norm weight"),
        ] {
            t.expect_dtype(dtype, what)?;
        }
        if let Some(bias) = params.conv_bias {
            bias.expect_shape(&[conv_dim], "mamba conv bias")?;
            bias.expect_dtype(dtype, "mamba conv bias")?;
        }
        params.norm.expect_shape(&[inner], "mamba norm weight")?;
        for (t, what) in [
            (params.dt_bias, "dt_bias"),
            (params.a, "A"),
            (params.d, "D"),
        ] {
            t.expect_shape(&[sh.heads], what)?;
            t.expect_dtype(DType::F32, what)?;
        }
        scratch.xbc.expect_shape(&[n, conv_dim], "mamba xbc")?;
        scratch.xbc.expect_dtype(dtype, "mamba xbc")?;
        scratch.y.expect_shape(&[n, inner], "mamba y")?;
        scratch.y.expect_dtype(DType::F32, "mamba y")?;
        out.expect_shape(&[n, inner], "mamba output")?;
        out.expect_dtype(dtype, "mamba output")?;
        let per_thread = sh.head_dim.div_ceil(SCAN_THREADS / 32) * sh.state.div_ceil(32);
        ensure!(
            per_thread <= SCAN_MAX_PER_THREAD,
            "mamba: a head of {} x {} state values is more than the scan kernel holds",
            sh.head_dim,
            sh.state
        );
        batch.check_covers(n, "mamba")?;
        let seqs = batch.num_seqs;
        ensure!(
            cache.state_slots.len() >= seqs,
            "mamba: {} state slots for {seqs} sequences",
            cache.state_slots.len()
        );
        if n == 0 {
            return Ok(());
        }
        let i32_of = |v: usize, what: &str| as_i32(v, what);
        let (width_i, inner_i, conv_i, taps_i) = (
            i32_of(width, "mamba width")?,
            i32_of(inner, "mamba inner width")?,
            i32_of(conv_dim, "mamba conv width")?,
            i32_of(sh.taps, "taps")?,
        );
        let (seqs_i, slots_i) = (
            i32_of(seqs, "sequences")?,
            i32_of(num_state_slots, "state slots")?,
        );
        let (slot_values_i, state_values_i) = (slot_values as i64, sh.state_values() as i64);

        let has_bias = i32::from(params.conv_bias.is_some());
        // Without a bias the kernel never reads the pointer: the weight stands in.
        let bias = params.conv_bias.unwrap_or(params.conv_weight);
        let conv = self.kernels().get("mamba_conv", dtype)?;
        let mut args = self.stream().launch_builder(conv);
        args.arg(scratch.xbc.data_mut())
            .arg(cache.states.data_mut())
            .arg(zxbcdt.data())
            .arg(params.conv_weight.data())
            .arg(bias.data())
            .arg(&has_bias);
        args.arg(batch.slot_mapping)
            .arg(cache.state_slots)
            .arg(&slots_i)
            .arg(batch.query_start)
            .arg(batch.context_lens)
            .arg(&seqs_i);
        args.arg(&width_i)
            .arg(&inner_i)
            .arg(&conv_i)
            .arg(&taps_i)
            .arg(&slot_values_i)
            .arg(&state_values_i);
        let config = per_channel(n, conv_dim, "mamba tokens")?;
        // SAFETY: matches kernels/mamba.cu; shapes and metadata lengths checked above, slots
        // past the states' are skipped in the kernel.
        unsafe { args.launch(config) }.context("mamba_conv launch")?;

        let window = self.kernels().get("mamba_conv_window", dtype)?;
        let mut args = self.stream().launch_builder(window);
        args.arg(cache.states.data_mut())
            .arg(zxbcdt.data())
            .arg(batch.slot_mapping)
            .arg(cache.state_slots)
            .arg(&slots_i)
            .arg(batch.query_start)
            .arg(batch.context_lens);
        args.arg(&width_i)
            .arg(&inner_i)
            .arg(&conv_i)
            .arg(&taps_i)
            .arg(&slot_values_i)
            .arg(&state_values_i);
        let config = per_channel(seqs, conv_dim, "mamba sequences")?;
        // SAFETY: as above; it runs after mamba_conv read the old windows, on one stream.
        unsafe { args.launch(config) }.context("mamba_conv_window launch")?;

        let (head_dim_i, state_i, groups_i, heads_i) = (
            i32_of(sh.head_dim, "head_dim")?,
            i32_of(sh.state, "state size")?,
            i32_of(sh.groups, "groups")?,
            i32_of(sh.heads, "heads")?,
        );
        let scan = self.kernels().get("mamba_scan", dtype)?;
        let mut args = self.stream().launch_builder(scan);
        args.arg(scratch.y.data_mut())
            .arg(cache.states.data_mut())
            .arg(scratch.xbc.data())
            .arg(zxbcdt.data())
            .arg(params.dt_bias.data())
            .arg(params.a.data())
            .arg(params.d.data());
        args.arg(batch.slot_mapping)
            .arg(cache.state_slots)
            .arg(&slots_i)
            .arg(batch.query_start)
            .arg(batch.context_lens);
        args.arg(&head_dim_i)
            .arg(&state_i)
            .arg(&groups_i)
            .arg(&heads_i)
            .arg(&width_i)
            .arg(&slot_values_i)
            .arg(&sh.dt_min)
            .arg(&sh.dt_max);
        let config = LaunchConfig {
            grid_dim: (seqs_i as u32, heads_i as u32, 1),
            block_dim: (SCAN_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches kernels/mamba.cu; the per-thread state fits (checked above), slots
        // past the states' are skipped in the kernel.
        unsafe { args.launch(config) }.context("mamba_scan launch")?;

        let group_i = i32_of(sh.norm_group, "norm group")?;
        let norm = self.kernels().get("mamba_gated_norm", dtype)?;
        let mut args = self.stream().launch_builder(norm);
        args.arg(out.data_mut())
            .arg(scratch.y.data())
            .arg(zxbcdt.data())
            .arg(params.norm.data())
            .arg(batch.slot_mapping)
            .arg(&width_i)
            .arg(&inner_i)
            .arg(&group_i)
            .arg(&sh.norm_eps);
        let threads = sh.norm_group.next_power_of_two().clamp(32, 1024) as u32;
        let config = LaunchConfig {
            grid_dim: (
                as_i32(n, "mamba tokens")? as u32,
                (inner / sh.norm_group) as u32,
                1,
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches kernels/mamba.cu; shapes checked above.
        unsafe { args.launch(config) }.context("mamba_gated_norm launch")?;
        Ok(())
    }
}
