//! An all-reduce through host memory: each rank copies its tensor to the host, rank 0 sums
//! the contributions in rank order (so every rank, and every run, gets the same bits), and
//! each rank writes the sum back into its tensor.
//!
//! It works for any backend and any placement of ranks: CPU worker threads, several ranks on
//! one GPU, GPUs without peer access. A rank that fails calls [`HostGroup::abort`]; every
//! rank waiting in, or later entering, a collective then gets an error instead of waiting
//! forever for a partner that will not come.

use super::communicator::Communicator;
use super::lock;
use super::rendezvous::Rendezvous;
use crate::backend::Backend;
use anyhow::Result;
use std::sync::{Arc, Mutex};

/// The state shared by the ranks of one group.
pub struct HostGroup {
    world: usize,
    meeting: Rendezvous,
    /// Each rank's values for the collective in progress.
    contributions: Mutex<Vec<Option<Vec<f32>>>>,
    /// The sum of the last collective, written by rank 0.
    result: Mutex<Arc<Vec<f32>>>,
}

impl HostGroup {
    pub fn new(world: usize) -> Arc<HostGroup> {
        Arc::new(HostGroup {
            world,
            meeting: Rendezvous::new(world),
            contributions: Mutex::new(vec![None; world]),
            result: Mutex::new(Arc::new(Vec::new())),
        })
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Marks the group failed and wakes every waiting rank.
    pub fn abort(&self, reason: &str) {
        self.meeting.abort(reason);
    }

    /// The element-wise sum of every rank's `values`.
    ///
    /// Every rank deposits its values and meets the others; rank 0 sums them in rank order
    /// and publishes the sum; a second meeting tells the others it is there. Rank 0 writes
    /// the next sum only after the next round's first meeting, which no rank reaches before
    /// it has read this one.
    pub fn all_reduce(&self, rank: usize, values: Vec<f32>) -> Result<Arc<Vec<f32>>> {
        anyhow::ensure!(
            rank < self.world,
            "rank {rank} of a group of {}",
            self.world
        );
        lock(&self.contributions)[rank] = Some(values);
        self.meeting.wait(rank)?;
        if rank == 0 {
            match sum_in_rank_order(&mut lock(&self.contributions)) {
                Ok(sum) => *lock(&self.result) = Arc::new(sum),
                Err(reason) => {
                    self.meeting.abort(&reason);
                    anyhow::bail!(reason);
                }
            }
        }
        self.meeting.wait(rank)?;
        Ok(lock(&self.result).clone())
    }
}

/// Sums the contributions in rank order and clears them for the next round; an error
/// when a rank is missing or the sizes differ.
fn sum_in_rank_order(contributions: &mut [Option<Vec<f32>>]) -> Result<Vec<f32>, String> {
    let mut parts = Vec::with_capacity(contributions.len());
    for (rank, c) in contributions.iter_mut().enumerate() {
        parts.push(
            c.take()
                .ok_or_else(|| format!("rank {rank} did not contribute"))?,
        );
    }
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_default();
    for (rank, part) in parts.enumerate() {
        if part.len() != sum.len() {
            return Err(format!(
                "all-reduce size mismatch: rank 0 has {} values, rank {} has {}",
                sum.len(),
                rank + 1,
                part.len()
            ));
        }
        for (s, v) in sum.iter_mut().zip(&part) {
            *s += v;
        }
    }
    Ok(sum)
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
