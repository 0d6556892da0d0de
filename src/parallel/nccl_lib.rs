//! NCCL, opened at run time: the handful of entry points kiln's all-reduce needs, resolved
//! from `libnccl.so.2` (the runtime package's name; `libnccl.so` as a fallback).
//!
//! Why not cudarc's NCCL module: its loader looks for `libnccl.so` and names derived from
//! the CUDA version, not `libnccl.so.2`, which is all a runtime-only install (the NVIDIA
//! container images, the PyPI wheel) has; and it panics when a symbol is missing. Here a
//! missing library or symbol is an error that says which, and the caller falls back to
//! kiln's own all-reduce.

use anyhow::{bail, Context, Result};
use std::ffi::{c_char, c_int, c_void, CStr};

/// Library names tried in order.
const LIBRARY_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// NCCL's opaque communicator handle.
pub type RawComm = *mut c_void;

/// `ncclUniqueId`: 128 opaque bytes that every rank of a group passes to init.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    pub internal: [c_char; 128],
}

/// `ncclDataType_t` values kiln sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum DataType {
    Float16 = 6,
    Float32 = 7,
    Bfloat16 = 9,
}

/// `ncclSum` (`ncclRedOp_t` 0).
const SUM: c_int = 0;
/// `ncclSuccess`.
const SUCCESS: c_int = 0;

type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> c_int;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    RawComm,
    *mut c_void,
) -> c_int;
type CommAbort = unsafe extern "C" fn(RawComm) -> c_int;
type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;

/// The opened library and its entry points.
pub struct Nccl {
    get_version: GetVersion,
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    comm_abort: CommAbort,
    get_error_string: GetErrorString,
    /// Keeps the code behind the function pointers mapped.
    _library: libloading::Library,
}

impl Nccl {
    /// Opens NCCL, or says why it cannot (not installed, or missing an entry point).
    pub fn open() -> Result<Nccl> {
        let mut failures = Vec::new();
        for name in LIBRARY_NAMES {
            // SAFETY: loading NCCL runs only its (side-effect free) library constructors.
            match unsafe { libloading::Library::new(name) } {
                Ok(library) => return Self::resolve(library, name),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        bail!("NCCL is not installed ({})", failures.join("; "))
    }

    fn resolve(library: libloading::Library, name: &str) -> Result<Nccl> {
        // SAFETY: each symbol is looked up with the signature nccl.h declares for it.
        unsafe {
            let get_version = *library
                .get::<GetVersion>(b"ncclGetVersion\0")
                .with_context(|| format!("{name} has no ncclGetVersion"))?;
            let get_unique_id = *library
                .get::<GetUniqueId>(b"ncclGetUniqueId\0")
                .with_context(|| format!("{name} has no ncclGetUniqueId"))?;
            let comm_init_rank = *library
                .get::<CommInitRank>(b"ncclCommInitRank\0")
                .with_context(|| format!("{name} has no ncclCommInitRank"))?;
            let all_reduce = *library
                .get::<AllReduce>(b"ncclAllReduce\0")
                .with_context(|| format!("{name} has no ncclAllReduce"))?;
            let comm_abort = *library
                .get::<CommAbort>(b"ncclCommAbort\0")
                .with_context(|| format!("{name} has no ncclCommAbort"))?;
            let get_error_string = *library
                .get::<GetErrorString>(b"ncclGetErrorString\0")
                .with_context(|| format!("{name} has no ncclGetErrorString"))?;
            Ok(Nccl {
                get_version,
                get_unique_id,
                comm_init_rank,
                all_reduce,
                comm_abort,
                get_error_string,
                _library: library,
            })
        }
    }

    fn check(&self, code: c_int, what: &str) -> Result<()> {
        if code == SUCCESS {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static string for any code.
        let text = unsafe { CStr::from_ptr((self.get_error_string)(code)) };
        bail!(
            "{what} failed: {} (NCCL error {code})",
            text.to_string_lossy()
        )
    }

    /// The library's version as `major.minor.patch`.
    pub fn version(&self) -> Result<String> {
        let mut code: c_int = 0;
        // SAFETY: writes one int.
        self.check(unsafe { (self.get_version)(&mut code) }, "ncclGetVersion")?;
        // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
        Ok(format!(
            "{}.{}.{}",
            code / 10000,
            code / 100 % 100,
            code % 100
        ))
    }

    /// A fresh group identity (made by one rank, shared with all).
    pub fn unique_id(&self) -> Result<UniqueId> {
        let mut id = UniqueId { internal: [0; 128] };
        // SAFETY: writes the 128-byte id.
        self.check(unsafe { (self.get_unique_id)(&mut id) }, "ncclGetUniqueId")?;
        Ok(id)
    }

    /// Joins group `id` as `rank` of `world` on the CUDA device current on this thread.
    /// Blocks until every rank has joined.
    pub fn init_rank(&self, id: &UniqueId, world: usize, rank: usize) -> Result<RawComm> {
        let mut comm: RawComm = std::ptr::null_mut();
        // SAFETY: `comm` receives the handle; the id is passed by value as nccl.h declares.
        let code = unsafe { (self.comm_init_rank)(&mut comm, world as c_int, *id, rank as c_int) };
        self.check(code, "ncclCommInitRank")?;
        Ok(comm)
    }

    /// Enqueues an in-place sum of `count` elements at device address `buffer` on `stream`.
    ///
    /// # Safety
    /// `buffer` must hold `count` elements of `dtype` on the communicator's device, and
    /// `stream` must be a live stream of that device.
    pub unsafe fn all_reduce_sum_in_place(
        &self,
        buffer: u64,
        count: usize,
        dtype: DataType,
        comm: RawComm,
        stream: *mut c_void,
    ) -> Result<()> {
        let ptr = buffer as *mut c_void;
        let code = (self.all_reduce)(ptr, ptr, count, dtype as c_int, SUM, comm, stream);
        self.check(code, "ncclAllReduce")
    }

    /// Tears a communicator down without waiting for its peers (they may be gone).
    ///
    /// # Safety
    /// `comm` must come from [`Nccl::init_rank`] and not be used after this call.
    pub unsafe fn abort(&self, comm: RawComm) {
        let code = (self.comm_abort)(comm);
        if let Err(e) = self.check(code, "ncclCommAbort") {
            tracing::warn!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With KILN_REQUIRE_NCCL=1 (CI installs the NCCL wheel from PyPI) the library must open,
    /// every entry point resolve, and the two calls that need no GPU work.
    #[test]
    fn nccl_opens_where_installed_and_says_why_not_elsewhere() {
        match Nccl::open() {
            Ok(nccl) => {
                let version = nccl.version().unwrap();
                let major: u32 = version.split('.').next().unwrap().parse().unwrap();
                assert_eq!(major, 2, "{version}");
                let a = nccl.unique_id().unwrap();
                let b = nccl.unique_id().unwrap();
                assert!(a.internal.iter().any(|&c| c != 0));
                assert_ne!(a.internal, b.internal, "two groups got the same id");
            }
            Err(e) => {
                assert!(
                    std::env::var_os("KILN_REQUIRE_NCCL").is_none(),
                    "KILN_REQUIRE_NCCL is set but NCCL did not open: {e:#}"
                );
                assert!(format!("{e:#}").contains("libnccl.so.2"), "{e:#}");
            }
        }
    }
}
