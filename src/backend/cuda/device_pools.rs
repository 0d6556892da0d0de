//! The CUDA backend's caching allocator: one [`BufferPool`] per element type (tensor bytes,
//! i32 batch metadata, u32 token ids), all allocating on the device's one stream, so the
//! stream-ordering argument of [`super::pool`] holds.

use super::pool::{BufferPool, PoolStats, Pooled, RawAllocator};
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use std::marker::PhantomData;
use std::sync::Arc;

/// Uninitialised stream-ordered allocations of `T` (cuMemAllocAsync).
pub struct StreamAllocator<T> {
    stream: Arc<CudaStream>,
    marker: PhantomData<fn() -> T>,
}

impl<T: DeviceRepr + Send> RawAllocator for StreamAllocator<T> {
    type Buffer = CudaSlice<T>;
    const UNIT_BYTES: usize = std::mem::size_of::<T>();

    fn allocate(&self, units: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the contents are undefined until written; every pooled buffer is fully
        // written (a kernel output or an upload) before anything reads it, or zeroed first.
        unsafe { self.stream.alloc::<T>(units) }.with_context(|| {
            format!(
                "allocating {} bytes of GPU memory (out of memory?)",
                units * Self::UNIT_BYTES
            )
        })
    }
}

pub type DeviceBytes = Pooled<StreamAllocator<u8>>;
pub type DeviceI32 = Pooled<StreamAllocator<i32>>;
pub type DeviceU32 = Pooled<StreamAllocator<u32>>;

/// Small buffers share one class: 4 KiB of ids or metadata, so a block table that grows by
/// a block as contexts grow does not need a new buffer every 16 tokens.
const MIN_INDEX_UNITS: usize = 1024;
/// Tensors of under 512 bytes share one class.
const MIN_TENSOR_BYTES: usize = 512;

/// The pools of one device, owned by its backend (and kept alive by the buffers on loan).
pub struct DevicePools {
    stream: Arc<CudaStream>,
    bytes: Arc<BufferPool<StreamAllocator<u8>>>,
    i32s: Arc<BufferPool<StreamAllocator<i32>>>,
    u32s: Arc<BufferPool<StreamAllocator<u32>>>,
}

fn allocator<T>(stream: &Arc<CudaStream>) -> StreamAllocator<T> {
    StreamAllocator {
        stream: stream.clone(),
        marker: PhantomData,
    }
}

impl DevicePools {
    pub fn new(stream: &Arc<CudaStream>) -> Self {
        Self {
            stream: stream.clone(),
            bytes: BufferPool::new(allocator(stream), MIN_TENSOR_BYTES),
            i32s: BufferPool::new(allocator(stream), MIN_INDEX_UNITS),
            u32s: BufferPool::new(allocator(stream), MIN_INDEX_UNITS),
        }
    }

    /// Pools that never release a buffer, for the buffers recorded CUDA graphs use
    /// ([`super::decode_graphs`]).
    pub fn kept(stream: &Arc<CudaStream>) -> Self {
        Self {
            stream: stream.clone(),
            bytes: BufferPool::kept(allocator(stream), MIN_TENSOR_BYTES),
            i32s: BufferPool::kept(allocator(stream), MIN_INDEX_UNITS),
            u32s: BufferPool::kept(allocator(stream), MIN_INDEX_UNITS),
        }
    }

    /// While frozen, only idle buffers are handed out (see [`BufferPool::set_frozen`]).
    pub fn set_frozen(&self, frozen: bool) {
        self.bytes.set_frozen(frozen);
        self.i32s.set_frozen(frozen);
        self.u32s.set_frozen(frozen);
    }

    /// At least `units` u32 values, contents undefined (for outputs a kernel overwrites).
    pub fn u32_buffer(&self, units: usize) -> Result<DeviceU32> {
        self.u32s.take(units)
    }

    /// At least `bytes` bytes, contents undefined (for outputs a kernel overwrites in full).
    pub fn bytes(&self, bytes: usize) -> Result<DeviceBytes> {
        self.bytes.take(bytes)
    }

    /// At least `bytes` bytes, all zero (for outputs a kernel accumulates into or leaves
    /// partly unwritten).
    pub fn zeroed_bytes(&self, bytes: usize) -> Result<DeviceBytes> {
        let mut buffer = self.bytes.take(bytes)?;
        self.stream
            .memset_zeros(&mut *buffer)
            .context("zeroing a GPU buffer")?;
        Ok(buffer)
    }

    /// Overwrites the start of `buffer` with `values` (queued on the stream).
    pub fn copy_into_i32(&self, values: &[i32], buffer: &mut DeviceI32) -> Result<()> {
        copy_into(&self.stream, values, buffer)
    }

    pub fn copy_into_u32(&self, values: &[u32], buffer: &mut DeviceU32) -> Result<()> {
        copy_into(&self.stream, values, buffer)
    }

    /// A copy of `values` in a pooled buffer (whose capacity may be larger: pass lengths
    /// to kernels explicitly, never the buffer's).
    pub fn upload_i32(&self, values: &[i32]) -> Result<DeviceI32> {
        upload(&self.stream, &self.i32s, values)
    }

    pub fn upload_u32(&self, values: &[u32]) -> Result<DeviceU32> {
        upload(&self.stream, &self.u32s, values)
    }

    /// Counters summed over the pools.
    pub fn stats(&self) -> PoolStats {
        self.bytes
            .stats()
            .plus(self.i32s.stats())
            .plus(self.u32s.stats())
    }
}

fn upload<T: DeviceRepr + Send>(
    stream: &Arc<CudaStream>,
    pool: &Arc<BufferPool<StreamAllocator<T>>>,
    values: &[T],
) -> Result<Pooled<StreamAllocator<T>>> {
    let mut buffer = pool.take(values.len())?;
    copy_into(stream, values, &mut buffer)?;
    Ok(buffer)
}

fn copy_into<T: DeviceRepr + Send>(
    stream: &Arc<CudaStream>,
    values: &[T],
    buffer: &mut Pooled<StreamAllocator<T>>,
) -> Result<()> {
    // The capacity is at least the request (memcpy_htod asserts it; keep that an error).
    anyhow::ensure!(
        buffer.len() >= values.len(),
        "pooled buffer of {} for {} values",
        buffer.len(),
        values.len()
    );
    if !values.is_empty() {
        super::host_copy::refuse_while_recording(stream, "a host-to-device copy")?;
        let mut head = buffer.slice_mut(0..values.len());
        stream
            .memcpy_htod(values, &mut head)
            .context("host-to-device copy")?;
    }
    Ok(())
}
