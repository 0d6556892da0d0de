//! The summing step of kiln's own all-reduce (kernels/all_reduce.cu): one GPU reads the
//! partial tensors of every rank of its group and writes their sum.

use super::device::CudaDevice;
use super::launch;
use super::tensor::CudaTensor;
use anyhow::{bail, Context, Result};
use cudarc::driver::PushKernelArg;

/// Ranks one call can sum (the kernel takes one pointer argument per rank).
pub const MAX_RANKS: usize = 8;

impl CudaDevice {
    /// `out = sum(peers[r])` element-wise, f32 accumulation in rank order. Each peer address
    /// must hold `out.numel()` elements of `out`'s dtype, readable from this device, with
    /// its writes complete before this call's work starts.
    pub fn sum_peers(&self, peers: &[u64], out: &mut CudaTensor) -> Result<()> {
        if peers.is_empty() || peers.len() > MAX_RANKS {
            bail!(
                "sum_peers: {} ranks (1..={MAX_RANKS} supported)",
                peers.len()
            );
        }
        let total = out.numel() as i64;
        if total == 0 {
            return Ok(());
        }
        // Unused slots repeat the first address: never read (the kernel stops at `world`),
        // but a valid pointer all the same.
        let mut slots = [peers[0]; MAX_RANKS];
        slots[..peers.len()].copy_from_slice(peers);
        let world = peers.len() as i32;
        let f = self.kernels().get("sum_peers", out.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut());
        for slot in &slots {
            args.arg(slot);
        }
        args.arg(&world).arg(&total);
        // SAFETY: matches kernels/all_reduce.cu (pointers passed as 64-bit addresses); the
        // caller guarantees each address holds `total` elements of the dtype.
        unsafe { args.launch(launch::elementwise(total as usize)) }.context("sum_peers launch")?;
        Ok(())
    }
}
