//! `--device auto|cpu|cuda[:N]`: where the model runs.

use crate::backend::cuda::CudaUnavailable;
use anyhow::Result;
use std::fmt;
use std::str::FromStr;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceArg {
    /// The first GPU if there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => Ok(DeviceArg::Auto),
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" | "gpu" => Ok(DeviceArg::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceArg::Cuda)
                .ok_or_else(|| format!("unknown device '{s}': expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceArg::Auto => f.write_str("auto"),
            DeviceArg::Cpu => f.write_str("cpu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where the model will run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

/// Resolves the request against the GPUs present (`gpus`: the driver's device count, or why
/// there is none). `auto` falls back to the CPU with a log line; an explicit `cuda` does not.
pub fn resolve(
    arg: DeviceArg,
    gpus: impl FnOnce() -> Result<usize, CudaUnavailable>,
) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto => match gpus() {
            Ok(n) if n > 0 => Ok(Device::Cuda(0)),
            Ok(_) => {
                tracing::info!("no CUDA device found: running on the CPU");
                Ok(Device::Cpu)
            }
            Err(why) => {
                tracing::info!("{why}: running on the CPU");
                Ok(Device::Cpu)
            }
        },
        DeviceArg::Cuda(ordinal) => {
            let count = gpus().map_err(|why| anyhow::anyhow!("--device cuda:{ordinal}: {why}"))?;
            anyhow::ensure!(
                ordinal < count,
                "--device cuda:{ordinal}: only {count} CUDA device(s) present"
            );
            Ok(Device::Cuda(ordinal))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("auto".parse(), Ok(DeviceArg::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceArg::Cuda(3)));
        assert!("cuda:x".parse::<DeviceArg>().is_err());
        assert!("tpu".parse::<DeviceArg>().is_err());
        assert_eq!(
            DeviceArg::Cuda(2).to_string().parse(),
            Ok(DeviceArg::Cuda(2))
        );
    }

    #[test]
    fn auto_uses_the_first_gpu_or_falls_back_to_the_cpu() {
        assert_eq!(resolve(DeviceArg::Auto, || Ok(2)).unwrap(), Device::Cuda(0));
        assert_eq!(
            resolve(DeviceArg::Auto, || Err(CudaUnavailable::NoDriver)).unwrap(),
            Device::Cpu
        );
        assert_eq!(resolve(DeviceArg::Cpu, || Ok(8)).unwrap(), Device::Cpu);
    }

    #[test]
    fn explicit_cuda_without_a_gpu_is_an_error_naming_the_cause() {
        let err = resolve(DeviceArg::Cuda(0), || Err(CudaUnavailable::NoDriver))
            .unwrap_err()
            .to_string();
        assert!(err.contains("libcuda"), "{err}");
        let err = resolve(DeviceArg::Cuda(4), || Ok(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only 2"), "{err}");
    }
}
