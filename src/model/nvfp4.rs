//! NVFP4, NVIDIA's 4-bit float format (the checkpoints NVIDIA publishes for Blackwell, and
//! RedHat's): each value an E2M1 nibble, two to a byte, low nibble first; each run of 16
//! values along a row shares an FP8 (e4m3) scale; one f32 scale covers the whole tensor.
//! Two layouts carry it:
//!
//! - compressed-tensors' `nvfp4-pack-quantized`: `X.weight_packed` (`[out, in / 2]` bytes),
//!   `X.weight_scale` (`[out, in / 16]` e4m3) and `X.weight_global_scale`, which *divides*:
//!   `value * (scale / global)`. Its decompressor hands the weights out in bf16, so kiln
//!   rounds them there too before the model dtype.
//! - NVIDIA ModelOpt's `NVFP4`: the bytes under `X.weight` itself, `X.weight_scale` the
//!   same, and `X.weight_scale_2`, which multiplies: `value * scale * scale_2`.
//!
//! kiln expands the weights to the model dtype at load (as for the other formats, at the
//! memory of an unquantized checkpoint).

use super::expanded_weights::{ExpandedWeights, Expansion};
use super::mxfp4::e2m1_pair;
use super::weights::WeightSource;
use crate::backend::DType;
use anyhow::{Context, Result};

/// Values per e4m3 scale.
const GROUP: usize = 16;

/// NVFP4 storage, in either layout, as an [`Expansion`].
pub struct Nvfp4;

/// A weight source whose NVFP4 weights come out expanded.
pub type Nvfp4Weights<S> = ExpandedWeights<S, Nvfp4>;

/// Where a quantized weight's parts are stored, and how its tensor-wide scale applies.
struct Stored {
    packed: String,
    scale: String,
    global: String,
    /// compressed-tensors: the global scale divides, and the result is rounded to bf16.
    divides: bool,
}

/// The parts of weight `name` (`X.weight`), if it is stored as NVFP4.
fn stored<S: WeightSource>(src: &S, name: &str) -> Option<Stored> {
    let stem = name.strip_suffix("weight")?;
    let part = |suffix: &str| format!("{stem}{suffix}");
    let scale = part("weight_scale");
    if src.contains(&part("weight_packed")) && src.contains(&part("weight_global_scale")) {
        Some(Stored {
            packed: part("weight_packed"),
            scale,
            global: part("weight_global_scale"),
            divides: true,
        })
    } else if src.contains(&part("weight_scale_2")) && src.contains(&scale) {
        Some(Stored {
            packed: name.to_string(),
            scale,
            global: part("weight_scale_2"),
            divides: false,
        })
    } else {
        None
    }
}

impl<S: WeightSource> Expansion<S> for Nvfp4 {
    fn format(&self) -> &'static str {
        "NVFP4"
    }

    fn is_quantized(&self, src: &S, name: &str) -> bool {
        stored(src, name).is_some()
    }

    fn expanded_shape(&self, src: &S, name: &str) -> Result<Vec<usize>> {
        let stored = stored(src, name).context("not an NVFP4 weight")?;
        match src.shape_of(&stored.packed)?.as_slice() {
            &[rows, half] => Ok(vec![rows, 2 * half]),
            other => anyhow::bail!("packed NVFP4 weight {} has shape {other:?}", stored.packed),
        }
    }

    fn expand(&self, src: &S, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let stored = stored(src, name).context("not an NVFP4 weight")?;
        let &[rows, cols] = shape else {
            anyhow::bail!("expected a matrix, the config implies {shape:?}");
        };
        anyhow::ensure!(
            cols.is_multiple_of(GROUP),
            "{cols} columns are not whole groups of {GROUP}"
        );
        // Bytes and e4m3 scales come back as exact floats through the f32 reader.
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            Ok(src
                .tensor(name, shape, DType::F32)
                .with_context(|| format!("reading {name}"))?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let packed = read(&stored.packed, &[rows, cols / 2])?;
        let scales = read(&stored.scale, &[rows, cols / GROUP])?;
        let global_shape = src.shape_of(&stored.global)?;
        let global = match read(&stored.global, &global_shape)?.as_slice() {
            &[g] => g,
            other => anyhow::bail!("{} holds {} values, not one", stored.global, other.len()),
        };
        // As each format's own dequantization computes it: the group's factor in f32, then
        // the value times it.
        let factors: Vec<f32> = scales
            .iter()
            .map(|&s| {
                if stored.divides {
                    s / global
                } else {
                    s * global
                }
            })
            .collect();
        let round = if stored.divides {
            DType::BF16
        } else {
            DType::F32
        };
        Ok(decode(&packed, &factors, round))
    }
}

/// The values of packed bytes (8 per group of 16), each group times its factor, rounded to
/// `round`.
fn decode(packed: &[f32], factors: &[f32], round: DType) -> Vec<f32> {
    packed
        .chunks_exact(GROUP / 2)
        .zip(factors)
        .flat_map(|(bytes, &factor)| {
            bytes
                .iter()
                .flat_map(move |&byte| e2m1_pair(byte).map(|v| round.round(v * factor)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_decode_low_first_times_their_group_factor() {
        // 0x21: low nibble 1 (0.5), high nibble 2 (1.0); 0xf8: -0.0 then -6.0.
        let mut bytes = vec![0.0f32; 16];
        bytes[0] = 0x21 as f32;
        bytes[1] = 0xf8 as f32;
        bytes[8] = 0x77 as f32; // second group: 6.0, 6.0
        let out = decode(&bytes, &[2.0, 0.25], DType::F32);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[..4], &[1.0, 2.0, -0.0, -12.0]);
        assert!(out[4..16].iter().all(|&v| v == 0.0));
        assert_eq!(&out[16..18], &[1.5, 1.5]);
        // compressed-tensors' output rounds to bf16: 6 / 3 * 1.0001 is not a bf16 value.
        let rounded = decode(&bytes[8..16], &[1.0001 / 3.0], DType::BF16);
        assert_eq!(rounded[0], DType::BF16.round(6.0 * (1.0001 / 3.0)));
        assert_ne!(rounded[0], 6.0 * (1.0001 / 3.0));
    }
}
