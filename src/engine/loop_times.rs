//! Where the engine thread's time goes, by phase, summed over its life. Read by the server's
//! `/metrics` and by benchmarks: when the engine's step rate drops while the batches stay
//! full (HTTP streaming against in process), these say whether the model, the engine's own
//! host work or the hand-off of outputs took the difference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The loop's phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopPhase {
    /// Taking new requests, aborts and adapter commands off the queue.
    Commands,
    /// Scheduling, building the step's inputs, sampling and detokenizing: the engine's
    /// own host work around the forward pass.
    Host,
    /// The runner's forward pass, device work and its wait included.
    Model,
    /// Handing each request its output (one channel send apiece) and updating the stats.
    Deliver,
}

impl LoopPhase {
    pub const ALL: [LoopPhase; 4] = [
        LoopPhase::Commands,
        LoopPhase::Host,
        LoopPhase::Model,
        LoopPhase::Deliver,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LoopPhase::Commands => "commands",
            LoopPhase::Host => "host",
            LoopPhase::Model => "model",
            LoopPhase::Deliver => "deliver",
        }
    }
}

/// Nanoseconds per phase; written by the engine thread only.
#[derive(Debug, Default)]
pub struct LoopTimes {
    nanos: [AtomicU64; 4],
}

impl LoopTimes {
    pub fn add(&self, phase: LoopPhase, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[phase as usize].fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn get(&self, phase: LoopPhase) -> Duration {
        Duration::from_nanos(self.nanos[phase as usize].load(Ordering::Relaxed))
    }

    /// Every phase's total now, in [`LoopPhase::ALL`]'s order.
    pub fn snapshot(&self) -> [Duration; 4] {
        LoopPhase::ALL.map(|p| self.get(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_separately() {
        let t = LoopTimes::default();
        t.add(LoopPhase::Model, Duration::from_micros(5));
        t.add(LoopPhase::Model, Duration::from_micros(7));
        t.add(LoopPhase::Deliver, Duration::from_nanos(3));
        assert_eq!(t.get(LoopPhase::Model), Duration::from_micros(12));
        assert_eq!(t.get(LoopPhase::Deliver), Duration::from_nanos(3));
        assert_eq!(t.get(LoopPhase::Host), Duration::ZERO);
        let names: Vec<_> = LoopPhase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["commands", "host", "model", "deliver"]);
        assert_eq!(
            t.snapshot()[LoopPhase::Model as usize],
            Duration::from_micros(12)
        );
    }
}
