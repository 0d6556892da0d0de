//! Selftest case of LFM2's gated short convolution (`kernels/short_conv.cu`): the output and
//! the cache of rows after a serving step (decode rows at the first positions, where taps
//! reach before the sequence, and deep in one; a prefill chunk after a cached prefix; a
//! fresh prompt; a padding token), against the reference, at LFM2-1.2B's width.

use super::compare::Check;
use super::paged_step::PagedStep;
use super::suite::Suite;
use crate::backend::cuda::reference::{self, PagedTokens};
use crate::backend::cuda::{CudaTensor, DType};
use anyhow::Result;

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (width, taps, block_size) = (2048, 3, 16);
    let seqs = [
        (1usize, 1usize),
        (2, 1),
        (3, 1),
        (4000, 1),
        (300, 64),
        (77, 77),
    ];
    let step = PagedStep::new(&seqs, block_size, &mut s.rng);
    let (n, num_blocks) = (step.num_tokens(), step.num_blocks);
    let bcx_host = s.random(n * 3 * width, 1.5, dtype);
    let weight_host = s.random(width * taps, 1.0, dtype);
    let mut rows_host = s.random(num_blocks * block_size * width, 1.0, dtype);

    let dev = s.dev;
    let bcx = CudaTensor::from_f32(dev, dtype, &[n, 3 * width], &bcx_host)?;
    let weight = CudaTensor::from_f32(dev, dtype, &[width, taps], &weight_host)?;
    let cache_shape = [num_blocks, block_size, width];
    let mut rows = CudaTensor::from_f32(dev, dtype, &cache_shape, &rows_host)?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, width])?;
    let on_device = step.upload(dev)?;
    let batch = on_device.conv_batch();
    dev.gated_short_conv(&bcx, &weight, &mut rows, &batch, &mut out)?;
    let at = PagedTokens {
        tables: &step.tables,
        max_blocks: step.max_blocks,
        block_size,
        query_start: &step.query_start,
        context_lens: &step.context_lens,
        slots: &step.slots,
    };
    let mut expected =
        reference::gated_short_conv(&bcx_host, (&weight_host, taps), &mut rows_host, &at, |v| {
            dtype.round(v)
        });
    let mut gpu = out.to_f32(dev)?;
    gpu.extend(rows.to_f32(dev)?);
    expected.extend(rows_host);
    let shape = format!("{n} tok of {} seqs, width {width}, {taps} taps", seqs.len());
    let row = s.check(
        "gated_short_conv",
        shape,
        dtype,
        Check::Reduction,
        &gpu,
        &expected,
    );
    s.time(row, || {
        dev.gated_short_conv(&bcx, &weight, &mut rows, &batch, &mut out)
    })?;
    Ok(())
}
