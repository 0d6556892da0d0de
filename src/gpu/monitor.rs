//! Watching the GPUs kiln serves on: readings from a [`ReadingSource`], compared against
//! those taken at startup to decide whether the GPUs are still fit to serve.

use super::health::health;
use super::reading::{GpuReading, ReadingSource};

pub struct GpuMonitor {
    source: Box<dyn ReadingSource>,
    baseline: Vec<GpuReading>,
}

/// What one look at the GPUs found.
pub struct Poll {
    pub readings: Vec<GpuReading>,
    /// Why serving must stop, if it must (see [`health`]).
    pub fault: Option<String>,
}

impl GpuMonitor {
    /// Takes the startup readings (the baseline) and logs them once.
    pub fn start(source: Box<dyn ReadingSource>) -> Self {
        let baseline = source.read();
        for reading in &baseline {
            tracing::info!("GPU {}: {}", reading.index, reading.summary());
        }
        GpuMonitor { source, baseline }
    }

    /// The readings at startup.
    pub fn baseline(&self) -> &[GpuReading] {
        &self.baseline
    }

    /// Reads the GPUs now and judges them against the baseline.
    pub fn poll(&self) -> Poll {
        let readings = self.source.read();
        let fault = health(&self.baseline, &readings);
        Poll { readings, fault }
    }
}

/// A source that replays readings given by the test, one list per call, repeating the last.
#[cfg(test)]
pub(crate) mod fake {
    use super::{GpuReading, ReadingSource};
    use std::sync::Mutex;

    pub struct ScriptedReadings(pub Mutex<Vec<Vec<GpuReading>>>);

    impl ScriptedReadings {
        pub fn new(script: Vec<Vec<GpuReading>>) -> Box<Self> {
            Box::new(ScriptedReadings(Mutex::new(script)))
        }
    }

    impl ReadingSource for ScriptedReadings {
        fn read(&self) -> Vec<GpuReading> {
            let mut script = self.0.lock().unwrap();
            if script.len() > 1 {
                script.remove(0)
            } else {
                script.first().cloned().unwrap_or_default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::ScriptedReadings;
    use super::*;

    fn with_ecc(index: usize, ecc: u64) -> GpuReading {
        GpuReading {
            index,
            ecc_uncorrected_errors: Some(ecc),
            ..Default::default()
        }
    }

    #[test]
    fn compares_each_poll_with_the_startup_readings() {
        let source = ScriptedReadings::new(vec![
            vec![with_ecc(0, 1)],
            vec![with_ecc(0, 1)],
            vec![with_ecc(0, 4)],
        ]);
        let monitor = GpuMonitor::start(source);
        assert_eq!(monitor.baseline(), &[with_ecc(0, 1)]);
        assert_eq!(monitor.poll().fault, None);
        let poll = monitor.poll();
        assert_eq!(poll.readings, vec![with_ecc(0, 4)]);
        assert!(poll.fault.unwrap().contains("from 1 to 4"));
    }
}
