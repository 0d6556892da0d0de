//! A [`BatchLayout`] as the kernels read it: i32 arrays, block tables padded to a rectangle.
//! Built on the host (pure logic, unit-tested without a GPU), then uploaded once per forward.

use crate::backend::BatchLayout;
use anyhow::{Context, Result};

/// The host-side i32 arrays of one forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBatchMeta {
    pub positions: Vec<i32>,
    /// Cache slot of each token; -1 = do not store.
    pub slots: Vec<i32>,
    /// `[num_seqs, max_blocks_per_seq]` row-major, short tables padded with block 0 (never
    /// read: the kernel stops at each sequence's context length).
    pub block_tables: Vec<i32>,
    pub max_blocks_per_seq: usize,
    pub query_start: Vec<i32>,
    pub context_lens: Vec<i32>,
    /// Per sequence, its recurrent-state slot (Mamba mixers).
    pub state_slots: Vec<i32>,
    /// Longest context of the batch (for the sliding-window check).
    pub max_context: usize,
}

fn to_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).with_context(|| format!("{what} = {value} does not fit in an i32"))
}

impl HostBatchMeta {
    pub fn from_layout(batch: &BatchLayout) -> Result<Self> {
        Self::with_table_width(batch, 1)
    }

    /// Like [`HostBatchMeta::from_layout`], with block tables at least `min_blocks` wide (a
    /// recorded decode step reads tables of the width it was recorded with).
    pub fn with_table_width(batch: &BatchLayout, min_blocks: usize) -> Result<Self> {
        batch.validate()?;
        anyhow::ensure!(batch.num_seqs() > 0, "a forward pass needs a sequence");
        let positions = batch
            .positions
            .iter()
            .map(|&p| to_i32(p as usize, "position"))
            .collect::<Result<_>>()?;
        let slots = batch
            .slots
            .iter()
            .map(|&s| {
                if s < 0 {
                    Ok(-1)
                } else {
                    i32::try_from(s)
                        .with_context(|| format!("cache slot {s} does not fit in an i32"))
                }
            })
            .collect::<Result<_>>()?;
        let max_blocks_per_seq = batch
            .block_tables
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(min_blocks)
            .max(1);
        let mut block_tables = vec![0i32; batch.num_seqs() * max_blocks_per_seq];
        for (row, table) in block_tables
            .chunks_mut(max_blocks_per_seq)
            .zip(&batch.block_tables)
        {
            for (dst, &block) in row.iter_mut().zip(table) {
                *dst = to_i32(block as usize, "cache block")?;
            }
        }
        let query_start = batch
            .query_start
            .iter()
            .map(|&q| to_i32(q, "query start"))
            .collect::<Result<_>>()?;
        let context_lens = batch
            .context_lens
            .iter()
            .map(|&c| to_i32(c, "context length"))
            .collect::<Result<_>>()?;
        let state_slots = (0..batch.num_seqs())
            .map(|s| to_i32(batch.state_slot(s), "state slot"))
            .collect::<Result<_>>()?;
        Ok(HostBatchMeta {
            positions,
            slots,
            block_tables,
            max_blocks_per_seq,
            query_start,
            context_lens,
            state_slots,
            max_context: batch.context_lens.iter().copied().max().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_sequences() -> BatchLayout {
        // Sequence 0: prefill of 3 tokens in block 5; sequence 1: decode at position 20
        // (its 21 tokens live in blocks 7 and 2).
        BatchLayout {
            positions: vec![0, 1, 2, 20],
            slots: vec![80, 81, -1, 2 * 16 + 4],
            query_start: vec![0, 3, 4],
            context_lens: vec![3, 21],
            block_tables: vec![vec![5], vec![7, 2]],
            block_size: 16,
            logits_rows: vec![2, 3],
            adapters: Vec::new(),
            state_slots: Vec::new(),
        }
    }

    #[test]
    fn block_tables_are_padded_to_a_rectangle() {
        let meta = HostBatchMeta::from_layout(&two_sequences()).unwrap();
        assert_eq!(meta.max_blocks_per_seq, 2);
        assert_eq!(meta.block_tables, vec![5, 0, 7, 2]);
        assert_eq!(meta.query_start, vec![0, 3, 4]);
        assert_eq!(meta.context_lens, vec![3, 21]);
        assert_eq!(meta.positions, vec![0, 1, 2, 20]);
        assert_eq!(meta.slots, vec![80, 81, -1, 36]);
        assert_eq!(meta.max_context, 21);
    }

    #[test]
    fn out_of_range_values_are_errors_not_truncations() {
        let mut batch = two_sequences();
        batch.slots[0] = 1 << 40;
        let err = HostBatchMeta::from_layout(&batch).unwrap_err().to_string();
        assert!(err.contains("slot"), "{err}");
        let mut batch = two_sequences();
        batch.block_tables[1][0] = u32::MAX;
        assert!(HostBatchMeta::from_layout(&batch).is_err());
    }

    #[test]
    fn inconsistent_layouts_are_rejected() {
        let mut batch = two_sequences();
        batch.block_tables[1].pop();
        assert!(HostBatchMeta::from_layout(&batch).is_err());
        assert!(HostBatchMeta::from_layout(&BatchLayout {
            query_start: vec![0],
            block_size: 16,
            ..Default::default()
        })
        .is_err());
    }
}
