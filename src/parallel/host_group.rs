//! An all-reduce through host memory: each rank copies its tensor to the host, the last rank
//! to arrive sums the contributions in rank order (so every rank, and every run, gets the
//! same bits), and each rank writes the sum back into its tensor.
//!
//! It works for any backend and any placement of ranks: CPU worker threads, several ranks on
//! one GPU, GPUs without peer access. A rank that fails calls [`HostGroup::abort`]; every
//! rank waiting in, or later entering, a collective then gets an error instead of waiting
//! forever for a partner that will not come.

use super::communicator::Communicator;
use crate::backend::Backend;
use anyhow::{bail, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a rank waits for the others before calling the group broken. Far above any
/// real step, so it only fires on a hung rank.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// The state shared by the ranks of one group.
pub struct HostGroup {
    world: usize,
    state: Mutex<RoundState>,
    turned: Condvar,
}

struct RoundState {
    /// Each rank's values for the collective in progress.
    contributions: Vec<Option<Vec<f32>>>,
    arrived: usize,
    /// Completed collectives; a waiter knows its round is done when this moves.
    generation: u64,
    result: Arc<Vec<f32>>,
    failure: Option<String>,
}

impl HostGroup {
    pub fn new(world: usize) -> Arc<HostGroup> {
        Arc::new(HostGroup {
            world,
            state: Mutex::new(RoundState {
                contributions: vec![None; world],
                arrived: 0,
                generation: 0,
                result: Arc::new(Vec::new()),
                failure: None,
            }),
            turned: Condvar::new(),
        })
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    fn lock(&self) -> MutexGuard<'_, RoundState> {
        // A rank that panicked while holding the lock left consistent state (every update
        // below is completed before anything can panic), so poisoning is not an error here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the group failed and wakes every waiting rank.
    pub fn abort(&self, reason: &str) {
        let mut state = self.lock();
        if state.failure.is_none() {
            state.failure = Some(reason.to_string());
        }
        self.turned.notify_all();
    }

    /// The element-wise sum of every rank's `values`.
    pub fn all_reduce(&self, rank: usize, values: Vec<f32>) -> Result<Arc<Vec<f32>>> {
        let mut state = self.lock();
        if let Some(reason) = &state.failure {
            bail!("tensor-parallel group failed: {reason}");
        }
        if rank >= self.world || state.contributions[rank].is_some() {
            let reason = format!("rank {rank} entered an all-reduce twice or out of range");
            state.failure = Some(reason.clone());
            self.turned.notify_all();
            bail!(reason);
        }
        if let Some(other) = state.contributions.iter().flatten().next() {
            if other.len() != values.len() {
                let reason = format!(
                    "all-reduce size mismatch: rank {rank} has {} values, another rank {}",
                    values.len(),
                    other.len()
                );
                state.failure = Some(reason.clone());
                self.turned.notify_all();
                bail!(reason);
            }
        }
        state.contributions[rank] = Some(values);
        state.arrived += 1;
        if state.arrived == self.world {
            let sum = sum_in_rank_order(&mut state.contributions);
            state.result = Arc::new(sum);
            state.arrived = 0;
            state.generation += 1;
            self.turned.notify_all();
            return Ok(state.result.clone());
        }
        let round = state.generation;
        while state.generation == round && state.failure.is_none() {
            let (next, timeout) = self
                .turned
                .wait_timeout(state, WAIT_LIMIT)
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            if timeout.timed_out() && state.generation == round {
                let reason = format!(
                    "rank {rank} waited {} s for the other ranks in an all-reduce",
                    WAIT_LIMIT.as_secs()
                );
                state.failure = Some(reason.clone());
                self.turned.notify_all();
                bail!(reason);
            }
        }
        if state.generation == round {
            bail!(
                "tensor-parallel group failed: {}",
                state.failure.as_deref().unwrap_or("unknown")
            );
        }
        // The next round cannot complete before this rank joins it, so `result` is still
        // this round's.
        Ok(state.result.clone())
    }
}

/// Sums the contributions (all present) in rank order and clears them for the next round.
fn sum_in_rank_order(contributions: &mut [Option<Vec<f32>>]) -> Vec<f32> {
    let mut parts = contributions
        .iter_mut()
        .map(|c| c.take().unwrap_or_default());
    let mut sum = parts.next().unwrap_or_default();
    for part in parts {
        for (s, v) in sum.iter_mut().zip(&part) {
            *s += v;
        }
    }
    sum
}

/// One rank's [`Communicator`] over a [`HostGroup`].
pub struct HostStaged {
    group: Arc<HostGroup>,
    rank: usize,
}

impl HostStaged {
    /// One communicator per rank of a new group of `world`.
    pub fn group(world: usize) -> Vec<HostStaged> {
        let group = HostGroup::new(world);
        (0..world)
            .map(|rank| HostStaged {
                group: group.clone(),
                rank,
            })
            .collect()
    }
}

impl<B: Backend> Communicator<B> for HostStaged {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world_size()
    }

    fn all_reduce_sum(&self, be: &B, x: B::Tensor) -> Result<B::Tensor> {
        let values = match be.to_host_f32(&x) {
            Ok(v) => v,
            Err(e) => {
                self.group.abort(&format!("rank {}: {e:#}", self.rank));
                return Err(e);
            }
        };
        let sum = self.group.all_reduce(self.rank, values)?;
        be.replace_from_f32(x, &sum)
    }

    fn abort(&self, reason: &str) {
        self.group.abort(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::DType;

    /// Runs `f(rank)` on `world` threads and returns the results in rank order.
    fn on_ranks<T: Send>(world: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = (0..world).map(|r| s.spawn(move || f(r))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn sums_odd_sizes_over_every_group_size_many_rounds() {
        for world in [1, 2, 3, 4, 8] {
            let group = HostGroup::new(world);
            for len in [0usize, 1, 7, 4099] {
                let results = on_ranks(world, |rank| {
                    // Several rounds back to back: a fast rank must not overtake a slow one.
                    (0..5)
                        .map(|round| {
                            let v: Vec<f32> =
                                (0..len).map(|i| (rank * 1000 + i + round) as f32).collect();
                            group.all_reduce(rank, v).unwrap()
                        })
                        .collect::<Vec<_>>()
                });
                for (round, _) in results[0].iter().enumerate() {
                    let expected: Vec<f32> = (0..len)
                        .map(|i| (0..world).map(|r| (r * 1000 + i + round) as f32).sum())
                        .collect();
                    for rank_results in &results {
                        assert_eq!(*rank_results[round], expected, "world {world} len {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_failed_rank_releases_the_waiting_ones() {
        let group = HostGroup::new(4);
        let results = on_ranks(4, |rank| {
            if rank == 2 {
                group.abort("rank 2: out of memory");
                return None;
            }
            Some(group.all_reduce(rank, vec![1.0; 8]))
        });
        for r in results.into_iter().flatten() {
            let err = r.unwrap_err().to_string();
            assert!(err.contains("rank 2: out of memory"), "{err}");
        }
        // Later collectives fail at once too.
        assert!(group.all_reduce(0, vec![1.0]).is_err());
    }

    #[test]
    fn mismatched_sizes_fail_the_group_instead_of_summing_garbage() {
        let group = HostGroup::new(2);
        let results = on_ranks(2, |rank| group.all_reduce(rank, vec![1.0; 4 + rank]));
        assert!(results.iter().all(|r| r.is_err()));
    }

    #[test]
    fn communicator_sums_backend_tensors_in_their_dtype() {
        let be = CpuBackend::new();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let comms = HostStaged::group(3);
            let out = on_ranks(3, |rank| {
                let values: Vec<f32> = (0..6).map(|i| (i + rank) as f32 * 0.5).collect();
                let t = candle_core::Tensor::from_vec(values, (2, 3), &candle_core::Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype.to_candle())
                    .unwrap();
                let sum = comms[rank].all_reduce_sum(&be, t).unwrap();
                assert_eq!(sum.dtype(), dtype.to_candle());
                assert_eq!(sum.dims(), [2, 3]);
                be.to_host_f32(&sum).unwrap()
            });
            let expected: Vec<f32> = (0..6).map(|i| (3 * i + 3) as f32 * 0.5).collect();
            for o in out {
                assert_eq!(o, expected, "{dtype}");
            }
        }
    }
}
