//! The image kernels that must run at memory bandwidth, read in the PTX NVRTC makes of them
//! (no GPU needed): their 16-byte vectors really are single 16-byte loads and stores (a
//! vector passed on by reference compiled to four 4-byte loads once), and no 64-bit
//! division is left in them (the old per-element index math made im2col instruction-bound).
//! Skips without libnvrtc, unless `KILN_REQUIRE_NVRTC=1`.

use kiln::backend::cuda::jit_cache::CompileTarget;
use kiln::backend::cuda::kernel_sources::all_kernel_files;
use kiln::backend::cuda::nvrtc::Nvrtc;

/// The body of PTX entry `name`, from its `.entry` line to the closing brace.
fn entry<'p>(ptx: &'p str, name: &str) -> &'p str {
    let start = ptx
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("no entry {name}"));
    let end = ptx[start..].find("\n}\n").map_or(ptx.len(), |e| start + e);
    &ptx[start..end]
}

#[test]
fn per_plane_kernels_move_16_bytes_at_a_time_without_64_bit_division() {
    let nvrtc = match Nvrtc::load() {
        Ok(nvrtc) => nvrtc,
        Err(err) => {
            if std::env::var("KILN_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("KILN_REQUIRE_NVRTC=1 but NVRTC is unusable: {err:#}");
            }
            eprintln!("skipping the image kernel PTX check: {err:#}");
            return;
        }
    };
    // (file, kernel, loads 16 bytes at a time) for every dtype.
    let kernels = [
        ("image_norm.cu", "group_norm_stats", true),
        ("image_norm.cu", "group_norm_apply", true),
        ("image_pointwise.cu", "add_channel_bias", true),
        ("image_layout.cu", "im2col", false),
        ("image_layout.cu", "upsample_nearest", false),
        ("image_layout.cu", "conv_weight_bias", false),
    ];
    for file in all_kernel_files().filter(|f| kernels.iter().any(|k| k.0 == f.file)) {
        let compiled = nvrtc.compile(file, CompileTarget::Ptx(90)).unwrap();
        let ptx = String::from_utf8(compiled.image).unwrap();
        for (_, op, loads) in kernels.iter().filter(|k| k.0 == file.file) {
            for dtype in ["f32", "f16", "bf16"] {
                let name = format!("{op}_{dtype}");
                let body = entry(&ptx, &name);
                if *loads {
                    assert!(body.contains("ld.global.v4"), "{name}: no 16-byte load");
                }
                if *op != "group_norm_stats" {
                    assert!(body.contains("st.global.v4"), "{name}: no 16-byte store");
                }
                for div in ["div.s64", "div.u64", "rem.s64", "rem.u64"] {
                    // The statistics split a row's vectors between blocks once per block.
                    let allowed = usize::from(*op == "group_norm_stats") * 2;
                    assert!(
                        body.matches(div).count() <= allowed,
                        "{name}: {div} in the kernel"
                    );
                }
            }
        }
    }
}
