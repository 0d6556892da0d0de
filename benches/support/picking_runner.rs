//! A runner for host-side benchmarks: no forward pass, a token per sampling row picked from
//! the row's position, as a device that picks greedy tokens would. Optionally it waits a
//! fixed time per step first, as an engine thread blocked on a device does. Its tokens are
//! not checked: it stands in for the device so that only the host side is measured.

use kiln::engine::runner::{Runner, StepInput, StepOutput};
use std::time::Duration;

/// The vocabulary of the fixture tokenizer the benches pair it with.
pub const VOCAB: usize = 448;

pub struct PickingRunner {
    /// Time each step waits before answering (zero: none, not even a sleep call).
    pub step: Duration,
}

impl Runner for PickingRunner {
    fn execute(&mut self, input: &StepInput) -> anyhow::Result<StepOutput> {
        if !self.step.is_zero() {
            std::thread::sleep(self.step);
        }
        let picked = input
            .layout
            .logits_rows
            .iter()
            .map(|&row| Some(3 + input.layout.positions[row] % (VOCAB as u32 - 3)))
            .collect();
        Ok(StepOutput {
            picked,
            logits: Vec::new(),
        })
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn describe(&self) -> String {
        format!("picking runner ({:?} per step, no forward pass)", self.step)
    }
    fn weight_bytes(&self) -> u64 {
        0
    }
}
