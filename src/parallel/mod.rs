//! Tensor parallelism inside one process: a model's weights split across `world` ranks
//! (Megatron-style), each rank a worker thread with its own backend, shard and KV cache,
//! all driven in lock-step by the one scheduler.
//!
//! - [`shard`]: which heads, MLP columns and vocabulary rows a rank owns.
//! - [`communicator`]: the all-reduce the ranks meet in, twice per layer.
//! - [`host_group`]: an all-reduce through host memory, for any backend and any placement
//!   of ranks (CPU threads, GPUs without peer access).
//! - [`device_group`]: kiln's own GPU all-reduce, each rank summing the others' partials
//!   in place on its GPU (ranks sharing a GPU, GPUs with peer access; see [`peer_access`]).
//! - [`nccl_group`]: NCCL's all-reduce, for ranks on distinct GPUs, with the library
//!   opened at run time ([`nccl_lib`]).
//! - [`tp_runner`]: the [`crate::engine::runner::Runner`] that fans a step out to the ranks
//!   and gathers their vocabulary slices of the logits.

pub mod communicator;
pub mod device_group;
pub mod host_group;
pub mod nccl_group;
pub mod nccl_lib;
pub mod peer_access;
pub mod rendezvous;
pub mod shard;
pub mod tp_runner;

pub use communicator::{Communicator, SingleRank};

/// Locks `m`, also after a rank panicked while holding it: every update under the group
/// locks completes before anything can panic, so the data is consistent either way.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub use shard::{Shard, ShardLayout};
