//! GPU inventory, classification, GPU requests.
//!
//! `detect` asks the CUDA driver what is installed (an empty [`Inventory`] without one),
//! `classify` turns device names into [`GpuType`]s, `spec` parses requests such as
//! `H100:8,A100-80GB:8`, and `select` picks the devices a run will use.
//! `nvml` reads live counters ([`GpuReading`]); `monitor` and `health` judge them and
//! `metrics` exports them.

pub mod classify;
pub mod cli;
pub mod detect;
pub mod health;
pub mod metrics;
pub mod monitor;
pub mod nvml;
pub mod pci;
pub mod reading;
pub mod select;
pub mod spec;

pub use classify::{classify, Classification, GpuType};
pub use detect::{GpuDevice, Inventory};
pub use reading::{GpuReading, ReadingSource};
pub use select::{select_default, GpuSelection, NoMatchingGpus};
pub use spec::{GpuAlternative, GpuSpec, GpuSpecError, RequestedGpu};
