//! What one forward pass computes: the scheduled sequences' new tokens, concatenated.

/// Per-token and per-sequence metadata of a flattened batch. Sequence `s` contributes the
/// tokens `query_start[s]..query_start[s + 1]`, which are the last ones of its
/// `context_lens[s]` tokens; its KV lives in the cache blocks `block_tables[s]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchLayout {
    pub positions: Vec<u32>,
    /// Cache slot (`block * block_size + offset`) of each token; negative means "do not store".
    pub slots: Vec<i64>,
    pub query_start: Vec<usize>,
    pub context_lens: Vec<usize>,
    pub block_tables: Vec<Vec<u32>>,
    pub block_size: usize,
    /// Token rows whose logits are wanted (each sampling sequence's last token).
    pub logits_rows: Vec<usize>,
    /// Per sequence, the LoRA adapter its request runs with: 0 for the base model, `k + 1`
    /// for adapter `k`. Empty: every sequence runs the base model.
    pub adapters: Vec<u32>,
    /// Per sequence, the recurrent-state slot it holds (Mamba mixers read and write their
    /// state there, [`crate::backend::mamba`]). Empty: slot `s` for sequence `s`.
    pub state_slots: Vec<u32>,
}

impl BatchLayout {
    pub fn num_tokens(&self) -> usize {
        self.positions.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.context_lens.len()
    }

    /// Sequence `seq`'s recurrent-state slot.
    pub fn state_slot(&self, seq: usize) -> usize {
        self.state_slots.get(seq).map_or(seq, |&s| s as usize)
    }

    /// The sequence each token belongs to.
    pub fn token_seq(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.num_tokens());
        for s in 0..self.num_seqs() {
            out.extend(std::iter::repeat_n(
                s,
                self.query_start[s + 1] - self.query_start[s],
            ));
        }
        out
    }

    /// Checks the invariants the attention kernels rely on.
    pub fn validate(&self) -> anyhow::Result<()> {
        let n = self.num_seqs();
        anyhow::ensure!(
            self.query_start.len() == n + 1,
            "query_start must have num_seqs + 1 entries"
        );
        anyhow::ensure!(self.block_tables.len() == n, "one block table per sequence");
        anyhow::ensure!(self.slots.len() == self.num_tokens(), "one slot per token");
        anyhow::ensure!(
            self.adapters.is_empty() || self.adapters.len() == n,
            "one adapter entry per sequence"
        );
        anyhow::ensure!(
            self.state_slots.is_empty() || self.state_slots.len() == n,
            "one state slot per sequence"
        );
        anyhow::ensure!(
            self.query_start.last() == Some(&self.num_tokens()),
            "query_start must end at num_tokens"
        );
        for s in 0..n {
            let q_len = self.query_start[s + 1] - self.query_start[s];
            anyhow::ensure!(
                q_len <= self.context_lens[s],
                "sequence {s}: more new tokens than context"
            );
            let blocks_needed = self.context_lens[s].div_ceil(self.block_size);
            anyhow::ensure!(
                self.block_tables[s].len() >= blocks_needed,
                "sequence {s}: {} blocks for {} tokens",
                self.block_tables[s].len(),
                self.context_lens[s]
            );
        }
        Ok(())
    }
}
