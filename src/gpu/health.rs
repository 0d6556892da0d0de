//! Whether the GPUs are still fit to serve, judged from readings alone (no NVML here).

use super::reading::GpuReading;

/// Why serving must stop, comparing readings `now` with the `baseline` taken at startup;
/// `None` while every GPU is fine. A GPU is unfit when NVML reports it fatal (lost, fallen
/// off the bus, needs a reset), when it is no longer reported at all, or when its count of
/// uncorrectable ECC errors has grown since startup (its memory can no longer be trusted).
/// Errors already present at startup are the operator's call, not a reason to flap.
pub fn health(baseline: &[GpuReading], now: &[GpuReading]) -> Option<String> {
    let mut problems = Vec::new();
    for before in baseline {
        let Some(after) = now.iter().find(|r| r.index == before.index) else {
            problems.push(format!("GPU {} is no longer reported", before.index));
            continue;
        };
        if let Some(why) = &after.fatal {
            problems.push(format!("GPU {}: {why}", after.index));
            continue;
        }
        if let (Some(was), Some(is)) = (before.ecc_uncorrected_errors, after.ecc_uncorrected_errors)
        {
            if is > was {
                problems.push(format!(
                    "GPU {}: uncorrectable ECC errors rose from {was} to {is} since startup",
                    after.index
                ));
            }
        }
    }
    // A GPU that appears only now (the source's list changed) is judged on its own.
    for reading in now {
        if !baseline.iter().any(|b| b.index == reading.index) {
            if let Some(why) = &reading.fatal {
                problems.push(format!("GPU {}: {why}", reading.index));
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fine(index: usize, ecc: Option<u64>) -> GpuReading {
        GpuReading {
            index,
            utilization_perc: Some(50),
            ecc_uncorrected_errors: ecc,
            ..Default::default()
        }
    }

    #[test]
    fn unchanged_gpus_are_healthy() {
        let baseline = vec![fine(0, Some(0)), fine(1, None)];
        assert_eq!(health(&baseline, &baseline), None);
        assert_eq!(health(&[], &[]), None);
    }

    #[test]
    fn a_lost_gpu_is_named_with_its_index() {
        let baseline = vec![fine(0, Some(0)), fine(1, Some(0))];
        let now = vec![fine(0, Some(0)), GpuReading::fatal(1, "GPU is lost")];
        assert_eq!(
            health(&baseline, &now).as_deref(),
            Some("GPU 1: GPU is lost")
        );
    }

    #[test]
    fn ecc_errors_count_only_when_they_grow_after_startup() {
        let baseline = vec![fine(0, Some(2))];
        assert_eq!(health(&baseline, &[fine(0, Some(2))]), None);
        let why = health(&baseline, &[fine(0, Some(3))]).unwrap();
        assert!(
            why.contains("GPU 0") && why.contains("from 2 to 3"),
            "{why}"
        );
        // A counter that stops being readable is not an error by itself.
        assert_eq!(health(&baseline, &[fine(0, None)]), None);
    }

    #[test]
    fn a_gpu_missing_from_the_readings_is_unfit() {
        let why = health(&[fine(0, None), fine(1, None)], &[fine(0, None)]).unwrap();
        assert_eq!(why, "GPU 1 is no longer reported");
    }

    #[test]
    fn a_gpu_fatal_from_the_start_is_reported_and_problems_are_joined() {
        let baseline = vec![fine(0, Some(0))];
        let now = vec![fine(0, Some(1)), GpuReading::fatal(2, "GPU needs a reset")];
        let why = health(&baseline, &now).unwrap();
        assert!(why.starts_with("GPU 0: uncorrectable"), "{why}");
        assert!(why.ends_with("; GPU 2: GPU needs a reset"), "{why}");
    }
}
