//! A serving step's layout over a paged cache for the selftest cases of ops that read
//! earlier tokens through the block table (the short convolution, the Mamba mixer):
//! sequences given as (context after the step, new tokens), each with its own blocks
//! picked from a shuffled pool, and a trailing padding token (slot -1) as a recorded step
//! has.

use crate::backend::cpu::CpuKvCache;
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::ops_short_conv::ConvBatch;
use crate::backend::{BatchLayout, DType, KvCacheSpec};
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

    /// A state slot for each of the step's sequences, drawn from a
    /// shuffled pool with two spare slots no sequence holds (they must come back
    /// untouched): `(pool size, each sequence's slot)`.
    pub fn shuffled_state_slots(&self, rng: &mut impl Rng) -> (usize, Vec<u32>) {
        let seqs = self.num_seqs();
        let pool = seqs + 2;
        let mut slots: Vec<u32> = (0..pool as u32).collect();
        slots.shuffle(rng);
        slots.truncate(seqs);
        (pool, slots)
    }

    /// The step as the host implementations take it, each sequence holding
    /// `state_slots[seq]`.
    pub fn host_layout(&self, block_size: usize, state_slots: Vec<u32>) -> BatchLayout {
        BatchLayout {
            positions: self.positions.clone(),
            slots: self.slots.iter().map(|&v| v as i64).collect(),
            query_start: self.query_start.iter().map(|&v| v as usize).collect(),
            context_lens: self.context_lens.iter().map(|&v| v as usize).collect(),
            block_tables: self
                .tables
                .chunks(self.max_blocks)
                .map(|t| t.iter().map(|&b| b as u32).collect())
                .collect(),
            block_size,
            logits_rows: Vec::new(),
            adapters: Vec::new(),
            state_slots,
        }
    }

    /// A host cache of one recurrent mixer layer whose state slots (`values` each) hold
    /// `states`.
    pub fn host_state_cache(
        &self,
        block_size: usize,
        dtype: DType,
        values: usize,
        states: Vec<f32>,
    ) -> CpuKvCache {
        let mut cache = CpuKvCache::new(KvCacheSpec {
            num_layers: 1,
            num_blocks: self.num_blocks,
            block_size,
            num_kv_heads: 1,
            head_dim: 1,
            dtype,
            conv_layers: Vec::new(),
            state_layers: vec![(0, values)],
            state_slots: states.len() / values,
        });
        cache.v[0] = states;
        cache
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
