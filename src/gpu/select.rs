//! Choosing the GPUs to run on: a [`GpuSpec`] (or none) against an [`Inventory`].
//!
//! Rules: only whole GPUs count (MIG slices never do); all chosen GPUs share one type;
//! the first alternative the machine satisfies wins; within an alternative the closest
//! accepted type wins (see [`GpuAlternative::accepted_types`]); the lowest device indices
//! of that type are used. The P2P matrix does not influence the choice.

use super::classify::GpuType;
use super::detect::{GpuDevice, Inventory};
use super::spec::{GpuAlternative, GpuSpec, RequestedGpu};
use std::collections::BTreeMap;

/// The GPUs a run will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSelection {
    /// Position in [`GpuSpec::alternatives`] of the alternative that matched; `None` when
    /// no request was given and the largest group was taken.
    pub alternative: Option<usize>,
    pub gpu_type: GpuType,
    /// CUDA device ordinals ([`GpuDevice::index`]), ascending.
    pub indices: Vec<usize>,
}

/// No alternative of a request can be satisfied by this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no GPU request satisfied: asked for {requested}; found {found}")]
pub struct NoMatchingGpus {
    pub requested: String,
    pub found: String,
}

/// Whole GPUs grouped so that one group is one type (GPUs of type `other` are grouped by
/// name too: an RTX 4090 and a V100 are not interchangeable).
struct Group<'a> {
    gpu_type: GpuType,
    devices: Vec<&'a GpuDevice>,
}

fn groups(inventory: &Inventory) -> Vec<Group<'_>> {
    let mut by_key: BTreeMap<(GpuType, &str), Vec<&GpuDevice>> = BTreeMap::new();
    for d in inventory.whole_gpus() {
        let name = if d.gpu_type == GpuType::Other {
            d.name.as_str()
        } else {
            ""
        };
        by_key.entry((d.gpu_type, name)).or_default().push(d);
    }
    by_key
        .into_iter()
        .map(|((gpu_type, _), mut devices)| {
            devices.sort_by_key(|d| d.index);
            Group { gpu_type, devices }
        })
        .collect()
}

/// How capable a type is, to break ties between equally large groups; `other` last.
fn tier(t: GpuType) -> usize {
    GpuType::KNOWN
        .iter()
        .position(|&k| k == t)
        .map_or(0, |p| p + 1)
}

fn take(group: &Group<'_>, count: usize, alternative: Option<usize>) -> GpuSelection {
    GpuSelection {
        alternative,
        gpu_type: group.gpu_type,
        indices: group.devices.iter().take(count).map(|d| d.index).collect(),
    }
}

impl GpuAlternative {
    /// The GPUs this alternative alone would use, if the machine satisfies it.
    /// `any:N` takes the most capable type with at least N GPUs.
    pub fn select(&self, inventory: &Inventory) -> Option<GpuSelection> {
        let groups = groups(inventory);
        let big_enough = |g: &&Group<'_>| g.devices.len() >= self.count;
        let group = match self.gpu {
            RequestedGpu::Any => groups
                .iter()
                .filter(big_enough)
                .max_by_key(|g| (tier(g.gpu_type), g.devices.len())),
            _ => self
                .accepted_types()
                .into_iter()
                .find_map(|t| groups.iter().filter(|g| g.gpu_type == t).find(big_enough)),
        }?;
        Some(take(group, self.count, None))
    }
}

impl GpuSpec {
    /// The first alternative the machine satisfies, or an error naming what was asked for
    /// and what was found.
    pub fn select(&self, inventory: &Inventory) -> Result<GpuSelection, NoMatchingGpus> {
        self.alternatives
            .iter()
            .enumerate()
            .find_map(|(i, alt)| {
                alt.select(inventory).map(|s| GpuSelection {
                    alternative: Some(i),
                    ..s
                })
            })
            .ok_or_else(|| NoMatchingGpus {
                requested: self.to_string(),
                found: describe_inventory(inventory),
            })
    }
}

/// Without a request: every GPU of the largest same-type group (ties: the more capable
/// type). `None` when the machine has no whole GPU.
pub fn select_default(inventory: &Inventory) -> Option<GpuSelection> {
    let groups = groups(inventory);
    let group = groups
        .iter()
        .max_by_key(|g| (g.devices.len(), tier(g.gpu_type)))?;
    Some(take(group, group.devices.len(), None))
}

/// A one-line summary such as `4x A100-80GB, 2x L4 (and 7 MIG slices, never used)`.
pub fn describe_inventory(inventory: &Inventory) -> String {
    let mut groups = groups(inventory);
    groups.sort_by_key(|g| g.devices[0].index);
    let mut parts: Vec<String> = groups
        .iter()
        .map(|g| match g.gpu_type {
            GpuType::Other => format!("{}x other ({})", g.devices.len(), g.devices[0].name),
            t => format!("{}x {t}", g.devices.len()),
        })
        .collect();
    if parts.is_empty() {
        parts.push("no whole GPUs".to_string());
    }
    let slices = inventory.devices.iter().filter(|d| d.is_mig_slice).count();
    let mut text = parts.join(", ");
    if slices > 0 {
        text.push_str(&format!(
            " (and {slices} MIG slice(s), never used as whole GPUs)"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: usize, name: &str, memory_total_mib: u64) -> GpuDevice {
        GpuDevice {
            index,
            name: name.into(),
            gpu_type: GpuType::Other,
            is_mig_slice: false,
            memory_total_mib,
            compute_capability: (9, 0),
            sm_count: 0,
            pci_bus_id: String::new(),
            pci_device_id: None,
            uuid: String::new(),
        }
        .classified()
    }

    fn machine(parts: &[(usize, &str, u64)]) -> Inventory {
        let mut devices = Vec::new();
        for &(n, name, mib) in parts {
            for _ in 0..n {
                devices.push(device(devices.len(), name, mib));
            }
        }
        Inventory {
            devices,
            p2p: vec![],
        }
    }

    fn spec(text: &str) -> GpuSpec {
        text.parse().unwrap()
    }

    const H100: &str = "NVIDIA H100 80GB HBM3";
    const H200: &str = "NVIDIA H200";
    const A100_80: &str = "NVIDIA A100-SXM4-80GB";
    const A100_40: &str = "NVIDIA A100-SXM4-40GB";
    const L4: &str = "NVIDIA L4";
    const H100_MIG: &str = "NVIDIA H100 80GB HBM3 MIG 1g.10gb";

    #[test]
    fn upgrade_satisfies_but_exact_does_not() {
        let m = machine(&[(1, H200, 143_771)]);
        let s = spec("H100").select(&m).unwrap();
        assert_eq!((s.gpu_type, s.indices), (GpuType::H200, vec![0]));
        assert!(spec("H100!").select(&m).is_err());
        assert!(spec("B200").select(&m).is_err());
    }

    #[test]
    fn closest_type_is_preferred_and_lowest_indices_used() {
        let m = machine(&[(2, H200, 143_771), (4, H100, 81_559)]);
        let s = spec("H100:2").select(&m).unwrap();
        assert_eq!((s.gpu_type, s.indices), (GpuType::H100, vec![2, 3]));
        // Requests never fall back to a less capable type: three H100s are no H200:3.
        assert!(spec("H200:3").select(&m).is_err());
    }

    #[test]
    fn first_satisfied_alternative_wins_and_types_never_mix() {
        let m = machine(&[(4, A100_80, 81_920), (2, L4, 23_034)]);
        let s = spec("H100:8,A100:4").select(&m).unwrap();
        assert_eq!(s.alternative, Some(1));
        assert_eq!(
            (s.gpu_type, s.indices),
            (GpuType::A100_80GB, vec![0, 1, 2, 3])
        );
        // 4 A100 + 2 L4 are 6 GPUs, but not 6 of one type.
        let err = spec("any:6").select(&m).unwrap_err();
        assert_eq!(err.requested, "any:6");
        assert_eq!(err.found, "4x A100-80GB, 2x L4");
    }

    #[test]
    fn a100_sizes() {
        let m = machine(&[(2, A100_40, 40_960)]);
        assert!(spec("A100-80GB").select(&m).is_err());
        assert_eq!(
            spec("A100:2").select(&m).unwrap().gpu_type,
            GpuType::A100_40GB
        );
        let big = machine(&[(1, A100_80, 81_920)]);
        assert_eq!(
            spec("A100-40GB").select(&big).unwrap().gpu_type,
            GpuType::A100_80GB
        );
        assert!(spec("A100-40GB!").select(&big).is_err());
        assert!(spec("A100!").select(&big).is_ok());
    }

    #[test]
    fn mig_slices_never_count() {
        let m = machine(&[(1, H100, 81_559), (7, H100_MIG, 9_984)]);
        assert!(spec("H100:2").select(&m).is_err());
        assert_eq!(spec("H100").select(&m).unwrap().indices, vec![0]);
        let only_slices = machine(&[(7, H100_MIG, 9_984)]);
        let err = spec("any").select(&only_slices).unwrap_err();
        assert!(
            err.found.contains("no whole GPUs") && err.found.contains("7 MIG"),
            "{err}"
        );
        assert_eq!(select_default(&only_slices), None);
    }

    #[test]
    fn default_takes_the_largest_group() {
        let m = machine(&[(2, H100, 81_559), (3, L4, 23_034)]);
        let s = select_default(&m).unwrap();
        assert_eq!(
            (s.alternative, s.gpu_type, s.indices),
            (None, GpuType::L4, vec![2, 3, 4])
        );
        let tie = machine(&[(2, L4, 23_034), (2, H100, 81_559)]);
        assert_eq!(select_default(&tie).unwrap().gpu_type, GpuType::H100);
    }

    #[test]
    fn any_prefers_the_most_capable_type_with_enough_gpus() {
        let m = machine(&[(4, L4, 23_034), (2, H100, 81_559)]);
        assert_eq!(spec("any").select(&m).unwrap().gpu_type, GpuType::H100);
        assert_eq!(spec("any:3").select(&m).unwrap().gpu_type, GpuType::L4);
    }

    #[test]
    fn other_gpus_of_different_models_are_not_one_group() {
        let m = machine(&[
            (1, "NVIDIA GeForce RTX 4090", 24_564),
            (1, "Tesla V100-SXM2-16GB", 16_384),
        ]);
        assert!(spec("any:2").select(&m).is_err());
        assert_eq!(select_default(&m).unwrap().indices.len(), 1);
    }
}
