//! `kiln gpus`: list the GPUs, classify a name, check a GPU request against the machine.

use super::classify::classify;
use super::detect::Inventory;
use super::select::{describe_inventory, select_default, GpuSelection};
use super::spec::{GpuSpec, GpuSpecError};
use anyhow::Result;
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
            let inventory = load_inventory(args.inventory)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&inventory)?);
            } else {
                print!("{}", render_table(&inventory));
            }
            Ok(())
        }
    }
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
}
