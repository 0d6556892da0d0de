//! `kiln gpus` end to end: the built binary against inventories written as JSON files.

use kiln::gpu::{GpuDevice, GpuType, Inventory};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `count` devices named `name`, numbered after those already in `devices`.
fn add(devices: &mut Vec<GpuDevice>, count: usize, name: &str, memory_total_mib: u64) {
    for _ in 0..count {
        let index = devices.len();
        let device = GpuDevice {
            index,
            name: name.to_string(),
            gpu_type: GpuType::Other,
            is_mig_slice: false,
            memory_total_mib,
            compute_capability: (9, 0),
            sm_count: 132,
            pci_bus_id: format!("0000:{:02x}:00.0", 0x10 + index),
            pci_device_id: None,
            uuid: format!("GPU-{index:08x}-0000-0000-0000-000000000000"),
        };
        devices.push(device.classified());
    }
}

fn write_inventory(dir: &Path, devices: Vec<GpuDevice>) -> PathBuf {
    let path = dir.join("inventory.json");
    let inventory = Inventory {
        devices,
        p2p: vec![],
    };
    std::fs::write(&path, serde_json::to_string(&inventory).unwrap()).unwrap();
    path
}

fn kiln(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args);
    for var in ["KILN_GPU", "KILN_GPU_INVENTORY", "KILN_GPUS_JSON"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("running kiln")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn check(spec: &str, devices: Vec<GpuDevice>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let inventory = write_inventory(dir.path(), devices);
    kiln(
        &[
            "gpus",
            "check",
            spec,
            "--inventory",
            inventory.to_str().unwrap(),
        ],
        &[],
    )
}

#[test]
fn one_h200_satisfies_h100() {
    let mut devices = Vec::new();
    add(&mut devices, 1, "NVIDIA H200", 143_771);
    let out = check("H100", devices);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("selected: 1x H200, GPU indices 0"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn eight_h100_satisfy_exact_h100_times_eight() {
    let mut devices = Vec::new();
    add(&mut devices, 8, "NVIDIA H100 80GB HBM3", 81_559);
    let out = check("H100!:8", devices);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("8x H100, GPU indices 0,1,2,3,4,5,6,7"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a10_count_over_the_limit_is_rejected() {
    let mut devices = Vec::new();
    add(&mut devices, 4, "NVIDIA A10", 23_028);
    let out = check("A10:8", devices);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("A10 allows 1 to 4"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mixed_machine_falls_back_to_the_a100s() {
    let mut devices = Vec::new();
    add(&mut devices, 4, "NVIDIA A100-SXM4-80GB", 81_920);
    add(&mut devices, 2, "NVIDIA L4", 23_034);
    let out = check("H100:8,A100:4", devices);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("1. H100:8 (accepts H100, H200, B200): not satisfied"),
        "{text}"
    );
    assert!(
        text.contains("4x A100-80GB, GPU indices 0,1,2,3 (alternative 2)"),
        "{text}"
    );
}

#[test]
fn mig_slices_are_not_counted() {
    let mut devices = Vec::new();
    add(&mut devices, 1, "NVIDIA H100 80GB HBM3", 81_559);
    add(&mut devices, 3, "NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9_984);
    let out = check("H100:2", devices);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no GPU request satisfied: asked for H100:2"),
        "{err}"
    );
    assert!(err.contains("1x H100 (and 3 MIG slice(s)"), "{err}");
}

#[test]
fn request_is_read_from_kiln_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut devices = Vec::new();
    add(&mut devices, 2, "NVIDIA L4", 23_034);
    let inventory = write_inventory(dir.path(), devices);
    let inventory = inventory.to_str().unwrap();
    let out = kiln(
        &["gpus", "check"],
        &[("KILN_GPU", "T4:2"), ("KILN_GPU_INVENTORY", inventory)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("request: T4:2"), "{}", stdout(&out));
    assert!(stdout(&out).contains("2x L4"), "{}", stdout(&out));
    // Without any request: the largest group.
    let out = kiln(&["gpus", "check", "--inventory", inventory], &[]);
    assert!(
        stdout(&out).contains("selected: 2x L4, GPU indices 0,1"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn json_listing_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut devices = Vec::new();
    add(&mut devices, 2, "NVIDIA H100 80GB HBM3", 81_559);
    let path = write_inventory(dir.path(), devices);
    let out = kiln(
        &["gpus", "--json", "--inventory", path.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Inventory = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, Inventory::from_json_file(&path).unwrap());
    let table = kiln(&["gpus", "--inventory", path.to_str().unwrap()], &[]);
    let table = stdout(&table);
    assert!(table.contains("NVIDIA H100 80GB HBM3 H100 "), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[test]
fn classify_subcommand() {
    let out = kiln(
        &["gpus", "classify", "NVIDIA H100 80GB HBM3 MIG 1g.10gb"],
        &[],
    );
    assert_eq!(stdout(&out).trim(), "H100 (MIG slice)");
    let out = kiln(
        &[
            "gpus",
            "classify",
            "NVIDIA PG509-210",
            "--pci-device-id",
            "20B2",
        ],
        &[],
    );
    assert_eq!(stdout(&out).trim(), "A100-80GB");
    let out = kiln(
        &["gpus", "classify", "NVIDIA A100", "--memory-mib", "81920"],
        &[],
    );
    assert_eq!(stdout(&out).trim(), "A100-80GB");
    let out = kiln(&["gpus", "classify", "NVIDIA GH200 480GB"], &[]);
    assert_eq!(stdout(&out).trim(), "other");
}

#[test]
fn listing_without_inventory_file_never_fails() {
    // On this GPU-less machine: "no GPUs found"; on a GPU machine: a table.
    let out = kiln(&["gpus"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn unreadable_inventory_is_an_error_with_the_path() {
    let out = kiln(
        &[
            "gpus",
            "check",
            "H100",
            "--inventory",
            "/nonexistent/inv.json",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/inv.json"),
        "{}",
        stderr(&out)
    );
}
