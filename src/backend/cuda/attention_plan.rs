//! Which attention kernel runs a batch, and with what launch geometry. Pure logic, tested
//! on a CPU: the numbers here must match the `#define`s of kernels/attention_prefill.cu
//! (`PF_*`).
//!
//! * `Prefill` (kernels/attention_prefill.cu): 64-query tiles on tensor cores, K/V staged
//!   in shared memory; 16-bit dtypes on sm_80+, batches with more tokens than sequences.
//! * `Generic` (kernels/attention.cu): everything else, decode included. (A split-K decode
//!   kernel was written blind and failed its first GPU selftest; it is kept on the `perf`
//!   branch until it is fixed, see docs/PERFORMANCE.md.)

use anyhow::{bail, Result};
use cudarc::driver::LaunchConfig;

/// Head dims the decode and prefill kernels are instantiated for.
pub const TILED_HEAD_DIMS: [usize; 5] = [64, 80, 96, 128, 256];
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
    /// K and V cache pointers are 16-byte aligned (the tiled kernels use 16-byte loads).
    pub caches_aligned: bool,
}

/// The kernel that runs a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    Generic,
    Prefill,
}

/// Picks the kernel for `p`.
pub fn choose(p: &AttentionProblem) -> Result<AttentionPath> {
    if TILED_HEAD_DIMS.contains(&p.head_dim)
        && p.caches_aligned
        && p.kv_heads > 0
        && p.q_heads.is_multiple_of(p.kv_heads)
        && p.tokens > p.num_seqs
        && p.sixteen_bit
        && p.arch >= 80
    {
        return Ok(AttentionPath::Prefill);
    }
    Ok(AttentionPath::Generic)
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

    /// Llama-3.1-8B on an H200, bf16, sm_90.
    fn llama(tokens: usize, num_seqs: usize) -> AttentionProblem {
        AttentionProblem {
            tokens,
            num_seqs,
            q_heads: 32,
            kv_heads: 8,
            head_dim: 128,
            sixteen_bit: true,
            arch: 90,
            caches_aligned: true,
        }
    }

    #[test]
    fn tensor_cores_take_16_bit_prefill_on_sm80_and_the_generic_kernel_the_rest() {
        assert_eq!(choose(&llama(512, 1)).unwrap(), AttentionPath::Prefill);
        assert_eq!(choose(&llama(129, 2)).unwrap(), AttentionPath::Prefill);
        assert_eq!(choose(&llama(32, 32)).unwrap(), AttentionPath::Generic);
        let f32_prefill = AttentionProblem {
            sixteen_bit: false,
            ..llama(512, 1)
        };
        assert_eq!(choose(&f32_prefill).unwrap(), AttentionPath::Generic);
        let turing = AttentionProblem {
            arch: 75,
            ..llama(512, 1)
        };
        assert_eq!(choose(&turing).unwrap(), AttentionPath::Generic);
        for hd in [32, 48, 112, 160, 192] {
            let p = AttentionProblem {
                head_dim: hd,
                ..llama(100, 1)
            };
            assert_eq!(choose(&p).unwrap(), AttentionPath::Generic, "hd {hd}");
        }
        for hd in TILED_HEAD_DIMS {
            let p = AttentionProblem {
                head_dim: hd,
                ..llama(100, 1)
            };
            assert_eq!(choose(&p).unwrap(), AttentionPath::Prefill, "hd {hd}");
        }
        let unaligned = AttentionProblem {
            caches_aligned: false,
            ..llama(100, 1)
        };
        assert_eq!(choose(&unaligned).unwrap(), AttentionPath::Generic);
    }

    #[test]
    fn prefill_grid_matches_the_kernel() {
        let pf = prefill_launch(130, 2, 32).unwrap();
        // 130 tokens in 2 sequences: at most ceil(130/64) + 2 tiles.
        assert_eq!(pf.grid_dim, (5, 32, 1));
        assert_eq!(pf.block_dim, (PREFILL_THREADS, 1, 1));
        assert!(prefill_launch(10, 1, 70_000).is_err());
        assert_eq!(kernel_op("prefill", 128), "attention_prefill_hd128");
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
}
