//! The PCI product id of a GPU, read from Linux sysfs.
//!
//! The CUDA driver API does not expose it (its `PCI_DEVICE_ID` attribute is the slot number
//! on the bus), yet it is what tells boards apart whose name says no model, such as
//! `NVIDIA PG509-210` (an A100 80GB). On other systems, or inside containers without
//! `/sys`, the id is simply unknown.

use std::path::Path;

/// NVIDIA's PCI vendor id: a product id read for another vendor would mean nothing.
const NVIDIA_VENDOR_ID: u16 = 0x10de;

/// The product id of the device at `bus_id` (`0000:18:00.0` or `00000000:18:00.0`).
pub fn product_id(bus_id: &str) -> Option<u16> {
    product_id_under(Path::new("/sys/bus/pci/devices"), bus_id)
}

/// As [`product_id`], with the sysfs device directory given (for tests).
pub fn product_id_under(devices_dir: &Path, bus_id: &str) -> Option<u16> {
    let dir = devices_dir.join(sysfs_name(bus_id)?);
    let vendor = read_hex_u16(&dir.join("vendor"))?;
    (vendor == NVIDIA_VENDOR_ID).then(|| read_hex_u16(&dir.join("device")))?
}

/// sysfs names devices `dddd:bb:dd.f` in lower case; the driver may give an 8-digit domain.
fn sysfs_name(bus_id: &str) -> Option<String> {
    let bus_id = bus_id.trim().to_ascii_lowercase();
    let (domain, rest) = bus_id.split_once(':')?;
    let domain = u32::from_str_radix(domain, 16).ok()?;
    Some(format!("{domain:04x}:{rest}"))
}

fn read_hex_u16(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let digits = text.trim().trim_start_matches("0x");
    u16::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_device(root: &Path, name: &str, vendor: &str, device: &str) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), vendor).unwrap();
        std::fs::write(dir.join("device"), device).unwrap();
    }

    #[test]
    fn reads_nvidia_product_id_for_both_domain_widths() {
        let root = tempfile::tempdir().unwrap();
        fake_device(root.path(), "0000:18:00.0", "0x10de\n", "0x2330\n");
        assert_eq!(product_id_under(root.path(), "0000:18:00.0"), Some(0x2330));
        assert_eq!(
            product_id_under(root.path(), "00000000:18:00.0"),
            Some(0x2330)
        );
    }

    #[test]
    fn other_vendors_and_missing_devices_give_none() {
        let root = tempfile::tempdir().unwrap();
        fake_device(root.path(), "0000:01:00.0", "0x8086\n", "0x2330\n");
        assert_eq!(product_id_under(root.path(), "0000:01:00.0"), None);
        assert_eq!(product_id_under(root.path(), "0000:02:00.0"), None);
        assert_eq!(product_id_under(root.path(), "garbage"), None);
    }
}
