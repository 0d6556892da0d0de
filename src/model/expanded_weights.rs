//! The one shape every quantized-checkpoint source has: a weight the format stores
//! quantized comes out expanded (to f32, then the model dtype); every other tensor, and
//! every other question, goes to the inner source. Each format says only which weights
//! are its own and how to expand them ([`Expansion`]): FP8 (`fp8.rs`), NVFP4 (`nvfp4.rs`),
//! integer groups (`int_quant.rs`), bitsandbytes 4-bit (`bnb.rs`) and 8-bit (`bnb8.rs`).

use super::weights::{GeneratedPart, Slice, WeightSource};
use crate::backend::DType;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

/// How one quantized format stores and expands its weights.
pub trait Expansion<S: WeightSource> {
    /// The format's name, for errors.
    fn format(&self) -> &'static str;
    /// Whether weight `name` is stored quantized in `src`.
    fn is_quantized(&self, src: &S, name: &str) -> bool;
    /// Its values for the full `shape`, row-major.
    fn expand(&self, src: &S, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Its full shape (for formats that store no tensor under `name` itself).
    fn expanded_shape(&self, src: &S, name: &str) -> Result<Vec<usize>> {
        src.shape_of(name)
    }
}

/// A weight source whose quantized weights (per `E`) come out expanded.
pub struct ExpandedWeights<S, E> {
    inner: S,
    expansion: E,
}

impl<S: WeightSource, E: Expansion<S>> ExpandedWeights<S, E> {
    pub fn new(inner: S, expansion: E) -> Self {
        ExpandedWeights { inner, expansion }
    }
}

impl<S: WeightSource, E: Expansion<S>> WeightSource for ExpandedWeights<S, E> {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if !self.expansion.is_quantized(&self.inner, name) {
            return self.inner.tensor(name, shape, dtype);
        }
        let values = self
            .expansion
            .expand(&self.inner, name, shape)
            .with_context(|| format!("expanding {} weight {name}", self.expansion.format()))?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype.to_candle())?)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name) || self.expansion.is_quantized(&self.inner, name)
    }

    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        if self.expansion.is_quantized(&self.inner, name) {
            return self.expansion.expanded_shape(&self.inner, name);
        }
        self.inner.shape_of(name)
    }

    fn words(&self, name: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        self.inner.words(name)
    }

    fn int8s(&self, name: &str) -> Result<(Vec<usize>, Vec<i8>)> {
        self.inner.int8s(name)
    }

    fn generated(
        &self,
        name: &str,
        shape: &[usize],
        slice: Option<&Slice>,
    ) -> Option<GeneratedPart> {
        self.inner.generated(name, shape, slice)
    }

    /// A quantized weight's part is cut from the expanded whole (its scales and packing
    /// span rows and columns a part may split); others are read as the inner source reads
    /// them.
    fn tensor_slice(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        dtype: DType,
    ) -> Result<Tensor> {
        if !self.expansion.is_quantized(&self.inner, name) {
            return self.inner.tensor_slice(name, shape, slice, dtype);
        }
        slice.cut(&self.tensor(name, shape, dtype)?)
    }
}
