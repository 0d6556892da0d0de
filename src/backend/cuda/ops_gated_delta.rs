//! The gated delta rule mixer (`kernels/gated_delta.cu`, after `mamba.cu`'s convolution) as
//! a method of [`CudaDevice`]: the q / k / v convolution and its window, the recurrence per
//! (sequence, value head) from and into the sequence's state slot, the gated norm.

use super::device::CudaDevice;
use super::launch::as_i32;
use super::ops_mamba::SlotStates;
use super::ops_short_conv::ConvBatch;
use super::tensor::CudaTensor;
use crate::backend::gated_delta::GatedDeltaParams;
use crate::backend::slot_conv::SlotConvParams;
use crate::backend::DType;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Threads of the scan kernel (`GDN_THREADS`).
const SCAN_THREADS: usize = 256;
/// The largest key head the scan holds (`GDN_ROWS` rows of 32 lanes).
const MAX_K_DIM: usize = 4 * 32;
/// The largest value head (`GDN_COLS` columns of each of the 8 warps).
const MAX_V_DIM: usize = 16 * 8;

/// The step's scratch: the convolved q / k / v `[n, conv_dim]` (model dtype) and the
/// recurrence's output `[n, value_dim]` (f32).
pub struct GatedDeltaScratch<'a> {
    pub qkv: &'a mut CudaTensor,
    pub o: &'a mut CudaTensor,
}

impl CudaDevice {
    /// `out[n, value_dim]`: the mixer of `qkvzba[n, projection_width]`
    /// ([`crate::backend::Backend::gated_delta_net`]).
    pub fn gated_delta_net(
        &self,
        qkvzba: &CudaTensor,
        params: &GatedDeltaParams<'_, CudaTensor>,
        mut cache: SlotStates<'_>,
        batch: &ConvBatch<'_>,
        scratch: GatedDeltaScratch<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let sh = params.shape;
        sh.validate()?;
        let (value_dim, conv_dim, width) = (sh.value_dim(), sh.conv_dim(), sh.projection_width());
        let &[n, w] = qkvzba.shape() else {
            bail!(
                "gated delta net: rows must be 2-d, got {:?}",
                qkvzba.shape()
            );
        };
        ensure!(
            w == width,
            "gated delta net: rows of {w}, the shape needs {width}"
        );
        ensure!(
            sh.k_dim <= MAX_K_DIM && sh.v_dim <= MAX_V_DIM,
            "gated delta net: heads of {} x {} are larger than the scan kernel holds \
             ({MAX_K_DIM} x {MAX_V_DIM})",
            sh.k_dim,
            sh.v_dim
        );
        let dtype = qkvzba.dtype();
        let num_slots = cache.check(sh.slot_values(), batch.num_seqs, "gated delta net")?;
        params
            .norm
            .expect_shape(&[sh.v_dim], "gated delta norm weight")?;
        params.norm.expect_dtype(dtype, "gated delta norm weight")?;
        for (t, what) in [(params.dt_bias, "dt_bias"), (params.a, "A")] {
            t.expect_shape(&[sh.v_heads], what)?;
            t.expect_dtype(DType::F32, what)?;
        }
        scratch
            .o
            .expect_shape(&[n, value_dim], "gated delta output")?;
        scratch.o.expect_dtype(DType::F32, "gated delta output")?;
        out.expect_shape(&[n, value_dim], "gated delta net output")?;
        out.expect_dtype(dtype, "gated delta net output")?;
        let conv = SlotConvParams {
            offset: 0,
            channels: conv_dim,
            taps: sh.taps,
            state_values: sh.state_values(),
            weight: params.conv_weight,
            bias: None,
        };
        self.slot_conv(qkvzba, &conv, &mut cache, batch, scratch.qkv)?;
        if n == 0 {
            return Ok(());
        }
        let (k_heads_i, v_heads_i, k_dim_i, v_dim_i) = (
            as_i32(sh.k_heads, "key heads")?,
            as_i32(sh.v_heads, "value heads")?,
            as_i32(sh.k_dim, "key head size")?,
            as_i32(sh.v_dim, "value head size")?,
        );
        let (width_i, slots_i) = (
            as_i32(width, "projection width")?,
            as_i32(num_slots, "state slots")?,
        );
        let slot_values_i = sh.slot_values() as i64;
        let scan = self.kernels().get("gated_delta_scan", dtype)?;
        let mut args = self.stream().launch_builder(scan);
        args.arg(scratch.o.data_mut())
            .arg(cache.states.data_mut())
            .arg(scratch.qkv.data())
            .arg(qkvzba.data())
            .arg(params.dt_bias.data())
            .arg(params.a.data());
        args.arg(batch.slot_mapping)
            .arg(cache.state_slots)
            .arg(&slots_i)
            .arg(batch.query_start)
            .arg(batch.context_lens);
        args.arg(&k_heads_i)
            .arg(&v_heads_i)
            .arg(&k_dim_i)
            .arg(&v_dim_i)
            .arg(&width_i)
            .arg(&slot_values_i);
        let config = LaunchConfig {
            grid_dim: (
                as_i32(batch.num_seqs, "sequences")? as u32,
                v_heads_i as u32,
                1,
            ),
            block_dim: (SCAN_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches kernels/gated_delta.cu; head sizes within the kernel's registers
        // (checked above), slots past the states' are skipped in the kernel.
        unsafe { args.launch(config) }.context("gated_delta_scan launch")?;

        let (conv_i, value_i) = (
            as_i32(conv_dim, "convolution channels")?,
            as_i32(value_dim, "value width")?,
        );
        let norm = self.kernels().get("gated_delta_norm", dtype)?;
        let mut args = self.stream().launch_builder(norm);
        args.arg(out.data_mut())
            .arg(scratch.o.data())
            .arg(qkvzba.data())
            .arg(params.norm.data())
            .arg(batch.slot_mapping)
            .arg(&width_i)
            .arg(&conv_i)
            .arg(&value_i)
            .arg(&v_dim_i)
            .arg(&sh.norm_eps);
        let threads = sh.v_dim.next_power_of_two().clamp(32, 1024) as u32;
        let config = LaunchConfig {
            grid_dim: (as_i32(n, "tokens")? as u32, v_heads_i as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches kernels/gated_delta.cu; shapes checked above.
        unsafe { args.launch(config) }.context("gated_delta_norm launch")?;
        Ok(())
    }

    /// `out = x * sigmoid(gate)` element-wise (`kernels/elementwise.cu`).
    pub fn sigmoid_gate(
        &self,
        x: &CudaTensor,
        gate: &CudaTensor,
        out: &mut CudaTensor,
    ) -> Result<()> {
        gate.expect_shape(x.shape(), "sigmoid gate")?;
        gate.expect_dtype(x.dtype(), "sigmoid gate")?;
        out.expect_shape(x.shape(), "sigmoid_gate output")?;
        out.expect_dtype(x.dtype(), "sigmoid_gate output")?;
        let total = x.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        let f = self.kernels().get("sigmoid_gate", x.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(x.data())
            .arg(gate.data())
            .arg(&total);
        // SAFETY: matches kernels/elementwise.cu; shapes checked above.
        unsafe { args.launch(super::launch::elementwise(total as usize)) }
            .context("sigmoid_gate launch")?;
        Ok(())
    }
}
