//! The CUDA sources compiled at run time: `kernels/common.cuh` prepended to each
//! `kernels/*.cu`, embedded in the binary so a deployed `kiln` needs no source tree.

/// The prelude shared by every kernel file (dtype traits, conversions, reductions).
pub const COMMON_HEADER: &str = include_str!("../../../kernels/common.cuh");

/// One `kernels/<file>` and the kernels (`<op>_<dtype>`) it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    /// File name, used as NVRTC program name and in error messages.
    pub file: &'static str,
    /// The file's text, without the common header.
    pub body: &'static str,
    /// Op names defined for every dtype (`rms_norm` -> `rms_norm_f32`, `_f16`, `_bf16`).
    pub ops: &'static [&'static str],
}

impl KernelFile {
    /// The text NVRTC compiles. The `#line` directive makes compiler messages point at the
    /// right line of the right file instead of the concatenation.
    pub fn full_source(&self) -> String {
        format!(
            "#line 1 \"common.cuh\"\n{COMMON_HEADER}\n#line 1 \"{}\"\n{}",
            self.file, self.body
        )
    }
}

/// Every kernel file, in a fixed order.
pub const KERNEL_FILES: &[KernelFile] = &[
    KernelFile {
        file: "embedding.cu",
        body: include_str!("../../../kernels/embedding.cu"),
        ops: &["embedding", "add_position_embedding"],
    },
    KernelFile {
        file: "norm.cu",
        body: include_str!("../../../kernels/norm.cu"),
        ops: &["rms_norm", "fused_add_rms_norm"],
    },
    KernelFile {
        file: "rope.cu",
        body: include_str!("../../../kernels/rope.cu"),
        ops: &["rope", "qkv_rope_cache"],
    },
    KernelFile {
        file: "activation.cu",
        body: include_str!("../../../kernels/activation.cu"),
        ops: &["silu_mul", "gelu_tanh_mul", "clamped_swiglu"],
    },
    KernelFile {
        file: "elementwise.cu",
        body: include_str!("../../../kernels/elementwise.cu"),
        ops: &[
            "add",
            "add_bias",
            "copy_columns",
            "join_heads",
            "softcap",
            "scale_rows",
            "sigmoid_gate",
        ],
    },
    KernelFile {
        file: "kv_cache.cu",
        body: include_str!("../../../kernels/kv_cache.cu"),
        ops: &["kv_write"],
    },
    KernelFile {
        file: "short_conv.cu",
        body: include_str!("../../../kernels/short_conv.cu"),
        ops: &["short_conv_write", "short_conv"],
    },
    KernelFile {
        file: "mamba.cu",
        body: include_str!("../../../kernels/mamba.cu"),
        ops: &[
            "mamba_conv",
            "mamba_conv_window",
            "mamba_scan",
            "mamba_gated_norm",
            "mamba_gate",
        ],
    },
    KernelFile {
        file: "gated_delta.cu",
        body: include_str!("../../../kernels/gated_delta.cu"),
        ops: &["gated_delta_scan", "gated_delta_norm"],
    },
    KernelFile {
        file: "selective_scan.cu",
        body: include_str!("../../../kernels/selective_scan.cu"),
        ops: &["selective_scan"],
    },
    KernelFile {
        file: "attention.cu",
        body: include_str!("../../../kernels/attention.cu"),
        ops: &["attention"],
    },
    KernelFile {
        file: "attention_prefill.cu",
        body: include_str!("../../../kernels/attention_prefill.cu"),
        ops: &[
            "attention_prefill_hd40",
            "attention_prefill_hd64",
            "attention_prefill_hd80",
            "attention_prefill_hd96",
            "attention_prefill_hd128",
            "attention_prefill_hd160",
            "attention_prefill_hd192",
            "attention_prefill_hd256",
        ],
    },
    KernelFile {
        file: "all_reduce.cu",
        body: include_str!("../../../kernels/all_reduce.cu"),
        ops: &["sum_peers"],
    },
    KernelFile {
        file: "dummy.cu",
        body: include_str!("../../../kernels/dummy.cu"),
        ops: &["dummy_fill"],
    },
    KernelFile {
        file: "moe.cu",
        body: include_str!("../../../kernels/moe.cu"),
        ops: &["moe_route", "moe_combine"],
    },
    KernelFile {
        file: "gemv.cu",
        body: include_str!("../../../kernels/gemv.cu"),
        ops: &[
            "gemv1",
            "gemv2",
            "gemv4",
            "gemv8",
            "gemv1_add_norm",
            "gemv2_add_norm",
            "gemv1_add_norm_swiglu",
            "gemv2_add_norm_swiglu",
            "gemv1_swiglu",
            "gemv2_swiglu",
            "gemv_expert",
            "gemv_expert_swiglu",
        ],
    },
    KernelFile {
        file: "sampling.cu",
        body: include_str!("../../../kernels/sampling.cu"),
        ops: &["argmax", "softmax"],
    },
];

/// Files compiled on first use rather than at startup: their NVRTC compile is long (the
/// split-K decode kernel's 15 variants took 15.6 s cold on an H200) and only some
/// configurations run them (the image-model kernels only serve diffusion pipelines).
pub const LAZY_KERNEL_FILES: &[KernelFile] = &[
    KernelFile {
        file: "attention_decode.cu",
        body: include_str!("../../../kernels/attention_decode.cu"),
        ops: &[
            "attention_decode_hd64",
            "attention_decode_hd80",
            "attention_decode_hd96",
            "attention_decode_hd128",
            "attention_decode_hd192",
            "attention_decode_hd256",
            "attention_decode_merge",
        ],
    },
    KernelFile {
        file: "image_norm.cu",
        body: include_str!("../../../kernels/image_norm.cu"),
        ops: &[
            "group_norm_stats",
            "group_norm_finalize",
            "group_norm_apply",
            "layer_norm",
            "head_layer_norm",
        ],
    },
    KernelFile {
        file: "image_pointwise.cu",
        body: include_str!("../../../kernels/image_pointwise.cu"),
        ops: &[
            "activation",
            "geglu",
            "lincomb",
            "add_channel_bias",
            "add_row",
        ],
    },
    KernelFile {
        file: "image_layout.cu",
        body: include_str!("../../../kernels/image_layout.cu"),
        ops: &[
            "upsample_nearest",
            "copy_axis",
            "transpose_last2",
            "im2col",
            "conv_weight_bias",
        ],
    },
    // conv2d as an implicit GEMM (KILN_CONV_IMPLICIT=1; 16-bit, sm_80+).
    KernelFile {
        file: "conv_implicit.cu",
        body: include_str!("../../../kernels/conv_implicit.cu"),
        ops: &["conv_implicit", "conv_implicit_taps", "conv_weight_taps"],
    },
    KernelFile {
        file: "attention_softmax.cu",
        body: include_str!("../../../kernels/attention_softmax.cu"),
        ops: &["attention_softmax"],
    },
    // Device sampling (--gpu-sampling, on by default), compiled on first use.
    KernelFile {
        file: "sampling_draw.cu",
        body: include_str!("../../../kernels/sampling_draw.cu"),
        ops: &["sampling_draw"],
    },
];

/// Every kernel file, those compiled at startup first.
pub fn all_kernel_files() -> impl Iterator<Item = &'static KernelFile> {
    KERNEL_FILES.iter().chain(LAZY_KERNEL_FILES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_defined_in_its_file_for_every_dtype() {
        for file in all_kernel_files() {
            for op in file.ops {
                let needle = format!(" {op}_##S(");
                assert!(
                    file.body.contains(&needle),
                    "{} does not define {op} through the dtype macro",
                    file.file
                );
            }
            assert!(file.body.contains("KILN_FOR_EACH_DTYPE("), "{}", file.file);
        }
    }

    #[test]
    fn kernels_include_no_toolkit_header() {
        for text in all_kernel_files().map(|f| f.body).chain([COMMON_HEADER]) {
            assert!(
                !text.contains("#include"),
                "kernels must not include headers"
            );
        }
    }

    #[test]
    fn full_source_names_the_file_for_error_messages() {
        let src = KERNEL_FILES[1].full_source();
        assert!(src.contains("#line 1 \"norm.cu\""));
        assert!(src.starts_with("#line 1 \"common.cuh\""));
    }
}
