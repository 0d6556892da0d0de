//! Where weights come from: memory-mapped safetensors files, or random values for
//! benchmarking (`--load-format dummy`).

use crate::backend::DType;
use anyhow::{Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
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
pub struct DummyWeights {
    pub seed: u64,
}

impl WeightSource for DummyWeights {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            let name_hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            });
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ name_hash);
            (0..n).map(|_| rng.random_range(-0.02f32..0.02)).collect()
        };
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype.to_candle())?)
    }

    fn contains(&self, name: &str) -> bool {
        !name.starts_with("lm_head")
    }
}
