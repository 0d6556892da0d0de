//! The Mamba-2 mixer (`kernels/mamba.cu`) as a method of [`CudaDevice`]: the causal
//! convolution and SiLU over the step's x / B / C rows and the sequence's window, the new
//! window, the recurrence per (sequence, head) from and into the sequence's state slot,
//! and the gated RMS norm.

use super::device::CudaDevice;
use super::launch::as_i32;
use super::ops_short_conv::{per_channel, ConvBatch};
use super::tensor::CudaTensor;
use crate::backend::mamba::MambaParams;
use crate::backend::slot_conv::SlotConvParams;
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

/// A recurrent mixer layer's states `[slots, slot_values]` f32 (its recurrent state, then
/// the convolution's window) and each sequence's slot among them.
pub struct SlotStates<'a> {
    pub states: &'a mut CudaTensor,
    pub state_slots: &'a CudaSlice<i32>,
}

impl SlotStates<'_> {
    /// Checks the states hold `slot_values` f32 values per slot and there is a slot entry
    /// per sequence; returns the number of slots.
    pub fn check(&self, slot_values: usize, seqs: usize, what: &str) -> Result<usize> {
        let &[num_slots, values] = self.states.shape() else {
            bail!(
                "{what}: the states must be [slots, values], got {:?}",
                self.states.shape()
            );
        };
        ensure!(
            values == slot_values,
            "{what}: cached states of {values}, the mixer's have {slot_values}"
        );
        self.states.expect_dtype(DType::F32, "recurrent states")?;
        ensure!(
            self.state_slots.len() >= seqs,
            "{what}: {} state slots for {seqs} sequences",
            self.state_slots.len()
        );
        Ok(num_slots)
    }
}

impl CudaDevice {
    /// `out[n, channels]`: the causal convolution of `src`'s channels over each sequence's
    /// step and its slot's window (plus the bias), SiLU'd (`mamba_conv`); then the windows
    /// after the step (`mamba_conv_window`).
    pub fn slot_conv(
        &self,
        src: &CudaTensor,
        conv: &SlotConvParams<'_, CudaTensor>,
        cache: &mut SlotStates<'_>,
        batch: &ConvBatch<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let &[n, w] = src.shape() else {
            bail!("slot_conv: rows must be 2-d, got {:?}", src.shape());
        };
        ensure!(
            conv.offset + conv.channels <= w,
            "slot_conv: rows of {w}, the convolution reads {} from {}",
            conv.channels,
            conv.offset
        );
        ensure!(
            (2..=MAX_TAPS).contains(&conv.taps),
            "slot_conv: {} convolution taps (the kernels take 2 to {MAX_TAPS})",
            conv.taps
        );
        let dtype = src.dtype();
        let slot_values = conv.slot_values();
        let num_slots = cache.check(slot_values, batch.num_seqs, "slot_conv")?;
        conv.weight
            .expect_shape(&[conv.channels, conv.taps], "conv weight")?;
        conv.weight.expect_dtype(dtype, "conv weight")?;
        if let Some(bias) = conv.bias {
            bias.expect_shape(&[conv.channels], "conv bias")?;
            bias.expect_dtype(dtype, "conv bias")?;
        }
        out.expect_shape(&[n, conv.channels], "slot_conv output")?;
        out.expect_dtype(dtype, "slot_conv output")?;
        batch.check_covers(n, "slot_conv")?;
        if n == 0 {
            return Ok(());
        }
        let (width_i, offset_i, channels_i, taps_i) = (
            as_i32(w, "projection width")?,
            as_i32(conv.offset, "convolution offset")?,
            as_i32(conv.channels, "convolution channels")?,
            as_i32(conv.taps, "taps")?,
        );
        let (seqs_i, slots_i) = (
            as_i32(batch.num_seqs, "sequences")?,
            as_i32(num_slots, "state slots")?,
        );
        let (slot_values_i, state_values_i) = (slot_values as i64, conv.state_values as i64);
        let has_bias = i32::from(conv.bias.is_some());
        // Without a bias the kernel never reads the pointer: the weight stands in.
        let bias = conv.bias.unwrap_or(conv.weight);
        let kernel = self.kernels().get("mamba_conv", dtype)?;
        let mut args = self.stream().launch_builder(kernel);
        args.arg(out.data_mut())
            .arg(cache.states.data_mut())
            .arg(src.data())
            .arg(conv.weight.data())
            .arg(bias.data())
            .arg(&has_bias);
        args.arg(batch.slot_mapping)
            .arg(cache.state_slots)
            .arg(&slots_i)
            .arg(batch.query_start)
            .arg(batch.context_lens)
            .arg(&seqs_i);
        args.arg(&width_i)
            .arg(&offset_i)
            .arg(&channels_i)
            .arg(&taps_i)
            .arg(&slot_values_i)
            .arg(&state_values_i);
        let config = per_channel(n, conv.channels, "conv tokens")?;
        // SAFETY: matches kernels/mamba.cu; shapes and metadata lengths checked above, slots
        // past the states' are skipped in the kernel.
        unsafe { args.launch(config) }.context("mamba_conv launch")?;

        let window = self.kernels().get("mamba_conv_window", dtype)?;
        let mut args = self.stream().launch_builder(window);
        args.arg(cache.states.data_mut())
            .arg(src.data())
            .arg(batch.slot_mapping)
            .arg(cache.state_slots)
            .arg(&slots_i)
            .arg(batch.query_start)
            .arg(batch.context_lens);
        args.arg(&width_i)
            .arg(&offset_i)
            .arg(&channels_i)
            .arg(&taps_i)
            .arg(&slot_values_i)
            .arg(&state_values_i);
        let config = per_channel(batch.num_seqs, conv.channels, "conv sequences")?;
        // SAFETY: as above; it runs after mamba_conv read the old windows, on one stream.
        unsafe { args.launch(config) }.context("mamba_conv_window launch")?;
        Ok(())
    }

    /// `out[n, inner]`: the mixer of `zxbcdt[n, projection_width]`
    /// ([`crate::backend::Backend::mamba_mixer`]).
    pub fn mamba_mixer(
        &self,
        zxbcdt: &CudaTensor,
        params: &MambaParams<'_, CudaTensor>,
        mut cache: SlotStates<'_>,
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
        let num_state_slots = cache.check(sh.slot_values(), batch.num_seqs, "mamba")?;
        params.norm.expect_dtype(dtype, "norm weight")?;
        params.norm.expect_shape(&[inner], "mamba norm weight")?;
        for (t, what) in [
            (params.dt_bias, "dt_bias"),
            (params.a, "A"),
            (params.d, "D"),
        ] {
            t.expect_shape(&[sh.heads], what)?;
            t.expect_dtype(DType::F32, what)?;
        }
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
        let conv = SlotConvParams {
            offset: inner,
            channels: conv_dim,
            taps: sh.taps,
            state_values: sh.state_values(),
            weight: params.conv_weight,
            bias: params.conv_bias,
        };
        self.slot_conv(zxbcdt, &conv, &mut cache, batch, scratch.xbc)?;
        if n == 0 {
            return Ok(());
        }
        let i32_of = |v: usize, what: &str| as_i32(v, what);
        let width_i = i32_of(width, "mamba width")?;
        let slots_i = i32_of(num_state_slots, "state slots")?;
        let slot_values_i = sh.slot_values() as i64;
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
            grid_dim: (
                i32_of(batch.num_seqs, "sequences")? as u32,
                heads_i as u32,
                1,
            ),
            block_dim: (SCAN_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches kernels/mamba.cu; the per-thread state fits (checked above), slots
        // past the states' are skipped in the kernel.
        unsafe { args.launch(config) }.context("mamba_scan launch")?;

        let inner_i = i32_of(inner, "mamba inner width")?;
        if !sh.normed {
            let gate = self.kernels().get("mamba_gate", dtype)?;
            let mut args = self.stream().launch_builder(gate);
            args.arg(out.data_mut())
                .arg(scratch.y.data())
                .arg(zxbcdt.data())
                .arg(batch.slot_mapping)
                .arg(&width_i)
                .arg(&inner_i);
            let threads = 256u32;
            let config = LaunchConfig {
                grid_dim: (
                    as_i32(n, "mamba tokens")? as u32,
                    inner.div_ceil(threads as usize) as u32,
                    1,
                ),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches kernels/mamba.cu; shapes checked above.
            unsafe { args.launch(config) }.context("mamba_gate launch")?;
            return Ok(());
        }
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
