//! Launch geometry of the image kernels that spread one op over a 2-D grid (group norm's
//! statistics and apply, the channel bias, im2col, nearest upsampling), as pure functions: what `image_kernels.rs` and
//! `image_layout_kernels.rs` launch, unit-tested without a GPU. The kernels' side of each
//! contract is in `kernels/image_norm.cu` and `kernels/image_layout.cu`.

use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block of these kernels (a multiple of 32: the statistics reduce by warps).
pub const IMAGE_THREADS: u32 = 256;
/// Blocks the group-norm statistics aim for in all: several per SM of a 132-SM GPU, so a
/// batch-1 VAE's 32 groups still fill it.
pub const STATS_TARGET_BLOCKS: usize = 1024;
/// Fewest elements one statistics block reduces: below that a block is mostly start-up.
pub const STATS_MIN_PER_BLOCK: usize = 8 * 1024;
/// Most elements one statistics block reduces: its count is an f32, exact up to 2^24.
pub const STATS_MAX_PER_BLOCK: usize = 1 << 24;
/// CUDA's limit on gridDim.y; the per-plane kernels loop over the rest.
pub const MAX_GRID_Y: usize = 65_535;
/// Rows (one group of one image) the finalize kernel merges per block, one a thread.
pub const FINALIZE_THREADS: u32 = 128;

/// Values of a dtype of `elem_bytes` bytes in one 16-byte vector.
fn per_vector(elem_bytes: usize) -> usize {
    16 / elem_bytes
}

fn config(grid: (usize, usize), threads: u32) -> Result<LaunchConfig> {
    ensure!(
        grid.0 > 0 && grid.0 <= i32::MAX as usize && grid.1 > 0 && grid.1 <= MAX_GRID_Y,
        "grid {grid:?} is empty or too large"
    );
    Ok(LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A per-plane map over `planes` rows of `spatial` values (`kiln_map_row` in
/// kernels/common.cuh: group norm's apply, the channel bias): grid (tiles, planes), one
/// 16-byte vector a thread per tile; narrow planes get fewer threads, not idle ones.
pub fn plane_map(planes: usize, spatial: usize, elem_bytes: usize) -> Result<LaunchConfig> {
    ensure!(
        planes <= i32::MAX as usize,
        "{planes} planes overflow the kernel's int index"
    );
    let vectors = spatial.div_ceil(per_vector(elem_bytes));
    let threads = vectors
        .next_power_of_two()
        .clamp(32, IMAGE_THREADS as usize);
    config(
        (vectors.div_ceil(threads), planes.min(MAX_GRID_Y)),
        threads as u32,
    )
}

/// The three launches of a group norm of `x[n, channels, spatial]`.
#[derive(Debug, Clone, Copy)]
pub struct GroupNormLaunch {
    /// Normalised groups, `n * groups`: one row of statistics each.
    pub rows: usize,
    /// Statistics blocks per row; `partials` holds `rows * chunks * 3` f32.
    pub chunks: usize,
    /// Elements of one row, `channels / groups * spatial`.
    pub count: usize,
    /// Channel planes, `n * channels`.
    pub planes: usize,
    pub stats: LaunchConfig,
    pub finalize: LaunchConfig,
    pub apply: LaunchConfig,
}

impl GroupNormLaunch {
    pub fn new(
        (n, channels, spatial): (usize, usize, usize),
        groups: usize,
        elem_bytes: usize,
    ) -> Result<GroupNormLaunch> {
        ensure!(
            groups > 0 && channels % groups == 0 && n * channels * spatial > 0,
            "group norm of [{n}, {channels}, {spatial}] in {groups} groups"
        );
        let rows = n * groups;
        let count = channels / groups * spatial;
        let chunks = STATS_TARGET_BLOCKS
            .div_ceil(rows)
            .min(count.div_ceil(STATS_MIN_PER_BLOCK))
            .max(count.div_ceil(STATS_MAX_PER_BLOCK))
            .max(1);
        ensure!(
            rows <= MAX_GRID_Y,
            "group norm: {rows} groups exceed the grid's y limit"
        );
        let planes = n * channels;
        Ok(GroupNormLaunch {
            rows,
            chunks,
            count,
            planes,
            stats: config((chunks, rows), IMAGE_THREADS)?,
            finalize: config(
                (rows.div_ceil(FINALIZE_THREADS as usize), 1),
                FINALIZE_THREADS,
            )?,
            apply: plane_map(planes, spatial, elem_bytes)?,
        })
    }
}

/// The launch of a plane gather (`kiln_gather_planes` in kernels/image_layout.cu: im2col
/// over `images * c_in * kh * kw` planes, nearest upsampling over `n * c`) writing `planes`
/// planes of `out_h * out_w` pixels.
#[derive(Debug, Clone, Copy)]
pub struct GatherLaunch {
    pub planes: usize,
    /// Whether each thread writes one 16-byte vector (`out_w` a multiple of it) or one value.
    pub vectorised: bool,
    pub config: LaunchConfig,
}

impl GatherLaunch {
    pub fn new(
        planes: usize,
        (out_h, out_w): (usize, usize),
        elem_bytes: usize,
    ) -> Result<GatherLaunch> {
        ensure!(
            planes > 0 && out_h * out_w > 0,
            "gather of {planes} planes of {out_h}x{out_w}"
        );
        ensure!(
            planes <= i32::MAX as usize && out_h * out_w <= i32::MAX as usize,
            "gather: {planes} planes of {out_h}x{out_w} overflow the kernel's int indices"
        );
        let vectorised = out_w % per_vector(elem_bytes) == 0;
        let width = if vectorised {
            per_vector(elem_bytes)
        } else {
            1
        };
        let items = out_h * out_w / width;
        let threads = items.next_power_of_two().clamp(32, IMAGE_THREADS as usize);
        Ok(GatherLaunch {
            planes,
            vectorised,
            config: config(
                (items.div_ceil(threads), planes.min(MAX_GRID_Y)),
                threads as u32,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_one_vae_group_norms_fill_the_gpu() {
        // 512x512x128 f16, 32 groups: one block per group would be 32 blocks.
        let g = GroupNormLaunch::new((1, 128, 512 * 512), 32, 2).unwrap();
        assert_eq!((g.rows, g.count, g.planes), (32, 4 * 512 * 512, 128));
        assert_eq!(g.chunks, 32);
        assert_eq!(g.stats.grid_dim, (32, 32, 1));
        assert!(g.rows * g.chunks >= STATS_TARGET_BLOCKS);
        // Apply: 256 threads x 8 halves per block over each 262144-pixel plane.
        assert_eq!(g.apply.grid_dim, (128, 128, 1));
        assert_eq!(g.apply.block_dim, (256, 1, 1));
        assert_eq!(g.finalize.grid_dim, (1, 1, 1));
    }

    #[test]
    fn small_groups_are_not_split_into_idle_blocks() {
        // A UNet's 8x8 latents at 1280 channels, batch 2: 64 rows of 40 * 64 elements.
        let g = GroupNormLaunch::new((2, 1280, 64), 32, 2).unwrap();
        assert_eq!(g.chunks, 1);
        assert_eq!(g.apply.block_dim, (32, 1, 1));
        assert_eq!(g.apply.grid_dim, (1, 2560, 1));
        // f32 holds 4 a vector: 11x15 = 165 pixels are 42 vectors, 64 threads.
        let g = GroupNormLaunch::new((2, 40, 165), 8, 4).unwrap();
        assert_eq!(g.apply.block_dim, (64, 1, 1));
        assert_eq!(g.apply.grid_dim, (1, 80, 1));
    }

    #[test]
    fn huge_groups_keep_block_counts_exact_in_f32() {
        // One group of 2^26 elements per image: at least 4 chunks of <= 2^24.
        let g = GroupNormLaunch::new((1, 64, 1 << 20), 1, 2).unwrap();
        assert!(g.count / g.chunks <= STATS_MAX_PER_BLOCK);
        assert!(g.chunks >= 4);
        // Many planes: the apply grid stops at the y limit (the kernel loops over the rest).
        let g = GroupNormLaunch::new((64, 1280, 64), 32, 2).unwrap();
        assert_eq!(g.apply.grid_dim.1 as usize, MAX_GRID_Y);
    }

    #[test]
    fn plane_maps_cover_every_plane_and_vector() {
        let c = plane_map(3, 1000, 2).unwrap(); // 125 half vectors a plane
        assert_eq!((c.grid_dim, c.block_dim), ((1, 3, 1), (128, 1, 1)));
        let c = plane_map(3, 1001, 4).unwrap(); // 251 f32 vectors (last one partial)
        assert_eq!((c.grid_dim, c.block_dim), ((1, 3, 1), (256, 1, 1)));
        let c = plane_map(2, 4096 * 8 + 1, 2).unwrap();
        assert_eq!(c.grid_dim, (17, 2, 1));
        assert!(plane_map(0, 8, 2).is_err());
        assert!(plane_map(3, 0, 2).is_err());
    }

    #[test]
    fn group_norm_refuses_bad_shapes() {
        assert!(GroupNormLaunch::new((1, 10, 4), 3, 2).is_err());
        assert!(GroupNormLaunch::new((1, 10, 0), 5, 2).is_err());
        assert!(GroupNormLaunch::new((1, 10, 4), 0, 2).is_err());
        assert!(GroupNormLaunch::new((70_000, 32, 4), 32, 2).is_err());
    }

    #[test]
    fn gathers_vectorise_when_rows_hold_whole_vectors() {
        // VAE conv at 512x512, 128 channels: 1152 planes of 32768 half vectors.
        let l = GatherLaunch::new(128 * 9, (512, 512), 2).unwrap();
        assert!(l.vectorised);
        assert_eq!(l.config.grid_dim, (128, 1152, 1));
        // 22x30 latents: 30 is not a multiple of 8 halves (scalar) but f32's... neither.
        let l = GatherLaunch::new(45, (22, 30), 2).unwrap();
        assert!(!l.vectorised);
        assert_eq!(l.config.grid_dim, (3, 45, 1));
        assert!(GatherLaunch::new(45, (22, 28), 4).unwrap().vectorised);
        assert!(!GatherLaunch::new(45, (22, 28), 2).unwrap().vectorised);
        // More planes than the y limit: capped, the kernel loops.
        let l = GatherLaunch::new(100_000, (8, 8), 2).unwrap();
        assert_eq!(l.config.grid_dim, (1, MAX_GRID_Y as u32, 1));
        assert_eq!(l.config.block_dim, (32, 1, 1));
        assert!(GatherLaunch::new(0, (8, 8), 2).is_err());
    }
}
