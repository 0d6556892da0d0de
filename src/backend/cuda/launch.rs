//! Launch-geometry helpers and checked argument conversions. Pure logic, testable on a CPU.

use anyhow::{bail, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block of the element-wise kernels (grid-stride loops).
pub const ELEMENTWISE_THREADS: u32 = 256;
/// Cap on element-wise grids; the grid-stride loop covers the rest.
pub const ELEMENTWISE_MAX_BLOCKS: u32 = 65_536;
/// Threads per attention block: must match `ATTN_WARPS * 32` in kernels/attention.cu.
pub const ATTENTION_THREADS: u32 = 128;
/// Largest head dim the attention kernel holds in registers (`ATTN_MAX_HEAD_DIM`).
pub const ATTENTION_MAX_HEAD_DIM: usize = 256;
/// Threads per block of the row reductions over a vocabulary (argmax, softmax).
pub const VOCAB_THREADS: u32 = 1024;

/// Threads for one block reducing a row of `d` elements: about 4 elements per thread, a
/// power of two between one warp and 1024 (the kernels need a multiple of 32).
pub fn row_threads(d: usize) -> u32 {
    let per_thread = d.div_ceil(4).max(1);
    per_thread.next_power_of_two().clamp(32, 1024) as u32
}

/// One block per row.
pub fn per_row(rows: usize, threads: u32) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (grid_x(rows)?, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A grid-stride launch over `total` elements.
pub fn elementwise(total: usize) -> LaunchConfig {
    let blocks = total
        .div_ceil(ELEMENTWISE_THREADS as usize)
        .clamp(1, ELEMENTWISE_MAX_BLOCKS as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Attention: one block per (token, q head).
pub fn attention(tokens: usize, q_heads: usize) -> Result<LaunchConfig> {
    if q_heads > 65_535 {
        bail!("{q_heads} query heads exceed the grid's y limit");
    }
    Ok(LaunchConfig {
        grid_dim: (grid_x(tokens)?, q_heads as u32, 1),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn grid_x(blocks: usize) -> Result<u32> {
    if blocks == 0 || blocks > i32::MAX as usize {
        bail!("grid of {blocks} blocks is empty or too large");
    }
    Ok(blocks as u32)
}

/// Kernel `int` argument, with the name of the quantity in the error.
pub fn as_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| anyhow::anyhow!("{what} = {value} does not fit in an i32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_threads_scale_with_width() {
        assert_eq!(row_threads(1), 32);
        assert_eq!(row_threads(128), 32);
        assert_eq!(row_threads(256), 64);
        assert_eq!(row_threads(4096), 1024);
        assert_eq!(row_threads(14336), 1024);
        for d in [1, 7, 100, 5000] {
            assert_eq!(row_threads(d) % 32, 0);
        }
    }

    #[test]
    fn elementwise_grid_covers_small_and_caps_large() {
        assert_eq!(elementwise(1).grid_dim.0, 1);
        assert_eq!(elementwise(257).grid_dim.0, 2);
        assert_eq!(
            elementwise(usize::MAX / 2).grid_dim.0,
            ELEMENTWISE_MAX_BLOCKS
        );
        assert_eq!(elementwise(0).grid_dim.0, 1);
    }

    #[test]
    fn empty_or_oversized_grids_are_errors() {
        assert!(per_row(0, 32).is_err());
        assert!(per_row(1 << 31, 32).is_err());
        assert_eq!(per_row(5, 64).unwrap().grid_dim, (5, 1, 1));
        assert!(attention(1, 70_000).is_err());
        assert_eq!(attention(3, 32).unwrap().grid_dim, (3, 32, 1));
    }

    #[test]
    fn i32_conversion_names_the_quantity() {
        assert_eq!(as_i32(7, "d").unwrap(), 7);
        let err = as_i32(1 << 40, "hidden").unwrap_err().to_string();
        assert!(err.contains("hidden"), "{err}");
    }
}
