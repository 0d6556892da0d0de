//! Per-GPU Prometheus gauges (`kiln:gpu_*`, label `gpu` = CUDA ordinal), registered in the
//! server's own registry. A gauge is set only for the fields a reading has, so a machine
//! without NVML (or a GPU without ECC) exports nothing rather than zeros.

use super::reading::GpuReading;
use prometheus::{GaugeVec, Opts, Registry};

pub struct GpuGauges {
    utilization: GaugeVec,
    memory_used: GaugeVec,
    memory_total: GaugeVec,
    power: GaugeVec,
    power_limit: GaugeVec,
    temperature: GaugeVec,
    sm_clock: GaugeVec,
    ecc_uncorrected: GaugeVec,
}

fn gauge(name: &str, help: &str) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), &["gpu"]).expect("static gauge options")
}

impl GpuGauges {
    /// Creates the gauges and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let g = GpuGauges {
            utilization: gauge(
                "kiln:gpu_utilization_perc",
                "Percent of time a kernel was running (NVML)",
            ),
            memory_used: gauge("kiln:gpu_memory_used_bytes", "GPU memory in use"),
            memory_total: gauge("kiln:gpu_memory_total_bytes", "GPU memory installed"),
            power: gauge("kiln:gpu_power_watts", "Power draw"),
            power_limit: gauge("kiln:gpu_power_limit_watts", "Enforced power limit"),
            temperature: gauge("kiln:gpu_temperature_celsius", "GPU core temperature"),
            sm_clock: gauge("kiln:gpu_sm_clock_mhz", "Current SM clock"),
            ecc_uncorrected: gauge(
                "kiln:gpu_ecc_uncorrected_errors",
                "Uncorrected ECC errors since the driver loaded",
            ),
        };
        for vec in g.all() {
            registry.register(Box::new(vec.clone()))?;
        }
        Ok(g)
    }

    fn all(&self) -> [&GaugeVec; 8] {
        [
            &self.utilization,
            &self.memory_used,
            &self.memory_total,
            &self.power,
            &self.power_limit,
            &self.temperature,
            &self.sm_clock,
            &self.ecc_uncorrected,
        ]
    }

    /// Sets the gauges from the latest readings. A field that is unknown now is removed
    /// rather than left at a stale value.
    pub fn update(&self, readings: &[GpuReading]) {
        for r in readings {
            let gpu = r.index.to_string();
            let fields = [
                r.utilization_perc.map(f64::from),
                r.memory_used_bytes.map(|b| b as f64),
                r.memory_total_bytes.map(|b| b as f64),
                r.power_watts,
                r.power_limit_watts,
                r.temperature_celsius.map(f64::from),
                r.sm_clock_mhz.map(f64::from),
                r.ecc_uncorrected_errors.map(|e| e as f64),
            ];
            for (vec, value) in self.all().into_iter().zip(fields) {
                match value {
                    Some(v) => vec.with_label_values(&[gpu.as_str()]).set(v),
                    None => {
                        let _ = vec.remove_label_values(&[gpu.as_str()]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    fn render(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn h100(index: usize) -> GpuReading {
        GpuReading {
            index,
            utilization_perc: Some(87),
            memory_used_bytes: Some(70 << 30),
            memory_total_bytes: Some(80 << 30),
            power_watts: Some(612.5),
            power_limit_watts: Some(700.0),
            temperature_celsius: Some(61),
            sm_clock_mhz: Some(1980),
            ecc_uncorrected_errors: Some(0),
            fatal: None,
        }
    }

    #[test]
    fn every_gauge_is_rendered_per_gpu() {
        let registry = Registry::new();
        let gauges = GpuGauges::register(&registry).unwrap();
        gauges.update(&[h100(0), h100(1)]);
        let text = render(&registry);
        for line in [
            "kiln:gpu_utilization_perc{gpu=\"0\"} 87",
            "kiln:gpu_memory_used_bytes{gpu=\"1\"} 75161927680",
            "kiln:gpu_memory_total_bytes{gpu=\"0\"} 85899345920",
            "kiln:gpu_power_watts{gpu=\"1\"} 612.5",
            "kiln:gpu_power_limit_watts{gpu=\"0\"} 700",
            "kiln:gpu_temperature_celsius{gpu=\"0\"} 61",
            "kiln:gpu_sm_clock_mhz{gpu=\"1\"} 1980",
            "kiln:gpu_ecc_uncorrected_errors{gpu=\"0\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn no_readings_export_nothing_and_unknown_fields_disappear() {
        let registry = Registry::new();
        let gauges = GpuGauges::register(&registry).unwrap();
        gauges.update(&[]);
        assert!(!render(&registry).contains("kiln:gpu_"));
        gauges.update(&[h100(0)]);
        let no_ecc = GpuReading {
            ecc_uncorrected_errors: None,
            ..h100(0)
        };
        gauges.update(&[no_ecc]);
        let text = render(&registry);
        assert!(!text.contains("kiln:gpu_ecc_uncorrected_errors{"), "{text}");
        assert!(text.contains("kiln:gpu_power_watts{gpu=\"0\"}"), "{text}");
    }
}
