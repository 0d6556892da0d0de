//! The CUDA backend: our kernels (`kernels/*.cu`, JIT-compiled with NVRTC and cached on
//! disk), cuBLAS GEMMs (cuBLASLt unless `KILN_CUBLASLT=0`), and `kiln selftest`. CUDA libraries are loaded at run time; on a
//! machine without them every entry point returns an error instead of panicking.
//!
//! Entry point: [`CudaDevice::new`], then the op methods on it ([`ops`], [`ops_attention`],
//! [`ops_sampling`]) and [`gemm::Blas::linear`] for `y = x W^T`. [`CudaBackend`] also
//! implements the diffusion models' `ImageOps` (`image_ops.rs` and the `image_*` files).

pub mod attention_kernels;
pub mod attention_plan;
pub mod backend;
pub mod batch_meta;
pub mod decode_graphs;
mod decode_replay;
pub mod device;
pub mod device_pools;
pub mod gemm;
pub mod gemm_batched;
pub mod gemm_lt;
pub mod gemm_lt_desc;
pub mod gemm_lt_plan;
pub mod gemv;
pub mod gemv_norm;
pub mod host_copy;
pub mod image_attention;
pub mod image_conv;
pub mod image_conv_implicit;
pub mod image_flash;
pub mod image_geometry;
pub mod image_kernels;
pub mod image_launch;
pub mod image_layout_kernels;
mod image_ops;
pub mod jit;
pub mod jit_cache;
pub mod kernel_sources;
pub mod launch;
pub mod moe;
pub mod nvrtc;
pub mod ops;
pub mod ops_all_reduce;
pub mod ops_attention;
pub mod ops_dummy;
pub mod ops_gated_delta;
pub mod ops_layout;
pub mod ops_mamba;
pub mod ops_qkv;
pub mod ops_sampling;
pub mod ops_sampling_draw;
pub mod ops_selective_scan;
pub mod ops_short_conv;
pub mod pool;
pub mod reference;
#[cfg(test)]
mod reference_vs_cpu;
pub mod sampling_draw_rows;
pub mod selftest;
pub mod tensor;
#[cfg(test)]
mod test_values;

/// The one element-type enum of every backend, re-exported for the kernels' callers.
pub use crate::backend::DType;
pub use backend::CudaBackend;
pub use device::{device_count, CudaDevice, CudaUnavailable};
pub use ops::RopeStyle;
pub use ops_attention::AttentionMetadata;
pub use tensor::CudaTensor;
