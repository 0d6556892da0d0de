//! Decode steps replayed from CUDA graphs.
//!
//! A batch-1 decode step of an 8B model is ~480 kernel launches whose GPU time is ~5.2 ms;
//! launched one by one from the host they take ~6.4 ms (measured on an H200, see
//! docs/PERFORMANCE.md). A graph records the launches of one step once and replays them with
//! one call. A recording is only valid for the shapes and addresses it saw, so:
//!
//! * Pure decode batches (one new token per sequence) are padded to a bucket of sequences
//!   ([`token_bucket`]) with sequences that store nothing (slot -1, one cached token, block
//!   0, token id 0), and block tables to a power-of-two width ([`blocks_bucket`]); one
//!   graph per (bucket, width), recorded the first time that pair is seen.
//! * The step's inputs (token ids, positions, slots, block tables, query starts, context
//!   lengths) live in buffers the graph owns; each replay copies the padded host arrays into
//!   them first. Nothing else in a decode forward reads the host.
//! * Every buffer the recorded step uses comes from pools of their own that never release
//!   a buffer ([`super::device_pools::DevicePools::kept`]), frozen while recording so that
//!   no allocation is recorded: the step first runs eagerly on the same pools (which leaves
//!   every buffer it needs idle there), then is recorded. All graphs share these pools; they
//!   run one after another on the device's one stream, so sharing intermediates is safe.
//! * Anything that fails while recording (an op that cannot be captured, no idle buffer)
//!   leaves that (bucket, width) on the eager path, with a warning, and never affects the
//!   step's result.

use super::batch_meta::HostBatchMeta;
use crate::backend::BatchLayout;
use cudarc::driver::CudaGraph;
use std::collections::{HashMap, HashSet};

/// Largest batch recorded: above it steps are long enough that launch overhead matters
/// little, and each bucket costs a recording.
pub const MAX_RECORDED_SEQS: usize = 256;

/// The recorded batch size a decode batch of `n` sequences runs as: 1, 2, 4, 8, then
/// multiples of 8 up to 64, of 16 up to 128 and of 32 up to [`MAX_RECORDED_SEQS`] (at most
/// 7, 15 or 31 padding sequences: few recordings, and little waste where steps are long).
/// `None` above that or for 0.
pub fn token_bucket(n: usize) -> Option<usize> {
    match n {
        0 => None,
        1..=2 => Some(n),
        3..=4 => Some(4),
        5..=64 => Some(n.next_multiple_of(8)),
        65..=128 => Some(n.next_multiple_of(16)),
        129..=MAX_RECORDED_SEQS => Some(n.next_multiple_of(32)),
        _ => None,
    }
}

/// Block-table width a recording is made for: the next power of two of the widest table
/// (at least 16), so a context growing by a block only rarely needs a new recording.
pub fn blocks_bucket(widest: usize) -> usize {
    widest.max(16).next_power_of_two()
}

/// What a recording is made for and found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GraphKey {
    /// Sequences (= tokens) of the padded batch.
    pub seqs: usize,
    /// Block-table width.
    pub blocks: usize,
}

/// A decode batch padded to its recording's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedDecode {
    pub key: GraphKey,
    pub layout: BatchLayout,
    pub tokens: Vec<u32>,
    /// The kernels' view of `layout`, block tables `key.blocks` wide.
    pub host: HostBatchMeta,
}

/// The padded form of a decode batch, or `None` when it cannot be recorded: not every
/// sequence has exactly one new token, too many sequences, or an inconsistent layout
/// (the eager path reports that).
pub fn pad_decode(batch: &BatchLayout, tokens: &[u32]) -> Option<PaddedDecode> {
    let n = batch.num_seqs();
    if batch.num_tokens() != n || tokens.len() != n || batch.validate().is_err() {
        return None;
    }
    if (0..n).any(|s| batch.query_start[s + 1] - batch.query_start[s] != 1) {
        return None;
    }
    let seqs = token_bucket(n)?;
    let widest = batch.block_tables.iter().map(Vec::len).max().unwrap_or(1);
    let key = GraphKey {
        seqs,
        blocks: blocks_bucket(widest),
    };
    let pad = seqs - n;
    let mut layout = batch.clone();
    layout.positions.extend(std::iter::repeat_n(0, pad));
    // Padding sequences store nothing and attend to one cached token of block 0 (whatever
    // it holds: their rows are dropped).
    layout.slots.extend(std::iter::repeat_n(-1, pad));
    layout.query_start = (0..=seqs).collect();
    layout.context_lens.extend(std::iter::repeat_n(1, pad));
    layout
        .block_tables
        .extend(std::iter::repeat_n(vec![0], pad));
    // Padding sequences store nothing (no slot), so their state slot is never read.
    if !layout.state_slots.is_empty() {
        layout.state_slots.extend(std::iter::repeat_n(0, pad));
    }
    layout.logits_rows = (0..seqs).collect();
    let mut padded_tokens = tokens.to_vec();
    padded_tokens.extend(std::iter::repeat_n(0, pad));
    let host = HostBatchMeta::with_table_width(&layout, key.blocks).ok()?;
    Some(PaddedDecode {
        key,
        layout,
        tokens: padded_tokens,
        host,
    })
}

/// A recorded graph. `CudaGraph` holds raw driver handles and is not `Send`; the backend
/// only touches it under the [`Recordings`] lock, on whichever thread holds that lock, and
/// the driver allows a graph to be used from any thread with external synchronisation.
pub struct SendGraph(pub CudaGraph);

// SAFETY: see the type's comment: all access is serialised by the `Recordings` mutex.
unsafe impl Send for SendGraph {}

/// The recordings of one backend and the keys that could not be recorded.
pub struct Recordings<R> {
    pub recorded: HashMap<GraphKey, R>,
    pub failed: HashSet<GraphKey>,
}

impl<R> Default for Recordings<R> {
    fn default() -> Self {
        Self {
            recorded: HashMap::new(),
            failed: HashSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_batch(contexts: &[usize], block_size: usize) -> (BatchLayout, Vec<u32>) {
        let n = contexts.len();
        let mut next_block = 1u32;
        let block_tables: Vec<Vec<u32>> = contexts
            .iter()
            .map(|&c| {
                let blocks = c.div_ceil(block_size) as u32;
                let table = (next_block..next_block + blocks).collect();
                next_block += blocks;
                table
            })
            .collect();
        let slots = contexts
            .iter()
            .zip(&block_tables)
            .map(|(&c, t)| {
                let p = c - 1;
                (t[p / block_size] as usize * block_size + p % block_size) as i64
            })
            .collect();
        let layout = BatchLayout {
            positions: contexts.iter().map(|&c| (c - 1) as u32).collect(),
            slots,
            query_start: (0..=n).collect(),
            context_lens: contexts.to_vec(),
            block_tables,
            block_size,
            logits_rows: (0..n).collect(),
            adapters: Vec::new(),
            state_slots: Vec::new(),
        };
        (layout, (0..n as u32).map(|i| 100 + i).collect())
    }

    #[test]
    fn buckets_cover_every_size_with_bounded_padding() {
        assert_eq!(token_bucket(0), None);
        assert_eq!(token_bucket(1), Some(1));
        assert_eq!(token_bucket(3), Some(4));
        assert_eq!(token_bucket(5), Some(8));
        assert_eq!(token_bucket(33), Some(40));
        assert_eq!(token_bucket(65), Some(80));
        assert_eq!(token_bucket(200), Some(224));
        assert_eq!(token_bucket(MAX_RECORDED_SEQS), Some(MAX_RECORDED_SEQS));
        assert_eq!(token_bucket(MAX_RECORDED_SEQS + 1), None);
        for n in 1..=MAX_RECORDED_SEQS {
            let b = token_bucket(n).unwrap();
            assert!(b >= n && b <= MAX_RECORDED_SEQS, "{n} -> {b}");
            let most = match n {
                0..=4 => 1,
                5..=64 => 7,
                65..=128 => 15,
                _ => 31,
            };
            assert!(b - n <= most, "{n} -> {b} pads more than {most}");
        }
        assert_eq!(blocks_bucket(1), 16);
        assert_eq!(blocks_bucket(17), 32);
        assert_eq!(blocks_bucket(64), 64);
    }

    #[test]
    fn a_decode_batch_is_padded_with_sequences_that_store_nothing() {
        let (batch, tokens) = decode_batch(&[5, 40, 17], 16);
        let p = pad_decode(&batch, &tokens).expect("a decode batch");
        assert_eq!(
            p.key,
            GraphKey {
                seqs: 4,
                blocks: 16
            }
        );
        assert_eq!(p.layout.num_seqs(), 4);
        assert_eq!(p.tokens, vec![100, 101, 102, 0]);
        assert_eq!(p.layout.positions, vec![4, 39, 16, 0]);
        assert_eq!(&p.layout.slots[..3], &batch.slots[..]);
        assert_eq!(p.layout.slots[3], -1);
        assert_eq!(p.layout.context_lens, vec![5, 40, 17, 1]);
        assert_eq!(p.layout.logits_rows, vec![0, 1, 2, 3]);
        p.layout.validate().unwrap();
        // The kernels' tables: 16 wide, real rows first, the padding row all block 0.
        assert_eq!(p.host.max_blocks_per_seq, 16);
        assert_eq!(p.host.block_tables.len(), 4 * 16);
        assert_eq!(&p.host.block_tables[16..19], &[2, 3, 4]);
        assert!(p.host.block_tables[48..].iter().all(|&b| b == 0));
        assert_eq!(p.host.slots[3], -1);
        assert_eq!(p.host.query_start, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_same_shapes_find_the_same_recording() {
        let (a, ta) = decode_batch(&[5, 40, 17], 16);
        let (b, tb) = decode_batch(&[250, 2, 9, 33], 16);
        assert_eq!(
            pad_decode(&a, &ta).unwrap().key,
            pad_decode(&b, &tb).unwrap().key
        );
        let (long, tl) = decode_batch(&[16 * 16 + 1], 16);
        assert_eq!(pad_decode(&long, &tl).unwrap().key.blocks, 32);
    }

    #[test]
    fn only_pure_decode_batches_are_recorded() {
        // A prefill (3 new tokens for one sequence).
        let prefill = BatchLayout {
            positions: vec![0, 1, 2],
            slots: vec![16, 17, 18],
            query_start: vec![0, 3],
            context_lens: vec![3],
            block_tables: vec![vec![1]],
            block_size: 16,
            logits_rows: vec![2],
            adapters: Vec::new(),
            state_slots: Vec::new(),
        };
        assert!(pad_decode(&prefill, &[1, 2, 3]).is_none());
        // Token count that does not match the layout.
        let (batch, tokens) = decode_batch(&[5, 6], 16);
        assert!(pad_decode(&batch, &tokens[..1]).is_none());
        // Too many sequences.
        let contexts = vec![4; MAX_RECORDED_SEQS + 1];
        let (big, tb) = decode_batch(&contexts, 16);
        assert!(pad_decode(&big, &tb).is_none());
        // An empty batch.
        assert!(pad_decode(&BatchLayout::default(), &[]).is_none());
    }
}
