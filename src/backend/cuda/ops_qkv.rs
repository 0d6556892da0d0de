//! The attention block's entry step in one kernel (`qkv_rope_cache` in kernels/rope.cu): the
//! fused QKV projection's rows are split, q and k rotated, and k and v written into the
//! paged cache, without the three column copies, the rope launch and the cache-write launch
//! of the unfused path (four launches per layer fewer on every decode step).

use super::device::CudaDevice;
use super::launch::as_i32;
use super::ops::{dims2, RopeStyle};
use super::ops_attention::cache_geometry;
use super::tensor::CudaTensor;
use crate::backend::QueryTemperature;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Heads `(hq, hk)` of a fused row `[q (q_width) | k (kv_width) | v (kv_width)]` of
/// `head_dim`-wide heads, or why the widths do not fit.
pub fn qkv_heads(
    row_width: usize,
    q_width: usize,
    kv_width: usize,
    head_dim: usize,
) -> Result<(usize, usize)> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        bail!("qkv_rope_cache: head dim {head_dim} must be even and positive");
    }
    if !q_width.is_multiple_of(head_dim) || !kv_width.is_multiple_of(head_dim) || kv_width == 0 {
        bail!("qkv_rope_cache: q width {q_width} / kv width {kv_width} are not whole heads of {head_dim}");
    }
    if row_width != q_width + 2 * kv_width {
        bail!("qkv_rope_cache: row width {row_width} != q {q_width} + 2 x kv {kv_width}");
    }
    Ok((q_width / head_dim, kv_width / head_dim))
}

/// The inputs of one fused launch besides the tensors.
pub struct QkvRopeCache<'a> {
    pub positions: &'a CudaSlice<i32>,
    pub slot_mapping: &'a CudaSlice<i32>,
    pub inv_freq: &'a CudaSlice<f32>,
    pub style: RopeStyle,
    /// The rope's attention factor on cos and sin (see `Rope::scale`).
    pub scale: f32,
    pub head_dim: usize,
    /// Qwen3's per-head RMS norms of q and k (`[head_dim]` weights) and their epsilon,
    /// applied before the rotation (after it with `norm_after_rope`, HunYuan).
    pub norms: Option<(&'a CudaTensor, &'a CudaTensor, f32)>,
    pub norm_after_rope: bool,
    /// Llama 4's query temperature (layers without rotary).
    pub temperature: Option<QueryTemperature>,
}

/// Most head dims the fused kernel normalises (`QKV_NORM_MAX_HEAD_DIM` in kernels/rope.cu).
pub const QKV_NORM_MAX_HEAD_DIM: usize = 512;

impl CudaDevice {
    /// `q_out[n, hq * hd]` = q of `qkv[n, (hq + 2 hk) * hd]` rotated by `positions`; k rotated
    /// and v written to the caches `[num_blocks, block_size, hk, hd]` at `slot_mapping`
    /// (negative: padding, skipped), with the numerics of `rope` then `kv_write`.
    pub fn qkv_rope_cache(
        &self,
        qkv: &CudaTensor,
        q_out: &mut CudaTensor,
        k_cache: &mut CudaTensor,
        v_cache: &mut CudaTensor,
        p: &QkvRopeCache,
    ) -> Result<()> {
        let [n, row] = dims2(qkv, "qkv_rope_cache input")?;
        let [n_q, q_width] = dims2(q_out, "qkv_rope_cache q")?;
        let (num_slots, cache_hk, cache_hd) = cache_geometry(k_cache)?;
        let (hq, hk) = qkv_heads(row, q_width, cache_hk * cache_hd, p.head_dim)?;
        if n_q != n || cache_hd != p.head_dim || cache_hk != hk {
            bail!(
                "qkv_rope_cache: q {:?} or cache {:?} do not fit qkv {:?} (head dim {})",
                q_out.shape(),
                k_cache.shape(),
                qkv.shape(),
                p.head_dim
            );
        }
        v_cache.expect_shape(k_cache.shape(), "qkv_rope_cache v cache")?;
        if let Some((qn, kn, _)) = p.norms {
            if p.head_dim > QKV_NORM_MAX_HEAD_DIM {
                bail!(
                    "qkv_rope_cache: per-head norms of head dim {} (at most {QKV_NORM_MAX_HEAD_DIM})",
                    p.head_dim
                );
            }
            for (t, what) in [(qn, "q norm"), (kn, "k norm")] {
                t.expect_shape(&[p.head_dim], what)?;
                t.expect_dtype(qkv.dtype(), what)?;
            }
        }
        for (t, what) in [
            (&*q_out, "q"),
            (&*k_cache, "k cache"),
            (&*v_cache, "v cache"),
        ] {
            t.expect_dtype(qkv.dtype(), what)?;
        }
        let rot = 2 * p.inv_freq.len();
        if p.positions.len() < n || p.slot_mapping.len() < n || rot == 0 || rot > p.head_dim {
            bail!(
                "qkv_rope_cache: {} positions / {} slots for {n} tokens, {} inv_freq for head dim {}",
                p.positions.len(),
                p.slot_mapping.len(),
                p.inv_freq.len(),
                p.head_dim
            );
        }
        if n == 0 {
            return Ok(());
        }
        if hq + hk > 65_535 {
            bail!(
                "qkv_rope_cache: {} heads exceed the grid's y limit",
                hq + hk
            );
        }
        let (hq_i, hk_i, hd_i) = (
            as_i32(hq, "hq")?,
            as_i32(hk, "hk")?,
            as_i32(p.head_dim, "hd")?,
        );
        let neox = i32::from(p.style == RopeStyle::Neox);
        let rot_i = as_i32(rot, "rotary dims")?;
        let slots = num_slots as i64;
        // As rope: one block per (token, head), a thread per rotated pair (k blocks also copy
        // v, two values per thread).
        let config = LaunchConfig {
            grid_dim: (as_i32(n, "qkv tokens")? as u32, (hq + hk) as u32, 1),
            block_dim: (
                (p.head_dim / 2).next_power_of_two().clamp(32, 1024) as u32,
                1,
                1,
            ),
            shared_mem_bytes: 0,
        };
        let f = self.kernels().get("qkv_rope_cache", qkv.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(q_out.data_mut())
            .arg(k_cache.data_mut())
            .arg(v_cache.data_mut())
            .arg(qkv.data());
        args.arg(p.positions).arg(p.inv_freq).arg(p.slot_mapping);
        args.arg(&hq_i)
            .arg(&hk_i)
            .arg(&hd_i)
            .arg(&rot_i)
            .arg(&neox)
            .arg(&slots);
        // Without norms the kernel never reads their pointers; qkv stands in.
        let (q_norm, k_norm, eps) = p.norms.map_or((qkv, qkv, 0.0), |(q, k, e)| (q, k, e));
        // kernels/rope.cu's QKV_NORM_NONE, _BEFORE_ROPE, _AFTER_ROPE.
        let norm_mode: i32 = match (p.norms.is_some(), p.norm_after_rope) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        };
        args.arg(q_norm.data())
            .arg(k_norm.data())
            .arg(&eps)
            .arg(&norm_mode)
            .arg(&p.scale);
        let (temp_floor, temp_scale) = temperature_args(p.temperature);
        args.arg(&temp_floor).arg(&temp_scale);
        // SAFETY: matches kernels/rope.cu; shapes checked above, slots bounds-checked in the
        // kernel.
        unsafe { args.launch(config) }.context("qkv_rope_cache launch")?;
        Ok(())
    }
}

/// The kernels' `(temp_floor, temp_scale)` arguments: floor 0 is no temperature.
pub fn temperature_args(t: Option<QueryTemperature>) -> (f32, f32) {
    t.map_or((0.0, 0.0), |t| (t.floor_scale, t.attn_scale))
}

#[cfg(test)]
mod tests {
    use super::qkv_heads;

    #[test]
    fn fused_rows_split_into_whole_heads() {
        // Llama-3.1-8B: 32 q heads and 8 kv heads of 128.
        assert_eq!(qkv_heads(6144, 4096, 1024, 128).unwrap(), (32, 8));
        // Qwen2.5-0.5B: 14 / 2 heads of 64.
        assert_eq!(qkv_heads(1152, 896, 128, 64).unwrap(), (14, 2));
        assert!(qkv_heads(6143, 4096, 1024, 128).is_err());
        assert!(qkv_heads(6144, 4096, 1024, 0).is_err());
        assert!(qkv_heads(6144 + 3 * 96, 4096 + 96, 1024 + 96, 127).is_err());
        assert!(qkv_heads(4096, 4096, 0, 128).is_err());
    }
}
