//! Integer weight-quantized checkpoints (GPTQ, AWQ, compressed-tensors' pack-quantized
//! W4A16 / W8A16), expanded to the model dtype as they load: every weight becomes
//! `(q - zero) * scale` of its group. kiln computes in the model dtype, so such a checkpoint
//! loads and runs at the memory of an unquantized one.
//!
//! Each format keeps a weight `X.weight [out, in]` under other names:
//! - GPTQ: `X.qweight [in * bits / 32, out]` (each column a packed stream over the inputs),
//!   `X.qzeros [groups, out * bits / 32]` (rows packed), `X.scales [groups, out]` and
//!   optionally `X.g_idx [in]`, each input's group (`desc_act` permutes them). The original
//!   ("gptq", v1) format stores each zero minus one.
//! - AWQ (GEMM layout): `X.qweight [in, out / 8]` and `X.qzeros [groups, out / 8]`, eight
//!   4-bit values per word in AWQ's interleaved order, `X.scales [groups, out]`; groups are
//!   consecutive inputs.
//! - compressed-tensors pack-quantized: `X.weight_packed [out, in * bits / 32]` (rows
//!   packed, values offset by `2^(bits - 1)` to make them unsigned), `X.weight_scale [out,
//!   groups]`, `X.weight_shape`, and for asymmetric schemes `X.weight_zero_point` packed down
//!   its columns. Schemes may differ per module, so bits come from each tensor's shape.
//!
//! Weights a checkpoint left unquantized (norms, embeddings, usually `lm_head`) pass through.

use super::expanded_weights::{ExpandedWeights, Expansion};
use super::int_packing::{unpack_awq_rows, unpack_columns, unpack_rows, words_for};
use super::weights::WeightSource;
use crate::backend::DType;
use anyhow::{Context, Result};

/// How an integer weight-quantized checkpoint stores its weights (`quantization_config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntScheme {
    /// GPTQ at 2, 3, 4 or 8 bits; `group_size` None: one group over all inputs.
    /// `zero_offset` is what the stored zeros lack: 1 in the v1 format, 0 in v2.
    Gptq {
        bits: u32,
        group_size: Option<usize>,
        zero_offset: u32,
    },
    /// AWQ's GEMM layout (4 bits).
    Awq { group_size: Option<usize> },
    /// compressed-tensors pack-quantized, with the bit widths and group sizes its config
    /// groups name (used where a tensor's shapes leave them open).
    PackQuantized {
        bits: Vec<u32>,
        group_sizes: Vec<usize>,
    },
}

impl IntScheme {
    /// The stored tensor whose presence says weight `X.weight` is packed: `X.` + this.
    fn packed_suffix(&self) -> &'static str {
        match self {
            IntScheme::Gptq { .. } | IntScheme::Awq { .. } => "qweight",
            IntScheme::PackQuantized { .. } => "weight_packed",
        }
    }
}

/// A weight source whose packed weights come out expanded.
pub type IntQuantWeights<S> = ExpandedWeights<S, IntScheme>;

/// Reads one checkpoint's packed weights in `scheme`'s layout.
struct Unpacker<'a, S> {
    inner: &'a S,
    scheme: &'a IntScheme,
}

/// Which group each input column belongs to.
enum Groups {
    /// Runs of `size` consecutive inputs.
    Consecutive { size: usize },
    /// An explicit index per input (GPTQ's `g_idx`).
    Indexed(Vec<u32>),
}

impl Groups {
    fn consecutive(size: usize, (inputs, groups): (usize, usize)) -> Result<Self> {
        anyhow::ensure!(
            size > 0 && inputs.div_ceil(size) == groups,
            "{groups} groups do not cover {inputs} inputs in groups of {size}"
        );
        Ok(Groups::Consecutive { size })
    }

    /// The index `index_name` if the checkpoint has one, else runs of `size`.
    fn read<S: WeightSource>(
        src: &S,
        index_name: &str,
        size: usize,
        (inputs, groups): (usize, usize),
    ) -> Result<Self> {
        if !src.contains(index_name) {
            return Self::consecutive(size, (inputs, groups));
        }
        let (shape, index) = src.words(index_name)?;
        anyhow::ensure!(
            shape == [inputs] && index.iter().all(|&g| (g as usize) < groups),
            "{index_name} ({shape:?}) is not a group index over {inputs} inputs into {groups} groups"
        );
        Ok(Groups::Indexed(index))
    }

    fn of(&self, input: usize) -> usize {
        match self {
            Groups::Consecutive { size } => input / size,
            Groups::Indexed(index) => index[input] as usize,
        }
    }
}

/// A float tensor of whatever shape the checkpoint gives it.
fn read_floats<S: WeightSource>(src: &S, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let shape = src.shape_of(name)?;
    let values = src
        .tensor(name, &shape, DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((shape, values))
}

/// The one bit width in 1..=8 whose packing of `inputs` values takes `word_cols` words,
/// preferring the widths the config names when several fit (lines shorter than 32 values).
fn packed_bits(inputs: usize, word_cols: usize, configured: &[u32]) -> Result<u32> {
    let fits: Vec<u32> = (1..=8)
        .filter(|&b| words_for(inputs, b) == word_cols)
        .collect();
    let named: Vec<u32> = fits
        .iter()
        .copied()
        .filter(|b| configured.contains(b))
        .collect();
    match (fits.as_slice(), named.as_slice()) {
        ([bits], _) | (_, [bits]) => Ok(*bits),
        _ => anyhow::bail!(
            "cannot tell the bit width of {inputs} values packed in {word_cols} words \
             (configured: {configured:?})"
        ),
    }
}

impl<S: WeightSource> Unpacker<'_, S> {
    /// `X.` when weight `name` = `X.weight` is stored packed.
    fn packed_stem<'a>(&self, name: &'a str) -> Option<&'a str> {
        let stem = name.strip_suffix("weight")?;
        let packed = format!("{stem}{}", self.scheme.packed_suffix());
        self.inner.contains(&packed).then_some(stem)
    }

    /// The expanded `[out, in]` values of the weight stored under `stem`.
    fn expand(&self, stem: &str, shape: (usize, usize)) -> Result<Vec<f32>> {
        match &self.scheme {
            IntScheme::Gptq {
                bits,
                group_size,
                zero_offset,
            } => self.expand_gptq(stem, shape, *bits, *group_size, *zero_offset),
            IntScheme::Awq { group_size } => self.expand_awq(stem, shape, *group_size),
            IntScheme::PackQuantized { bits, group_sizes } => {
                self.expand_pack_quantized(stem, shape, bits, group_sizes)
            }
        }
    }

    /// Scales `[groups, out]` and their group count.
    fn scales_by_group(&self, name: &str, outputs: usize) -> Result<(usize, Vec<f32>)> {
        let (shape, scales) = read_floats(self.inner, name)?;
        let &[groups, cols] = shape.as_slice() else {
            anyhow::bail!("{name} has shape {shape:?}, expected [groups, {outputs}]");
        };
        anyhow::ensure!(
            cols == outputs,
            "{name} has {cols} columns for {outputs} outputs"
        );
        Ok((groups, scales))
    }

    fn expand_gptq(
        &self,
        stem: &str,
        (outputs, inputs): (usize, usize),
        bits: u32,
        group_size: Option<usize>,
        zero_offset: u32,
    ) -> Result<Vec<f32>> {
        let (qshape, qweight) = self.inner.words(&format!("{stem}qweight"))?;
        let &[word_rows, cols] = qshape.as_slice() else {
            anyhow::bail!("{stem}qweight has shape {qshape:?}");
        };
        anyhow::ensure!(
            cols == outputs,
            "{stem}qweight has {cols} columns for {outputs} outputs"
        );
        let codes = unpack_columns(&qweight, (word_rows, cols), bits, inputs)?;
        let (groups, scales) = self.scales_by_group(&format!("{stem}scales"), outputs)?;
        let (zshape, qzeros) = self.inner.words(&format!("{stem}qzeros"))?;
        anyhow::ensure!(
            zshape.len() == 2 && zshape[0] == groups,
            "{stem}qzeros has shape {zshape:?} for {groups} groups"
        );
        let zeros = unpack_rows(&qzeros, (groups, zshape[1]), bits, outputs)?;
        let group_of = Groups::read(
            self.inner,
            &format!("{stem}g_idx"),
            group_size.unwrap_or(inputs),
            (inputs, groups),
        )?;
        Ok(expand_by_input_rows(
            (outputs, inputs),
            &group_of,
            |i, o| codes[i * outputs + o] as f32,
            |g, o| zeros[g * outputs + o] as f32 + zero_offset as f32,
            |g, o| scales[g * outputs + o],
        ))
    }

    fn expand_awq(
        &self,
        stem: &str,
        (outputs, inputs): (usize, usize),
        group_size: Option<usize>,
    ) -> Result<Vec<f32>> {
        let (qshape, qweight) = self.inner.words(&format!("{stem}qweight"))?;
        anyhow::ensure!(
            qshape == [inputs, outputs / 8] && outputs % 8 == 0,
            "{stem}qweight has shape {qshape:?} for {outputs} x {inputs} 4-bit values"
        );
        let codes = unpack_awq_rows(&qweight, (inputs, outputs / 8))?;
        let (groups, scales) = self.scales_by_group(&format!("{stem}scales"), outputs)?;
        let (zshape, qzeros) = self.inner.words(&format!("{stem}qzeros"))?;
        anyhow::ensure!(
            zshape == [groups, outputs / 8],
            "{stem}qzeros has shape {zshape:?} for {groups} groups of {outputs} outputs"
        );
        let zeros = unpack_awq_rows(&qzeros, (groups, outputs / 8))?;
        let group_of = Groups::consecutive(group_size.unwrap_or(inputs), (inputs, groups))?;
        Ok(expand_by_input_rows(
            (outputs, inputs),
            &group_of,
            |i, o| codes[i * outputs + o] as f32,
            |g, o| zeros[g * outputs + o] as f32,
            |g, o| scales[g * outputs + o],
        ))
    }

    fn expand_pack_quantized(
        &self,
        stem: &str,
        (outputs, inputs): (usize, usize),
        configured_bits: &[u32],
        group_sizes: &[usize],
    ) -> Result<Vec<f32>> {
        let shape_name = format!("{stem}weight_shape");
        let (_, stored_shape) = read_floats(self.inner, &shape_name)?;
        anyhow::ensure!(
            stored_shape == [outputs as f32, inputs as f32],
            "{shape_name} is {stored_shape:?}, the config implies [{outputs}, {inputs}]"
        );
        let (pshape, packed) = self.inner.words(&format!("{stem}weight_packed"))?;
        let &[rows, word_cols] = pshape.as_slice() else {
            anyhow::bail!("{stem}weight_packed has shape {pshape:?}");
        };
        anyhow::ensure!(
            rows == outputs,
            "{stem}weight_packed has {rows} rows for {outputs} outputs"
        );
        let bits = packed_bits(inputs, word_cols, configured_bits)
            .with_context(|| format!("{stem}weight_packed"))?;
        let offset = (1u32 << (bits - 1)) as f32;
        let codes = unpack_rows(&packed, (rows, word_cols), bits, inputs)?;

        // Scales [out, groups]; a per-tensor scale is one value.
        let (sshape, scales) = read_floats(self.inner, &format!("{stem}weight_scale"))?;
        let groups = match sshape.as_slice() {
            [rows, groups] if *rows == outputs => *groups,
            [rows] if *rows == outputs => 1,
            _ if scales.len() == 1 => 1,
            other => anyhow::bail!("{stem}weight_scale has shape {other:?} for {outputs} outputs"),
        };
        let per_tensor = scales.len() == 1;
        let scale = |o: usize, g: usize| {
            if per_tensor {
                scales[0]
            } else {
                scales[o * groups + g]
            }
        };

        let zero_points =
            self.pack_quantized_zero_points(stem, (outputs, groups), &sshape, bits)?;
        let size = if groups == 1 {
            inputs
        } else {
            group_sizes
                .iter()
                .copied()
                .find(|&s| inputs.div_ceil(s) == groups)
                .or((inputs % groups == 0).then(|| inputs / groups))
                .with_context(|| format!("{stem}weight_scale: no group size gives {groups} groups of {inputs} inputs"))?
        };
        let group_of = Groups::read(
            self.inner,
            &format!("{stem}weight_g_idx"),
            size,
            (inputs, groups),
        )?;
        Ok((0..outputs)
            .flat_map(|o| {
                let (codes, zero_points, group_of) = (&codes, &zero_points, &group_of);
                (0..inputs).map(move |i| {
                    let g = group_of.of(i);
                    let zero = zero_points.as_ref().map_or(0.0, |z| z[o * groups + g]);
                    (codes[o * inputs + i] as f32 - offset - zero) * scale(o, g)
                })
            })
            .collect())
    }

    /// An asymmetric scheme's zero points `[out, groups]`, signed: packed down the columns
    /// of `[out * bits / 32, groups]` words, or stored as they are (the scale's shape).
    fn pack_quantized_zero_points(
        &self,
        stem: &str,
        (outputs, groups): (usize, usize),
        scale_shape: &[usize],
        bits: u32,
    ) -> Result<Option<Vec<f32>>> {
        let name = format!("{stem}weight_zero_point");
        if !self.inner.contains(&name) {
            return Ok(None);
        }
        let shape = self.inner.shape_of(&name)?;
        if shape == scale_shape {
            return Ok(Some(read_floats(self.inner, &name)?.1));
        }
        let (shape, words) = self.inner.words(&name)?;
        anyhow::ensure!(
            shape == [words_for(outputs, bits), groups],
            "{name} has shape {shape:?} for {outputs} x {groups} packed {bits}-bit zero points"
        );
        let offset = (1u32 << (bits - 1)) as f32;
        let zeros = unpack_columns(&words, (shape[0], groups), bits, outputs)?;
        Ok(Some(zeros.into_iter().map(|z| z as f32 - offset).collect()))
    }

    /// The `[out, in]` shape a packed weight expands to (for `shape_of`).
    fn expanded_shape(&self, stem: &str) -> Result<Vec<usize>> {
        match &self.scheme {
            IntScheme::Gptq { bits, .. } => {
                let shape = self.inner.shape_of(&format!("{stem}qweight"))?;
                let index = format!("{stem}g_idx");
                let inputs = if self.inner.contains(&index) {
                    self.inner.shape_of(&index)?[0]
                } else {
                    shape[0] * 32 / *bits as usize
                };
                Ok(vec![shape[1], inputs])
            }
            IntScheme::Awq { .. } => {
                let shape = self.inner.shape_of(&format!("{stem}qweight"))?;
                Ok(vec![shape[1] * 8, shape[0]])
            }
            IntScheme::PackQuantized { .. } => {
                let (_, dims) = read_floats(self.inner, &format!("{stem}weight_shape"))?;
                Ok(dims.into_iter().map(|d| d as usize).collect())
            }
        }
    }
}

/// `[out, in]` values `(code(i, o) - zero(g, o)) * scale(g, o)`, `g` input `i`'s group: the
/// GPTQ / AWQ layouts, whose codes are indexed input-major.
fn expand_by_input_rows(
    (outputs, inputs): (usize, usize),
    groups: &Groups,
    code: impl Fn(usize, usize) -> f32,
    zero: impl Fn(usize, usize) -> f32,
    scale: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let mut values = vec![0f32; outputs * inputs];
    for i in 0..inputs {
        let g = groups.of(i);
        for o in 0..outputs {
            values[o * inputs + i] = (code(i, o) - zero(g, o)) * scale(g, o);
        }
    }
    values
}

impl<S: WeightSource> Expansion<S> for IntScheme {
    fn format(&self) -> &'static str {
        match self {
            IntScheme::Gptq { .. } => "GPTQ",
            IntScheme::Awq { .. } => "AWQ",
            IntScheme::PackQuantized { .. } => "pack-quantized",
        }
    }

    /// `X.weight` is quantized when `X.qweight` (or `X.weight_packed`) is stored.
    fn is_quantized(&self, src: &S, name: &str) -> bool {
        self.unpacker(src).packed_stem(name).is_some()
    }

    fn expand(&self, src: &S, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let unpacker = self.unpacker(src);
        let stem = unpacker.packed_stem(name).context("not a packed weight")?;
        let &[outputs, inputs] = shape else {
            anyhow::bail!("expected a matrix, the config implies {shape:?}");
        };
        unpacker.expand(stem, (outputs, inputs))
    }

    fn expanded_shape(&self, src: &S, name: &str) -> Result<Vec<usize>> {
        let unpacker = self.unpacker(src);
        let stem = unpacker.packed_stem(name).context("not a packed weight")?;
        unpacker.expanded_shape(stem)
    }
}

impl IntScheme {
    fn unpacker<'a, S>(&'a self, inner: &'a S) -> Unpacker<'a, S> {
        Unpacker {
            inner,
            scheme: self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_widths_follow_from_packed_widths() {
        assert_eq!(packed_bits(64, 8, &[]).unwrap(), 4);
        assert_eq!(packed_bits(48, 5, &[]).unwrap(), 3);
        assert_eq!(packed_bits(64, 16, &[4]).unwrap(), 8);
        // Eight values fit one word at 1 to 4 bits: the config decides.
        assert!(packed_bits(8, 1, &[]).is_err());
        assert_eq!(packed_bits(8, 1, &[4, 8]).unwrap(), 4);
        assert!(packed_bits(64, 7, &[]).is_err());
    }

    #[test]
    fn groups_are_runs_or_an_index() {
        let runs = Groups::Consecutive { size: 32 };
        assert_eq!((runs.of(31), runs.of(32)), (0, 1));
        let index = Groups::Indexed(vec![1, 0, 1]);
        assert_eq!(index.of(0), 1);
    }
}
