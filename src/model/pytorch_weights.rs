//! PyTorch checkpoints (`pytorch_model.bin`, whole or sharded): the zip archives `torch.save`
//! writes, as older and many fine-tuned hub repositories still ship them (OPT, early GPT-2
//! fine-tunes). They are read through candle's unpickler, which only rebuilds tensors from
//! the pickled state dict and runs no code from the file, unlike `torch.load` without
//! `weights_only`; a pickle that needs anything else is refused, not executed.

use super::weights::WeightSource;
use crate::backend::DType;
use anyhow::{Context, Result};
use candle_core::pickle::PthTensors;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::PathBuf;

/// Every tensor of one or more `.bin` shards, read lazily: a tensor's bytes are read from its
/// shard's archive when it is asked for.
pub struct PytorchWeights {
    shards: Vec<(PathBuf, PthTensors)>,
    /// Which shard holds each tensor name.
    shard_of: HashMap<String, usize>,
}

impl PytorchWeights {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        anyhow::ensure!(!paths.is_empty(), "no PyTorch checkpoint files");
        let mut shards = Vec::with_capacity(paths.len());
        let mut shard_of = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            anyhow::ensure!(path.exists(), "weights file {} is missing", path.display());
            let tensors = PthTensors::new(path, None).with_context(|| {
                format!(
                    "reading {} as a PyTorch checkpoint (a zip archive written by torch.save, \
                     holding a state dict of tensors)",
                    path.display()
                )
            })?;
            for name in tensors.tensor_infos().keys() {
                if let Some(other) = shard_of.insert(name.clone(), i) {
                    anyhow::bail!(
                        "weight '{name}' is in both {} and {}",
                        paths[other].display(),
                        path.display()
                    );
                }
            }
            shards.push((path.clone(), tensors));
        }
        anyhow::ensure!(
            !shard_of.is_empty(),
            "{paths:?} hold no tensors kiln can read (a state dict of float tensors is expected)"
        );
        Ok(PytorchWeights { shards, shard_of })
    }

    fn shard(&self, name: &str) -> Result<&(PathBuf, PthTensors)> {
        let i = self
            .shard_of
            .get(name)
            .with_context(|| format!("the checkpoint has no weight '{name}'"))?;
        Ok(&self.shards[*i])
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let (path, tensors) = self.shard(name)?;
        tensors
            .get(name)
            .with_context(|| format!("loading weight '{name}' from {}", path.display()))?
            .with_context(|| format!("weight '{name}' vanished from {}", path.display()))
    }
}

impl WeightSource for PytorchWeights {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.load(name)?;
        anyhow::ensure!(
            t.dims() == shape,
            "weight '{name}' has shape {:?}, the config implies {shape:?}",
            t.dims()
        );
        // A transposed (column-major) tensor comes back as a strided view.
        Ok(t.to_dtype(dtype.to_candle())?.contiguous()?)
    }

    fn contains(&self, name: &str) -> bool {
        self.shard_of.contains_key(name)
    }

    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        let (_, tensors) = self.shard(name)?;
        let info = &tensors.tensor_infos()[name];
        Ok(info.layout.dims().to_vec())
    }
}
