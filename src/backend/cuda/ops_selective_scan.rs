//! Mamba-1's selective scan (`kernels/selective_scan.cu`) as a method of [`CudaDevice`]: a
//! thread per (sequence, channel) runs the channel's state from and into the sequence's
//! state slot.

use super::device::CudaDevice;
use super::launch::as_i32;
use super::ops_mamba::SlotStates;
use super::ops_short_conv::{per_channel, ConvBatch};
use super::tensor::CudaTensor;
use crate::backend::selective_scan::SelectiveParams;
use crate::backend::DType;
use anyhow::{ensure, Context, Result};
use cudarc::driver::PushKernelArg;

/// The most state values per channel the kernel holds (`SCAN_MAX_STATE`).
const MAX_STATE: usize = 32;

/// A scan's per-token inputs: `x`, `dt` `[n, inner]`, B and C `[n, state]`, and the
/// in-projection `xz` `[n, 2 * inner]` (the gate z in its second half).
pub struct ScanInputs<'a> {
    pub x: &'a CudaTensor,
    pub dt: &'a CudaTensor,
    pub b: &'a CudaTensor,
    pub c: &'a CudaTensor,
    pub xz: &'a CudaTensor,
}

impl CudaDevice {
    /// `out[n, inner]` ([`crate::backend::Backend::selective_scan`]); `out` must be zeroed
    /// (rows of padding sequences are not written).
    pub fn selective_scan(
        &self,
        inputs: &ScanInputs<'_>,
        params: &SelectiveParams<'_, CudaTensor>,
        cache: SlotStates<'_>,
        batch: &ConvBatch<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let sh = params.shape;
        sh.validate()?;
        ensure!(
            sh.state <= MAX_STATE,
            "selective scan: a state of {} per channel is more than the kernel holds \
             ({MAX_STATE})",
            sh.state
        );
        let dtype = inputs.x.dtype();
        let n = inputs.x.shape().first().copied().unwrap_or(0);
        for (t, width, what) in [
            (inputs.x, sh.inner, "x"),
            (inputs.dt, sh.inner, "dt"),
            (inputs.b, sh.state, "B"),
            (inputs.c, sh.state, "C"),
            (inputs.xz, 2 * sh.inner, "xz"),
        ] {
            t.expect_shape(&[n, width], what)?;
            t.expect_dtype(dtype, what)?;
        }
        params.a.expect_shape(&[sh.inner, sh.state], "A")?;
        params.a.expect_dtype(DType::F32, "A")?;
        params.d.expect_shape(&[sh.inner], "D")?;
        params.d.expect_dtype(DType::F32, "D")?;
        out.expect_shape(&[n, sh.inner], "selective scan output")?;
        out.expect_dtype(dtype, "selective scan output")?;
        let num_slots = cache.check(sh.slot_values(), batch.num_seqs, "selective scan")?;
        batch.check_covers(n, "selective scan")?;
        if n == 0 {
            return Ok(());
        }
        let (inner_i, state_i, slots_i) = (
            as_i32(sh.inner, "channels")?,
            as_i32(sh.state, "state size")?,
            as_i32(num_slots, "state slots")?,
        );
        let slot_values_i = sh.slot_values() as i64;
        let kernel = self.kernels().get("selective_scan", dtype)?;
        let mut args = self.stream().launch_builder(kernel);
        args.arg(out.data_mut())
            .arg(cache.states.data_mut())
            .arg(inputs.x.data())
            .arg(inputs.dt.data())
            .arg(inputs.b.data())
            .arg(inputs.c.data())
            .arg(inputs.xz.data())
            .arg(params.a.data())
            .arg(params.d.data());
        args.arg(batch.slot_mapping)
            .arg(cache.state_slots)
            .arg(&slots_i)
            .arg(batch.query_start)
            .arg(batch.context_lens);
        args.arg(&inner_i).arg(&state_i).arg(&slot_values_i);
        let config = per_channel(batch.num_seqs, sh.inner, "scan sequences")?;
        // SAFETY: matches kernels/selective_scan.cu; shapes and metadata lengths checked
        // above, the state fits the kernel's registers, slots past the pool are skipped.
        unsafe { args.launch(config) }.context("selective_scan launch")?;
        Ok(())
    }
}
