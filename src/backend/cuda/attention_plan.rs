//! Which attention kernel runs a batch, and with what launch geometry. Pure logic, tested
//! on a CPU: the numbers here must match the `#define`s of kernels/attention_decode.cu
//! (`DEC_*`) and kernels/attention_prefill.cu (`PF_*`).
//!
//! * `Decode` (kernels/attention_decode.cu): one query token per grid row, the q heads of a
//!   GQA group together, the keys cut into splits merged by a second kernel. Taken when
//!   every sequence has one new token, and for prefill where the tensor-core kernel does
//!   not apply (f32, GPUs before sm_80).
//! * `Prefill` (kernels/attention_prefill.cu): 64-query tiles on tensor cores, K/V staged
//!   in shared memory; 16-bit dtypes on sm_80+, batches with more tokens than sequences.
//! * `Generic` (kernels/attention.cu): everything else (other head dims, unaligned caches).

use anyhow::{bail, Result};
use cudarc::driver::LaunchConfig;

/// Head dims the decode and prefill kernels are instantiated for.
pub const TILED_HEAD_DIMS: [usize; 6] = [64, 80, 96, 128, 192, 256];
/// `DEC_THREADS`.
pub const DECODE_THREADS: u32 = 128;
/// `DEC_MAX_HEADS`: q heads one decode CTA handles (a divisor of the GQA group).
pub const DECODE_MAX_HEADS: usize = 8;
/// `DEC_MAX_SPLIT_KEYS`: the scores of a split live in shared memory.
pub const DECODE_MAX_SPLIT_KEYS: usize = 512;
/// Splits shorter than this cost more in merging than they gain in parallelism.
const DECODE_MIN_SPLIT_KEYS: usize = 64;
/// Split lengths are rounded up to this many keys.
const DECODE_SPLIT_ROUND: usize = 32;
/// Splits are added until the grid has this many CTAs per SM (or splits get too short).
const DECODE_CTAS_PER_SM: usize = 4;
/// Threads of the merge kernel (one block per (token, q head)).
pub const MERGE_THREADS: u32 = 128;
/// `PF_THREADS` and `PF_BQ`.
pub const PREFILL_THREADS: u32 = 128;
pub const PREFILL_QUERY_TILE: usize = 64;
/// The largest grid y and z dimensions.
const MAX_GRID_YZ: usize = 65_535;

/// What decides the kernel and its geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionProblem {
    pub tokens: usize,
    pub num_seqs: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// bf16 or f16 (the tensor-core kernel takes no f32).
    pub sixteen_bit: bool,
    /// Compute capability the kernels were compiled for (80 = sm_80).
    pub arch: u32,
    pub sm_count: usize,
    /// Most keys one token can attend: the block-table capacity, cut to the sliding window.
    pub max_keys: usize,
    /// K and V cache pointers are 16-byte aligned (the tiled kernels use 16-byte loads).
    pub caches_aligned: bool,
    /// The split-K decode kernel may run (default; `KILN_SPLIT_K_DECODE=0` keeps decode on
    /// the generic kernel). It passed every GPU selftest case once its softmax stopped
    /// tripping an sm_90 ptxas fault (scripts/kernel_emulator/README.md).
    pub split_k_decode: bool,
}

/// The kernel that runs a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    Generic,
    Decode(DecodePlan),
    Prefill,
}

/// Split-K geometry of the decode kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodePlan {
    pub heads_per_cta: usize,
    pub num_splits: usize,
    pub keys_per_split: usize,
}

/// Picks the kernel for `p`.
pub fn choose(p: &AttentionProblem) -> Result<AttentionPath> {
    if !TILED_HEAD_DIMS.contains(&p.head_dim)
        || !p.caches_aligned
        || p.kv_heads == 0
        || !p.q_heads.is_multiple_of(p.kv_heads)
    {
        return Ok(AttentionPath::Generic);
    }
    if p.tokens > p.num_seqs && p.sixteen_bit && p.arch >= 80 {
        return Ok(AttentionPath::Prefill);
    }
    if !p.split_k_decode {
        return Ok(AttentionPath::Generic);
    }
    Ok(AttentionPath::Decode(DecodePlan::new(p)?))
}

/// A mixed batch (its first `decode_seqs` sequences have one new token each, the rest are
/// prefill chunks) that [`choose`] would hand whole to the tensor-core prefill kernel. That
/// kernel gives each one-token sequence a 64-row tile per q head, so it reads the sequence's
/// whole context once per q head for one real row; in a serving step of 200 decode rows
/// beside a prefill chunk that is most of the step's attention time. The split-K decode
/// kernel reads it once per GQA group instead. Returns the decode kernel's plan for those
/// leading sequences when the batch should be split, else None (the caller runs `p` whole).
pub fn mixed_decode_part(p: &AttentionProblem, decode_seqs: usize) -> Result<Option<DecodePlan>> {
    if decode_seqs == 0 || decode_seqs >= p.num_seqs || decode_seqs >= p.tokens {
        return Ok(None);
    }
    if choose(p)? != AttentionPath::Prefill {
        return Ok(None);
    }
    let part = AttentionProblem {
        tokens: decode_seqs,
        num_seqs: decode_seqs,
        ..*p
    };
    match choose(&part)? {
        AttentionPath::Decode(plan) => Ok(Some(plan)),
        _ => Ok(None),
    }
}

/// How many of the batch's first sequences have exactly one query token
/// (`query_start[s + 1] - query_start[s] == 1`): the decode rows a mixed batch leads with.
pub fn leading_decode_seqs(query_start: &[i32]) -> usize {
    query_start
        .windows(2)
        .take_while(|w| w[1] - w[0] == 1)
        .count()
}

impl DecodePlan {
    /// Heads per CTA (the largest divisor of the group of at most 8), then as many splits
    /// as it takes to give every SM a few CTAs, none shorter than 64 keys, none longer than
    /// the 512 keys shared memory holds.
    pub fn new(p: &AttentionProblem) -> Result<Self> {
        let group = p.q_heads / p.kv_heads.max(1);
        let heads_per_cta = (1..=DECODE_MAX_HEADS.min(group.max(1)))
            .rev()
            .find(|&d| group.is_multiple_of(d))
            .unwrap_or(1);
        let ctas = (p.tokens * (p.q_heads / heads_per_cta)).max(1);
        let span = p.max_keys.max(1);
        let wanted = (DECODE_CTAS_PER_SM * p.sm_count.max(1)).div_ceil(ctas);
        let useful = span.div_ceil(DECODE_MIN_SPLIT_KEYS);
        let needed = span.div_ceil(DECODE_MAX_SPLIT_KEYS);
        let splits = wanted.min(useful).max(needed).max(1);
        // A multiple of 32 that is at most 512 (since splits >= span / 512).
        let keys_per_split = span.div_ceil(splits).next_multiple_of(DECODE_SPLIT_ROUND);
        let plan = DecodePlan {
            heads_per_cta,
            num_splits: span.div_ceil(keys_per_split),
            keys_per_split,
        };
        if plan.num_splits > MAX_GRID_YZ || p.q_heads / heads_per_cta > MAX_GRID_YZ {
            bail!(
                "attention: {} keys in {} splits, {} q heads exceed the grid",
                span,
                plan.num_splits,
                p.q_heads
            );
        }
        Ok(plan)
    }

    /// f32 values of the partials buffer: `[tokens, hq, splits, hd]` accumulators and
    /// `[tokens, hq, splits, 2]` (max, sum); none with one split (no merge).
    pub fn scratch_floats(&self, tokens: usize, q_heads: usize, head_dim: usize) -> usize {
        if self.num_splits == 1 {
            0
        } else {
            tokens * q_heads * self.num_splits * (head_dim + 2)
        }
    }

    /// Grid `(tokens, q heads / heads per CTA, splits)`.
    pub fn launch(&self, tokens: usize, q_heads: usize) -> Result<LaunchConfig> {
        Ok(LaunchConfig {
            grid_dim: (
                grid_x(tokens)?,
                (q_heads / self.heads_per_cta) as u32,
                self.num_splits as u32,
            ),
            block_dim: (DECODE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    /// The merge runs only with more than one split: one block per (token, q head).
    pub fn merge_launch(&self, tokens: usize, q_heads: usize) -> Result<Option<LaunchConfig>> {
        if self.num_splits == 1 {
            return Ok(None);
        }
        Ok(Some(LaunchConfig {
            grid_dim: (grid_x(tokens)?, q_heads as u32, 1),
            block_dim: (MERGE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }))
    }
}

/// Prefill grid: x = an upper bound of the 64-row query tiles over all sequences
/// (sum of ceil(q_len / 64) <= ceil(tokens / 64) + num_seqs; surplus CTAs return at once),
/// y = q heads.
pub fn prefill_launch(tokens: usize, num_seqs: usize, q_heads: usize) -> Result<LaunchConfig> {
    if q_heads > MAX_GRID_YZ {
        bail!("{q_heads} query heads exceed the grid's y limit");
    }
    Ok(LaunchConfig {
        grid_dim: (
            grid_x(tokens.div_ceil(PREFILL_QUERY_TILE) + num_seqs)?,
            q_heads as u32,
            1,
        ),
        block_dim: (PREFILL_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Kernel name prefix of a tiled path for `head_dim` (`attention_decode_hd128`).
pub fn kernel_op(kind: &str, head_dim: usize) -> String {
    format!("attention_{kind}_hd{head_dim}")
}

fn grid_x(blocks: usize) -> Result<u32> {
    if blocks == 0 || blocks > i32::MAX as usize {
        bail!("grid of {blocks} blocks is empty or too large");
    }
    Ok(blocks as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3.1-8B on an H200 (132 SMs), bf16, sm_90.
    fn llama(tokens: usize, num_seqs: usize, max_keys: usize) -> AttentionProblem {
        AttentionProblem {
            tokens,
            num_seqs,
            q_heads: 32,
            kv_heads: 8,
            head_dim: 128,
            sixteen_bit: true,
            arch: 90,
            sm_count: 132,
            max_keys,
            caches_aligned: true,
            split_k_decode: true,
        }
    }

    fn decode(p: &AttentionProblem) -> DecodePlan {
        match choose(p).unwrap() {
            AttentionPath::Decode(plan) => plan,
            other => panic!("expected decode, got {other:?}"),
        }
    }

    #[test]
    fn mixed_batches_split_their_leading_decode_rows_off() {
        assert_eq!(leading_decode_seqs(&[0, 1, 2, 3, 67, 68]), 3);
        assert_eq!(leading_decode_seqs(&[0, 64, 65]), 0);
        assert_eq!(leading_decode_seqs(&[0, 1, 2]), 2);
        assert_eq!(leading_decode_seqs(&[0]), 0);
        // 200 decode rows and a 1848-token prefill chunk: the decode rows go to split-K
        // with the plan of a 200-row decode batch.
        let mixed = llama(2048, 201, 1200);
        let plan = mixed_decode_part(&mixed, 200).unwrap().expect("split");
        assert_eq!(plan, decode(&llama(200, 200, 1200)));
        // Nothing to split: no decode rows, only decode rows, a pure decode batch.
        assert_eq!(mixed_decode_part(&mixed, 0).unwrap(), None);
        assert_eq!(mixed_decode_part(&mixed, 201).unwrap(), None);
        assert_eq!(mixed_decode_part(&llama(32, 32, 256), 32).unwrap(), None);
        // Where the prefill kernel does not run (f32), the batch already runs whole on the
        // decode kernel.
        let f32_mixed = AttentionProblem {
            sixteen_bit: false,
            ..mixed
        };
        assert_eq!(mixed_decode_part(&f32_mixed, 200).unwrap(), None);
        // Without split-K the decode rows stay with the prefill kernel.
        let no_split_k = AttentionProblem {
            split_k_decode: false,
            ..mixed
        };
        assert_eq!(mixed_decode_part(&no_split_k, 200).unwrap(), None);
    }

    #[test]
    fn paths_follow_batch_shape_dtype_arch_and_head_dim() {
        assert!(matches!(
            choose(&llama(32, 32, 256)).unwrap(),
            AttentionPath::Decode(_)
        ));
        assert_eq!(choose(&llama(512, 1, 512)).unwrap(), AttentionPath::Prefill);
        assert_eq!(choose(&llama(129, 2, 900)).unwrap(), AttentionPath::Prefill);
        // No tensor-core kernel for f32 or before sm_80: the decode kernel takes prefill.
        let f32_prefill = AttentionProblem {
            sixteen_bit: false,
            ..llama(512, 1, 512)
        };
        assert!(matches!(
            choose(&f32_prefill).unwrap(),
            AttentionPath::Decode(_)
        ));
        let turing = AttentionProblem {
            arch: 75,
            ..llama(512, 1, 512)
        };
        assert!(matches!(choose(&turing).unwrap(), AttentionPath::Decode(_)));
        for hd in [32, 48, 112, 160, 224] {
            let p = AttentionProblem {
                head_dim: hd,
                ..llama(8, 8, 100)
            };
            assert_eq!(choose(&p).unwrap(), AttentionPath::Generic, "hd {hd}");
        }
        for hd in TILED_HEAD_DIMS {
            let p = AttentionProblem {
                head_dim: hd,
                ..llama(8, 8, 100)
            };
            assert!(matches!(choose(&p).unwrap(), AttentionPath::Decode(_)));
        }
        let unaligned = AttentionProblem {
            caches_aligned: false,
            ..llama(8, 8, 100)
        };
        assert_eq!(choose(&unaligned).unwrap(), AttentionPath::Generic);
    }

    #[test]
    fn split_k_decode_runs_only_when_enabled() {
        let off = AttentionProblem {
            split_k_decode: false,
            ..llama(32, 32, 256)
        };
        assert_eq!(choose(&off).unwrap(), AttentionPath::Generic);
        // The tensor-core prefill does not depend on it.
        let prefill = AttentionProblem {
            split_k_decode: false,
            ..llama(512, 1, 512)
        };
        assert_eq!(choose(&prefill).unwrap(), AttentionPath::Prefill);
    }

    #[test]
    fn heads_per_cta_is_the_largest_divisor_of_the_group_up_to_8() {
        for (hq, hk, expected) in [
            (32, 8, 4),
            (32, 32, 1),
            (64, 8, 8),
            (64, 4, 8),
            (14, 2, 7),
            (28, 4, 7),
            (24, 2, 6),
            (40, 4, 5),
        ] {
            let p = AttentionProblem {
                q_heads: hq,
                kv_heads: hk,
                ..llama(1, 1, 1000)
            };
            let plan = decode(&p);
            assert_eq!(plan.heads_per_cta, expected, "hq {hq} hk {hk}");
            let grid = plan.launch(1, hq).unwrap().grid_dim;
            assert_eq!(grid.1 as usize * expected, hq);
        }
    }

    #[test]
    fn splits_fill_the_gpu_for_small_batches_and_stay_within_shared_memory() {
        // Batch 1 at 20k context: 8 CTAs per split, so many splits of <= 512 keys.
        let plan = decode(&llama(1, 1, 20_000));
        assert!(plan.num_splits >= 60, "{plan:?}");
        assert!(plan.keys_per_split <= DECODE_MAX_SPLIT_KEYS);
        assert_eq!(plan.keys_per_split % 32, 0);
        assert!(plan.num_splits * plan.keys_per_split >= 20_000);
        assert!((plan.num_splits - 1) * plan.keys_per_split < 20_000);
        // Batch 32 at ~256: 256 CTAs already; a few splits, none under 64 keys.
        let plan = decode(&llama(32, 32, 256));
        assert!(
            plan.num_splits >= 2 && plan.keys_per_split >= 64,
            "{plan:?}"
        );
        // Short contexts are never split below 64 keys.
        for keys in [1, 15, 16, 17, 63, 64] {
            let plan = decode(&llama(1, 1, keys));
            assert_eq!(plan.num_splits, 1, "{keys} keys: {plan:?}");
            assert!(plan.keys_per_split >= keys);
        }
        // A big batch at a long context: splits only because of shared memory.
        let plan = decode(&llama(256, 256, 32_768));
        assert_eq!(plan.num_splits, 64);
        assert_eq!(plan.keys_per_split, 512);
    }

    #[test]
    fn every_key_is_in_exactly_one_split() {
        for keys in [1, 15, 16, 17, 255, 1000, 4097, 20_000, 40_000] {
            for tokens in [1, 8, 32] {
                let plan = decode(&llama(tokens, tokens, keys));
                assert!(plan.keys_per_split <= DECODE_MAX_SPLIT_KEYS);
                // Splits start at split * keys_per_split: the last must start inside.
                assert!((plan.num_splits - 1) * plan.keys_per_split < keys.max(1));
                assert!(plan.num_splits * plan.keys_per_split >= keys);
            }
        }
    }

    #[test]
    fn scratch_is_sized_from_the_batch() {
        let plan = decode(&llama(1, 1, 20_000));
        assert_eq!(plan.scratch_floats(1, 32, 128), 32 * plan.num_splits * 130);
        let one = decode(&llama(1, 1, 40));
        assert_eq!(one.scratch_floats(1, 32, 128), 0);
        assert!(one.merge_launch(1, 32).unwrap().is_none());
        // A long-context batch of 64 needs well under a tenth of its own KV of one layer.
        let plan = decode(&llama(64, 64, 32_768));
        let scratch_bytes = plan.scratch_floats(64, 32, 128) * 4;
        let kv_layer_bytes = 64 * 32_768 * 8 * 128 * 2 * 2;
        assert!(scratch_bytes * 10 < kv_layer_bytes, "{scratch_bytes}");
    }

    #[test]
    fn grids_match_the_kernels() {
        let plan = decode(&llama(8, 8, 3000));
        let cfg = plan.launch(8, 32).unwrap();
        assert_eq!(cfg.grid_dim, (8, 8, plan.num_splits as u32));
        assert_eq!(cfg.block_dim, (DECODE_THREADS, 1, 1));
        let merge = plan.merge_launch(8, 32).unwrap().unwrap();
        assert_eq!(merge.grid_dim, (8, 32, 1));
        let pf = prefill_launch(130, 2, 32).unwrap();
        // 130 tokens in 2 sequences: at most ceil(130/64) + 2 tiles.
        assert_eq!(pf.grid_dim, (5, 32, 1));
        assert_eq!(pf.block_dim, (PREFILL_THREADS, 1, 1));
        assert!(prefill_launch(10, 1, 70_000).is_err());
        assert_eq!(kernel_op("decode", 128), "attention_decode_hd128");
    }

    #[test]
    fn prefill_grid_covers_every_tile() {
        // Sum of ceil(q_len / 64) never exceeds the grid, whatever the split of tokens.
        for lens in [
            vec![1usize],
            vec![64],
            vec![65],
            vec![63, 1, 129],
            vec![1; 40],
            vec![100, 28, 64, 1],
        ] {
            let tokens: usize = lens.iter().sum();
            let tiles: usize = lens.iter().map(|l| l.div_ceil(PREFILL_QUERY_TILE)).sum();
            let grid = prefill_launch(tokens, lens.len(), 8).unwrap().grid_dim.0 as usize;
            assert!(tiles <= grid, "{lens:?}");
        }
    }

    #[test]
    fn absurd_contexts_are_errors() {
        assert!(DecodePlan::new(&llama(1, 1, 40_000_000)).is_err());
    }
}
