//! The collective a tensor-parallel rank needs: a sum over all ranks of a tensor of the
//! same shape on each (after the row-parallel O and down projections, and after the
//! vocabulary-parallel embedding).

use crate::backend::Backend;
use anyhow::Result;

/// One rank's handle on its group. Every rank must call [`Communicator::all_reduce_sum`]
/// the same number of times, in the same order, with tensors of the same shape.
pub trait Communicator<B: Backend>: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The element-wise sum of `x` over all ranks, in `x`'s dtype; every rank gets the same
    /// values.
    fn all_reduce_sum(&self, be: &B, x: B::Tensor) -> Result<B::Tensor>;
    /// Tells the other ranks this one has failed, so none of them waits for it forever.
    fn abort(&self, reason: &str);
}

/// The group of one: every collective is the identity.
pub struct SingleRank;

impl<B: Backend> Communicator<B> for SingleRank {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _be: &B, x: B::Tensor) -> Result<B::Tensor> {
        Ok(x)
    }

    fn abort(&self, _reason: &str) {}
}
