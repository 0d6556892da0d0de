//! Honouring `--gpu` (`KILN_GPU`): which of the machine's GPUs the engine runs on, decided
//! before anything is loaded so an unsatisfiable request fails fast.

use crate::gpu::{select_default, GpuSelection, GpuSpec, Inventory};
use anyhow::Result;

/// The GPUs to use: the first alternative of `spec` the inventory satisfies, or without a
/// spec the largest group of same-type GPUs. `Ok(None)`: no spec and no whole GPU (CPU).
pub fn choose(spec: Option<&str>, inventory: &Inventory) -> Result<Option<GpuSelection>> {
    match spec {
        Some(text) => {
            let spec: GpuSpec = text
                .parse()
                .map_err(|e| anyhow::anyhow!("--gpu '{text}': {e}"))?;
            Ok(Some(spec.select(inventory)?))
        }
        None => Ok(select_default(inventory)),
    }
}

/// The CUDA ordinal to run on when the selection came from no `--gpu` request (the largest
/// group of same-type GPUs): one GPU unless `--tensor-parallel-size` or `--gpu` asks for more.
pub fn primary_ordinal(selection: &GpuSelection) -> usize {
    if selection.indices.len() > 1 {
        tracing::info!(
            "{} x {} present (GPUs {:?}); running on GPU {} (pass --gpu {1}:{0} or --tensor-parallel-size to shard across them)",
            selection.indices.len(),
            selection.gpu_type,
            selection.indices,
            selection.indices[0]
        );
    }
    selection.indices[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(names: &[&str]) -> Inventory {
        let devices: Vec<serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::json!({
                    "index": i, "name": n, "gpu_type": "other", "is_mig_slice": false,
                    "memory_total_mib": 81559, "compute_capability": [9, 0], "sm_count": 132,
                    "pci_bus_id": format!("0000:{i:02x}:00.0"), "pci_device_id": null, "uuid": format!("GPU-{i}")
                })
            })
            .collect();
        let inv: Inventory =
            serde_json::from_value(serde_json::json!({ "devices": devices, "p2p": [] })).unwrap();
        Inventory {
            devices: inv.devices.into_iter().map(|d| d.classified()).collect(),
            ..inv
        }
    }

    #[test]
    fn an_h200_satisfies_h100_and_the_request_picks_its_ordinal() {
        let inv = inventory(&["NVIDIA L4", "NVIDIA H200"]);
        let sel = choose(Some("H100"), &inv).unwrap().unwrap();
        assert_eq!(primary_ordinal(&sel), 1);
    }

    #[test]
    fn an_unsatisfiable_request_fails_naming_what_was_asked_and_found() {
        let inv = inventory(&["NVIDIA A10", "NVIDIA A10"]);
        let err = format!("{:#}", choose(Some("H100:2,A10:4"), &inv).unwrap_err());
        assert!(err.contains("asked for") && err.contains("A10"), "{err}");
        let bad = format!("{:#}", choose(Some("Z9000"), &inv).unwrap_err());
        assert!(bad.contains("--gpu 'Z9000'"), "{bad}");
    }

    #[test]
    fn without_a_request_the_largest_group_wins_and_no_gpu_means_cpu() {
        let inv = inventory(&[
            "NVIDIA L4",
            "NVIDIA H100 80GB HBM3",
            "NVIDIA H100 80GB HBM3",
        ]);
        assert_eq!(choose(None, &inv).unwrap().unwrap().indices, [1, 2]);
        assert!(choose(None, &inventory(&[])).unwrap().is_none());
    }
}
