//! LFM2's gated short convolution (`kernels/short_conv.cu`) as a method of [`CudaDevice`]:
//! each token's row `B * x` written into the layer's paged cache of rows, then each token's
//! causal depthwise convolution over its sequence's last rows (read through the block
//! table), gated by `C`.

use super::device::CudaDevice;
use super::launch::{self, as_i32};
use super::tensor::CudaTensor;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Where a step's tokens sit: the batch metadata the attention kernels read too.
pub struct ConvBatch<'a> {
    pub slot_mapping: &'a CudaSlice<i32>,
    pub block_tables: &'a CudaSlice<i32>,
    pub max_blocks_per_seq: usize,
    pub query_start: &'a CudaSlice<i32>,
    pub context_lens: &'a CudaSlice<i32>,
    pub num_seqs: usize,
}

impl ConvBatch<'_> {
    /// Refuses metadata buffers shorter than `n` tokens of `num_seqs` sequences need.
    pub fn check_covers(&self, n: usize, op: &str) -> Result<()> {
        let seqs = self.num_seqs;
        if self.slot_mapping.len() < n
            || self.query_start.len() < seqs + 1
            || self.context_lens.len() < seqs
            || self.block_tables.len() < seqs * self.max_blocks_per_seq
        {
            bail!("{op}: metadata buffers too small for {n} tokens of {seqs} sequences");
        }
        Ok(())
    }
}

/// Threads per block of the convolution: a thread per channel.
const CONV_THREADS: usize = 256;

/// The convolution kernels' grid: a block per (token, 256 channels).
pub(super) fn per_channel(n: usize, width: usize, what: &str) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            as_i32(n, what)? as u32,
            width.div_ceil(CONV_THREADS) as u32,
            1,
        ),
        block_dim: (CONV_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl CudaDevice {
    /// `out[n, width]` from `bcx[n, 3 * width]` (B, C, x): `B * x` written into `cache`
    /// (`[blocks, block_size, width]`) at the batch's slots, then `C` times each token's
    /// convolution with `weight` (`[width, taps]`) over its sequence's rows at positions
    /// `pos - taps + 1 ..= pos`.
    pub fn gated_short_conv(
        &self,
        bcx: &CudaTensor,
        weight: &CudaTensor,
        cache: &mut CudaTensor,
        batch: &ConvBatch<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let &[n, three_widths] = bcx.shape() else {
            bail!("short_conv: rows must be 2-d, got {:?}", bcx.shape());
        };
        let width = three_widths / 3;
        let &[blocks, block_size, cache_width] = cache.shape() else {
            bail!(
                "short_conv: the cache must be [blocks, block_size, width], got {:?}",
                cache.shape()
            );
        };
        let &[w_channels, taps] = weight.shape() else {
            bail!(
                "short_conv: the weight must be [channels, taps], got {:?}",
                weight.shape()
            );
        };
        if three_widths != 3 * width || cache_width != width || w_channels != width || taps == 0 {
            bail!(
                "short_conv: rows of {three_widths} (B, C, x), a cache of {cache_width}, a \
                 weight {:?}",
                weight.shape()
            );
        }
        for (t, what) in [(weight, "weight"), (&*cache, "cache")] {
            t.expect_dtype(bcx.dtype(), what)?;
        }
        out.expect_shape(&[n, width], "short_conv output")?;
        out.expect_dtype(bcx.dtype(), "short_conv output")?;
        batch.check_covers(n, "short_conv")?;
        let seqs = batch.num_seqs;
        if n == 0 {
            return Ok(());
        }
        let width_i = as_i32(width, "short_conv width")?;
        let num_slots = (blocks * block_size) as i64;
        let write = self.kernels().get("short_conv_write", bcx.dtype())?;
        let mut args = self.stream().launch_builder(write);
        args.arg(cache.data_mut())
            .arg(bcx.data())
            .arg(batch.slot_mapping)
            .arg(&width_i)
            .arg(&num_slots);
        let threads = width.next_power_of_two().clamp(32, 1024) as u32;
        // SAFETY: matches kernels/short_conv.cu; shapes checked above, slots bounds-checked
        // in the kernel.
        unsafe { args.launch(launch::per_row(n, threads)?) }.context("short_conv_write launch")?;

        let (seqs_i, max_blocks_i, block_size_i, taps_i) = (
            as_i32(seqs, "sequences")?,
            as_i32(batch.max_blocks_per_seq, "blocks per sequence")?,
            as_i32(block_size, "block size")?,
            as_i32(taps, "taps")?,
        );
        let conv = self.kernels().get("short_conv", bcx.dtype())?;
        let mut args = self.stream().launch_builder(conv);
        args.arg(out.data_mut())
            .arg(cache.data())
            .arg(bcx.data())
            .arg(weight.data());
        args.arg(batch.slot_mapping)
            .arg(batch.block_tables)
            .arg(batch.query_start)
            .arg(batch.context_lens);
        args.arg(&seqs_i)
            .arg(&max_blocks_i)
            .arg(&block_size_i)
            .arg(&width_i)
            .arg(&taps_i);
        let config = per_channel(n, width, "short_conv tokens")?;
        // SAFETY: matches kernels/short_conv.cu; shapes and metadata lengths checked above,
        // block indices trusted as the attention kernels trust them.
        unsafe { args.launch(config) }.context("short_conv launch")?;
        Ok(())
    }
}
