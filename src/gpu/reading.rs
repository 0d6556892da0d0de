//! One snapshot of a GPU's health counters, and where snapshots come from.
//!
//! The readings are plain data so that everything built on them (metrics, `/health`, the
//! `kiln gpus` table) is tested with synthetic values; only [`super::nvml`] talks to NVML.

use serde::{Deserialize, Serialize};

/// What NVML says about one GPU at one moment. A field is `None` when the GPU does not
/// support it (ECC on most consumer boards, power on some) or the query failed for a
/// reason other than a fatal one: an unsupported counter is not reported as 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuReading {
    /// The CUDA device ordinal (the `index` of [`super::GpuDevice`]), not NVML's own.
    pub index: usize,
    /// Percent of the last sample period in which a kernel was running.
    pub utilization_perc: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub temperature_celsius: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    /// Uncorrected ECC errors since the driver loaded (NVML's volatile counter).
    pub ecc_uncorrected_errors: Option<u64>,
    /// Why the GPU can no longer be used (fallen off the bus, needs a reset), if it can't.
    pub fatal: Option<String>,
}

impl GpuReading {
    /// A reading that says only that the GPU is unusable.
    pub fn fatal(index: usize, why: impl Into<String>) -> Self {
        GpuReading {
            index,
            fatal: Some(why.into()),
            ..Default::default()
        }
    }

    /// One line for logs: the fields that are known.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(why) = &self.fatal {
            parts.push(format!("FATAL: {why}"));
        }
        if let Some(u) = self.utilization_perc {
            parts.push(format!("util {u}%"));
        }
        if let (Some(used), Some(total)) = (self.memory_used_bytes, self.memory_total_bytes) {
            parts.push(format!("memory {} / {} MiB", used >> 20, total >> 20));
        }
        match (self.power_watts, self.power_limit_watts) {
            (Some(p), Some(l)) => parts.push(format!("power {p:.0} / {l:.0} W")),
            (Some(p), None) => parts.push(format!("power {p:.0} W")),
            _ => {}
        }
        if let Some(t) = self.temperature_celsius {
            parts.push(format!("{t} C"));
        }
        if let Some(c) = self.sm_clock_mhz {
            parts.push(format!("SM clock {c} MHz"));
        }
        if let Some(e) = self.ecc_uncorrected_errors {
            parts.push(format!("uncorrected ECC {e}"));
        }
        if parts.is_empty() {
            return "no readings".into();
        }
        parts.join(", ")
    }
}

/// Where readings come from: NVML on a real machine, a fixed list in tests.
pub trait ReadingSource: Send {
    /// One reading per watched GPU, in a stable order. Never fails: a GPU that cannot be
    /// read at all comes back with `fatal` set or with its fields `None`.
    fn read(&self) -> Vec<GpuReading>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_known_fields_only() {
        let reading = GpuReading {
            index: 0,
            utilization_perc: Some(37),
            memory_used_bytes: Some(2 << 30),
            memory_total_bytes: Some(80 << 30),
            power_watts: Some(312.4),
            ..Default::default()
        };
        assert_eq!(
            reading.summary(),
            "util 37%, memory 2048 / 81920 MiB, power 312 W"
        );
        assert_eq!(GpuReading::default().summary(), "no readings");
        assert!(GpuReading::fatal(3, "GPU is lost")
            .summary()
            .starts_with("FATAL: GPU is lost"));
    }
}
