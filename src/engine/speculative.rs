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
