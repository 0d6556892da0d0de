//! Selftest case of LFM2's gated short convolution (`kernels/short_conv.cu`): the output and
//! the cache of rows after a serving step (decode rows at the first positions, where taps
//! reach before the sequence, and deep in one; a prefill chunk after a cached prefix; a
//! fresh prompt; a padding token), against the reference, at LFM2-1.2B's width.

use super::compare::Check;
use super::suite::Suite;
use crate::backend::cuda::ops_short_conv::ConvBatch;
use crate::backend::cuda::reference::{self, PagedTokens};
use crate::backend::cuda::{CudaTensor, DType};
use anyhow::Result;
use rand::seq::SliceRandom;

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
    let max_blocks = seqs
        .iter()
        .map(|&(ctx, _)| ctx.div_ceil(block_size))
        .max()
        .unwrap_or(1);
    let num_blocks = seqs.len() * max_blocks + 3;
    let mut free: Vec<i32> = (0..num_blocks as i32).collect();
    free.shuffle(&mut s.rng);
    let mut tables = vec![0i32; seqs.len() * max_blocks];
    let (mut query_start, mut context_lens, mut slots) = (vec![0i32], Vec::new(), Vec::new());
    for (i, &(ctx, q_len)) in seqs.iter().enumerate() {
        tables[i * max_blocks..(i + 1) * max_blocks]
            .copy_from_slice(&free[i * max_blocks..(i + 1) * max_blocks]);
        for p in ctx - q_len..ctx {
            let block = tables[i * max_blocks + p / block_size];
            slots.push(block * block_size as i32 + (p % block_size) as i32);
        }
        query_start.push(query_start[i] + q_len as i32);
        context_lens.push(ctx as i32);
    }
    slots.push(-1); // a padding token of a recorded step
    let n = slots.len();
    let bcx_host = s.random(n * 3 * width, 1.5, dtype);
    let weight_host = s.random(width * taps, 1.0, dtype);
    let mut rows_host = s.random(num_blocks * block_size * width, 1.0, dtype);

    let dev = s.dev;
    let bcx = CudaTensor::from_f32(dev, dtype, &[n, 3 * width], &bcx_host)?;
    let weight = CudaTensor::from_f32(dev, dtype, &[width, taps], &weight_host)?;
    let cache_shape = [num_blocks, block_size, width];
    let mut rows = CudaTensor::from_f32(dev, dtype, &cache_shape, &rows_host)?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, width])?;
    let (slots_dev, tables_dev, starts_dev, lens_dev) = (
        dev.upload(&slots)?,
        dev.upload(&tables)?,
        dev.upload(&query_start)?,
        dev.upload(&context_lens)?,
    );
    let batch = ConvBatch {
        slot_mapping: &slots_dev,
        block_tables: &tables_dev,
        max_blocks_per_seq: max_blocks,
        query_start: &starts_dev,
        context_lens: &lens_dev,
        num_seqs: seqs.len(),
    };
    dev.gated_short_conv(&bcx, &weight, &mut rows, &batch, &mut out)?;
    let at = PagedTokens {
        tables: &tables,
        max_blocks,
        block_size,
        query_start: &query_start,
        context_lens: &context_lens,
        slots: &slots,
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
