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

    /// The stored shape of `name`, for tensors whose shape the config does not imply (an
    /// FP8 weight's scale). Sources that hold no such tensors need not say.
    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        anyhow::bail!("this weight source cannot tell the shape of '{name}'")
    }

    /// The raw 32-bit words of an integer tensor (int32 or uint32: packed quantized weights,
    /// group indices) with its stored shape; float conversion would lose their bits.
    fn words(&self, name: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        anyhow::bail!("this weight source holds no integer tensor '{name}'")
    }

    /// A tensor stored as signed bytes (bitsandbytes' int8 weights), with its shape: candle
    /// has no 8-bit integer type, so these are read raw.
    fn int8s(&self, name: &str) -> Result<(Vec<usize>, Vec<i8>)> {
        anyhow::bail!("this weight source holds no int8 tensor '{name}'")
    }

    /// For generated weights: how to compute the values of `name` (the part `slice`, or
    /// all of it) on the device instead of on the host. `None`: the values must be read.
    fn generated(
        &self,
        _name: &str,
        _shape: &[usize],
        _slice: Option<&Slice>,
    ) -> Option<GeneratedPart> {
        None
    }

    /// The part `range` along dimension `dim` of the tensor whose full shape is `shape`: a
    /// tensor-parallel rank's shard. Sources that can read a part without the whole
    /// (memory-mapped files, generated values) override this.
    fn tensor_slice(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        dtype: DType,
    ) -> Result<Tensor> {
        slice.cut(&self.tensor(name, shape, dtype)?)
    }
}

/// A boxed source is a source, so wrappers can stack on whichever one a checkpoint needs.
impl<T: WeightSource + ?Sized> WeightSource for Box<T> {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        (**self).tensor(name, shape, dtype)
    }

    fn contains(&self, name: &str) -> bool {
        (**self).contains(name)
    }

    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        (**self).shape_of(name)
    }

    fn words(&self, name: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        (**self).words(name)
    }

    fn int8s(&self, name: &str) -> Result<(Vec<usize>, Vec<i8>)> {
        (**self).int8s(name)
    }

    fn generated(
        &self,
        name: &str,
        shape: &[usize],
        slice: Option<&Slice>,
    ) -> Option<GeneratedPart> {
        (**self).generated(name, shape, slice)
    }

    fn tensor_slice(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        dtype: DType,
    ) -> Result<Tensor> {
        (**self).tensor_slice(name, shape, slice, dtype)
    }
}

/// A source whose weights are stored under other names than the model asks for: `rename`
/// maps each asked name to the stored one (a multimodal checkpoint's language model, a base
/// model saved alone).
pub struct RenamedWeights<S> {
    inner: S,
    rename: Box<dyn Fn(&str) -> String + Send + Sync>,
}

impl<S> RenamedWeights<S> {
    pub fn new(inner: S, rename: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        RenamedWeights {
            inner,
            rename: Box::new(rename),
        }
    }

    /// The name the checkpoint stores the loader's weight `name` under.
    pub fn stored_name(&self, name: &str) -> String {
        (self.rename)(name)
    }
}

impl<S: WeightSource> WeightSource for RenamedWeights<S> {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.inner.tensor(&(self.rename)(name), shape, dtype)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(&(self.rename)(name))
    }

    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        self.inner.shape_of(&(self.rename)(name))
    }

    fn words(&self, name: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        self.inner.words(&(self.rename)(name))
    }

    fn int8s(&self, name: &str) -> Result<(Vec<usize>, Vec<i8>)> {
        self.inner.int8s(&(self.rename)(name))
    }

    fn generated(
        &self,
        name: &str,
        shape: &[usize],
        slice: Option<&Slice>,
    ) -> Option<GeneratedPart> {
        self.inner.generated(&(self.rename)(name), shape, slice)
    }

    fn tensor_slice(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        dtype: DType,
    ) -> Result<Tensor> {
        self.inner
            .tensor_slice(&(self.rename)(name), shape, slice, dtype)
    }
}

/// A layer weight's loader name, `model.layers.N.part`, as `(N, part)`.
pub fn layer_part(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix("model.layers.")?.split_once('.')
}

/// `part` (a layer weight's name below `model.layers.N.`) with the first of `table`'s
/// `(ours, theirs)` prefixes it starts with replaced: how a checkpoint of another layout
/// names the loader's weights.
pub fn renamed_part(part: &str, table: &[(&str, &str)]) -> String {
    table
        .iter()
        .find_map(|(ours, theirs)| {
            part.strip_prefix(ours)
                .map(|rest| format!("{theirs}{rest}"))
        })
        .unwrap_or_else(|| part.to_string())
}

/// `inner` with the names of its layer weights (below `model.layers.N.`) renamed by the first
/// of `table`'s `(ours, theirs)` prefixes that fits: a checkpoint that names a few of a
/// layer's weights its own way and the rest as the loader does.
pub fn with_layer_renames<S: WeightSource>(
    inner: S,
    table: &'static [(&'static str, &'static str)],
) -> RenamedWeights<S> {
    RenamedWeights::new(inner, move |name| match layer_part(name) {
        Some((index, part)) => format!("model.layers.{index}.{}", renamed_part(part, table)),
        None => name.to_string(),
    })
}

/// A range of indices along one dimension of a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub dim: usize,
    pub range: std::ops::Range<usize>,
}

impl Slice {
    /// This part of `full`, a whole tensor already read.
    pub fn cut(&self, full: &Tensor) -> Result<Tensor> {
        Ok(full
            .narrow(self.dim, self.range.start, self.range.len())?
            .contiguous()?)
    }

    /// Entry `index` of the outermost dimension (one expert of a stacked weight).
    pub fn entry(index: usize) -> Slice {
        Slice {
            dim: 0,
            range: index..index + 1,
        }
    }

    /// The shape of the part.
    fn shape(&self, full: &[usize]) -> Vec<usize> {
        let mut shape = full.to_vec();
        shape[self.dim] = self.range.len();
        shape
    }

    /// Checks the slice fits `shape` and says where it is: the part is `outer` runs of
    /// `run` contiguous elements, run `o` starting at element `o * stride + first`.
    pub fn runs(&self, name: &str, shape: &[usize]) -> Result<SliceRuns> {
        anyhow::ensure!(
            self.dim < shape.len()
                && self.range.start <= self.range.end
                && self.range.end <= shape[self.dim],
            "slice {:?} of dimension {} is outside weight '{name}' of shape {shape:?}",
            self.range,
            self.dim
        );
        let inner: usize = shape[self.dim + 1..].iter().product();
        Ok(SliceRuns {
            outer: shape[..self.dim].iter().product(),
            run: self.range.len() * inner,
            stride: shape[self.dim] * inner,
            first: self.range.start * inner,
        })
    }
}

/// Where a [`Slice`]'s elements sit in the full tensor (see [`Slice::runs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceRuns {
    pub outer: usize,
    pub run: usize,
    pub stride: usize,
    pub first: usize,
}

impl SliceRuns {
    /// The whole of a tensor of `n` elements.
    pub fn whole(n: usize) -> SliceRuns {
        SliceRuns {
            outer: 1,
            run: n,
            stride: n,
            first: 0,
        }
    }

    /// Elements of the part.
    pub fn len(&self) -> usize {
        self.outer * self.run
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A generated weight (or part of one): element `i` is [`dummy_value`]`(stream,
/// runs.full_index(i))`. Backends that can compute it on the device skip the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneratedPart {
    pub stream: u64,
    pub runs: SliceRuns,
}

impl GeneratedPart {
    /// The part's values, computed on the host (the reference for device generation).
    pub fn values(&self) -> Vec<f32> {
        (0..self.runs.len())
            .map(|i| dummy_value(self.stream, self.runs.full_index(i) as u64))
            .collect()
    }
}

impl SliceRuns {
    /// Index in the full tensor of element `i` of the part.
    pub fn full_index(&self, i: usize) -> usize {
        (i / self.run) * self.stride + self.first + i % self.run
    }
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

    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        let view = self
            .files
            .get(name)
            .with_context(|| format!("loading weight '{name}'"))?;
        Ok(view.shape().to_vec())
    }

    fn words(&self, name: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        let view = self
            .files
            .get(name)
            .with_context(|| format!("loading weight '{name}'"))?;
        anyhow::ensure!(
            matches!(
                candle_core::DType::try_from(view.dtype()),
                Ok(candle_core::DType::I32 | candle_core::DType::U32)
            ),
            "weight '{name}' is {:?}, not 32-bit integers",
            view.dtype()
        );
        let words = view
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((view.shape().to_vec(), words))
    }

    fn int8s(&self, name: &str) -> Result<(Vec<usize>, Vec<i8>)> {
        let view = self
            .files
            .get(name)
            .with_context(|| format!("loading weight '{name}'"))?;
        // By name: the view's dtype is candle's safetensors version's type, not ours.
        anyhow::ensure!(
            format!("{:?}", view.dtype()) == "I8",
            "weight '{name}' is {:?}, not int8",
            view.dtype()
        );
        let values = view.data().iter().map(|&b| b as i8).collect();
        Ok((view.shape().to_vec(), values))
    }

    /// Copies only the part's bytes out of the mapped file, so a rank's peak host memory is
    /// its shard, not the full tensor.
    fn tensor_slice(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        dtype: DType,
    ) -> Result<Tensor> {
        let view = self
            .files
            .get(name)
            .with_context(|| format!("loading weight '{name}'"))?;
        anyhow::ensure!(
            view.shape() == shape,
            "weight '{name}' has shape {:?}, the config implies {shape:?}",
            view.shape()
        );
        let file_dtype = candle_core::DType::try_from(view.dtype())
            .with_context(|| format!("weight '{name}' has dtype {:?}", view.dtype()))?;
        let size = file_dtype.size_in_bytes();
        let runs = slice.runs(name, shape)?;
        let data = view.data();
        let mut bytes = Vec::with_capacity(runs.outer * runs.run * size);
        for o in 0..runs.outer {
            let start = (o * runs.stride + runs.first) * size;
            bytes.extend_from_slice(&data[start..start + runs.run * size]);
        }
        let part = Tensor::from_raw_buffer(&bytes, file_dtype, &slice.shape(shape), &Device::Cpu)
            .with_context(|| format!("slicing weight '{name}'"))?;
        Ok(part.to_dtype(dtype.to_candle())?)
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

/// Element `index` of the stream `seed`, uniform in [-0.02, 0.02). kernels/dummy.cu
/// computes the same bits on a GPU.
pub fn dummy_value(seed: u64, index: u64) -> f32 {
    let bits = mix64(seed.wrapping_add(index.wrapping_mul(0x9e3779b97f4a7c15)));
    let unit = (bits >> 40) as f32 / (1u64 << 24) as f32;
    (unit * 2.0 - 1.0) * 0.02
}

/// `n` dummy values converted to `T`, filled in parallel; element `i` is the stream's
/// element `index(i)` (the identity for a whole tensor, the full-tensor index for a slice).
fn dummy_fill<T: Copy + Default + Send>(
    n: usize,
    seed: u64,
    index: impl Fn(usize) -> usize + Sync,
    convert: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    let mut data = vec![T::default(); n];
    data.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = c * CHUNK;
            for (i, x) in chunk.iter_mut().enumerate() {
                *x = convert(dummy_value(seed, index(base + i) as u64));
            }
        });
    data
}

/// Norm weights are ones, not random (activations stay sane through many layers).
fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight")
}

impl DummyWeights {
    /// The random stream of weight `name`.
    fn stream(&self, name: &str) -> u64 {
        let name_hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        mix64(self.seed ^ name_hash)
    }

    /// The values of `name` whose part-element `i` is full-tensor element `index(i)`.
    fn generate(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        index: impl Fn(usize) -> usize + Sync,
    ) -> Result<Tensor> {
        if is_norm(name) {
            return Ok(Tensor::ones(shape, dtype.to_candle(), &Device::Cpu)?);
        }
        let n: usize = shape.iter().product();
        let seed = self.stream(name);
        let t = match dtype {
            DType::F32 => Tensor::from_vec(dummy_fill(n, seed, index, |x| x), shape, &Device::Cpu)?,
            DType::F16 => Tensor::from_vec(
                dummy_fill(n, seed, index, f16::from_f32),
                shape,
                &Device::Cpu,
            )?,
            DType::BF16 => Tensor::from_vec(
                dummy_fill(n, seed, index, bf16::from_f32),
                shape,
                &Device::Cpu,
            )?,
        };
        Ok(t)
    }
}

impl WeightSource for DummyWeights {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.generate(name, shape, dtype, |i| i)
    }

    /// Generates only the part, with the values the full tensor has there.
    fn tensor_slice(
        &self,
        name: &str,
        shape: &[usize],
        slice: &Slice,
        dtype: DType,
    ) -> Result<Tensor> {
        let runs = slice.runs(name, shape)?;
        self.generate(name, &slice.shape(shape), dtype, |i| runs.full_index(i))
    }

    fn generated(
        &self,
        name: &str,
        shape: &[usize],
        slice: Option<&Slice>,
    ) -> Option<GeneratedPart> {
        if is_norm(name) {
            return None;
        }
        let runs = match slice {
            None => SliceRuns::whole(shape.iter().product()),
            Some(s) => s.runs(name, shape).ok()?,
        };
        Some(GeneratedPart {
            stream: self.stream(name),
            runs,
        })
    }

    fn contains(&self, name: &str) -> bool {
        !name.starts_with("lm_head")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Every source's slice must equal the narrowed full tensor, for each dimension.
    fn check_slices(src: &dyn WeightSource, name: &str, shape: &[usize]) {
        for dim in 0..shape.len() {
            for range in [0..1, 1..shape[dim], shape[dim] / 2..shape[dim]] {
                let slice = Slice {
                    dim,
                    range: range.clone(),
                };
                let part = src.tensor_slice(name, shape, &slice, DType::F32).unwrap();
                let full = src.tensor(name, shape, DType::F32).unwrap();
                let expected = full.narrow(dim, range.start, range.len()).unwrap();
                assert_eq!(part.dims(), expected.dims(), "{name} dim {dim} {range:?}");
                assert_eq!(
                    values(&part),
                    values(&expected),
                    "{name} dim {dim} {range:?}"
                );
            }
        }
        let outside = Slice {
            dim: 0,
            range: 0..shape[0] + 1,
        };
        assert!(src.tensor_slice(name, shape, &outside, DType::F32).is_err());
    }

    #[test]
    fn generated_parts_describe_the_dummy_values_exactly() {
        let w = DummyWeights { seed: 9 };
        let shape = [6, 10];
        for slice in [
            None,
            Some(Slice {
                dim: 1,
                range: 3..7,
            }),
            Some(Slice {
                dim: 0,
                range: 2..5,
            }),
        ] {
            let part = w.generated("x.weight", &shape, slice.as_ref()).unwrap();
            let expected = match &slice {
                None => w.tensor("x.weight", &shape, DType::F32).unwrap(),
                Some(s) => w.tensor_slice("x.weight", &shape, s, DType::F32).unwrap(),
            };
            assert_eq!(part.values(), values(&expected), "{slice:?}");
        }
        // Norms are ones, read from the host; safetensors are never generated.
        assert!(w.generated("model.norm.weight", &[8], None).is_none());
    }

    #[test]
    fn dummy_slices_are_the_full_tensors_values() {
        check_slices(&DummyWeights { seed: 5 }, "a.weight", &[6, 10]);
        check_slices(&DummyWeights { seed: 5 }, "b.weight", &[3, 4, 5]);
    }

    #[test]
    fn safetensors_slices_read_only_the_part_and_match_the_full_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 60.0, &Device::Cpu)
            .unwrap()
            .reshape((6, 10))
            .unwrap()
            .to_dtype(candle_core::DType::BF16)
            .unwrap();
        let b = Tensor::arange(0f32, 60.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4, 5))
            .unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("a".to_string(), a), ("b".to_string(), b)]),
            &path,
        )
        .unwrap();
        let src = SafetensorsWeights::open(&[path]).unwrap();
        check_slices(&src, "a", &[6, 10]);
        check_slices(&src, "b", &[3, 4, 5]);
        let wrong = Slice {
            dim: 0,
            range: 0..1,
        };
        assert!(src.tensor_slice("a", &[10, 6], &wrong, DType::F32).is_err());
    }

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
