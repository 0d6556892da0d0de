//! Paged KV-cache block accounting, with prefix caching.
//!
//! Each block holds `block_size` tokens' K/V. A full block of a sequence gets a hash chained
//! from its predecessor's hash and its own tokens, so two prompts sharing a prefix share the
//! blocks of that prefix (reference counted). A block whose count drops to zero goes to the
//! back of the free queue but keeps its hash: until it is handed out again (oldest first) a
//! later request can still find and revive it.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

#[derive(Clone, Debug, Default)]
struct Block {
    ref_count: u32,
    /// Set once the block is full and registered for prefix reuse.
    hash: Option<u64>,
    /// The block's tokens, to rule out hash collisions on reuse.
    tokens: Vec<u32>,
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    /// Blocks with no owner, oldest first; may still be registered in `by_hash`.
    free: VecDeque<u32>,
    by_hash: HashMap<u64, u32>,
    prefix_caching: bool,
}

/// Chained hash of one full block.
pub fn block_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The hash chain a sequence's blocks start from: none for the base model without a salt;
/// one per LoRA adapter (the same tokens under another adapter hold other keys and
/// values) and per cache salt (requests share cached blocks only with their own salt).
pub fn chain_root(adapter: Option<usize>, salt: Option<&str>) -> Option<u64> {
    if adapter.is_none() && salt.is_none() {
        return None;
    }
    let mut h = DefaultHasher::new();
    ("lora adapter", adapter, "cache salt", salt).hash(&mut h);
    Some(h.finish())
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        BlockManager {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free: (0..num_blocks as u32).collect(),
            by_hash: HashMap::new(),
            prefix_caching,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Fraction of blocks in use, 0..=1.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.free.len() as f64 / self.blocks.len() as f64
    }

    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Finds cached blocks for the leading full blocks of `tokens`, whose hash chain starts
    /// at `root` (see [`chain_root`]). Returns their ids and hashes, without taking them yet.
    pub fn lookup_prefix(&self, root: Option<u64>, tokens: &[u32]) -> (Vec<u32>, Vec<u64>) {
        let (mut ids, mut hashes) = (Vec::new(), Vec::new());
        if !self.prefix_caching {
            return (ids, hashes);
        }
        let mut parent = root;
        for chunk in tokens.chunks_exact(self.block_size) {
            let h = block_hash(parent, chunk);
            match self.by_hash.get(&h) {
                Some(&id) if self.blocks[id as usize].tokens == chunk => {
                    ids.push(id);
                    hashes.push(h);
                    parent = Some(h);
                }
                _ => break,
            }
        }
        (ids, hashes)
    }

    /// Takes a reference on each cached block found by `lookup_prefix`.
    pub fn take_cached(&mut self, ids: &[u32]) {
        for &id in ids {
            let b = &mut self.blocks[id as usize];
            if b.ref_count == 0 {
                self.free.retain(|&f| f != id);
            }
            b.ref_count += 1;
        }
    }

    /// How many of `ids` are sitting in the free queue (reviving them costs free blocks).
    pub fn count_free_among(&self, ids: &[u32]) -> usize {
        ids.iter()
            .filter(|&&id| self.blocks[id as usize].ref_count == 0)
            .count()
    }

    /// Hands out `n` fresh blocks, or None (and nothing) if there are not enough.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if self.free.len() < n {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.free.pop_front().expect("checked above");
            let b = &mut self.blocks[id as usize];
            if let Some(h) = b.hash.take() {
                // Evicting a cached block: forget it unless the hash already moved on.
                if self.by_hash.get(&h) == Some(&id) {
                    self.by_hash.remove(&h);
                }
            }
            b.tokens.clear();
            b.ref_count = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Registers a full block's hash so later prompts can reuse it.
    pub fn register_full(&mut self, id: u32, hash: u64, tokens: &[u32]) {
        if !self.prefix_caching {
            return;
        }
        let b = &mut self.blocks[id as usize];
        if b.hash.is_some() {
            return;
        }
        b.hash = Some(hash);
        b.tokens = tokens.to_vec();
        self.by_hash.entry(hash).or_insert(id);
    }

    /// Drops one reference on each block (a sequence finished, was cancelled or preempted).
    /// Blocks are released last-first so a sequence's tail is evicted before its prefix.
    pub fn release(&mut self, ids: &[u32]) {
        for &id in ids.iter().rev() {
            let b = &mut self.blocks[id as usize];
            debug_assert!(b.ref_count > 0, "double free of block {id}");
            b.ref_count = b.ref_count.saturating_sub(1);
            if b.ref_count == 0 {
                if b.hash.is_some() {
                    self.free.push_back(id);
                } else {
                    // Nothing worth keeping: hand it out first.
                    self.free.push_front(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_and_release_return_every_block() {
        let mut bm = BlockManager::new(8, 4, true);
        let a = bm.allocate(3).unwrap();
        let b = bm.allocate(5).unwrap();
        assert!(bm.allocate(1).is_none());
        assert_eq!(bm.num_free(), 0);
        bm.release(&a);
        bm.release(&b);
        assert_eq!(bm.num_free(), 8);
        assert_eq!(bm.usage(), 0.0);
    }

    #[test]
    fn full_blocks_are_found_again_and_shared() {
        let mut bm = BlockManager::new(8, 2, true);
        let tokens = [1, 2, 3, 4, 5];
        let ids = bm.allocate(3).unwrap();
        let h0 = block_hash(None, &tokens[0..2]);
        let h1 = block_hash(Some(h0), &tokens[2..4]);
        bm.register_full(ids[0], h0, &tokens[0..2]);
        bm.register_full(ids[1], h1, &tokens[2..4]);
        let (found, hashes) = bm.lookup_prefix(None, &[1, 2, 3, 4, 9, 9]);
        assert_eq!(found, ids[0..2]);
        assert_eq!(hashes, [h0, h1]);
        // A different first block breaks the chain even if the second matches.
        assert!(bm.lookup_prefix(None, &[7, 7, 3, 4]).0.is_empty());
        bm.take_cached(&found);
        bm.release(&ids);
        // The shared blocks are still owned by the second user.
        assert_eq!(bm.num_free(), 8 - 2);
        bm.release(&found);
        assert_eq!(bm.num_free(), 8);
        // Freed but still cached: a new lookup revives them.
        let (again, _) = bm.lookup_prefix(None, &[1, 2, 3, 4]);
        assert_eq!(again, ids[0..2]);
        assert_eq!(bm.count_free_among(&again), 2);
    }

    #[test]
    fn eviction_forgets_the_hash() {
        let mut bm = BlockManager::new(2, 2, true);
        let ids = bm.allocate(1).unwrap();
        bm.register_full(ids[0], block_hash(None, &[1, 2]), &[1, 2]);
        bm.release(&ids);
        // Two fresh blocks needed: the cached one is evicted.
        let _ = bm.allocate(2).unwrap();
        assert!(bm.lookup_prefix(None, &[1, 2]).0.is_empty());
    }

    #[test]
    fn disabled_prefix_caching_never_matches() {
        let mut bm = BlockManager::new(4, 2, false);
        let ids = bm.allocate(1).unwrap();
        bm.register_full(ids[0], block_hash(None, &[1, 2]), &[1, 2]);
        assert!(bm.lookup_prefix(None, &[1, 2]).0.is_empty());
    }
}
