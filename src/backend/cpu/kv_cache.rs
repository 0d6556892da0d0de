//! The CPU paged KV cache. Values are kept in f32 whatever the model dtype: a bf16 or f16 K/V
//! is exactly representable in f32, so nothing is lost, and the loops stay simple.

use crate::backend::KvCacheSpec;
use anyhow::{Context, Result};

pub struct CpuKvCache {
    pub spec: KvCacheSpec,
    /// Per layer, `[blocks, block_size, kv_heads, head_dim]` (a convolution layer's rows
    /// `[blocks, block_size, width]` in `k`, nothing in `v`; a Mamba layer's rows in `k` and
    /// its recurrent states, `[state_slots, values]`, in `v`).
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    pub fn new(spec: KvCacheSpec) -> Self {
        let slots = spec.num_blocks * spec.block_size;
        let (k, v) = (0..spec.num_layers)
            .map(|layer| {
                let (k, v) = spec.token_widths(layer);
                let v = match spec.state_values(layer) {
                    Some(values) => spec.state_slots * values,
                    None => slots * v,
                };
                (vec![0.0; slots * k], vec![0.0; v])
            })
            .unzip();
        CpuKvCache { spec, k, v }
    }

    /// Writes each token's convolution row (`width` values) into its slot of layer `layer`.
    pub fn write_conv(&mut self, layer: usize, rows: &[f32], slots: &[i64]) -> Result<()> {
        let width = self
            .spec
            .conv_width(layer)
            .ok_or_else(|| anyhow::anyhow!("short_conv: layer {layer} caches keys, not rows"))?;
        anyhow::ensure!(
            rows.len() == slots.len() * width,
            "short_conv: {} values for {} tokens of width {width}",
            rows.len(),
            slots.len()
        );
        let capacity = self.spec.num_blocks * self.spec.block_size;
        copy_to_slots(&mut self.k[layer], rows, slots, (width, capacity)).context("short_conv")
    }

    /// Elements one token occupies in one layer's K (or V).
    pub fn token_width(&self) -> usize {
        self.spec.num_kv_heads * self.spec.head_dim
    }

    pub fn write(&mut self, layer: usize, k: &[f32], v: &[f32], slots: &[i64]) -> Result<()> {
        let width = self.token_width();
        anyhow::ensure!(
            k.len() == slots.len() * width && v.len() == k.len(),
            "write_kv: shape mismatch"
        );
        let capacity = self.spec.num_blocks * self.spec.block_size;
        copy_to_slots(&mut self.k[layer], k, slots, (width, capacity)).context("write_kv")?;
        copy_to_slots(&mut self.v[layer], v, slots, (width, capacity)).context("write_kv")
    }
}

/// Token t's `width` values of `rows` into slot `slots[t]` of `cache` (`capacity` slots);
/// negative slots (padding) are skipped, slots past the cache refused.
fn copy_to_slots(
    cache: &mut [f32],
    rows: &[f32],
    slots: &[i64],
    (width, capacity): (usize, usize),
) -> Result<()> {
    for (t, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let slot = slot as usize;
        anyhow::ensure!(
            slot < capacity,
            "slot {slot} outside the cache ({capacity} slots)"
        );
        cache[slot * width..(slot + 1) * width].copy_from_slice(&rows[t * width..(t + 1) * width]);
    }
    Ok(())
}
