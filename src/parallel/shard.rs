//! What one rank of a tensor-parallel group owns of a Llama-family model.
//!
//! Attention heads are split evenly (column-parallel QKV, row-parallel O). KV heads are
//! split when there are at least as many as ranks; with fewer, each rank keeps the one KV
//! head its query heads read, so a KV head is replicated on `world / kv_heads` ranks.
//! Qwen3-Next's gated delta mixers split their value heads the same way, each rank with the
//! key heads its value heads read. The MLP
//! splits the intermediate dimension (column-parallel gate/up, row-parallel down), and the
//! embedding and LM head split the vocabulary into nearly equal row ranges.

use crate::model::config::ModelConfig;
use anyhow::{ensure, Result};
use std::ops::Range;

/// A rank's place in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole model on one rank.
    pub fn single() -> Shard {
        Shard { rank: 0, world: 1 }
    }

    pub fn is_single(&self) -> bool {
        self.world == 1
    }
}

/// The slices of every sharded dimension one rank holds, as ranges of the full model's
/// indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    pub shard: Shard,
    /// Query heads.
    pub q_heads: Range<usize>,
    /// KV heads (one shared head when KV heads are replicated).
    pub kv_heads: Range<usize>,
    /// Columns of the MLP's intermediate dimension.
    pub intermediate: Range<usize>,
    /// Columns of each expert's intermediate dimension (mixture-of-experts models; every
    /// rank holds a slice of every expert, as of a dense MLP).
    pub expert_intermediate: Range<usize>,
    /// Columns of Qwen2-MoE's shared expert's intermediate dimension.
    pub shared_expert_intermediate: Range<usize>,
    /// Rows of the embedding table and the LM head.
    pub vocab: Range<usize>,
    /// Qwen3-Next: the gated delta mixers' value heads (with the key heads they read, see
    /// [`crate::backend::gated_delta::GatedDeltaShape::shard`]).
    pub linear_value_heads: Range<usize>,
    /// Mamba-2 mixers' heads (with the B / C groups they read, see
    /// [`crate::backend::mamba::MambaShape::shard`]).
    pub mamba_heads: Range<usize>,
}

/// Refuses a group size the model cannot be split into, saying why.
pub fn check_divides(config: &ModelConfig, world: usize) -> Result<()> {
    ensure!(
        matches!(world, 1 | 2 | 4 | 8),
        "--tensor-parallel-size {world}: supported sizes are 1, 2, 4 and 8"
    );
    // A norm over a whole projection split across ranks would need its sum of squares
    // all-reduced; kiln does not shard such models (OLMo 2 and 3).
    ensure!(
        !config.qk_norm_whole || world == 1,
        "{:?} cannot be tensor-parallel: its q / k norms span every head",
        config.architecture
    );
    // A Mamba-1 mixer's x_proj reads every channel.
    ensure!(
        config.selective.is_none() || world == 1,
        "{:?} cannot be tensor-parallel: kiln keeps its Mamba mixers (whose x_proj reads \
         every channel) whole on one device",
        config.architecture
    );
    // Mamba-2 mixers split their heads, each rank with the B / C groups they read; a gated
    // norm spans a group, so a normed mixer needs whole groups on each rank.
    if let Some(m) = &config.mamba {
        let (heads, groups) = (m.shape.heads, m.shape.groups);
        ensure!(
            heads.is_multiple_of(world)
                && (groups.is_multiple_of(world) || world.is_multiple_of(groups)),
            "--tensor-parallel-size {world} must divide the Mamba mixers' {heads} heads and \
             divide, or be a multiple of, their {groups} B / C groups"
        );
        ensure!(
            !m.shape.normed || groups.is_multiple_of(world),
            "{:?} cannot be tensor-parallel {world} ways: its Mamba mixers' gated norm spans \
             each of their {groups} B / C groups, which would split across ranks",
            config.architecture
        );
    }
    // A gated delta mixer's norm is per head: its value heads split, each rank with the key
    // heads they read (shared by ranks when there are fewer key heads than ranks).
    if let Some(g) = &config.gated_delta {
        let (k, v) = (g.shape.k_heads, g.shape.v_heads);
        ensure!(
            v.is_multiple_of(world) && (k.is_multiple_of(world) || world.is_multiple_of(k)),
            "--tensor-parallel-size {world} must divide the gated delta mixers' {v} value \
             heads and divide, or be a multiple of, their {k} key heads"
        );
    }
    let (heads, kv) = (config.num_heads, config.num_kv_heads);
    ensure!(
        heads.is_multiple_of(world),
        "--tensor-parallel-size {world} does not divide the model's {heads} attention heads"
    );
    ensure!(
        kv.is_multiple_of(world) || world.is_multiple_of(kv),
        "--tensor-parallel-size {world} neither divides the model's {kv} KV heads nor is a \
         multiple of them (each rank needs whole KV heads)"
    );
    ensure!(
        config.intermediate_size.is_multiple_of(world),
        "--tensor-parallel-size {world} does not divide the MLP's intermediate size {}",
        config.intermediate_size
    );
    if let Some(moe) = &config.moe {
        ensure!(
            moe.expert_intermediate_size.is_multiple_of(world),
            "--tensor-parallel-size {world} does not divide the experts' intermediate size {}",
            moe.expert_intermediate_size
        );
        if let Some(shared) = moe.shared_expert_intermediate_size {
            ensure!(
                shared.is_multiple_of(world),
                "--tensor-parallel-size {world} does not divide the shared expert's \
                 intermediate size {shared}"
            );
        }
    }
    ensure!(
        config.vocab_size >= world,
        "--tensor-parallel-size {world} is larger than the vocabulary ({})",
        config.vocab_size
    );
    Ok(())
}

impl ShardLayout {
    /// The layout of `shard`, after checking the model can be split `shard.world` ways.
    pub fn new(config: &ModelConfig, shard: Shard) -> Result<ShardLayout> {
        check_divides(config, shard.world)?;
        ensure!(
            shard.rank < shard.world,
            "rank {} of a group of {}",
            shard.rank,
            shard.world
        );
        let (r, w) = (shard.rank, shard.world);
        let even = |total: usize| total / w * r..total / w * (r + 1);
        let kv = config.num_kv_heads;
        let kv_heads = if kv >= w {
            even(kv)
        } else {
            // Query heads r*H/w.. map to KV head (r*H/w) / (H/kv) = r*kv/w: all of this
            // rank's query heads share it because w is a multiple of kv.
            let head = r * kv / w;
            head..head + 1
        };
        let vocab_chunk = config.vocab_size.div_ceil(w);
        let vocab = (r * vocab_chunk).min(config.vocab_size)
            ..((r + 1) * vocab_chunk).min(config.vocab_size);
        ensure!(
            !vocab.is_empty(),
            "rank {r} of {w} would hold no vocabulary rows of {}",
            config.vocab_size
        );
        Ok(ShardLayout {
            shard,
            q_heads: even(config.num_heads),
            kv_heads,
            intermediate: even(config.intermediate_size),
            expert_intermediate: even(
                config
                    .moe
                    .as_ref()
                    .map_or(0, |m| m.expert_intermediate_size),
            ),
            shared_expert_intermediate: even(
                config
                    .moe
                    .as_ref()
                    .and_then(|m| m.shared_expert_intermediate_size)
                    .unwrap_or(0),
            ),
            vocab,
            linear_value_heads: even(config.gated_delta.as_ref().map_or(0, |g| g.shape.v_heads)),
            mamba_heads: even(config.mamba.as_ref().map_or(0, |m| m.shape.heads)),
        })
    }

    /// Element range of the query heads in a `[heads * head_dim]` dimension.
    pub fn q_columns(&self, head_dim: usize) -> Range<usize> {
        self.q_heads.start * head_dim..self.q_heads.end * head_dim
    }

    /// Element range of the KV heads in a `[kv_heads * head_dim]` dimension.
    pub fn kv_columns(&self, head_dim: usize) -> Range<usize> {
        self.kv_heads.start * head_dim..self.kv_heads.end * head_dim
    }

    /// True when the embedding holds only part of the vocabulary, so a token outside it
    /// must read zeros (summed away by the all-reduce).
    pub fn splits_vocab(&self) -> bool {
        !self.shard.is_single()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(heads: usize, kv: usize, inter: usize, vocab: usize) -> ModelConfig {
        let hidden = heads * 16;
        let json = format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": {hidden},
            "intermediate_size": {inter}, "num_hidden_layers": 1, "num_attention_heads": {heads},
            "num_key_value_heads": {kv}, "vocab_size": {vocab}, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 128}}"#
        );
        ModelConfig::from_json(&json).unwrap()
    }

    #[test]
    fn every_dimension_is_covered_exactly_once() {
        let c = config(32, 8, 14336, 128_257);
        for world in [1, 2, 4, 8] {
            let layouts: Vec<_> = (0..world)
                .map(|rank| ShardLayout::new(&c, Shard { rank, world }).unwrap())
                .collect();
            let cover = |f: &dyn Fn(&ShardLayout) -> Range<usize>, total: usize| {
                let mut next = 0;
                for l in &layouts {
                    assert_eq!(f(l).start, next, "world {world}");
                    next = f(l).end;
                }
                assert_eq!(next, total, "world {world}");
            };
            cover(&|l| l.q_heads.clone(), 32);
            cover(&|l| l.kv_heads.clone(), 8);
            cover(&|l| l.intermediate.clone(), 14336);
            cover(&|l| l.vocab.clone(), 128_257);
        }
    }

    #[test]
    fn fewer_kv_heads_than_ranks_are_replicated_to_the_ranks_that_read_them() {
        let c = config(8, 2, 128, 448);
        let kv: Vec<_> = (0..8)
            .map(|rank| ShardLayout::new(&c, Shard { rank, world: 8 }).unwrap())
            .map(|l| {
                // Every query head of the rank must read the rank's KV head under GQA.
                for q in l.q_heads.clone() {
                    assert_eq!(q / (8 / 2), l.kv_heads.start);
                }
                l.kv_heads
            })
            .collect();
        assert_eq!(kv, [0..1, 0..1, 0..1, 0..1, 1..2, 1..2, 1..2, 1..2]);
    }

    #[test]
    fn sizes_that_cannot_split_the_model_are_refused_with_the_reason() {
        let c = config(12, 4, 128, 448);
        let err = check_divides(&c, 8).unwrap_err().to_string();
        assert!(err.contains("12 attention heads"), "{err}");
        let c = config(24, 6, 128, 448);
        let err = check_divides(&c, 4).unwrap_err().to_string();
        assert!(err.contains("6 KV heads"), "{err}");
        let err = check_divides(&config(8, 8, 100, 448), 8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("intermediate size 100"), "{err}");
        let err = check_divides(&config(8, 8, 128, 448), 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1, 2, 4 and 8"), "{err}");
    }

    #[test]
    fn column_ranges_scale_with_the_head_dim() {
        let c = config(8, 2, 128, 448);
        let l = ShardLayout::new(&c, Shard { rank: 1, world: 2 }).unwrap();
        assert_eq!(l.q_columns(16), 64..128);
        assert_eq!(l.kv_columns(16), 16..32);
        assert!(l.splits_vocab());
    }
}
