//! Classification of real driver names (tests/data/gpu_names.tsv) and of look-alikes.

use kiln::gpu::{classify, GpuType};

fn type_of(name: &str) -> GpuType {
    classify(name, None, None).gpu_type
}

#[test]
fn every_row_of_the_name_table() {
    let table = include_str!("data/gpu_names.tsv");
    let mut rows = 0;
    for (line_no, line) in table.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 5, "line {}: {line:?}", line_no + 1);
        let (name, memory, expected, mig) = (cols[0], cols[1], cols[3], cols[4]);
        let memory: u64 = memory.parse().expect("memory_mib column");
        let expected: GpuType = expected.parse().expect("expected_type column");
        let got = classify(name, Some(memory), None);
        assert_eq!(got.gpu_type, expected, "{name}");
        assert_eq!(got.is_mig_slice, mig == "1", "{name}: MIG flag");
        // The name alone must be enough for every row of the table.
        assert_eq!(type_of(name), expected, "{name} without memory");
        rows += 1;
    }
    assert!(rows >= 20, "only {rows} rows read");
}

#[test]
fn look_alikes_do_not_match() {
    for name in [
        "NVIDIA GH200 480GB",
        "NVIDIA GB200",
        "NVIDIA L40",
        "NVIDIA H800",
        "NVIDIA H800 PCIe",
        "NVIDIA H20",
        "NVIDIA A800-SXM4-80GB",
        "NVIDIA A800 80GB PCIe",
        "NVIDIA A1000",
        "NVIDIA A10M",
        "NVIDIA RTX A6000",
    ] {
        assert_eq!(type_of(name), GpuType::Other, "{name}");
    }
}

#[test]
fn variants_of_known_types() {
    assert_eq!(type_of("NVIDIA A10G"), GpuType::A10);
    assert_eq!(type_of("NVIDIA A10"), GpuType::A10);
    assert_eq!(type_of("NVIDIA H100 NVL"), GpuType::H100);
    assert_eq!(type_of("NVIDIA H200 NVL"), GpuType::H200);
    assert_eq!(type_of("H100"), GpuType::H100);
    assert_eq!(type_of("T4"), GpuType::T4);
}

#[test]
fn a100_without_size_uses_memory() {
    assert_eq!(
        classify("NVIDIA A100", Some(81_920), None).gpu_type,
        GpuType::A100_80GB
    );
    assert_eq!(
        classify("NVIDIA A100", Some(40_960), None).gpu_type,
        GpuType::A100_40GB
    );
    assert_eq!(
        classify("NVIDIA A100", None, None).gpu_type,
        GpuType::A100_40GB
    );
    // A size in the name wins over the memory.
    assert_eq!(
        classify("NVIDIA A100-SXM4-40GB", Some(81_920), None).gpu_type,
        GpuType::A100_40GB
    );
}

#[test]
fn boards_without_model_use_the_pci_device_id() {
    let board = |id| classify("NVIDIA PG509-210", Some(81_920), Some(id)).gpu_type;
    assert_eq!(board(0x20B2), GpuType::A100_80GB);
    assert_eq!(board(0x20B0), GpuType::A100_40GB);
    assert_eq!(board(0x20B5), GpuType::A100_80GB);
    assert_eq!(board(0x20F1), GpuType::A100_40GB);
    assert_eq!(board(0x2236), GpuType::A10);
    assert_eq!(board(0x2237), GpuType::A10);
    assert_eq!(board(0x27B8), GpuType::L4);
    assert_eq!(board(0x26B9), GpuType::L40S);
    assert_eq!(board(0x26B5), GpuType::Other); // L40
    assert_eq!(board(0x2330), GpuType::H100);
    assert_eq!(board(0x2331), GpuType::H100);
    assert_eq!(board(0x2321), GpuType::H100);
    assert_eq!(board(0x2335), GpuType::H200);
    assert_eq!(board(0x233B), GpuType::H200);
    assert_eq!(board(0x2901), GpuType::B200);
    assert_eq!(board(0x1234), GpuType::Other);
    assert_eq!(
        classify("NVIDIA PG509-210", Some(81_920), None).gpu_type,
        GpuType::Other
    );
}

#[test]
fn mig_slices_classify_as_their_parent() {
    let c = classify("NVIDIA H200 MIG 1g.18gb", Some(16_384), None);
    assert_eq!((c.gpu_type, c.is_mig_slice), (GpuType::H200, true));
    let c = classify("NVIDIA A100-SXM4-80GB MIG 3g.40gb", Some(40_192), None);
    assert_eq!((c.gpu_type, c.is_mig_slice), (GpuType::A100_80GB, true));
    assert!(!classify("NVIDIA H100 80GB HBM3", None, None).is_mig_slice);
}
