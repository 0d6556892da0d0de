//! MXFP4, the OCP microscaling 4-bit float format gpt-oss ships its experts in: each run
//! of 32 values shares one power-of-two scale (an E8M0 byte, exponent bias 127), and each
//! value is an E2M1 nibble, two to a byte, low nibble first. kiln expands the weights to
//! the model dtype at load.

use super::weights::{Slice, WeightSource};
use crate::backend::DType;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

/// The 16 E2M1 values: sign bit, two exponent bits, one mantissa bit.
const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The two E2M1 values of a packed byte (a byte read as an exact float), low nibble first:
/// MXFP4's and NVFP4's packing alike.
pub(super) fn e2m1_pair(byte: f32) -> [f32; 2] {
    let byte = byte as u8;
    [E2M1[(byte & 0x0f) as usize], E2M1[(byte >> 4) as usize]]
}

/// Values per shared scale.
const BLOCK: usize = 32;

/// Whether `name` is stored as MXFP4 (`name_blocks` and `name_scales`).
pub fn is_packed(src: &dyn WeightSource, name: &str) -> bool {
    src.contains(&format!("{name}_blocks")) && src.contains(&format!("{name}_scales"))
}

/// Entry `index` (`[rows, cols]`) of the weight `name` of shape `[outer, rows, cols]`, from
/// its packed `_blocks` (`[outer, rows, cols / 32, 16]` bytes) and `_scales` (`[outer,
/// rows, cols / 32]`), in `dtype`. Only that entry's bytes are read: one expert of a
/// layer's stack, not the whole stack.
pub fn unpack(
    src: &dyn WeightSource,
    name: &str,
    [outer, rows, cols]: [usize; 3],
    index: usize,
    dtype: DType,
) -> Result<Tensor> {
    anyhow::ensure!(
        cols.is_multiple_of(BLOCK),
        "MXFP4 weight {name}: {cols} columns are not whole blocks of {BLOCK}"
    );
    let groups = cols / BLOCK;
    let entry = Slice::entry(index);
    // Bytes come back as exact small floats through the f32 reader.
    let read = |suffix: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let name = format!("{name}_{suffix}");
        Ok(src
            .tensor_slice(&name, shape, &entry, DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let blocks = read("blocks", &[outer, rows, groups, BLOCK / 2])?;
    let scales = read("scales", &[outer, rows, groups])?;
    let values = decode(&blocks, &scales).with_context(|| format!("unpacking {name}"))?;
    Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?.to_dtype(dtype.to_candle())?)
}

/// Expands packed bytes (16 per block) with one scale byte per block.
fn decode(blocks: &[f32], scales: &[f32]) -> Result<Vec<f32>> {
    anyhow::ensure!(
        blocks.len() == scales.len() * BLOCK / 2,
        "{} packed bytes for {} scales",
        blocks.len(),
        scales.len()
    );
    let mut out = Vec::with_capacity(blocks.len() * 2);
    for (bytes, &scale) in blocks.chunks_exact(BLOCK / 2).zip(scales) {
        // E8M0: 2^(byte - 127); 255 would be NaN, which no checkpoint holds.
        let factor = 2f32.powi(scale as i32 - 127);
        for &byte in bytes {
            out.extend(e2m1_pair(byte).map(|v| v * factor));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_decode_low_first_with_the_block_scale() {
        // 0x21: low nibble 1 (0.5), high nibble 2 (1.0); 0xf8: -0.0 then -6.0.
        let mut bytes = vec![0.0f32; 16];
        bytes[0] = 0x21 as f32;
        bytes[1] = 0xf8 as f32;
        let out = decode(&bytes, &[128.0]).unwrap(); // scale 2^1
        assert_eq!(out.len(), 32);
        assert_eq!(&out[..4], &[1.0, 2.0, -0.0, -12.0]);
        assert!(out[4..].iter().all(|&v| v == 0.0));
        let out = decode(&bytes, &[125.0]).unwrap(); // 2^-2
        assert_eq!(&out[..2], &[0.125, 0.25]);
        assert!(decode(&bytes, &[127.0, 127.0]).is_err());
    }
}
