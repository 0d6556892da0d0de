//! kiln's own all-reduce on GPUs: every rank reads the other ranks' partial tensors
//! directly and sums them itself. It serves ranks that share one GPU (their buffers live in
//! the same memory) and GPUs with peer-to-peer access to each other; without peer access,
//! the host-staged group ([`super::host_group`]) is used instead.
//!
//! One all-reduce: each rank waits for its stream (its partial is written) and publishes
//! the partial's address; a first meeting guarantees every partial is complete and
//! published; each rank then sums all partials in rank order into a new tensor (same bits on
//! every rank) and waits for that kernel; a second meeting keeps every partial alive until
//! all ranks have read it.

use super::communicator::Communicator;
use super::lock;
use super::rendezvous::Rendezvous;
use crate::backend::cuda::ops_all_reduce::MAX_RANKS;
use crate::backend::cuda::tensor::CudaTensor;
use crate::backend::cuda::CudaBackend;
use anyhow::{bail, Result};
use cudarc::driver::CudaContext;
use std::sync::{Arc, Mutex};

/// The state shared by the ranks of one group.
pub struct DeviceGroup {
    meeting: Rendezvous,
    /// Each rank's published partial: device address and element count.
    partials: Mutex<Vec<(u64, usize)>>,
    /// Contexts on which peer access was enabled, kept alive so it stays enabled.
    _peer_contexts: Vec<Arc<CudaContext>>,
}

/// One rank's [`Communicator`] over a [`DeviceGroup`].
pub struct DeviceAllReduce {
    group: Arc<DeviceGroup>,
    rank: usize,
    world: usize,
}

impl DeviceAllReduce {
    /// One communicator per rank of a new group of `world` (at most [`MAX_RANKS`]). The
    /// caller guarantees every rank can read every other rank's memory (same GPU, or peer
    /// access enabled on `peer_contexts`).
    pub fn group(
        world: usize,
        peer_contexts: Vec<Arc<CudaContext>>,
    ) -> Result<Vec<DeviceAllReduce>> {
        if world == 0 || world > MAX_RANKS {
            bail!("a device all-reduce group has 1..={MAX_RANKS} ranks, not {world}");
        }
        let group = Arc::new(DeviceGroup {
            meeting: Rendezvous::new(world),
            partials: Mutex::new(vec![(0, 0); world]),
            _peer_contexts: peer_contexts,
        });
        Ok((0..world)
            .map(|rank| DeviceAllReduce {
                group: group.clone(),
                rank,
                world,
            })
            .collect())
    }

    fn reduce(&self, be: &CudaBackend, x: &CudaTensor) -> Result<CudaTensor> {
        be.synchronize()?;
        lock(&self.group.partials)[self.rank] = (be.device_address(x), x.numel());
        self.group.meeting.wait(self.rank)?;
        let partials = lock(&self.group.partials).clone();
        if let Some((_, n)) = partials.iter().find(|(_, n)| *n != x.numel()) {
            bail!(
                "all-reduce size mismatch: rank {} has {} elements, another rank {n}",
                self.rank,
                x.numel()
            );
        }
        let addresses: Vec<u64> = partials.iter().map(|(a, _)| *a).collect();
        let sum = be.sum_of_peers(x, &addresses)?;
        be.synchronize()?;
        self.group.meeting.wait(self.rank)?;
        Ok(sum)
    }
}

impl Communicator<CudaBackend> for DeviceAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, be: &CudaBackend, x: CudaTensor) -> Result<CudaTensor> {
        let result = self.reduce(be, &x);
        if let Err(e) = &result {
            self.group
                .meeting
                .abort(&format!("rank {}: {e:#}", self.rank));
        }
        result
    }

    fn abort(&self, reason: &str) {
        self.group.meeting.abort(reason);
    }
}
