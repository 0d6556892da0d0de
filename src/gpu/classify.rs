//! GPU name -> GPU type.
//!
//! Drivers report marketing names in several spellings (`Tesla T4`, `NVIDIA A100-SXM4-40GB`,
//! `NVIDIA A100 80GB PCIe`, `NVIDIA H100 80GB HBM3 MIG 1g.10gb`). We split the name into
//! tokens and look at the model token only, so look-alikes (GH200, GB200, L40, H800, H20,
//! A800) never match by substring. Boards that report no model (`NVIDIA PG509-210`) are
//! resolved by PCI device id, and an A100 without a size by PCI device id or memory.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The GPU types kiln tells apart; everything else is [`GpuType::Other`].
#[allow(non_camel_case_types)] // `A100_40GB` reads like the product name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GpuType {
    T4,
    L4,
    A10,
    #[serde(rename = "A100-40GB")]
    A100_40GB,
    #[serde(rename = "A100-80GB")]
    A100_80GB,
    L40S,
    H100,
    H200,
    B200,
    #[serde(rename = "other")]
    Other,
}

impl GpuType {
    /// Every type kiln tells apart, in the order of the names it is printed with.
    pub const KNOWN: [GpuType; 9] = [
        GpuType::T4,
        GpuType::L4,
        GpuType::A10,
        GpuType::A100_40GB,
        GpuType::A100_80GB,
        GpuType::L40S,
        GpuType::H100,
        GpuType::H200,
        GpuType::B200,
    ];

    /// The canonical name, as printed and parsed.
    pub fn name(self) -> &'static str {
        match self {
            GpuType::T4 => "T4",
            GpuType::L4 => "L4",
            GpuType::A10 => "A10",
            GpuType::A100_40GB => "A100-40GB",
            GpuType::A100_80GB => "A100-80GB",
            GpuType::L40S => "L40S",
            GpuType::H100 => "H100",
            GpuType::H200 => "H200",
            GpuType::B200 => "B200",
            GpuType::Other => "other",
        }
    }
}

impl fmt::Display for GpuType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that is not one of the canonical GPU type names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown GPU type `{0}`; expected one of T4, L4, A10, A100-40GB, A100-80GB, L40S, H100, H200, B200, other")]
pub struct UnknownGpuType(pub String);

impl FromStr for GpuType {
    type Err = UnknownGpuType;

    /// Parses a canonical name, ignoring case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        GpuType::KNOWN
            .iter()
            .chain(std::iter::once(&GpuType::Other))
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownGpuType(s.to_string()))
    }
}

/// What a device name (plus optional memory and PCI id) says about the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub gpu_type: GpuType,
    /// A MIG slice is a fraction of its parent GPU: same type, but never a whole GPU.
    pub is_mig_slice: bool,
}

/// An A100 whose name gives no size and whose memory is above this is the 80 GB part
/// (the 40 GB part reports ~40 000 MiB, the 80 GB part ~80 000 MiB).
const A100_80GB_MIN_MIB: u64 = 60_000;

/// Classifies a device from its driver name, total memory and PCI device (product) id.
///
/// Resolution order: the model token of the name; then the PCI device id; then, for an
/// A100 without size, the memory. An A100 whose size nothing tells is taken as the 40 GB
/// part, the safe assumption for memory planning. (A MIG slice reports the slice's memory,
/// which is never above its parent's, so a large slice still proves the 80 GB part and a
/// small one falls back to 40 GB.)
pub fn classify(name: &str, memory_mib: Option<u64>, pci_device_id: Option<u16>) -> Classification {
    let tokens = tokens(name);
    let mig_at = tokens.iter().position(|t| t == "MIG");
    let is_mig_slice = mig_at.is_some();
    // The words after `MIG` name the slice profile (`1g.10gb`), not the GPU.
    let parent = &tokens[..mig_at.unwrap_or(tokens.len())];
    let by_pci = pci_device_id.and_then(type_from_pci_device_id);

    let gpu_type = match model_from_tokens(parent) {
        NameSays::Type(t) => t,
        NameSays::A100UnknownSize => by_pci.unwrap_or(match memory_mib {
            Some(mib) if mib >= A100_80GB_MIN_MIB => GpuType::A100_80GB,
            _ => GpuType::A100_40GB,
        }),
        NameSays::Nothing => by_pci.unwrap_or(GpuType::Other),
    };
    Classification {
        gpu_type,
        is_mig_slice,
    }
}

/// Upper-case words of a device name; `-`, `_`, `/` and spaces separate them.
fn tokens(name: &str) -> Vec<String> {
    name.split(|c: char| c.is_whitespace() || matches!(c, '-' | '_' | '/' | ','))
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_uppercase)
        .collect()
}

enum NameSays {
    Type(GpuType),
    A100UnknownSize,
    Nothing,
}

/// Reads the model from the first word after the vendor prefixes (`NVIDIA`, `Tesla`).
fn model_from_tokens(tokens: &[String]) -> NameSays {
    let mut words = tokens
        .iter()
        .map(String::as_str)
        .skip_while(|t| matches!(*t, "NVIDIA" | "TESLA"));
    let Some(model) = words.next() else {
        return NameSays::Nothing;
    };
    let rest: Vec<&str> = words.collect();
    let t = match model {
        "T4" => GpuType::T4,
        "L4" => GpuType::L4,
        // A10G is AWS's A10 variant: same chip, same limits.
        "A10" | "A10G" => GpuType::A10,
        "L40S" => GpuType::L40S,
        "H100" => GpuType::H100,
        "H200" => GpuType::H200,
        "B200" => GpuType::B200,
        "A100" if rest.contains(&"80GB") => GpuType::A100_80GB,
        "A100" if rest.contains(&"40GB") => GpuType::A100_40GB,
        "A100" => return NameSays::A100UnknownSize,
        _ => return NameSays::Nothing,
    };
    NameSays::Type(t)
}

/// PCI device (product) ids of the types kiln knows; ids of look-alikes (L40 26B5) are
/// deliberately absent so they stay `Other`.
fn type_from_pci_device_id(id: u16) -> Option<GpuType> {
    let t = match id {
        0x1EB8 => GpuType::T4,
        0x27B8 => GpuType::L4,
        0x2236 | 0x2237 => GpuType::A10,       // A10, A10G
        0x20B0 | 0x20F1 => GpuType::A100_40GB, // SXM4 40GB, PCIe 40GB
        0x20B2 | 0x20B5 => GpuType::A100_80GB, // SXM4 80GB, PCIe 80GB
        0x26B9 => GpuType::L40S,
        0x2330 | 0x2331 | 0x2321 => GpuType::H100, // SXM, PCIe, NVL
        0x2335 | 0x233B => GpuType::H200,          // SXM, NVL
        0x2901 => GpuType::B200,
        _ => return None,
    };
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn type_of(name: &str) -> GpuType {
        classify(name, None, None).gpu_type
    }

    #[test]
    fn display_and_from_str_round_trip() {
        for t in GpuType::KNOWN.iter().chain([&GpuType::Other]) {
            assert_eq!(t.to_string().parse::<GpuType>(), Ok(*t));
            assert_eq!(t.to_string().to_lowercase().parse::<GpuType>(), Ok(*t));
        }
        assert!("A100".parse::<GpuType>().is_err());
    }

    #[test]
    fn serde_uses_canonical_names() {
        assert_eq!(
            serde_json::to_string(&GpuType::A100_80GB).unwrap(),
            "\"A100-80GB\""
        );
        assert_eq!(
            serde_json::from_str::<GpuType>("\"other\"").unwrap(),
            GpuType::Other
        );
    }

    #[test]
    fn prefixes_are_optional() {
        assert_eq!(type_of("H100"), GpuType::H100);
        assert_eq!(type_of("Tesla T4"), GpuType::T4);
        assert_eq!(type_of("NVIDIA Tesla T4"), GpuType::T4);
        assert_eq!(type_of("nvidia l40s"), GpuType::L40S);
    }

    #[test]
    fn model_must_be_the_first_word() {
        // "RTX A6000" must not be read as anything, nor a stray size word.
        assert_eq!(type_of("NVIDIA RTX A6000"), GpuType::Other);
        assert_eq!(type_of("NVIDIA"), GpuType::Other);
        assert_eq!(type_of(""), GpuType::Other);
    }

    #[test]
    fn mig_profile_words_do_not_give_the_a100_size() {
        // The profile `7g.80gb` is not read as the card's size; the memory is.
        let big = classify("NVIDIA A100 MIG 7g.80gb", Some(81_000), None);
        assert_eq!(big.gpu_type, GpuType::A100_80GB);
        assert!(big.is_mig_slice);
        // A small slice could come from either card: the conservative answer.
        let small = classify("NVIDIA A100 MIG 1g.10gb", Some(9_984), None);
        assert_eq!(small.gpu_type, GpuType::A100_40GB);
    }

    #[test]
    fn pci_id_resolves_unsized_a100_before_memory() {
        let c = classify("NVIDIA A100", Some(1_000), Some(0x20B2));
        assert_eq!(c.gpu_type, GpuType::A100_80GB);
    }
}
