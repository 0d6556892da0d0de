//! NVIDIA ModelOpt's `MIXED_PRECISION` checkpoints: each layer quantized with its own
//! algorithm (`quantized_layers` in the config), FP8 or NVFP4. Every quantized weight says
//! which by the tensors beside it (NVFP4's `weight_scale_2`, FP8's lone `weight_scale`),
//! so each is expanded as its own format (`fp8.rs`, `nvfp4.rs`) without reading the list.

use super::expanded_weights::{ExpandedWeights, Expansion};
use super::fp8::Fp8;
use super::nvfp4::Nvfp4;
use super::weights::WeightSource;
use anyhow::Result;

/// FP8 or NVFP4, per weight, as an [`Expansion`].
pub struct Fp8OrNvfp4;

/// A weight source whose FP8 and NVFP4 weights come out expanded.
pub type MixedWeights<S> = ExpandedWeights<S, Fp8OrNvfp4>;

impl<S: WeightSource> Expansion<S> for Fp8OrNvfp4 {
    fn format(&self) -> &'static str {
        "ModelOpt mixed precision (FP8 / NVFP4)"
    }

    fn is_quantized(&self, src: &S, name: &str) -> bool {
        // NVFP4 first: its weights carry a `weight_scale` too.
        Nvfp4.is_quantized(src, name) || Fp8.is_quantized(src, name)
    }

    fn expand(&self, src: &S, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if Nvfp4.is_quantized(src, name) {
            Nvfp4.expand(src, name, shape)
        } else {
            Fp8.expand(src, name, shape)
        }
    }

    fn expanded_shape(&self, src: &S, name: &str) -> Result<Vec<usize>> {
        if Nvfp4.is_quantized(src, name) {
            Nvfp4.expanded_shape(src, name)
        } else {
            Fp8.expanded_shape(src, name)
        }
    }
}
