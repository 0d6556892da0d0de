//! bitsandbytes 4-bit checkpoints (`quant_method: bitsandbytes`, `load_in_4bit`: the
//! `-bnb-4bit` repos), expanded to the model dtype as they load. Each quantized weight
//! `X.weight` is stored as bytes of two 4-bit codes (the first element in the high
//! nibble), with beside it:
//! - `X.weight.quant_map`: the 16 values the codes stand for (NF4 or FP4);
//! - `X.weight.absmax`: one scale per block of `blocksize` elements, itself quantized to a
//!   byte per block under double quantization (`nested_absmax` per `nested_blocksize` blocks,
//!   `nested_quant_map`, plus `nested_offset`);
//! - `X.weight.quant_state.bitsandbytes__nf4` (or `__fp4`): JSON bytes with the shape, block
//!   sizes and offset.
//!
//! So `w[j] = quant_map[code j] * absmax[j / blocksize]`, in the stored element order.

use super::expanded_weights::{ExpandedWeights, Expansion};
use super::weights::WeightSource;
use crate::backend::DType;
use anyhow::{Context, Result};
use serde::Deserialize;

const STATE_SUFFIXES: [&str; 2] = [
    ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4",
];

/// The JSON blob each quantized weight carries.
#[derive(Deserialize)]
struct QuantState {
    blocksize: usize,
    shape: Vec<usize>,
    #[serde(default)]
    nested_blocksize: Option<usize>,
    #[serde(default)]
    nested_offset: Option<f32>,
}

/// bitsandbytes 4-bit storage, as an [`Expansion`].
pub struct Bnb4;

/// A weight source whose bitsandbytes 4-bit weights come out expanded.
pub type Bnb4Weights<S> = ExpandedWeights<S, Bnb4>;

/// Any tensor's values as f32, whatever its stored shape (bytes come out as 0..=255).
fn read_all<S: WeightSource>(src: &S, name: &str) -> Result<Vec<f32>> {
    let shape = src.shape_of(name)?;
    Ok(src
        .tensor(name, &shape, DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Per-block scales: `values` (f32 scales), or byte codes through `code` with one
/// `scales` entry per `block` of them, plus `offset`.
fn blockwise(
    codes: &[f32],
    code: &[f32],
    scales: &[f32],
    block: usize,
    offset: f32,
) -> Result<Vec<f32>> {
    anyhow::ensure!(
        block > 0 && scales.len() >= codes.len().div_ceil(block),
        "{} nested scales for {} block scales in blocks of {block}",
        scales.len(),
        codes.len()
    );
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let v = code
                .get(c as usize)
                .context("a nested code outside its map")?;
            Ok(v * scales[i / block] + offset)
        })
        .collect()
}

/// The quant-state tensor's name, when weight `name` is stored 4-bit.
fn state_of<S: WeightSource>(src: &S, name: &str) -> Option<String> {
    STATE_SUFFIXES
        .iter()
        .map(|s| format!("{name}{s}"))
        .find(|s| src.contains(s))
}

impl<S: WeightSource> Expansion<S> for Bnb4 {
    fn format(&self) -> &'static str {
        "bitsandbytes 4-bit"
    }

    fn is_quantized(&self, src: &S, name: &str) -> bool {
        state_of(src, name).is_some()
    }

    fn expand(&self, src: &S, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let state_name = state_of(src, name).context("not a 4-bit weight")?;
        let blob: Vec<u8> = read_all(src, &state_name)?
            .into_iter()
            .map(|b| b as u8)
            .collect();
        let state: QuantState = serde_json::from_slice(&blob)
            .with_context(|| format!("{state_name} is not bitsandbytes' JSON state"))?;
        anyhow::ensure!(
            state.shape == shape,
            "{name} is {:?} in its quant state, the config implies {shape:?}",
            state.shape
        );
        let n: usize = shape.iter().product();
        let packed = read_all(src, name)?;
        anyhow::ensure!(
            packed.len() * 2 >= n,
            "{} bytes for {n} 4-bit values",
            packed.len()
        );
        let quant_map = read_all(src, &format!("{name}.quant_map"))?;
        anyhow::ensure!(
            quant_map.len() == 16,
            "{name}.quant_map has {} values",
            quant_map.len()
        );
        let stored = read_all(src, &format!("{name}.absmax"))?;
        let nested = format!("{name}.nested_absmax");
        let absmax = if src.contains(&nested) {
            let code = read_all(src, &format!("{name}.nested_quant_map"))?;
            let scales = read_all(src, &nested)?;
            let block = state.nested_blocksize.unwrap_or(256);
            blockwise(
                &stored,
                &code,
                &scales,
                block,
                state.nested_offset.unwrap_or(0.0),
            )?
        } else {
            stored
        };
        anyhow::ensure!(
            state.blocksize > 0 && absmax.len() >= n.div_ceil(state.blocksize),
            "{} scales for {n} values in blocks of {}",
            absmax.len(),
            state.blocksize
        );
        Ok((0..n)
            .map(|j| {
                let byte = packed[j / 2] as u8;
                let code = if j % 2 == 0 { byte >> 4 } else { byte & 0xf };
                quant_map[code as usize] * absmax[j / state.blocksize]
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scales_decode_through_their_map_and_offset() {
        let scales = blockwise(&[0.0, 1.0, 1.0], &[0.5, -0.25], &[2.0, 4.0], 2, 0.1).unwrap();
        assert_eq!(scales, vec![1.1, -0.4, -0.9]);
        assert!(blockwise(&[0.0, 1.0, 1.0], &[0.5, -0.25], &[2.0], 2, 0.0).is_err());
    }
}
