//! Where weights come from: memory-mapped safetensors files, or random values for
//! benchmarking (`--load-format dummy`).

use crate::backend::DType;
use anyhow::{Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use std::path::PathBuf;

/// A host tensor by name, checked against the shape the model expects, in the model dtype.
pub trait WeightSource {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool;
}

/// Safetensors files, memory-mapped: a tensor's bytes are read once, when it is converted.
pub struct SafetensorsWeights {
    files: MmapedSafetensors,
}

impl SafetensorsWeights {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        anyhow::ensure!(!paths.is_empty(), "no safetensors files");
        for p in paths {
            anyhow::ensure!(p.exists(), "weights file {} is missing", p.display());
        }
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on
        // them not being truncated while kiln runs.
        let files = unsafe { MmapedSafetensors::multi(paths) }.with_context(|| {
            format!("opening safetensors files {paths:?} (corrupt or not safetensors?)")
        })?;
        Ok(SafetensorsWeights { files })
    }
}

impl WeightSource for SafetensorsWeights {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self
            .files
            .load(name, &Device::Cpu)
            .with_context(|| format!("loading weight '{name}'"))?;
        anyhow::ensure!(
            t.dims() == shape,
            "weight '{name}' has shape {:?}, the config implies {shape:?}",
            t.dims()
        );
        Ok(t.to_dtype(dtype.to_candle())?)
    }

    fn contains(&self, name: &str) -> bool {
        self.files.get(name).is_ok()
    }
}

/// Random weights of the right shapes, reproducible per tensor name. Norm weights are ones
/// so activations stay in a sane range through many layers.
///
/// Values are uniform in [-0.02, 0.02), drawn by a counter-based generator (element `i` of a
/// tensor is a hash of its index and the tensor's seed), so the fill runs on every core, in the
/// target dtype directly, and gives the same values whatever the thread count: an 8B model's
/// 16 GB of bf16 take seconds, not minutes.
pub struct DummyWeights {
    pub seed: u64,
}

/// SplitMix64's finaliser: a cheap, well-mixed hash of a 64-bit counter.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// Element `index` of the stream `seed`, uniform in [-0.02, 0.02).
fn dummy_value(seed: u64, index: u64) -> f32 {
    let bits = mix64(seed.wrapping_add(index.wrapping_mul(0x9e3779b97f4a7c15)));
    let unit = (bits >> 40) as f32 / (1u64 << 24) as f32;
    (unit * 2.0 - 1.0) * 0.02
}

/// `n` dummy values converted to `T`, filled in parallel.
fn dummy_fill<T: Copy + Default + Send>(
    n: usize,
    seed: u64,
    convert: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    let mut data = vec![T::default(); n];
    data.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = (c * CHUNK) as u64;
            for (i, x) in chunk.iter_mut().enumerate() {
                *x = convert(dummy_value(seed, base + i as u64));
            }
        });
    data
}

impl WeightSource for DummyWeights {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if name.ends_with("norm.weight") {
            return Ok(Tensor::ones(shape, dtype.to_candle(), &Device::Cpu)?);
        }
        let n: usize = shape.iter().product();
        let name_hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let seed = mix64(self.seed ^ name_hash);
        let t = match dtype {
            DType::F32 => Tensor::from_vec(dummy_fill(n, seed, |x| x), shape, &Device::Cpu)?,
            DType::F16 => {
                Tensor::from_vec(dummy_fill(n, seed, f16::from_f32), shape, &Device::Cpu)?
            }
            DType::BF16 => {
                Tensor::from_vec(dummy_fill(n, seed, bf16::from_f32), shape, &Device::Cpu)?
            }
        };
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        !name.starts_with("lm_head")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_weights_are_small_reproducible_and_differ_per_name() {
        let w = DummyWeights { seed: 3 };
        let a = w
            .tensor(
                "model.layers.0.mlp.down_proj.weight",
                &[300, 700],
                DType::F32,
            )
            .unwrap();
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let again = w
            .tensor(
                "model.layers.0.mlp.down_proj.weight",
                &[300, 700],
                DType::F32,
            )
            .unwrap();
        assert_eq!(a, again.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let other = w
            .tensor(
                "model.layers.1.mlp.down_proj.weight",
                &[300, 700],
                DType::F32,
            )
            .unwrap();
        assert_ne!(a, other.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(a.iter().all(|x| (-0.02..0.02).contains(x)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 1e-3, "mean {mean}");
        let norm = w.tensor("model.norm.weight", &[8], DType::BF16).unwrap();
        assert_eq!(
            norm.to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![1.0; 8]
        );
    }

    #[test]
    fn bf16_dummy_weights_are_the_f32_ones_rounded() {
        let w = DummyWeights { seed: 1 };
        let f = w
            .tensor("x.weight", &[1000], DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = w.tensor("x.weight", &[1000], DType::BF16).unwrap();
        let b: Vec<f32> = b
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let rounded: Vec<f32> = f.iter().map(|&x| DType::BF16.round(x)).collect();
        assert_eq!(b, rounded);
    }
}
