//! A serving step's layout over a paged cache for the selftest cases of ops that read
//! earlier tokens through the block table (the short convolution, the Mamba mixer):
//! sequences given as (context after the step, new tokens), each with its own blocks
//! picked from a shuffled pool, and a trailing padding token (slot -1) as a recorded step
//! has.

use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::ops_short_conv::ConvBatch;
use anyhow::Result;
use cudarc::driver::CudaSlice;
use rand::seq::SliceRandom;
use rand::Rng;

pub struct PagedStep {
    pub num_blocks: usize,
    pub max_blocks: usize,
    /// `[seqs, max_blocks]`, row-major.
    pub tables: Vec<i32>,
    pub query_start: Vec<i32>,
    pub context_lens: Vec<i32>,
    /// Per token, the padding token's last (-1).
    pub slots: Vec<i32>,
    pub positions: Vec<u32>,
}

/// The step's metadata on the device.
pub struct DeviceStep {
    slots: CudaSlice<i32>,
    tables: CudaSlice<i32>,
    query_start: CudaSlice<i32>,
    context_lens: CudaSlice<i32>,
    max_blocks: usize,
    num_seqs: usize,
}

impl PagedStep {
    pub fn new(seqs: &[(usize, usize)], block_size: usize, rng: &mut impl Rng) -> Self {
        let max_blocks = seqs
            .iter()
            .map(|&(ctx, _)| ctx.div_ceil(block_size))
            .max()
            .unwrap_or(1);
        let num_blocks = seqs.len() * max_blocks + 3;
        let mut free: Vec<i32> = (0..num_blocks as i32).collect();
        free.shuffle(rng);
        let mut step = PagedStep {
            num_blocks,
            max_blocks,
            tables: free[..seqs.len() * max_blocks].to_vec(),
            query_start: vec![0],
            context_lens: Vec::new(),
            slots: Vec::new(),
            positions: Vec::new(),
        };
        for (i, &(ctx, q_len)) in seqs.iter().enumerate() {
            for p in ctx - q_len..ctx {
                let block = step.tables[i * max_blocks + p / block_size];
                step.slots
                    .push(block * block_size as i32 + (p % block_size) as i32);
                step.positions.push(p as u32);
            }
            step.query_start.push(step.query_start[i] + q_len as i32);
            step.context_lens.push(ctx as i32);
        }
        step.slots.push(-1);
        step.positions.push(0);
        step
    }

    /// Tokens, the padding one included.
    pub fn num_tokens(&self) -> usize {
        self.slots.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.context_lens.len()
    }

    pub fn upload(&self, dev: &CudaDevice) -> Result<DeviceStep> {
        Ok(DeviceStep {
            slots: dev.upload(&self.slots)?,
            tables: dev.upload(&self.tables)?,
            query_start: dev.upload(&self.query_start)?,
            context_lens: dev.upload(&self.context_lens)?,
            max_blocks: self.max_blocks,
            num_seqs: self.num_seqs(),
        })
    }
}

impl DeviceStep {
    pub fn conv_batch(&self) -> ConvBatch<'_> {
        ConvBatch {
            slot_mapping: &self.slots,
            block_tables: &self.tables,
            max_blocks_per_seq: self.max_blocks,
            query_start: &self.query_start,
            context_lens: &self.context_lens,
            num_seqs: self.num_seqs,
        }
    }
}
