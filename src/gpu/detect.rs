//! The machine's GPUs, as the CUDA driver reports them.
//!
//! The driver library is loaded at run time (cudarc `dynamic-loading`), so the same binary
//! runs on machines without one: there detection returns an empty [`Inventory`] and logs
//! why. `CUDA_VISIBLE_DEVICES` is applied by the driver itself: the inventory lists only
//! the visible devices, numbered from 0 in that order, which are the ordinals the rest of
//! kiln uses.

use super::classify::{classify, GpuType};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One device the driver lists: a whole GPU or a MIG slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// The CUDA device ordinal (after `CUDA_VISIBLE_DEVICES`).
    pub index: usize,
    /// The name as the driver reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    pub gpu_type: GpuType,
    pub is_mig_slice: bool,
    pub memory_total_mib: u64,
    /// `(major, minor)`, e.g. `(9, 0)` for Hopper.
    pub compute_capability: (u32, u32),
    #[serde(default)]
    pub sm_count: u32,
    /// `domain:bus:device.function`, e.g. `0000:18:00.0`.
    #[serde(default)]
    pub pci_bus_id: String,
    /// The PCI product id (`0x2330` for H100 SXM), when the OS exposes it.
    #[serde(default)]
    pub pci_device_id: Option<u16>,
    #[serde(default)]
    pub uuid: String,
}

/// All devices of the machine plus which pairs can access each other's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub devices: Vec<GpuDevice>,
    /// `p2p[i][j]`: device at position `i` of `devices` can access the memory of the one
    /// at position `j` directly. Empty when unknown (e.g. an inventory written by hand).
    #[serde(default)]
    pub p2p: Vec<Vec<bool>>,
}

impl Inventory {
    /// Asks the CUDA driver; an empty inventory when there is no driver, no GPU or the
    /// driver fails. Never panics.
    pub fn detect() -> Inventory {
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            tracing::info!("no CUDA driver library (libcuda) found: no GPUs");
            return Inventory::default();
        }
        // cudarc panics when a driver symbol is missing (an older driver than the API
        // version it was built for); a panic here must mean "no GPUs", not a crash.
        match std::panic::catch_unwind(driver_query::query) {
            Ok(Ok(inventory)) => inventory,
            Ok(Err(e)) => {
                tracing::info!("CUDA driver unusable ({e:#}): no GPUs");
                Inventory::default()
            }
            Err(_) => {
                tracing::warn!(
                    "CUDA driver query panicked: treating the machine as having no GPUs"
                );
                Inventory::default()
            }
        }
    }

    /// Reads an inventory written as JSON (the `kiln gpus --json` output).
    pub fn from_json_file(path: &Path) -> Result<Inventory> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading GPU inventory {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing GPU inventory {}", path.display()))
    }

    /// Whole GPUs only: MIG slices are listed but never used as a GPU.
    pub fn whole_gpus(&self) -> impl Iterator<Item = &GpuDevice> {
        self.devices.iter().filter(|d| !d.is_mig_slice)
    }
}

impl GpuDevice {
    /// Sets `gpu_type` and `is_mig_slice` from the name, memory and PCI id.
    pub fn classified(mut self) -> GpuDevice {
        let class = classify(&self.name, Some(self.memory_total_mib), self.pci_device_id);
        self.gpu_type = class.gpu_type;
        self.is_mig_slice = class.is_mig_slice;
        self
    }
}

mod driver_query {
    //! The unsafe part: driver API calls through cudarc.
    use super::{GpuDevice, GpuType, Inventory};
    use anyhow::{Context, Result};
    use cudarc::driver::{result, sys};

    pub(super) fn query() -> Result<Inventory> {
        result::init().context("cuInit")?;
        let count = result::device::get_count().context("cuDeviceGetCount")?;
        let handles = (0..count)
            .map(|i| result::device::get(i).with_context(|| format!("cuDeviceGet({i})")))
            .collect::<Result<Vec<_>>>()?;
        let devices = handles
            .iter()
            .enumerate()
            .map(|(index, &dev)| describe(index, dev))
            .collect::<Result<Vec<_>>>()?;
        let p2p = peer_matrix(&handles);
        tracing::debug!("CUDA driver lists {} device(s)", devices.len());
        Ok(Inventory { devices, p2p })
    }

    fn describe(index: usize, dev: sys::CUdevice) -> Result<GpuDevice> {
        use sys::CUdevice_attribute::*;
        let name = result::device::get_name(dev).context("cuDeviceGetName")?;
        // SAFETY: `dev` came from cuDeviceGet after a successful cuInit.
        let (bytes, major, minor, sms) = unsafe {
            (
                result::device::total_mem(dev).context("cuDeviceTotalMem")?,
                result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            )
        };
        let pci_bus_id = pci_bus_id(dev).unwrap_or_default();
        // The driver's CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID is the slot number on the bus, not
        // the product id; the product id comes from sysfs where there is one.
        let pci_device_id = crate::gpu::pci::product_id(&pci_bus_id);
        let uuid = result::device::get_uuid(dev)
            .map(|u| format_uuid(&u.bytes, name.contains("MIG")))
            .unwrap_or_default();
        let device = GpuDevice {
            index,
            name,
            gpu_type: GpuType::Other,
            is_mig_slice: false,
            memory_total_mib: (bytes / (1 << 20)) as u64,
            compute_capability: (major.max(0) as u32, minor.max(0) as u32),
            sm_count: sms.max(0) as u32,
            pci_bus_id,
            pci_device_id,
            uuid,
        };
        Ok(device.classified())
    }

    fn pci_bus_id(dev: sys::CUdevice) -> Option<String> {
        let mut buf = [0 as std::ffi::c_char; 32];
        // SAFETY: the buffer is writable for its full length, which we pass.
        unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as i32, dev) }
            .result()
            .ok()?;
        let bytes: Vec<u8> = buf
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8(bytes).ok()
    }

    /// `nvidia-smi` style: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (`MIG-` for slices).
    fn format_uuid(bytes: &[std::ffi::c_char; 16], is_mig: bool) -> String {
        let hex: String = bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
        let prefix = if is_mig { "MIG" } else { "GPU" };
        format!(
            "{prefix}-{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    fn peer_matrix(handles: &[sys::CUdevice]) -> Vec<Vec<bool>> {
        handles
            .iter()
            .map(|&from| {
                handles
                    .iter()
                    .map(|&to| from == to || can_access_peer(from, to))
                    .collect()
            })
            .collect()
    }

    fn can_access_peer(from: sys::CUdevice, to: sys::CUdevice) -> bool {
        let mut can = 0;
        // SAFETY: both devices came from cuDeviceGet; `can` is a valid out pointer.
        let status = unsafe { sys::cuDeviceCanAccessPeer(&mut can, from, to) };
        status.result().is_ok() && can != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unclassified(name: &str, memory_total_mib: u64, pci_device_id: Option<u16>) -> GpuDevice {
        GpuDevice {
            index: 0,
            name: name.into(),
            gpu_type: GpuType::Other,
            is_mig_slice: false,
            memory_total_mib,
            compute_capability: (9, 0),
            sm_count: 132,
            pci_bus_id: "0000:18:00.0".into(),
            pci_device_id,
            uuid: "GPU-00000000-0000-0000-0000-000000000000".into(),
        }
    }

    fn h100(index: usize) -> GpuDevice {
        GpuDevice {
            index,
            ..unclassified("NVIDIA H100 80GB HBM3", 81_559, Some(0x2330))
        }
        .classified()
    }

    #[test]
    fn json_round_trip() {
        let inventory = Inventory {
            devices: vec![h100(0), h100(1)],
            p2p: vec![vec![true, true], vec![true, true]],
        };
        let text = serde_json::to_string_pretty(&inventory).unwrap();
        assert!(text.contains("\"gpu_type\": \"H100\""), "{text}");
        let back: Inventory = serde_json::from_str(&text).unwrap();
        assert_eq!(back, inventory);
    }

    #[test]
    fn minimal_json_is_accepted() {
        let text = r#"{"devices":[{"index":0,"name":"NVIDIA L4","gpu_type":"L4",
            "is_mig_slice":false,"memory_total_mib":23034,"compute_capability":[8,9]}]}"#;
        let inventory: Inventory = serde_json::from_str(text).unwrap();
        assert_eq!(inventory.devices[0].gpu_type, GpuType::L4);
        assert!(inventory.p2p.is_empty());
        assert_eq!(inventory.devices[0].pci_device_id, None);
    }

    #[test]
    fn whole_gpus_skips_mig_slices() {
        let mut slice = h100(1);
        slice.is_mig_slice = true;
        let inventory = Inventory {
            devices: vec![h100(0), slice],
            p2p: vec![],
        };
        let whole: Vec<usize> = inventory.whole_gpus().map(|d| d.index).collect();
        assert_eq!(whole, vec![0]);
    }

    #[test]
    fn classification_comes_from_the_name() {
        let board = unclassified("NVIDIA PG509-210", 81_920, Some(0x20B2)).classified();
        assert_eq!(board.gpu_type, GpuType::A100_80GB);
        let slice = unclassified("NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9_984, None).classified();
        assert_eq!((slice.gpu_type, slice.is_mig_slice), (GpuType::H100, true));
    }

    #[test]
    fn detect_without_a_driver_is_empty_and_does_not_panic() {
        // This test machine has no GPU; on a GPU machine it only checks for no panic.
        let inventory = Inventory::detect();
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            assert!(inventory.devices.is_empty());
            assert!(inventory.p2p.is_empty());
        }
    }
}
