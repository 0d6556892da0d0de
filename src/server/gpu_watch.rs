//! Watching the GPUs the server runs on: NVML readings go to `/metrics` every few seconds,
//! and a GPU that fails (lost, needs a reset, new uncorrectable ECC errors) turns
//! `/health` to 503 for good. On the CPU, or without NVML, nothing is watched.

use super::state::{AppState, SharedState};
use crate::backend::cuda::CudaUnavailable;
use crate::gpu::monitor::{GpuMonitor, Poll};
use crate::gpu::nvml::NvmlSource;
use crate::gpu::Inventory;
use crate::launch::DeviceArg;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the GPUs are read: often enough for dashboards, rare enough to cost nothing.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The CUDA ordinals `--device` runs on, decided as the loader will (empty on the CPU),
/// without logging: the loader reports the device choice itself.
pub fn serving_gpus(
    device: DeviceArg,
    gpu_count: impl FnOnce() -> Result<usize, CudaUnavailable>,
) -> Vec<usize> {
    match device {
        DeviceArg::Cpu => vec![],
        DeviceArg::Cuda(ordinal) => vec![ordinal],
        DeviceArg::Auto => match gpu_count() {
            Ok(n) if n > 0 => vec![0],
            _ => vec![],
        },
    }
}

/// Opens NVML for the given GPUs (blocking: asks the CUDA driver for their PCI ids) and
/// takes the startup readings, which it logs. `None` when there is nothing to watch.
pub fn open_monitor(ordinals: &[usize]) -> Option<GpuMonitor> {
    if ordinals.is_empty() {
        return None;
    }
    let devices: Vec<_> = Inventory::detect()
        .devices
        .into_iter()
        .filter(|d| ordinals.contains(&d.index))
        .collect();
    if devices.is_empty() {
        return None;
    }
    let source = NvmlSource::open(&devices)?;
    Some(GpuMonitor::start(Box::new(source)))
}

/// Publishes one look at the GPUs: the gauges, and the first fault (logged once).
pub fn apply(state: &AppState, poll: &Poll) {
    state.metrics.gpu.update(&poll.readings);
    if let Some(why) = &poll.fault {
        if state.set_gpu_fault(why.clone()) {
            tracing::error!("GPU failure: {why}; /health now answers 503");
        }
    }
}

/// Starts watching the GPUs `device` runs on, in the background; returns at once.
pub fn start(state: SharedState, device: DeviceArg) -> JoinHandle<()> {
    tokio::spawn(async move {
        let opened = tokio::task::spawn_blocking(move || {
            open_monitor(&serving_gpus(device, crate::backend::cuda::device_count))
        })
        .await;
        match opened {
            Ok(Some(monitor)) => watch(state, monitor, POLL_INTERVAL).await,
            Ok(None) => {}
            Err(e) => tracing::warn!("opening NVML failed ({e}): no GPU health readings"),
        }
    })
}

/// Polls `monitor` every `every` until the task is dropped.
pub async fn watch(state: SharedState, mut monitor: GpuMonitor, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // NVML calls block (milliseconds, longer on a failing GPU): keep them off the
        // threads that answer requests.
        let polled = tokio::task::spawn_blocking(move || {
            let poll = monitor.poll();
            (monitor, poll)
        })
        .await;
        match polled {
            Ok((back, poll)) => {
                apply(&state, &poll);
                monitor = back;
            }
            Err(e) => {
                tracing::warn!("reading the GPUs failed ({e}); no more GPU health readings");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::monitor::fake::ScriptedReadings;
    use crate::gpu::GpuReading;

    fn reading(index: usize, ecc: u64) -> GpuReading {
        GpuReading {
            index,
            temperature_celsius: Some(55),
            ecc_uncorrected_errors: Some(ecc),
            ..Default::default()
        }
    }

    #[test]
    fn the_device_flag_decides_which_gpus_are_watched() {
        let none = || Err(CudaUnavailable::NoDriver);
        assert_eq!(serving_gpus(DeviceArg::Cpu, || Ok(8)), Vec::<usize>::new());
        assert_eq!(serving_gpus(DeviceArg::Auto, none), Vec::<usize>::new());
        assert_eq!(serving_gpus(DeviceArg::Auto, || Ok(0)), Vec::<usize>::new());
        assert_eq!(serving_gpus(DeviceArg::Auto, || Ok(2)), vec![0]);
        assert_eq!(serving_gpus(DeviceArg::Cuda(3), none), vec![3]);
    }

    #[test]
    fn readings_reach_metrics_and_a_fault_turns_health_off() {
        let state = AppState::new(None);
        let monitor = GpuMonitor::start(ScriptedReadings::new(vec![
            vec![reading(0, 0)],
            vec![reading(0, 0)],
            vec![reading(0, 1)],
            vec![reading(0, 1)],
        ]));
        apply(&state, &monitor.poll());
        let text = state.metrics.render(None, &[]);
        assert!(
            text.contains("kiln:gpu_temperature_celsius{gpu=\"0\"} 55"),
            "{text}"
        );
        assert_eq!(state.gpu_fault(), None);
        apply(&state, &monitor.poll());
        let fault = state.gpu_fault().unwrap().to_string();
        assert!(fault.contains("GPU 0") && fault.contains("ECC"), "{fault}");
        let refused = state
            .ready()
            .err()
            .expect("a GPU fault makes the server unready");
        assert!(refused.message.contains("GPU 0"), "{}", refused.message);
        // The first fault is the one kept.
        apply(&state, &monitor.poll());
        assert_eq!(state.gpu_fault(), Some(fault.as_str()));
    }

    #[test]
    fn without_a_gpu_nothing_is_watched_and_nothing_exported() {
        // This machine has no GPU; with `--device cpu` no driver is asked anywhere.
        assert!(open_monitor(&serving_gpus(DeviceArg::Cpu, || Ok(1))).is_none());
        if crate::backend::cuda::device_count().is_err() {
            assert!(open_monitor(&serving_gpus(
                DeviceArg::Auto,
                crate::backend::cuda::device_count
            ))
            .is_none());
        }
        let state = AppState::new(None);
        assert!(!state.metrics.render(None, &[]).contains("kiln:gpu_"));
    }

    #[tokio::test]
    async fn start_on_the_cpu_ends_quietly() {
        let state = std::sync::Arc::new(AppState::new(None));
        start(state.clone(), DeviceArg::Cpu).await.unwrap();
        assert_eq!(state.gpu_fault(), None);
    }
}
