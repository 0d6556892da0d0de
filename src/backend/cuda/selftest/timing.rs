//! Device-side timing with CUDA events (created timing-enabled: the default flags of
//! cudarc disable timing, and elapsed time then fails with an invalid-handle error).

use crate::backend::cuda::CudaDevice;
use anyhow::{Context, Result};
use cudarc::driver::sys::CUevent_flags;

/// Mean microseconds per call of `f` over `iters` calls, after one warm-up call.
pub fn time_us(dev: &CudaDevice, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = dev
        .context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .context("creating a timing event")?;
    let end = dev
        .context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .context("creating a timing event")?;
    start
        .record(dev.stream())
        .context("recording the start event")?;
    for _ in 0..iters.max(1) {
        f()?;
    }
    end.record(dev.stream())
        .context("recording the end event")?;
    let ms = start.elapsed_ms(&end).context("reading event time")?;
    Ok(ms as f64 * 1000.0 / iters.max(1) as f64)
}
