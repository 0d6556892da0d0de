//! All-reduce through NCCL, for ranks on distinct GPUs (NVLink / PCIe topologies NCCL knows
//! how to use best). Ranks sharing a GPU cannot form an NCCL group (NCCL refuses duplicate
//! devices); they use kiln's own kernel ([`super::device_group`]).
//!
//! Each rank joins the group lazily, on its first all-reduce, from its own worker thread
//! (whose CUDA context is current there), so no stream or context crosses threads. Joining
//! blocks until every rank joins, and an NCCL collective waits on the GPU for every rank's
//! part; so before each call the ranks meet on the host ([`Rendezvous`], abortable): a rank
//! that failed earlier makes the others fail with its reason instead of hanging in NCCL.
//! The sum itself is enqueued on the rank's stream, in place, without a host sync.

use super::communicator::Communicator;
use super::nccl_lib::{DataType, Nccl, RawComm, UniqueId};
use super::rendezvous::Rendezvous;
use crate::backend::cuda::tensor::CudaTensor;
use crate::backend::cuda::CudaBackend;
use crate::backend::DType;
use anyhow::{Context, Result};
use std::sync::{Arc, OnceLock};

/// What the ranks of one group share.
struct NcclGroup {
    nccl: Nccl,
    id: UniqueId,
    meeting: Rendezvous,
}

/// One rank's handle.
pub struct NcclAllReduce {
    group: Arc<NcclGroup>,
    rank: usize,
    world: usize,
    comm: OnceLock<CommHandle>,
}

/// A joined communicator; aborted (not destroyed: peers may be gone) when dropped.
struct CommHandle {
    raw: RawComm,
    group: Arc<NcclGroup>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; kiln calls it only from its rank's worker (the communicator is owned there).
unsafe impl Send for CommHandle {}
unsafe impl Sync for CommHandle {}

impl Drop for CommHandle {
    fn drop(&mut self) {
        // SAFETY: the handle owns `raw`; nothing uses it after the drop.
        unsafe { self.group.nccl.abort(self.raw) };
    }
}

impl NcclAllReduce {
    /// One communicator per rank of a new group of `world`; `nccl` must have opened.
    pub fn group(nccl: Nccl, world: usize) -> Result<Vec<NcclAllReduce>> {
        let id = nccl.unique_id()?;
        let group = Arc::new(NcclGroup {
            nccl,
            id,
            meeting: Rendezvous::new(world),
        });
        Ok((0..world)
            .map(|rank| NcclAllReduce {
                group: group.clone(),
                rank,
                world,
                comm: OnceLock::new(),
            })
            .collect())
    }

    fn joined(&self, be: &CudaBackend) -> Result<RawComm> {
        if let Some(comm) = self.comm.get() {
            return Ok(comm.raw);
        }
        // ncclCommInitRank binds to the current device: make it this rank's.
        be.device()
            .context()
            .bind_to_thread()
            .context("binding the rank's CUDA context before joining NCCL")?;
        let raw = self
            .group
            .nccl
            .init_rank(&self.group.id, self.world, self.rank)
            .with_context(|| format!("rank {} joining its NCCL group", self.rank))?;
        let handle = CommHandle {
            raw,
            group: self.group.clone(),
        };
        Ok(self.comm.get_or_init(|| handle).raw)
    }

    fn reduce(&self, be: &CudaBackend, x: &CudaTensor) -> Result<()> {
        self.group.meeting.wait(self.rank)?;
        let comm = self.joined(be)?;
        let dtype = match x.dtype() {
            DType::F32 => DataType::Float32,
            DType::F16 => DataType::Float16,
            DType::BF16 => DataType::Bfloat16,
        };
        let stream = be.device().stream().cu_stream() as *mut std::ffi::c_void;
        // SAFETY: `x` holds numel elements of its dtype on this rank's device, and the
        // stream is the rank's own, on which `x` was written.
        unsafe {
            self.group.nccl.all_reduce_sum_in_place(
                be.device_address(x),
                x.numel(),
                dtype,
                comm,
                stream,
            )
        }
    }
}

impl Communicator<CudaBackend> for NcclAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, be: &CudaBackend, x: CudaTensor) -> Result<CudaTensor> {
        match self.reduce(be, &x) {
            Ok(()) => Ok(x),
            Err(e) => {
                self.group
                    .meeting
                    .abort(&format!("rank {}: {e:#}", self.rank));
                Err(e)
            }
        }
    }

    fn abort(&self, reason: &str) {
        self.group.meeting.abort(reason);
    }
}
