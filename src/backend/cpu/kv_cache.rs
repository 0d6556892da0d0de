//! The CPU paged KV cache. Values are kept in f32 whatever the model dtype: a bf16 or f16 K/V
//! is exactly representable in f32, so nothing is lost, and the loops stay simple.

use crate::backend::KvCacheSpec;
use anyhow::Result;

pub struct CpuKvCache {
    pub spec: KvCacheSpec,
    /// Per layer, `[blocks, block_size, kv_heads, head_dim]`.
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    pub fn new(spec: KvCacheSpec) -> Self {
        let len = spec.num_blocks * spec.block_size * spec.num_kv_heads * spec.head_dim;
        CpuKvCache {
            spec,
            k: (0..spec.num_layers).map(|_| vec![0.0; len]).collect(),
            v: (0..spec.num_layers).map(|_| vec![0.0; len]).collect(),
        }
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
        for (t, &slot) in slots.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            let slot = slot as usize;
            anyhow::ensure!(
                slot < capacity,
                "write_kv: slot {slot} outside the cache ({capacity} slots)"
            );
            let dst = slot * width..(slot + 1) * width;
            self.k[layer][dst.clone()].copy_from_slice(&k[t * width..(t + 1) * width]);
            self.v[layer][dst].copy_from_slice(&v[t * width..(t + 1) * width]);
        }
        Ok(())
    }
}
