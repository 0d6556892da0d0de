//! bitsandbytes 8-bit checkpoints (`quant_method: bitsandbytes`, `load_in_8bit`: LLM.int8's
//! `-bnb-8bit` repos), expanded to the model dtype as they load. Each quantized weight
//! `X.weight` is int8 `[out, in]`, stored row by row, with beside it `X.SCB`: each row's
//! absolute maximum (f32), so `w[r][c] = int8[r][c] * SCB[r] / 127`, the weights
//! bitsandbytes' `int8_vectorwise_dequant` gives back. `X.weight_format` says how the bytes
//! are laid out; saved checkpoints hold row-major ones (0), and others are refused.

use super::expanded_weights::{ExpandedWeights, Expansion};
use super::weights::WeightSource;
use crate::backend::DType;
use anyhow::{Context, Result};

/// bitsandbytes 8-bit storage, as an [`Expansion`].
pub struct Bnb8;

/// A weight source whose bitsandbytes 8-bit weights come out expanded.
pub type Bnb8Weights<S> = ExpandedWeights<S, Bnb8>;

/// The row scales' name beside weight `name` (`X.weight` -> `X.SCB`).
fn scales_of(name: &str) -> Option<String> {
    name.strip_suffix(".weight")
        .map(|module| format!("{module}.SCB"))
}

/// `int8[r][c] * scales[r] / 127`, row by row.
fn dequantize(values: &[i8], scales: &[f32]) -> Vec<f32> {
    let cols = values.len() / scales.len().max(1);
    values
        .chunks(cols.max(1))
        .zip(scales)
        .flat_map(|(row, &scale)| row.iter().map(move |&v| f32::from(v) * scale / 127.0))
        .collect()
}

impl<S: WeightSource> Expansion<S> for Bnb8 {
    fn format(&self) -> &'static str {
        "bitsandbytes 8-bit"
    }

    fn is_quantized(&self, src: &S, name: &str) -> bool {
        scales_of(name).is_some_and(|scb| src.contains(&scb))
    }

    fn expand(&self, src: &S, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let scb = scales_of(name).context("not an 8-bit weight")?;
        let format_name = format!("{name}_format");
        if src.contains(&format_name) {
            let format = src
                .tensor(&format_name, &[], DType::F32)?
                .to_vec0::<f32>()?;
            anyhow::ensure!(
                format == 0.0,
                "{name} is stored in bitsandbytes' layout {format} (only row-major, 0, loads)"
            );
        }
        let (stored, values) = src.int8s(name)?;
        anyhow::ensure!(
            stored == shape,
            "{name} is stored {stored:?}, the config implies {shape:?}"
        );
        let rows = shape.first().copied().unwrap_or(1);
        let scales = src
            .tensor(&scb, &[rows], DType::F32)?
            .to_vec1::<f32>()
            .with_context(|| format!("reading {scb}"))?;
        Ok(dequantize(&values, &scales))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_scales_by_its_own_absmax() {
        let w = dequantize(&[127, -127, 64, 0, -1, 127], &[2.0, 0.5]);
        assert_eq!(
            w,
            vec![2.0, -2.0, 64.0 * 2.0 / 127.0, 0.0, -0.5 / 127.0, 0.5]
        );
        assert_eq!(
            scales_of("a.q_proj.weight").as_deref(),
            Some("a.q_proj.SCB")
        );
        assert_eq!(scales_of("a.q_proj.bias"), None);
    }
}
