//! FP8 checkpoints (weights stored as float8 e4m3 with scales beside them), expanded to
//! the model dtype as they load: compressed-tensors' `float-quantized` format (RedHat /
//! Neural Magic FP8 models, `weight_scale` per tensor or per output channel) and the
//! `fp8` format of Qwen3-FP8 and DeepSeek (`weight_scale_inv` per 128 x 128 block; despite
//! the name it multiplies too). kiln computes in the model dtype: the checkpoint loads and
//! runs, at the memory of an unquantized one.

use super::expanded_weights::{ExpandedWeights, Expansion};
use super::weights::WeightSource;
use crate::backend::DType;
use anyhow::{Context, Result};

/// The scale names a quantized weight `X.weight` may carry, as `X.` + this.
const SCALE_NAMES: [&str; 2] = ["weight_scale", "weight_scale_inv"];

/// FP8 storage (`w` as float8 with a scale tensor beside it), as an [`Expansion`].
pub struct Fp8;

/// A weight source whose FP8 weights come out expanded: `w * scale`, the scale broadcast
/// over the block of the weight it covers.
pub type Fp8Weights<S> = ExpandedWeights<S, Fp8>;

/// The scale tensor's name for weight `name`, if the weight is quantized.
fn scale_of<S: WeightSource>(src: &S, name: &str) -> Option<String> {
    let stem = name.strip_suffix("weight")?;
    SCALE_NAMES
        .iter()
        .map(|s| format!("{stem}{s}"))
        .find(|s| src.contains(s))
}

impl<S: WeightSource> Expansion<S> for Fp8 {
    fn format(&self) -> &'static str {
        "FP8"
    }

    fn is_quantized(&self, src: &S, name: &str) -> bool {
        scale_of(src, name).is_some()
    }

    fn expand(&self, src: &S, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let scale_name = scale_of(src, name).context("not an FP8 weight")?;
        let &[rows, cols] = shape else {
            anyhow::bail!("expected a matrix, the config implies {shape:?}");
        };
        let weight = src.tensor(name, shape, DType::F32)?;
        let scale = read_any_shape(src, &scale_name)?;
        dequantize(
            &weight.flatten_all()?.to_vec1::<f32>()?,
            (rows, cols),
            &scale,
        )
        .with_context(|| format!("with {scale_name}"))
    }
}

/// A scale as `(rows, cols, values)`: a scalar is 1 x 1, a vector one column.
struct Scale {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
}

/// Reads a scale tensor whatever its shape (the checkpoint decides it).
fn read_any_shape<S: WeightSource>(src: &S, name: &str) -> Result<Scale> {
    // The checkpoint decides the shape: a scalar, a vector or a matrix.
    let shape = src.shape_of(name)?;
    let t = src.tensor(name, &shape, DType::F32)?;
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    let (rows, cols) = match shape.as_slice() {
        [] => (1, 1),
        [n] => (*n, 1),
        [r, c] => (*r, *c),
        other => anyhow::bail!("scale {name} has shape {other:?}"),
    };
    Ok(Scale { rows, cols, values })
}

/// `w * scale`, each scale entry covering a `ceil(rows / scale rows) x ceil(cols / scale
/// cols)` block: one entry for the tensor, one per output row (channel), or one per
/// 128 x 128 block.
fn dequantize(w: &[f32], (rows, cols): (usize, usize), scale: &Scale) -> Result<Vec<f32>> {
    anyhow::ensure!(
        w.len() == rows * cols,
        "{} values for {rows} x {cols}",
        w.len()
    );
    anyhow::ensure!(
        scale.rows > 0 && scale.cols > 0 && scale.rows <= rows && scale.cols <= cols,
        "a {} x {} scale for a {rows} x {cols} weight",
        scale.rows,
        scale.cols
    );
    let (block_rows, block_cols) = (rows.div_ceil(scale.rows), cols.div_ceil(scale.cols));
    anyhow::ensure!(
        rows.div_ceil(block_rows) == scale.rows && cols.div_ceil(block_cols) == scale.cols,
        "a {} x {} scale does not tile a {rows} x {cols} weight",
        scale.rows,
        scale.cols
    );
    Ok(w.chunks_exact(cols)
        .enumerate()
        .flat_map(|(r, row)| {
            let scales = &scale.values[(r / block_rows) * scale.cols..][..scale.cols];
            row.iter()
                .enumerate()
                .map(move |(c, &v)| v * scales[c / block_cols])
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(rows: usize, cols: usize, values: &[f32]) -> Scale {
        Scale {
            rows,
            cols,
            values: values.to_vec(),
        }
    }

    #[test]
    fn scales_cover_the_tensor_a_row_or_a_block() {
        let w: Vec<f32> = (1..=12).map(|v| v as f32).collect(); // 3 x 4
        let tensor = dequantize(&w, (3, 4), &scale(1, 1, &[2.0])).unwrap();
        assert_eq!(tensor, w.iter().map(|v| v * 2.0).collect::<Vec<_>>());
        let channel = dequantize(&w, (3, 4), &scale(3, 1, &[1.0, 10.0, 100.0])).unwrap();
        assert_eq!(&channel[..5], &[1.0, 2.0, 3.0, 4.0, 50.0]);
        assert_eq!(channel[11], 1200.0);
        // 2 x 2 blocks over 3 x 4: the last row block is partial.
        let block = dequantize(&w, (3, 4), &scale(2, 2, &[1.0, 2.0, 3.0, 4.0])).unwrap();
        assert_eq!(
            block,
            [1., 2., 6., 8., 5., 6., 14., 16., 27., 30., 44., 48.]
        );
        assert!(dequantize(&w, (3, 4), &scale(4, 1, &[1.0; 4])).is_err());
        assert!(dequantize(&w, (3, 4), &scale(2, 3, &[1.0; 6])).is_err());
    }
}
