//! A caching allocator: buffers freed by their owners go back to an idle list keyed by size
//! class and are handed out again, so a forward pass that repeats the previous one's shapes
//! (every decode step of a batch) asks the driver for nothing.
//!
//! Generic over [`RawAllocator`] so the bookkeeping is tested on the CPU with a fake
//! allocator; the CUDA backend plugs in a stream allocator ([`super::device_pools`]).
//!
//! Reuse is only safe because every user of a pool queues its work on one CUDA stream: a
//! buffer dropped while kernels that read it are still queued is handed to the next
//! allocation, whose writes are queued after those kernels on the same stream, so they
//! cannot overtake them. A pool must never serve two streams.

use anyhow::Result;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where a pool gets fresh buffers. `units` are elements of the buffer's type.
pub trait RawAllocator: Send + Sync {
    type Buffer: Send;
    /// Bytes of one unit (for the byte counters).
    const UNIT_BYTES: usize;
    /// A fresh buffer of exactly `units` units; its contents are undefined.
    fn allocate(&self, units: usize) -> Result<Self::Buffer>;
}

/// Counters of one pool (or the sum of several), since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Buffers the pool had to ask the allocator (the driver) for.
    pub driver_allocations: u64,
    pub driver_bytes: u64,
    /// Requests served from an idle buffer.
    pub reuses: u64,
    /// Buffers handed back to the driver to make room after an allocation failed.
    pub released: u64,
    /// Bytes held idle in the pool now.
    pub idle_bytes: u64,
}

impl PoolStats {
    /// Field-wise sum (the backend has one pool per element type).
    pub fn plus(self, o: PoolStats) -> PoolStats {
        PoolStats {
            driver_allocations: self.driver_allocations + o.driver_allocations,
            driver_bytes: self.driver_bytes + o.driver_bytes,
            reuses: self.reuses + o.reuses,
            released: self.released + o.released,
            idle_bytes: self.idle_bytes + o.idle_bytes,
        }
    }

    /// What happened between `earlier` and `self` (idle bytes: the current value).
    pub fn since(self, earlier: PoolStats) -> PoolStats {
        PoolStats {
            driver_allocations: self.driver_allocations - earlier.driver_allocations,
            driver_bytes: self.driver_bytes - earlier.driver_bytes,
            reuses: self.reuses - earlier.reuses,
            released: self.released - earlier.released,
            idle_bytes: self.idle_bytes,
        }
    }
}

/// The class a request of `units` is served from: at least `min_units`, then rounded up to
/// one of eight steps per power of two, so at most 1/8 of a buffer is slack and requests
/// that differ a little (a block table one block wider) share buffers.
pub fn size_class(units: usize, min_units: usize) -> usize {
    let n = units.max(min_units).max(1);
    if n <= 16 {
        return n;
    }
    let step = (1usize << (usize::BITS - 1 - n.leading_zeros())) / 8;
    n.div_ceil(step) * step
}

struct Idle<B> {
    by_class: HashMap<usize, Vec<B>>,
    stats: PoolStats,
}

/// Idle buffers by size class plus counters, behind one lock (the backend is `Sync`).
pub struct BufferPool<A: RawAllocator> {
    allocator: A,
    min_units: usize,
    idle: Mutex<Idle<A::Buffer>>,
    /// Never hand idle buffers back to the allocator: recorded CUDA graphs keep using the
    /// addresses of the buffers they were recorded with.
    kept: bool,
    /// Serve only idle buffers (while a graph is recorded, an allocation would be recorded
    /// into it instead of happening).
    frozen: AtomicBool,
}

impl<A: RawAllocator> BufferPool<A> {
    /// A pool whose classes are at least `min_units` (small buffers all share one class).
    pub fn new(allocator: A, min_units: usize) -> Arc<Self> {
        Self::with_policy(allocator, min_units, false)
    }

    /// A pool that never releases a buffer (see `kept`): for buffers recorded graphs use.
    pub fn kept(allocator: A, min_units: usize) -> Arc<Self> {
        Self::with_policy(allocator, min_units, true)
    }

    fn with_policy(allocator: A, min_units: usize, kept: bool) -> Arc<Self> {
        Arc::new(Self {
            allocator,
            min_units,
            idle: Mutex::new(Idle {
                by_class: HashMap::new(),
                stats: PoolStats::default(),
            }),
            kept,
            frozen: AtomicBool::new(false),
        })
    }

    /// While frozen, a request no idle buffer serves fails instead of allocating.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// A buffer of at least `units` units (exactly its size class), reused when one is
    /// idle. If the allocator fails, every idle buffer is released and it is asked once more.
    pub fn take(self: &Arc<Self>, units: usize) -> Result<Pooled<A>> {
        let class = size_class(units, self.min_units);
        let bytes = (class * A::UNIT_BYTES) as u64;
        {
            let mut idle = self.lock();
            if let Some(buffer) = idle.by_class.get_mut(&class).and_then(Vec::pop) {
                idle.stats.reuses += 1;
                idle.stats.idle_bytes -= bytes;
                return Ok(self.wrap(buffer, class));
            }
        }
        if self.frozen.load(Ordering::SeqCst) {
            anyhow::bail!(
                "no idle buffer of {} bytes in a frozen pool (recording a CUDA graph)",
                bytes
            );
        }
        let buffer = match self.allocator.allocate(class) {
            Ok(buffer) => buffer,
            Err(first) => {
                if self.release_idle() == 0 {
                    return Err(first);
                }
                self.allocator.allocate(class)?
            }
        };
        let mut idle = self.lock();
        idle.stats.driver_allocations += 1;
        idle.stats.driver_bytes += bytes;
        Ok(self.wrap(buffer, class))
    }

    /// Hands every idle buffer back to the allocator (dropping it); returns how many. A kept
    /// pool releases nothing.
    pub fn release_idle(&self) -> usize {
        if self.kept {
            return 0;
        }
        let drained: Vec<Vec<A::Buffer>> = {
            let mut idle = self.lock();
            idle.stats.idle_bytes = 0;
            let drained: Vec<_> = idle.by_class.drain().map(|(_, v)| v).collect();
            idle.stats.released += drained.iter().map(|v| v.len() as u64).sum::<u64>();
            drained
        };
        // Dropped outside the lock: freeing may call into the driver.
        drained.into_iter().map(|v| v.len()).sum()
    }

    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    fn wrap(self: &Arc<Self>, buffer: A::Buffer, class: usize) -> Pooled<A> {
        Pooled {
            buffer: Some(buffer),
            class,
            pool: Arc::clone(self),
        }
    }

    fn give_back(&self, buffer: A::Buffer, class: usize) {
        let mut idle = self.lock();
        idle.stats.idle_bytes += (class * A::UNIT_BYTES) as u64;
        idle.by_class.entry(class).or_default().push(buffer);
    }

    /// The counters stay usable even if a thread panicked while holding the lock.
    fn lock(&self) -> MutexGuard<'_, Idle<A::Buffer>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A buffer on loan from a [`BufferPool`]; dropping it returns it to the pool.
pub struct Pooled<A: RawAllocator> {
    buffer: Option<A::Buffer>,
    class: usize,
    pool: Arc<BufferPool<A>>,
}

impl<A: RawAllocator> Pooled<A> {
    /// Units the buffer really holds (its size class, at least what was asked for).
    pub fn capacity(&self) -> usize {
        self.class
    }
}

impl<A: RawAllocator> Deref for Pooled<A> {
    type Target = A::Buffer;
    fn deref(&self) -> &A::Buffer {
        self.buffer
            .as_ref()
            .expect("a pooled buffer is present until drop")
    }
}

impl<A: RawAllocator> DerefMut for Pooled<A> {
    fn deref_mut(&mut self) -> &mut A::Buffer {
        self.buffer
            .as_mut()
            .expect("a pooled buffer is present until drop")
    }
}

impl<A: RawAllocator> Drop for Pooled<A> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.give_back(buffer, self.class);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out numbered buffers; fails once `limit` buffers are alive.
    struct FakeAllocator {
        next_id: AtomicUsize,
        alive: Arc<AtomicUsize>,
        limit: usize,
    }

    struct FakeBuffer {
        id: usize,
        units: usize,
        alive: Arc<AtomicUsize>,
    }

    impl Drop for FakeBuffer {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl RawAllocator for FakeAllocator {
        type Buffer = FakeBuffer;
        const UNIT_BYTES: usize = 4;
        fn allocate(&self, units: usize) -> Result<FakeBuffer> {
            if self.alive.load(Ordering::SeqCst) >= self.limit {
                anyhow::bail!("out of fake memory");
            }
            self.alive.fetch_add(1, Ordering::SeqCst);
            Ok(FakeBuffer {
                id: self.next_id.fetch_add(1, Ordering::SeqCst),
                units,
                alive: self.alive.clone(),
            })
        }
    }

    fn pool(limit: usize) -> (Arc<BufferPool<FakeAllocator>>, Arc<AtomicUsize>) {
        let alive = Arc::new(AtomicUsize::new(0));
        let allocator = FakeAllocator {
            next_id: AtomicUsize::new(0),
            alive: alive.clone(),
            limit,
        };
        (BufferPool::new(allocator, 1), alive)
    }

    #[test]
    fn size_classes_round_up_by_at_most_an_eighth() {
        assert_eq!(size_class(0, 1), 1);
        assert_eq!(size_class(5, 1), 5);
        assert_eq!(size_class(5, 1024), 1024);
        assert_eq!(size_class(1025, 1024), 1152);
        assert_eq!(size_class(4096, 1), 4096);
        assert_eq!(size_class(4097, 1), 4608);
        for n in [17, 100, 1000, 12_345, 1 << 20, (1 << 30) + 1] {
            let c = size_class(n, 1);
            assert!(c >= n && c - n <= n / 8 + 1, "{n} -> {c}");
            assert_eq!(size_class(c, 1), c, "a class is its own class");
        }
    }

    /// The shape of a decode step: the same few sizes, allocated and dropped each step.
    fn step(pool: &Arc<BufferPool<FakeAllocator>>) -> Vec<usize> {
        let a = pool.take(4096).unwrap();
        let b = pool.take(4096).unwrap();
        let ids = vec![a.id, b.id];
        drop(a);
        let c = pool.take(14336).unwrap();
        let d = pool.take(4000).unwrap(); // rounds up to the 4096 class: reuses a
        assert_eq!(d.capacity(), 4096);
        assert_eq!(c.units, size_class(14336, 1));
        ids
    }

    #[test]
    fn repeated_steps_reuse_every_buffer() {
        let (pool, alive) = pool(100);
        step(&pool);
        let after_first = pool.stats();
        assert_eq!(after_first.driver_allocations, 3, "a, b, c; d reuses a");
        assert_eq!(after_first.reuses, 1);
        for _ in 0..5 {
            step(&pool);
        }
        let later = pool.stats().since(after_first);
        assert_eq!(later.driver_allocations, 0);
        assert_eq!(later.reuses, 5 * 4);
        assert_eq!(alive.load(Ordering::SeqCst), 3);
        let all_idle = (2 * 4096 + size_class(14336, 1)) as u64 * 4;
        assert_eq!(pool.stats().idle_bytes, all_idle);
    }

    #[test]
    fn a_buffer_in_use_is_never_handed_out_twice() {
        let (pool, _) = pool(100);
        let a = pool.take(64).unwrap();
        let b = pool.take(64).unwrap();
        assert_ne!(a.id, b.id);
        let a_id = a.id;
        drop(a);
        let c = pool.take(62).unwrap(); // rounds up to the 64 class
        assert_eq!(c.id, a_id, "the idle buffer of the same class comes back");
        let d = pool.take(64).unwrap();
        assert!(d.id != a_id && d.id != b.id);
    }

    #[test]
    fn different_classes_do_not_mix() {
        let (pool, _) = pool(100);
        drop(pool.take(64).unwrap());
        let big = pool.take(128).unwrap();
        assert_eq!(big.units, 128);
        assert_eq!(pool.stats().driver_allocations, 2);
        assert_eq!(pool.stats().reuses, 0);
    }

    #[test]
    fn allocation_failure_releases_idle_buffers_and_retries() {
        let (pool, alive) = pool(2);
        drop(pool.take(64).unwrap());
        drop(pool.take(128).unwrap());
        assert_eq!(
            alive.load(Ordering::SeqCst),
            2,
            "both idle, still allocated"
        );
        let c = pool.take(256).unwrap();
        assert_eq!(c.units, 256);
        let s = pool.stats();
        assert_eq!(s.released, 2);
        assert_eq!(s.idle_bytes, 0);
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        // Nothing idle left to release: the failure is reported.
        let _d = pool.take(256).unwrap();
        let err = pool
            .take(256)
            .err()
            .expect("third live buffer exceeds the limit");
        assert!(err.to_string().contains("out of fake memory"), "{err}");
    }

    #[test]
    fn stats_add_and_subtract() {
        let a = PoolStats {
            driver_allocations: 3,
            driver_bytes: 30,
            reuses: 7,
            released: 1,
            idle_bytes: 10,
        };
        let sum = a.plus(a);
        assert_eq!(sum.reuses, 14);
        assert_eq!(sum.since(a).driver_allocations, 3);
        assert_eq!(sum.since(a).idle_bytes, 20);
    }

    #[test]
    fn a_frozen_pool_serves_idle_buffers_and_refuses_to_allocate() {
        let (pool, alive) = pool(8);
        drop(pool.take(100).unwrap());
        pool.set_frozen(true);
        let reused = pool.take(100).unwrap();
        assert_eq!(reused.units, size_class(100, 1));
        let err = pool.take(5000).err().expect("no idle buffer of that class");
        assert!(err.to_string().contains("frozen"), "{err}");
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        pool.set_frozen(false);
        assert!(pool.take(5000).is_ok());
    }

    #[test]
    fn a_kept_pool_never_releases_its_buffers() {
        let alive = Arc::new(AtomicUsize::new(0));
        let allocator = FakeAllocator {
            next_id: AtomicUsize::new(0),
            alive: alive.clone(),
            limit: 1,
        };
        let pool = BufferPool::kept(allocator, 1);
        drop(pool.take(64).unwrap());
        assert_eq!(pool.release_idle(), 0);
        // Out of memory for another class: the idle buffer stays, the request fails.
        assert!(pool.take(4096).is_err());
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats().released, 0);
    }
}
