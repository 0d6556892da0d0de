//! A barrier for the ranks of one group that a failed rank can break: waiting ranks then
//! get an error instead of waiting forever for a partner that will not come.

use anyhow::{bail, Result};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a rank waits for the others before calling the group broken. Far above any
/// real step, so it only fires on a hung rank.
pub const WAIT_LIMIT: Duration = Duration::from_secs(600);

pub struct Rendezvous {
    world: usize,
    state: Mutex<State>,
    turned: Condvar,
}

struct State {
    arrived: usize,
    /// Completed meetings; a waiter knows its meeting is over when this moves.
    generation: u64,
    failure: Option<String>,
}

impl Rendezvous {
    pub fn new(world: usize) -> Rendezvous {
        Rendezvous {
            world,
            state: Mutex::new(State {
                arrived: 0,
                generation: 0,
                failure: None,
            }),
            turned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        super::lock(&self.state)
    }

    /// Breaks the group: every waiting and future [`Rendezvous::wait`] fails with `reason`.
    pub fn abort(&self, reason: &str) {
        let mut state = self.lock();
        if state.failure.is_none() {
            state.failure = Some(reason.to_string());
        }
        self.turned.notify_all();
    }

    /// Returns once all `world` ranks have called `wait` for this meeting.
    pub fn wait(&self, rank: usize) -> Result<()> {
        let mut state = self.lock();
        if let Some(reason) = &state.failure {
            bail!("tensor-parallel group failed: {reason}");
        }
        state.arrived += 1;
        if state.arrived == self.world {
            state.arrived = 0;
            state.generation += 1;
            self.turned.notify_all();
            return Ok(());
        }
        let meeting = state.generation;
        while state.generation == meeting && state.failure.is_none() {
            let (next, timeout) = self
                .turned
                .wait_timeout(state, WAIT_LIMIT)
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            if timeout.timed_out() && state.generation == meeting {
                let reason = format!(
                    "rank {rank} waited {} s for the other ranks",
                    WAIT_LIMIT.as_secs()
                );
                state.failure = Some(reason.clone());
                self.turned.notify_all();
                bail!(reason);
            }
        }
        if state.generation == meeting {
            bail!(
                "tensor-parallel group failed: {}",
                state.failure.as_deref().unwrap_or("unknown")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn nobody_passes_a_meeting_before_everyone_arrived() {
        let r = Rendezvous::new(4);
        let arrived = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for rank in 0..4 {
                let (r, arrived) = (&r, &arrived);
                s.spawn(move || {
                    for round in 0..20 {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        r.wait(rank).unwrap();
                        assert!(arrived.load(Ordering::SeqCst) >= 4 * (round + 1));
                        r.wait(rank).unwrap();
                    }
                });
            }
        });
    }

    #[test]
    fn abort_releases_waiters_with_the_reason() {
        let r = Rendezvous::new(3);
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..2)
                .map(|rank| {
                    s.spawn({
                        let r = &r;
                        move || r.wait(rank)
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20));
            r.abort("rank 2 ran out of memory");
            for w in waiters {
                let err = w.join().unwrap().unwrap_err().to_string();
                assert!(err.contains("rank 2 ran out of memory"), "{err}");
            }
        });
        assert!(r.wait(0).is_err());
    }
}
