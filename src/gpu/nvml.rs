//! NVML (libnvidia-ml.so.1), loaded at run time through `nvml-wrapper`: utilization,
//! memory, power, temperature, clocks and ECC counters of the GPUs kiln uses.
//!
//! NVML numbers GPUs its own way (it ignores `CUDA_VISIBLE_DEVICES`), so each CUDA device
//! is found by its PCI bus id; readings carry the CUDA ordinal. Without the library, or
//! when it cannot initialise, [`NvmlSource::open`] returns `None` and logs why once.

use super::detect::GpuDevice;
use super::reading::{GpuReading, ReadingSource};
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

/// The watched GPUs, each as its CUDA ordinal and NVML's index (or why it has none).
pub struct NvmlSource {
    nvml: Nvml,
    targets: Vec<Target>,
}

struct Target {
    cuda_index: usize,
    nvml_index: Result<u32, String>,
}

impl NvmlSource {
    /// Opens NVML for `devices` (whole GPUs; a MIG slice would read its parent's counters).
    /// `None`, logged, when NVML is missing or unusable; never panics.
    pub fn open(devices: &[GpuDevice]) -> Option<NvmlSource> {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => {
                tracing::info!("NVML unavailable ({e}): no GPU health readings");
                return None;
            }
        };
        let targets = devices
            .iter()
            .map(|d| Target {
                cuda_index: d.index,
                nvml_index: nvml_index(&nvml, d),
            })
            .collect();
        Some(NvmlSource { nvml, targets })
    }
}

/// NVML's index of a CUDA device: found by PCI bus id; the CUDA ordinal itself only when
/// the bus id is unknown (then `CUDA_VISIBLE_DEVICES` must not reorder GPUs).
fn nvml_index(nvml: &Nvml, device: &GpuDevice) -> Result<u32, String> {
    if device.pci_bus_id.is_empty() {
        return u32::try_from(device.index).map_err(|e| e.to_string());
    }
    nvml.device_by_pci_bus_id(device.pci_bus_id.as_str())
        .and_then(|d| d.index())
        .map_err(|e| describe(&e, &format!("finding PCI {} in NVML", device.pci_bus_id)))
}

impl ReadingSource for NvmlSource {
    fn read(&self) -> Vec<GpuReading> {
        self.targets
            .iter()
            .map(|t| match &t.nvml_index {
                Err(why) => GpuReading::fatal(t.cuda_index, why.clone()),
                Ok(i) => match self.nvml.device_by_index(*i) {
                    Ok(device) => read_device(t.cuda_index, &device),
                    Err(e) => GpuReading::fatal(t.cuda_index, describe(&e, "opening the GPU")),
                },
            })
            .collect()
    }
}

/// Every counter of one GPU. A fatal error from any query marks the whole reading fatal;
/// other errors (mostly "not supported") leave that field `None`.
fn read_device(index: usize, device: &Device<'_>) -> GpuReading {
    let mut first_fatal = FirstFatal(None);
    let utilization = first_fatal.keep(device.utilization_rates());
    let memory = first_fatal.keep(device.memory_info());
    let power_mw = first_fatal.keep(device.power_usage());
    let limit_mw = first_fatal.keep(device.enforced_power_limit());
    let temperature = first_fatal.keep(device.temperature(TemperatureSensor::Gpu));
    let sm_clock = first_fatal.keep(device.clock_info(Clock::SM));
    let ecc =
        first_fatal.keep(device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile));
    GpuReading {
        index,
        utilization_perc: utilization.map(|u| u.gpu),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        power_watts: power_mw.map(|mw| f64::from(mw) / 1000.0),
        power_limit_watts: limit_mw.map(|mw| f64::from(mw) / 1000.0),
        temperature_celsius: temperature,
        sm_clock_mhz: sm_clock,
        ecc_uncorrected_errors: ecc,
        fatal: first_fatal.0,
    }
}

/// The first fatal error met while reading one GPU.
struct FirstFatal(Option<String>);

impl FirstFatal {
    fn keep<T>(&mut self, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                if is_fatal(&e) && self.0.is_none() {
                    self.0 = Some(describe(&e, "reading the GPU"));
                }
                None
            }
        }
    }
}

/// Errors after which the GPU cannot run work until someone intervenes.
fn is_fatal(e: &NvmlError) -> bool {
    matches!(e, NvmlError::GpuLost | NvmlError::ResetRequired)
}

fn describe(e: &NvmlError, doing: &str) -> String {
    match e {
        NvmlError::GpuLost => "GPU is lost (fallen off the bus or stopped responding)".into(),
        NvmlError::ResetRequired => "GPU needs a reset".into(),
        other => format!("{doing}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_reset_are_fatal_other_errors_are_not() {
        assert!(is_fatal(&NvmlError::GpuLost));
        assert!(is_fatal(&NvmlError::ResetRequired));
        assert!(!is_fatal(&NvmlError::NotSupported));
        assert!(describe(&NvmlError::GpuLost, "x").contains("fallen off the bus"));
        assert!(describe(&NvmlError::NotSupported, "reading").starts_with("reading: "));
    }

    #[test]
    fn open_without_nvml_is_none_and_does_not_panic() {
        // This machine has no NVIDIA driver; on a GPU machine this only checks for no panic.
        let source = NvmlSource::open(&[]);
        if let Some(source) = source {
            assert!(source.read().is_empty());
        }
    }
}
