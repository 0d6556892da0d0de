//! The scheduler side of speculative decoding: draft tokens ride at the end of a decoding
//! sequence's tokens for one step, so the scheduler gives them KV slots and the runner
//! computes them like a short prefill chunk; the engine then keeps the ones the model's own
//! choices confirm (`LlmEngine::verify`) and drops the rest.
//!
//! Drafts never change what is generated, only how many tokens a step computes, so they
//! are only made where they cannot cost other sequences anything: within the step's token
//! budget, and from KV blocks that are free beyond what every running sequence's next
//! token may need (they never cause a preemption).

use super::ngram::{propose, NgramConfig};
use super::scheduler::{ScheduledSeq, Scheduler};
use std::collections::HashMap;

/// Draft tokens appended to each speculating sequence, by request.
#[derive(Debug, Default)]
pub struct Drafts {
    counts: HashMap<u64, usize>,
    /// Totals since start: drafted tokens, and drafted tokens the model confirmed.
    pub drafted: u64,
    pub accepted: u64,
}

impl Drafts {
    /// How many of sequence `id`'s tokens are drafts this step.
    pub fn count(&self, id: u64) -> usize {
        self.counts.get(&id).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Appends drafts to the decoding sequences `eligible` accepts (those without a
    /// grammar), within `token_budget` and the free KV blocks.
    pub fn propose(
        &mut self,
        scheduler: &mut Scheduler,
        config: &NgramConfig,
        token_budget: usize,
        eligible: impl Fn(u64) -> bool,
    ) {
        let running = scheduler.running_ids().to_vec();
        if config
            .disable_by_batch_size
            .is_some_and(|limit| running.len() >= limit)
        {
            return;
        }
        // Every running sequence may need one fresh block for its next token.
        let mut spare_blocks = scheduler.blocks.num_free().saturating_sub(running.len());
        let mut spare_tokens = token_budget.saturating_sub(running.len());
        for id in running {
            if spare_tokens == 0 {
                break;
            }
            let Some(seq) = scheduler.get(id) else {
                continue;
            };
            // Decoding: only the last sampled token is uncomputed.
            if seq.num_uncomputed() != 1 || seq.num_computed < seq.num_prompt || !eligible(id) {
                continue;
            }
            // Room for the drafts and the token sampled after them.
            let room = seq.max_len.saturating_sub(seq.tokens.len() + 1);
            let mut draft = propose(&seq.tokens, config, room.min(spare_tokens));
            let blocks = &scheduler.blocks;
            let held = seq
                .block_table
                .len()
                .max(blocks.blocks_for(seq.tokens.len()));
            while !draft.is_empty()
                && blocks
                    .blocks_for(seq.tokens.len() + draft.len())
                    .saturating_sub(held)
                    > spare_blocks
            {
                draft.pop();
            }
            if draft.is_empty() {
                continue;
            }
            spare_blocks -= blocks
                .blocks_for(seq.tokens.len() + draft.len())
                .saturating_sub(held);
            spare_tokens -= draft.len();
            let n = draft.len();
            scheduler
                .get_mut(id)
                .expect("running sequence exists")
                .tokens
                .extend(draft);
            self.counts.insert(id, n);
        }
    }

    /// Fits the drafts to what was scheduled: a sequence not scheduled this step (or
    /// preempted) loses its drafts, one whose chunk ends inside them keeps those it covers,
    /// and each keeps sampling after its last computed token.
    pub fn settle(&mut self, scheduler: &mut Scheduler, work: &mut [ScheduledSeq]) {
        let ids: Vec<u64> = self.counts.keys().copied().collect();
        for id in ids {
            let n = self.counts[&id];
            let Some(seq) = scheduler.get_mut(id) else {
                self.counts.remove(&id);
                continue;
            };
            let undrafted = seq.tokens.len() - n;
            let kept = match work.iter_mut().find(|w| w.id == id) {
                Some(w) => {
                    let kept = (w.start + w.len).saturating_sub(undrafted).min(n);
                    w.samples = w.start + w.len == undrafted + kept;
                    kept
                }
                None => 0,
            };
            seq.tokens.truncate(undrafted + kept);
            if kept == 0 {
                self.counts.remove(&id);
            } else {
                self.counts.insert(id, kept);
            }
        }
    }

    /// Takes sequence `id`'s drafts off its tokens (they are verified against the step's
    /// logits rows now) and returns them.
    pub fn take(&mut self, scheduler: &mut Scheduler, id: u64) -> Vec<u32> {
        let n = self.counts.remove(&id).unwrap_or(0);
        let Some(seq) = scheduler.get_mut(id) else {
            return Vec::new();
        };
        let at = seq.tokens.len() - n;
        self.drafted += n as u64;
        seq.tokens.split_off(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::block_manager::BlockManager;
    use crate::engine::params::SamplingParams;
    use crate::engine::scheduler::SchedulerConfig;
    use crate::engine::sequence::Sequence;

    const CONFIG: NgramConfig = NgramConfig {
        num_speculative_tokens: 3,
        prompt_lookup_max: 3,
        prompt_lookup_min: 1,
        disable_by_batch_size: None,
    };

    /// Sequences `ids` past their prompt `5 6 7 8 5 6` with 7 sampled: "5 6 7" recurs, so
    /// each drafts `8 5 6`.
    fn decoding(ids: &[u64]) -> Scheduler {
        let config = SchedulerConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: 100,
            policy: Default::default(),
        };
        let mut s = Scheduler::new(config, BlockManager::new(64, 4, false));
        for &id in ids {
            let prompt = vec![5, 6, 7, 8, 5, 6];
            s.add(Sequence::new(id, prompt, SamplingParams::greedy(), 64));
        }
        for w in s.schedule() {
            s.mark_computed(w.id, w.len);
            s.get_mut(w.id).unwrap().tokens.push(7);
        }
        s
    }

    #[test]
    fn drafts_are_cut_to_what_the_step_computes() {
        let mut s = decoding(&[1, 2, 3]);
        let mut drafts = Drafts::default();
        drafts.propose(&mut s, &CONFIG, 100, |_| true);
        for id in 1..=3 {
            assert_eq!(drafts.count(id), 3);
            assert_eq!(s.get(id).unwrap().tokens[7..], [8, 5, 6]);
        }
        // Sequence 1 runs whole, 2 only its last token and one draft, 3 not at all.
        let step = |id, len| ScheduledSeq {
            id,
            start: 6,
            len,
            samples: false,
        };
        let mut work = [step(1, 4), step(2, 2)];
        drafts.settle(&mut s, &mut work);
        assert_eq!(
            (drafts.count(1), drafts.count(2), drafts.count(3)),
            (3, 1, 0)
        );
        assert_eq!(s.get(1).unwrap().tokens.len(), 10);
        assert_eq!(s.get(2).unwrap().tokens.len(), 8);
        assert_eq!(
            s.get(3).unwrap().tokens.len(),
            7,
            "an unscheduled sequence's drafts go"
        );
        assert!(
            work.iter().all(|w| w.samples),
            "each samples after its last position"
        );
        // Verification takes the drafts off again.
        assert_eq!(drafts.take(&mut s, 2), [8]);
        assert_eq!((s.get(2).unwrap().tokens.len(), drafts.drafted), (7, 1));
    }

    #[test]
    fn drafts_stay_within_the_budget_and_the_spare_blocks() {
        // A budget of 5 for 3 running sequences: 2 tokens to spare, all for the first.
        let mut s = decoding(&[1, 2, 3]);
        let mut drafts = Drafts::default();
        drafts.propose(&mut s, &CONFIG, 5, |_| true);
        assert_eq!(
            (drafts.count(1), drafts.count(2), drafts.count(3)),
            (2, 0, 0)
        );
        // No block to spare: each sequence holds 2 blocks (7 tokens of 8 slots) and the
        // free ones are kept for the running sequences' next tokens, so only a draft that
        // fits its last block is made.
        let mut s = decoding(&[1, 2, 3]);
        let free = s.blocks.num_free();
        let _ = s.blocks.allocate(free - 3);
        let mut drafts = Drafts::default();
        drafts.propose(&mut s, &CONFIG, 100, |id| id != 3);
        assert_eq!(
            (drafts.count(1), drafts.count(2), drafts.count(3)),
            (1, 1, 0)
        );
        // Three running sequences reach a limit of three: no drafts at all.
        let mut s = decoding(&[1, 2, 3]);
        let limited = NgramConfig {
            disable_by_batch_size: Some(3),
            ..CONFIG
        };
        let mut drafts = Drafts::default();
        drafts.propose(&mut s, &limited, 100, |_| true);
        assert!(drafts.is_empty());
    }
}
