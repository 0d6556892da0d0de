//! Continuous batching: which sequences run this step, and how many tokens each.
//!
//! Every step has a token budget (`max_num_batched_tokens`). Running sequences go first, in
//! admission order: a decoding one takes one token, one still in prefill takes as much of its
//! prompt as the budget allows (chunked prefill). Waiting sequences are admitted next while
//! there is budget, a free seat (`max_num_seqs`) and KV blocks. When a running sequence needs
//! a block and none is free, the most recently admitted one is preempted: its blocks are freed
//! and it goes back to the front of the queue, to be recomputed later (its prefix may still be
//! in the cache).
//!
//! Under the priority policy (vLLM's `--scheduling-policy priority`) the queue and the
//! running set are both kept in order of each request's `priority` (lower first), then
//! arrival: higher-priority sequences get the step's budget first, and the victim of a
//! preemption is the running sequence that comes last in that order, not the newest.

use super::block_manager::{block_hash, chain_root, BlockManager};
use super::sequence::{SeqStatus, Sequence};
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub policy: SchedulingPolicy,
}

/// Which waiting request runs next, and which running one yields when blocks run out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SchedulingPolicy {
    /// First come, first served; requests must have priority 0.
    #[default]
    Fcfs,
    /// Lower `priority` first, then arrival.
    Priority,
}

impl std::str::FromStr for SchedulingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fcfs" => Ok(SchedulingPolicy::Fcfs),
            "priority" => Ok(SchedulingPolicy::Priority),
            other => Err(format!(
                "unknown scheduling policy '{other}' (fcfs or priority)"
            )),
        }
    }
}

/// A sequence's place in the priority order: its priority, then its arrival (ids grow).
fn order_key(seq: &Sequence) -> (i64, u64) {
    (seq.params.priority, seq.id)
}

/// One sequence's share of a step: tokens `start..start + len` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: u64,
    pub start: usize,
    pub len: usize,
    /// The step completes the sequence's known tokens, so a new one is sampled.
    pub samples: bool,
}

/// Most prompt positions scored per step: each is a logits row of the whole vocabulary
/// (128k f32 = 0.5 MB for Llama 3), so an unbounded chunk of a long prompt could take
/// gigabytes of device memory in one step.
pub const PROMPT_LOGPROB_ROWS_PER_STEP: usize = 256;

/// Whether `seq` still has prompt positions to score (its next chunk adds logits rows).
fn scores_prompt(seq: &Sequence) -> bool {
    seq.params.prompt_logprobs.is_some() && seq.num_computed + 1 < seq.num_prompt
}

pub struct Scheduler {
    config: SchedulerConfig,
    pub blocks: BlockManager,
    seqs: HashMap<u64, Sequence>,
    waiting: VecDeque<u64>,
    running: Vec<u64>,
    num_preemptions: u64,
    /// Recurrent-state slots no running sequence holds (there are `max_num_seqs`, one per
    /// sequence that can run at once).
    free_state_slots: Vec<u32>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: BlockManager) -> Self {
        let free_state_slots = (0..config.max_num_seqs as u32).rev().collect();
        Scheduler {
            config,
            blocks,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
            free_state_slots,
        }
    }

    pub fn add(&mut self, seq: Sequence) {
        match self.config.policy {
            SchedulingPolicy::Fcfs => self.waiting.push_back(seq.id),
            SchedulingPolicy::Priority => self.enqueue_in_order(&seq),
        }
        self.seqs.insert(seq.id, seq);
    }

    pub fn get(&self, id: u64) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Sequence> {
        self.seqs.get_mut(&id)
    }

    /// The LoRA adapter slots of the running requests and of the waiting ones, each list
    /// sorted and without repeats.
    pub fn adapters_in_use(&self) -> (Vec<usize>, Vec<usize>) {
        let slots = |ids: &mut dyn Iterator<Item = &u64>| {
            let set: std::collections::BTreeSet<usize> = ids
                .filter_map(|id| self.seqs.get(id)?.params.lora_adapter)
                .collect();
            set.into_iter().collect::<Vec<_>>()
        };
        (
            slots(&mut self.running.iter()),
            slots(&mut self.waiting.iter()),
        )
    }

    /// Requests (waiting or running) that use LoRA adapter `slot`.
    pub fn count_with_adapter(&self, slot: usize) -> usize {
        self.seqs
            .values()
            .filter(|s| s.params.lora_adapter == Some(slot))
            .count()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// The running sequences, in admission order.
    pub fn running_ids(&self) -> &[u64] {
        &self.running
    }

    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Removes a sequence (finished or cancelled) and frees its blocks at once.
    pub fn remove(&mut self, id: u64) -> Option<Sequence> {
        let seq = self.seqs.remove(&id)?;
        self.waiting.retain(|&w| w != id);
        if self.running.contains(&id) {
            self.running.retain(|&r| r != id);
            self.free_state_slots.push(seq.state_slot);
        }
        self.blocks.release(&seq.block_table);
        Some(seq)
    }

    fn preempt(&mut self, id: u64) {
        let seq = self.seqs.get_mut(&id).expect("running sequence exists");
        self.blocks.release(&seq.block_table);
        seq.block_table.clear();
        seq.block_hashes.clear();
        seq.num_computed = 0;
        seq.status = SeqStatus::Waiting;
        let slot = seq.state_slot;
        self.running.retain(|&r| r != id);
        self.free_state_slots.push(slot);
        match self.config.policy {
            SchedulingPolicy::Fcfs => self.waiting.push_front(id),
            SchedulingPolicy::Priority => {
                let seq = &self.seqs[&id];
                let at = self.queue_position(order_key(seq));
                self.waiting.insert(at, id);
            }
        }
        self.num_preemptions += 1;
    }

    /// Where a sequence of priority-order `key` goes in the waiting queue (after every
    /// sequence that comes before it).
    fn queue_position(&self, key: (i64, u64)) -> usize {
        self.waiting
            .partition_point(|w| self.seqs.get(w).is_some_and(|s| order_key(s) < key))
    }

    fn enqueue_in_order(&mut self, seq: &Sequence) {
        let at = self.queue_position(order_key(seq));
        self.waiting.insert(at, seq.id);
    }

    /// Adds `id` to the running set: last, or under the priority policy at its place in
    /// priority order (so the set's last is always the one to preempt first, and a step
    /// never preempts a sequence it already scheduled: those come earlier).
    fn start_running(&mut self, id: u64) {
        let at = match self.config.policy {
            SchedulingPolicy::Fcfs => self.running.len(),
            SchedulingPolicy::Priority => {
                let key = order_key(&self.seqs[&id]);
                self.running
                    .partition_point(|r| order_key(&self.seqs[r]) < key)
            }
        };
        self.running.insert(at, id);
        let slot = self
            .free_state_slots
            .pop()
            .expect("at most max_num_seqs sequences run, each holding one slot");
        self.seqs.get_mut(&id).expect("exists").state_slot = slot;
    }

    /// Recurrent-state slots no running sequence holds.
    pub fn num_free_state_slots(&self) -> usize {
        self.free_state_slots.len()
    }

    /// Grows a sequence's block table to hold `new_len` tokens. False if blocks are short.
    fn grow(&mut self, id: u64, new_len: usize) -> bool {
        let seq = &self.seqs[&id];
        let needed = self
            .blocks
            .blocks_for(new_len)
            .saturating_sub(seq.block_table.len());
        match self.blocks.allocate(needed) {
            Some(ids) => {
                self.seqs
                    .get_mut(&id)
                    .expect("exists")
                    .block_table
                    .extend(ids);
                true
            }
            None => false,
        }
    }

    /// Picks this step's work. Empty when there is nothing to run.
    pub fn schedule(&mut self) -> Vec<ScheduledSeq> {
        let mut budget = self.config.max_num_batched_tokens;
        let mut prompt_rows_left = PROMPT_LOGPROB_ROWS_PER_STEP;
        let mut out = Vec::new();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let scores_prompt = scores_prompt(seq);
            if scores_prompt && prompt_rows_left == 0 {
                i += 1; // its next chunk waits for the next step
                continue;
            }
            let cap = if scores_prompt {
                prompt_rows_left
            } else {
                budget
            };
            let (start, len) = (seq.num_computed, seq.num_uncomputed().min(budget).min(cap));
            let mut scheduled = true;
            while !self.grow(id, start + len) {
                let victim = *self.running.last().expect("non-empty");
                self.preempt(victim);
                preempted = true;
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if scheduled {
                if scores_prompt {
                    prompt_rows_left -= len;
                }
                let samples = start + len == self.seqs[&id].tokens.len();
                out.push(ScheduledSeq {
                    id,
                    start,
                    len,
                    samples,
                });
                budget -= len;
                i += 1;
            }
        }
        // Admitting new work right after a preemption would only thrash.
        while !preempted && budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let scores = scores_prompt(&self.seqs[&id]);
            let cap = if scores { prompt_rows_left } else { budget };
            if cap == 0 || !self.admit(id, budget.min(cap), &mut out) {
                break;
            }
            if scores {
                prompt_rows_left -= out.last().expect("admitted").len;
            }
            budget -= out.last().expect("admitted").len;
        }
        out
    }

    /// Moves the head of the queue to running if its first chunk (at most `budget` tokens)
    /// fits in blocks.
    fn admit(&mut self, id: u64, budget: usize, out: &mut Vec<ScheduledSeq>) -> bool {
        let seq = &self.seqs[&id];
        let root = chain_root(seq.params.lora_adapter, seq.params.cache_salt.as_deref());
        let (mut hits, mut hashes) = self.blocks.lookup_prefix(root, &seq.tokens);
        if seq.params.prompt_logprobs.is_some() {
            // Every prompt position must be computed to be scored.
            hits.clear();
            hashes.clear();
        }
        // Keep at least one token to compute: its logits give the next token.
        let max_hits = (seq.tokens.len() - 1) / self.blocks.block_size();
        hits.truncate(max_hits);
        hashes.truncate(max_hits);
        let start = hits.len() * self.blocks.block_size();
        let len = (seq.tokens.len() - start).min(budget);
        let fresh = self.blocks.blocks_for(start + len) - hits.len();
        if fresh + self.blocks.count_free_among(&hits) > self.blocks.num_free() {
            return false;
        }
        self.blocks.take_cached(&hits);
        let fresh_ids = self.blocks.allocate(fresh).expect("counted above");
        let seq = self.seqs.get_mut(&id).expect("exists");
        seq.block_table = hits;
        seq.block_table.extend(fresh_ids);
        seq.block_hashes = hashes;
        seq.num_computed = start;
        if seq.first_scheduled.is_none() {
            seq.num_cached_prompt = start.min(seq.num_prompt);
            seq.first_scheduled = Some(std::time::Instant::now());
        }
        seq.status = SeqStatus::Running;
        let samples = start + len == seq.tokens.len();
        self.waiting.pop_front();
        self.start_running(id);
        out.push(ScheduledSeq {
            id,
            start,
            len,
            samples,
        });
        true
    }

    /// Records that a step computed `len` more tokens of a sequence, registering blocks that
    /// became full for prefix reuse.
    pub fn mark_computed(&mut self, id: u64, len: usize) {
        let bs = self.blocks.block_size();
        let seq = self.seqs.get_mut(&id).expect("scheduled sequence exists");
        seq.num_computed += len;
        let full = seq.num_computed / bs;
        while seq.block_hashes.len() < full {
            let b = seq.block_hashes.len();
            let tokens = &seq.tokens[b * bs..(b + 1) * bs];
            let parent = seq.block_hashes.last().copied();
            let root = chain_root(seq.params.lora_adapter, seq.params.cache_salt.as_deref());
            let h = block_hash(parent.or(root), tokens);
            self.blocks.register_full(seq.block_table[b], h, tokens);
            seq.block_hashes.push(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::params::SamplingParams;

    fn sched(blocks: usize, bs: usize, seqs: usize, tokens: usize) -> Scheduler {
        Scheduler::new(
            SchedulerConfig {
                max_num_seqs: seqs,
                max_num_batched_tokens: tokens,
                policy: SchedulingPolicy::Fcfs,
            },
            BlockManager::new(blocks, bs, true),
        )
    }

    fn seq(id: u64, len: usize) -> Sequence {
        Sequence::new(
            id,
            (0..len as u32).map(|t| t + id as u32 * 1000).collect(),
            SamplingParams::greedy(),
            1000,
        )
    }

    /// Runs a step as the engine would: every sampling sequence gets one more token.
    fn run_step(s: &mut Scheduler, step: &[ScheduledSeq]) {
        for it in step {
            s.mark_computed(it.id, it.len);
            if it.samples {
                s.get_mut(it.id).unwrap().tokens.push(7);
            }
        }
    }

    #[test]
    fn chunked_prefill_respects_the_token_budget() {
        let mut s = sched(64, 4, 8, 10);
        s.add(seq(1, 25));
        let a = s.schedule();
        assert_eq!(
            a,
            [ScheduledSeq {
                id: 1,
                start: 0,
                len: 10,
                samples: false
            }]
        );
        run_step(&mut s, &a);
        let b = s.schedule();
        assert_eq!(
            b,
            [ScheduledSeq {
                id: 1,
                start: 10,
                len: 10,
                samples: false
            }]
        );
        run_step(&mut s, &b);
        let c = s.schedule();
        assert_eq!(
            c,
            [ScheduledSeq {
                id: 1,
                start: 20,
                len: 5,
                samples: true
            }]
        );
    }

    #[test]
    fn decodes_batch_with_new_prefills() {
        let mut s = sched(64, 4, 8, 100);
        s.add(seq(1, 5));
        let a = s.schedule();
        run_step(&mut s, &a);
        s.add(seq(2, 3));
        let b = s.schedule();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].id, b[0].len), (1, 1));
        assert_eq!((b[1].id, b[1].len), (2, 3));
    }

    #[test]
    fn max_num_seqs_limits_the_running_set() {
        let mut s = sched(64, 4, 2, 100);
        for id in 0..5 {
            s.add(seq(id, 3));
        }
        assert_eq!(s.schedule().len(), 2);
        assert_eq!(s.num_waiting(), 3);
    }

    #[test]
    fn running_sequences_hold_distinct_state_slots_and_give_them_back() {
        let mut s = sched(64, 4, 3, 100);
        for id in 0..5 {
            s.add(seq(id, 3));
        }
        let step = s.schedule();
        let slots: std::collections::HashSet<u32> = step
            .iter()
            .map(|w| s.get(w.id).unwrap().state_slot)
            .collect();
        assert_eq!(slots.len(), 3, "three running sequences, three slots");
        assert!(slots.iter().all(|&slot| slot < 3));
        assert_eq!(s.num_free_state_slots(), 0);
        s.remove(step[1].id);
        assert_eq!(s.num_free_state_slots(), 1);
        // A waiting sequence holds none: removing it frees nothing.
        s.remove(4);
        assert_eq!(s.num_free_state_slots(), 1);
        let next = s.schedule();
        run_step(&mut s, &next);
        assert_eq!(
            s.num_free_state_slots(),
            0,
            "the next waiting one took the slot"
        );
    }

    #[test]
    fn preempts_the_newest_when_blocks_run_out_and_frees_everything() {
        // 4 blocks of 2 tokens: two sequences of 4 tokens fill the cache.
        let mut s = sched(4, 2, 8, 100);
        s.add(seq(1, 4));
        s.add(seq(2, 4));
        let a = s.schedule();
        assert_eq!(a.len(), 2);
        run_step(&mut s, &a);
        // Both now need a fifth slot: the newest is preempted so the oldest can go on.
        let b = s.schedule();
        assert_eq!(b.iter().map(|x| x.id).collect::<Vec<_>>(), [1]);
        assert_eq!(s.num_preemptions(), 1);
        assert_eq!(s.get(2).unwrap().num_computed, 0);
        s.remove(1);
        s.remove(2);
        assert_eq!(s.blocks.num_free(), 4);
    }

    fn prioritised(blocks: usize, bs: usize, seqs: usize) -> Scheduler {
        Scheduler::new(
            SchedulerConfig {
                max_num_seqs: seqs,
                max_num_batched_tokens: 100,
                policy: SchedulingPolicy::Priority,
            },
            BlockManager::new(blocks, bs, true),
        )
    }

    fn seq_with_priority(id: u64, len: usize, priority: i64) -> Sequence {
        let mut s = seq(id, len);
        s.params.priority = priority;
        s
    }

    #[test]
    fn the_priority_policy_admits_lower_priorities_first_then_by_arrival() {
        let mut s = prioritised(64, 4, 1);
        for (id, priority) in [(1, 5), (2, 0), (3, -2), (4, 0)] {
            s.add(seq_with_priority(id, 3, priority));
        }
        let mut order = Vec::new();
        while s.has_work() {
            let step = s.schedule();
            let id = step[0].id;
            order.push(id);
            s.remove(id);
        }
        assert_eq!(order, [3, 2, 4, 1]);
        // First come, first served keeps arrival order.
        let mut f = sched(64, 4, 1, 100);
        for id in 1..=3 {
            f.add(seq_with_priority(id, 3, 0));
        }
        assert_eq!(f.schedule()[0].id, 1);
    }

    #[test]
    fn the_priority_policy_preempts_the_lowest_priority_not_the_newest() {
        // 4 blocks of 2 tokens. A low-priority sequence runs first; a higher-priority one
        // arrives a step later; when blocks run out the older, lower-priority one yields.
        let mut s = prioritised(4, 2, 8);
        s.add(seq_with_priority(1, 3, 3));
        let a = s.schedule();
        run_step(&mut s, &a);
        s.add(seq_with_priority(2, 3, -1));
        let b = s.schedule();
        assert_eq!(b.iter().map(|x| x.id).collect::<Vec<_>>(), [1, 2]);
        run_step(&mut s, &b);
        // The running set is in priority order: 2 goes first; 1 needs a third block.
        let c = s.schedule();
        assert_eq!(c.iter().map(|x| x.id).collect::<Vec<_>>(), [2]);
        assert_eq!(s.num_preemptions(), 1);
        assert_eq!(s.get(1).unwrap().num_computed, 0);
        // Back in the queue at its place: ahead of a later request of lower priority,
        // behind a later one of higher priority.
        s.add(seq_with_priority(3, 2, 4));
        s.add(seq_with_priority(4, 2, 0));
        assert_eq!(s.waiting.iter().copied().collect::<Vec<_>>(), [4, 1, 3]);
    }

    #[test]
    fn prefix_hits_skip_cached_blocks_but_leave_one_token() {
        let mut s = sched(16, 4, 8, 100);
        s.add(seq(1, 8));
        let a = s.schedule();
        run_step(&mut s, &a);
        s.remove(1);
        // Same 8 prompt tokens: both blocks cached, but the last token is recomputed.
        s.add(seq(1, 8));
        let b = s.schedule();
        assert_eq!(
            b,
            [ScheduledSeq {
                id: 1,
                start: 4,
                len: 4,
                samples: true
            }]
        );
        assert_eq!(s.get(1).unwrap().num_cached_prompt, 4);
        s.add(Sequence::new(
            5,
            (1000..1009).collect(),
            SamplingParams::greedy(),
            1000,
        ));
        let c = s.schedule();
        assert_eq!(c.last().unwrap().start, 8);
    }
}
