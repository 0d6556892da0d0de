//! `kiln gpus`: list the GPUs, classify a name, check a GPU request against the machine.

use super::classify::classify;
use super::detect::Inventory;
use super::nvml::NvmlSource;
use super::reading::{GpuReading, ReadingSource};
use super::select::{describe_inventory, select_default, GpuSelection};
use super::spec::{GpuSpec, GpuSpecError};
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
#[command(about = "List this machine's GPUs, classify a GPU name, or check a GPU request")]
pub struct GpusArgs {
    #[command(subcommand)]
    pub command: Option<GpusCommand>,
    /// Print the inventory as JSON (the format `--inventory` reads).
    #[arg(long, env = "KILN_GPUS_JSON")]
    pub json: bool,
    /// Read the inventory from this JSON file instead of asking the CUDA driver.
    #[arg(long, global = true, env = "KILN_GPU_INVENTORY")]
    pub inventory: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum GpusCommand {
    /// Print the GPU type a device name classifies to.
    Classify {
        /// The device name as the driver reports it, e.g. "NVIDIA H100 80GB HBM3".
        name: String,
        /// Total memory, used when the name says A100 without a size.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// PCI product id in hex (e.g. 20B2), used when the name says no model.
        #[arg(long, value_parser = parse_hex_u16)]
        pci_device_id: Option<u16>,
    },
    /// Explain which GPUs a request (e.g. "H100:8,A100-80GB:8") would use here.
    Check {
        /// TYPE[!][:COUNT], a comma-separated fallback list, a JSON array, or any[:COUNT].
        /// Without one, the largest group of same-type GPUs is used.
        #[arg(env = "KILN_GPU", value_parser = parse_spec)]
        spec: Option<GpuSpec>,
    },
}

fn parse_spec(text: &str) -> Result<GpuSpec, GpuSpecError> {
    text.parse()
}

fn parse_hex_u16(text: &str) -> Result<u16, String> {
    let digits = text.trim();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    u16::from_str_radix(digits, 16)
        .map_err(|_| format!("`{text}` is not a 16-bit hex number (e.g. 20B2 or 0x20b2)"))
}

/// Runs `kiln gpus ...`.
pub fn run(args: GpusArgs) -> Result<()> {
    match args.command {
        Some(GpusCommand::Classify {
            name,
            memory_mib,
            pci_device_id,
        }) => {
            let class = classify(&name, memory_mib, pci_device_id);
            let mig = if class.is_mig_slice {
                " (MIG slice)"
            } else {
                ""
            };
            println!("{}{mig}", class.gpu_type);
            Ok(())
        }
        Some(GpusCommand::Check { spec }) => {
            let inventory = load_inventory(args.inventory)?;
            check(spec.as_ref(), &inventory)
        }
        None => {
            // Live readings only for the GPUs of this machine, not for an inventory file.
            let live = args.inventory.is_none();
            let inventory = load_inventory(args.inventory)?;
            let readings = if live { read_nvml(&inventory) } else { vec![] };
            if args.json {
                let listing = Listing {
                    inventory: &inventory,
                    readings: &readings,
                };
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", render_table(&inventory));
                print!("{}", render_readings(&readings));
            }
            Ok(())
        }
    }
}

/// `kiln gpus --json`: the inventory (what `--inventory` reads back; it ignores the rest)
/// plus the NVML readings when there are any.
#[derive(Serialize)]
struct Listing<'a> {
    #[serde(flatten)]
    inventory: &'a Inventory,
    #[serde(skip_serializing_if = "<[GpuReading]>::is_empty")]
    readings: &'a [GpuReading],
}

/// NVML readings of the whole GPUs; empty without NVML.
fn read_nvml(inventory: &Inventory) -> Vec<GpuReading> {
    let gpus: Vec<_> = inventory.whole_gpus().cloned().collect();
    if gpus.is_empty() {
        return vec![];
    }
    NvmlSource::open(&gpus)
        .map(|s| s.read())
        .unwrap_or_default()
}

fn load_inventory(file: Option<PathBuf>) -> Result<Inventory> {
    match file {
        Some(path) => Inventory::from_json_file(&path),
        None => Ok(Inventory::detect()),
    }
}

fn check(spec: Option<&GpuSpec>, inventory: &Inventory) -> Result<()> {
    println!("found: {}", describe_inventory(inventory));
    let Some(spec) = spec else {
        println!("request: none (--gpu / KILN_GPU unset): the largest group of same-type GPUs");
        match select_default(inventory) {
            Some(selection) => println!("{}", selected(&selection)),
            None => println!("selected: no GPU, kiln would run on the CPU"),
        }
        return Ok(());
    };
    println!("request: {spec}");
    for (i, alternative) in spec.alternatives.iter().enumerate() {
        let accepts: Vec<String> = alternative
            .accepted_types()
            .iter()
            .map(|t| t.to_string())
            .collect();
        let accepts = if accepts.is_empty() {
            "any type".to_string()
        } else {
            accepts.join(", ")
        };
        let satisfied = alternative.select(inventory).is_some();
        let verdict = if satisfied {
            "satisfied"
        } else {
            "not satisfied"
        };
        println!("  {}. {alternative} (accepts {accepts}): {verdict}", i + 1);
        if satisfied {
            break;
        }
    }
    let selection = spec.select(inventory)?;
    println!("{}", selected(&selection));
    Ok(())
}

fn selected(selection: &GpuSelection) -> String {
    let indices: Vec<String> = selection.indices.iter().map(|i| i.to_string()).collect();
    let from = match selection.alternative {
        Some(i) => format!(" (alternative {})", i + 1),
        None => String::new(),
    };
    format!(
        "selected: {}x {}, GPU indices {}{from}",
        selection.indices.len(),
        selection.gpu_type,
        indices.join(",")
    )
}

/// The `kiln gpus` table, one row per device (MIG slices included, marked).
pub fn render_table(inventory: &Inventory) -> String {
    if inventory.devices.is_empty() {
        return "no GPUs found (no CUDA driver, or no device visible)\n".to_string();
    }
    let name_width = inventory
        .devices
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:<5} {:<name_width$} {:<9} {:>10} {:<4} {:>4} {:<13} MIG\n",
        "INDEX", "NAME", "TYPE", "MEMORY", "CC", "SMS", "PCI BUS"
    );
    for d in &inventory.devices {
        let (major, minor) = d.compute_capability;
        out.push_str(&format!(
            "{:<5} {:<name_width$} {:<9} {:>10} {:<4} {:>4} {:<13} {}\n",
            d.index,
            d.name,
            d.gpu_type.to_string(),
            format!("{} MiB", d.memory_total_mib),
            format!("{major}.{minor}"),
            d.sm_count,
            d.pci_bus_id,
            if d.is_mig_slice { "yes" } else { "no" },
        ));
    }
    out
}

/// The NVML table printed under the inventory; nothing when there are no readings.
pub fn render_readings(readings: &[GpuReading]) -> String {
    if readings.is_empty() {
        return String::new();
    }
    let known = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "\n{:<5} {:>5} {:>21} {:>15} {:>5} {:>9} {:>9} STATUS\n",
        "INDEX", "UTIL", "MEMORY USED", "POWER", "TEMP", "SM CLOCK", "ECC UNC"
    );
    for r in readings {
        let memory = match (r.memory_used_bytes, r.memory_total_bytes) {
            (Some(used), Some(total)) => Some(format!("{} / {} MiB", used >> 20, total >> 20)),
            _ => None,
        };
        let power = match (r.power_watts, r.power_limit_watts) {
            (Some(p), Some(l)) => Some(format!("{p:.0} / {l:.0} W")),
            (Some(p), None) => Some(format!("{p:.0} W")),
            _ => None,
        };
        out.push_str(&format!(
            "{:<5} {:>5} {:>21} {:>15} {:>5} {:>9} {:>9} {}\n",
            r.index,
            known(r.utilization_perc.map(|u| format!("{u}%"))),
            known(memory),
            known(power),
            known(r.temperature_celsius.map(|t| format!("{t} C"))),
            known(r.sm_clock_mhz.map(|c| format!("{c} MHz"))),
            known(r.ecc_uncorrected_errors.map(|e| e.to_string())),
            r.fatal.as_deref().unwrap_or("ok"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_with_or_without_prefix() {
        assert_eq!(parse_hex_u16("20B2"), Ok(0x20B2));
        assert_eq!(parse_hex_u16("0x20b2"), Ok(0x20B2));
        assert!(parse_hex_u16("xyz").unwrap_err().contains("hex"));
        assert!(parse_hex_u16("123456").is_err());
    }

    #[test]
    fn empty_table_says_why() {
        assert!(render_table(&Inventory::default()).contains("no GPUs"));
    }

    #[test]
    fn readings_table_marks_unknown_fields_and_fatal_gpus() {
        assert_eq!(render_readings(&[]), "");
        let fine = GpuReading {
            index: 0,
            utilization_perc: Some(12),
            memory_used_bytes: Some(1 << 30),
            memory_total_bytes: Some(80 << 30),
            power_watts: Some(120.2),
            power_limit_watts: Some(700.0),
            temperature_celsius: Some(40),
            sm_clock_mhz: Some(1755),
            ecc_uncorrected_errors: None,
            fatal: None,
        };
        let table = render_readings(&[fine, GpuReading::fatal(1, "GPU is lost")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].starts_with("INDEX"), "{table}");
        for cell in ["12%", "1024 / 81920 MiB", "120 / 700 W", "40 C", "1755 MHz"] {
            assert!(lines[2].contains(cell), "{cell} missing: {table}");
        }
        assert!(lines[2].ends_with(" - ok"), "{table}");
        assert!(lines[3].ends_with("GPU is lost"), "{table}");
    }

    #[test]
    fn json_listing_reads_back_as_the_inventory() {
        let readings = [GpuReading::fatal(0, "GPU is lost")];
        let inventory = Inventory::default();
        let listing = Listing {
            inventory: &inventory,
            readings: &readings,
        };
        let text = serde_json::to_string(&listing).unwrap();
        assert!(text.contains("\"readings\":[{\"index\":0"), "{text}");
        let back: Inventory = serde_json::from_str(&text).unwrap();
        assert_eq!(back, inventory);
        let without = Listing {
            inventory: &inventory,
            readings: &[],
        };
        assert!(!serde_json::to_string(&without)
            .unwrap()
            .contains("readings"));
    }
}
