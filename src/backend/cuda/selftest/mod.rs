//! `kiln selftest`: every CUDA op on random inputs of real model shapes, in f32, f16 and
//! bf16, checked against the plain-Rust reference ([`crate::backend::cuda::reference`]),
//! timed with CUDA events, the small-M GEMV against cuBLAS at the decode shapes, the
//! cuBLASLt linear against the CPU and cublasGemmEx at the 8B's shapes (whatever
//! `KILN_CUBLASLT` says), plus cuBLAS GEMM bandwidth rows and a check that the caching
//! allocator reuses a decode step's buffers; the diffusion models' ops (`ImageOps`) are
//! checked against the CPU backend. Without a GPU it says so and succeeds.

mod allocator_case;
mod attention_cases;
mod attention_scenarios;
mod compare;
mod gated_delta_case;
mod gemm_bench;
mod gemv_cases;
mod gemv_fused_cases;
mod image_cases;
mod image_conv_cases;
mod image_gemm_cases;
mod linear_lt_cases;
mod mamba_case;
mod moe_case;
mod op_cases;
mod paged_step;
mod qkv_case;
mod report;
mod sampling_case;
mod selective_scan_case;
mod short_conv_case;
mod suite;
mod timing;

pub use compare::{max_abs_error, tolerance, Check};
pub use report::{format_table, Report, Row};

use crate::backend::cuda::{device_count, CudaBackend, DType};
use anyhow::Result;
use std::time::Instant;

/// The groups of cases `--only` can pick, in the order they run.
pub const GROUPS: [&str; 15] = [
    "ops",
    "attention",
    "qkv",
    "short_conv",
    "mamba",
    "gated_delta",
    "selective_scan",
    "gemv",
    "gemv_fused",
    "moe",
    "linear_lt",
    "image",
    "sampling",
    "allocator",
    "gemm_bench",
];

/// Which groups run: all of them when `only` is empty; an unknown name is an error.
fn selected(only: &[String]) -> Result<impl Fn(&str) -> bool + '_> {
    if let Some(bad) = only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        anyhow::bail!("selftest: no group '{bad}' (groups: {})", GROUPS.join(", "));
    }
    Ok(move |group: &str| only.is_empty() || only.iter().any(|g| g == group))
}

/// Runs the selftest on GPU 0 (the groups in `only`, or all). Returns `Ok(true)` when every
/// check passed (or there is no GPU), `Ok(false)` when a check failed; `Err` only when the
/// GPU could not be set up or a group name is unknown.
pub fn run(json: bool, quick: bool, only: &[String]) -> Result<bool> {
    let wants = selected(only)?;
    if let Err(reason) = device_count() {
        if json {
            println!(
                "{}",
                serde_json::json!({ "status": "skipped", "reason": reason.to_string() })
            );
        } else {
            println!("kiln selftest: {reason}; nothing to test on this machine.");
        }
        return Ok(true);
    }
    let started = Instant::now();
    // A whole backend (not just the device): the image-model cases run its `ImageOps`.
    let backend = CudaBackend::new(0)?;
    let dev = backend.device();
    if !json {
        let (major, minor) = dev.nvrtc().version();
        println!(
            "kiln selftest on {} (kernels {}, NVRTC {major}.{minor}){}",
            dev.name(),
            dev.kernels().target().arch_flag(),
            if quick { ", quick" } else { "" }
        );
    }
    let mut suite = suite::Suite::new(dev, quick);
    for dtype in DType::ALL {
        if wants("ops") {
            op_cases::run(&mut suite, dtype);
        }
        if wants("attention") {
            attention_cases::run(&mut suite, dtype);
        }
        if wants("qkv") {
            if let Err(err) = qkv_case::run(&mut suite, dtype) {
                suite.error("qkv_rope_cache", dtype, &err);
            }
        }
        if wants("short_conv") {
            if let Err(err) = short_conv_case::run(&mut suite, dtype) {
                suite.error("gated_short_conv", dtype, &err);
            }
        }
        if wants("mamba") {
            if let Err(err) = mamba_case::run(&mut suite, dtype) {
                suite.error("mamba_mixer", dtype, &err);
            }
        }
        if wants("gated_delta") {
            if let Err(err) = gated_delta_case::run(&mut suite, dtype) {
                suite.error("gated_delta_net", dtype, &err);
            }
        }
        if wants("selective_scan") {
            if let Err(err) = selective_scan_case::run(&mut suite, dtype) {
                suite.error("selective_scan", dtype, &err);
            }
        }
        if wants("gemv") {
            if let Err(err) = gemv_cases::run(&mut suite, dtype) {
                suite.error("gemv", dtype, &err);
            }
        }
        if wants("gemv_fused") {
            if let Err(err) = gemv_fused_cases::run(&mut suite, dtype) {
                suite.error("gemv_fused", dtype, &err);
            }
        }
        if wants("moe") {
            if let Err(err) = moe_case::run(&mut suite, dtype) {
                suite.error("moe_experts", dtype, &err);
            }
        }
        if wants("linear_lt") {
            linear_lt_cases::run(&mut suite, dtype);
        }
        if wants("image") {
            image_cases::run(&mut suite, &backend, dtype);
        }
        if wants("sampling") && sampling_case::enabled() {
            if let Err(err) = sampling_case::run(&mut suite, dtype) {
                suite.error("sampling_draw", dtype, &err);
            }
        }
    }
    if wants("allocator") {
        allocator_case::run(&mut suite);
    }
    if wants("gemm_bench") {
        if let Err(err) = gemm_bench::run(&mut suite) {
            suite.error("gemm bench", DType::BF16, &err);
        }
    }
    // A kernel fault surfaces here at the latest; it must fail the run, not hide.
    if let Err(err) = dev.synchronize() {
        suite.error("synchronize", DType::F32, &err);
    }
    let rows = suite.rows;
    let failed = rows.iter().filter(|r| !r.pass).count();
    let report = Report {
        device: dev.name(),
        kernels_target: dev.kernels().target().arch_flag(),
        nvrtc_version: format!("{}.{}", dev.nvrtc().version().0, dev.nvrtc().version().1),
        passed: rows.len() - failed,
        failed,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_table(&report.rows));
        println!(
            "{} passed, {} failed in {:.1} s",
            report.passed, report.failed, report.seconds
        );
    }
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_picks_named_groups_and_rejects_unknown_ones() {
        let all = selected(&[]).unwrap();
        assert!(GROUPS.iter().all(|g| all(g)));
        let only = ["gemv".to_string(), "attention".to_string()];
        let some = selected(&only).unwrap();
        assert!(some("gemv") && some("attention") && !some("image"));
        let err = selected(&["gemvv".to_string()]).err().unwrap().to_string();
        assert!(err.contains("gemvv") && err.contains("gemv_fused"), "{err}");
    }
}
