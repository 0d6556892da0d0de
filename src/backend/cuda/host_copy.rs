//! Copies between host and device memory are never part of a recorded step.
//!
//! A CUDA graph captures a copy as a node that re-reads (or re-writes) the same host address
//! at every replay: the values the host computed while recording, in memory that is long
//! freed by then. A step whose forward pass needs the host (routing a mixture of experts
//! there, say) must therefore fail its recording and run eagerly. The driver does not
//! refuse such copies by itself (a pageable copy was captured without an error on an H200,
//! and replays then corrupted the heap), so every copy checks first.

use anyhow::{bail, Context, Result};
use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::CudaStream;

/// An error when `stream` is recording a CUDA graph: `what` (a host copy) cannot be recorded.
pub fn refuse_while_recording(stream: &CudaStream, what: &str) -> Result<()> {
    let status = stream
        .capture_status()
        .context("asking whether the stream is recording")?;
    if status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
        bail!("{what} while the stream records a CUDA graph: a recording cannot hold it");
    }
    Ok(())
}
