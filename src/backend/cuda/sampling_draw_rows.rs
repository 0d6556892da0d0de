//! Host-side packing of the per-row inputs of `kernels/sampling_draw.cu`.
//!
//! The kernel knows nothing of prompts or outputs: the host turns each row's penalties and
//! `min_tokens` hold into a short list of edits (token, repetition factor, subtracted bias)
//! with exactly the arithmetic of `engine::sampler::apply_penalties`, so the device applies
//! `l > 0 ? l / factor : l * factor` and then `l - bias` (a bias of +inf masks the token).

use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// One row to sample on the device: the sampling parameters, the tokens the penalties read,
/// and the uniform `u` drawn from the sequence's own random stream.
#[derive(Debug, Clone, Copy)]
pub struct DrawRow<'a> {
    /// 0 = greedy (argmax after penalties).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub prompt: &'a [u32],
    pub output: &'a [u32],
    /// Tokens masked to -inf (the end tokens while `min_tokens` holds; empty otherwise).
    pub masked: &'a [u32],
    /// In [0, 1): the draw is the candidate where the running mass passes u * kept mass.
    pub u: f32,
}

/// The kernel's arguments for a batch of rows (layout documented in the kernel file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackedDrawRows {
    /// Per row: temperature, top_p, min_p, u.
    pub row_f: Vec<f32>,
    /// Per row: top_k, first edit, end of edits.
    pub row_i: Vec<i32>,
    pub edit_token: Vec<i32>,
    /// Per edit: repetition factor, subtracted bias.
    pub edit_value: Vec<f32>,
}

impl PackedDrawRows {
    pub fn rows(&self) -> usize {
        self.row_i.len() / 3
    }
}

/// Packs `rows` for a vocabulary of `vocab` tokens. Tokens outside the vocabulary are
/// dropped, as the host sampler ignores them.
pub fn pack_draw_rows(rows: &[DrawRow], vocab: usize) -> Result<PackedDrawRows> {
    let mut packed = PackedDrawRows::default();
    for (i, row) in rows.iter().enumerate() {
        if !(0.0..1.0).contains(&row.u) {
            bail!("sampling row {i}: u = {} is outside [0, 1)", row.u);
        }
        if row.temperature < 0.0 || !row.temperature.is_finite() {
            bail!(
                "sampling row {i}: temperature {} is not usable",
                row.temperature
            );
        }
        let top_k = i32::try_from(row.top_k.min(vocab))
            .map_err(|_| anyhow::anyhow!("sampling row {i}: top_k {} too large", row.top_k))?;
        let begin = edit_index(packed.edit_token.len())?;
        for (token, (factor, bias)) in row_edits(row, vocab) {
            packed.edit_token.push(token as i32);
            packed.edit_value.extend([factor, bias]);
        }
        let end = edit_index(packed.edit_token.len())?;
        packed
            .row_f
            .extend([row.temperature, row.top_p, row.min_p, row.u]);
        packed.row_i.extend([top_k, begin, end]);
    }
    Ok(packed)
}

/// What the kernel does with row `r`'s edits, on the host: `l > 0 ? l / factor : l * factor`,
/// then `l - bias`, a bias of +inf masking the token to -inf.
pub fn apply_edits(packed: &PackedDrawRows, r: usize, logits: &mut [f32]) {
    let (begin, end) = (packed.row_i[3 * r + 1], packed.row_i[3 * r + 2]);
    for e in begin as usize..end as usize {
        let l = &mut logits[packed.edit_token[e] as usize];
        let (factor, bias) = (packed.edit_value[2 * e], packed.edit_value[2 * e + 1]);
        let scaled = if *l > 0.0 { *l / factor } else { *l * factor };
        *l = if bias == f32::INFINITY {
            f32::NEG_INFINITY
        } else {
            scaled - bias
        };
    }
}

fn edit_index(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| anyhow::anyhow!("{n} penalty edits do not fit the kernel's i32"))
}

/// token -> (repetition factor, bias), in token order.
fn row_edits(row: &DrawRow, vocab: usize) -> BTreeMap<u32, (f32, f32)> {
    let in_vocab = |t: &&u32| (**t as usize) < vocab && **t <= i32::MAX as u32;
    let mut edits: BTreeMap<u32, (f32, f32)> = BTreeMap::new();
    if row.repetition_penalty != 1.0 {
        for &t in row.prompt.iter().chain(row.output).filter(in_vocab) {
            edits.insert(t, (row.repetition_penalty, 0.0));
        }
    }
    if row.presence_penalty != 0.0 || row.frequency_penalty != 0.0 {
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for &t in row.output.iter().filter(in_vocab) {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            // The same f32 expression as the host sampler, so the edit is bit-identical.
            edits.entry(t).or_insert((1.0, 0.0)).1 =
                row.presence_penalty + row.frequency_penalty * c as f32;
        }
    }
    for &t in row.masked.iter().filter(in_vocab) {
        edits.entry(t).or_insert((1.0, 0.0)).1 = f32::INFINITY;
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>() -> DrawRow<'a> {
        DrawRow {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            prompt: &[],
            output: &[],
            masked: &[],
            u: 0.5,
        }
    }

    #[test]
    fn plain_rows_have_no_edits_and_keep_their_parameters() {
        let rows = [
            DrawRow {
                top_k: 40,
                top_p: 0.9,
                min_p: 0.05,
                u: 0.25,
                ..row()
            },
            row(),
        ];
        let packed = pack_draw_rows(&rows, 100).unwrap();
        assert_eq!(packed.rows(), 2);
        assert_eq!(packed.row_f[..4], [1.0, 0.9, 0.05, 0.25]);
        assert_eq!(packed.row_i, vec![40, 0, 0, 0, 0, 0]);
        assert!(packed.edit_token.is_empty());
    }

    #[test]
    fn edits_reproduce_the_host_penalties_bit_for_bit() {
        let prompt = [1u32, 4, 4, 900];
        let output = [4u32, 2, 2, 2, 7];
        let masked = [7u32, 3];
        let r = DrawRow {
            repetition_penalty: 1.3,
            presence_penalty: 0.4,
            frequency_penalty: 0.25,
            prompt: &prompt,
            output: &output,
            masked: &masked,
            ..row()
        };
        let packed = pack_draw_rows(&[row(), r], 10).unwrap();
        let mut got: Vec<f32> = (0..10).map(|i| i as f32 * 0.7 - 3.0).collect();
        let mut want = got.clone();
        apply_edits(&packed, 1, &mut got);
        // sampler.rs apply_penalties, by hand for this row.
        for t in [1usize, 2, 4, 7] {
            want[t] = if want[t] > 0.0 {
                want[t] / 1.3
            } else {
                want[t] * 1.3
            };
        }
        want[2] -= 0.4 + 0.25 * 3.0;
        want[4] -= 0.4 + 0.25 * 1.0;
        want[7] = f32::NEG_INFINITY;
        want[3] = f32::NEG_INFINITY;
        assert_eq!(got, want);
        // Token 900 is outside the vocabulary: dropped, not an out-of-bounds edit.
        assert!(packed.edit_token.iter().all(|&t| t < 10));
        assert_eq!(packed.row_i[3..], [0, 0, 5]);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        for bad in [
            DrawRow { u: 1.0, ..row() },
            DrawRow {
                u: f32::NAN,
                ..row()
            },
            DrawRow {
                temperature: -1.0,
                ..row()
            },
        ] {
            assert!(pack_draw_rows(&[bad], 10).is_err(), "{bad:?}");
        }
        // A huge top_k is clamped to the vocabulary.
        let packed = pack_draw_rows(
            &[DrawRow {
                top_k: usize::MAX,
                ..row()
            }],
            10,
        )
        .unwrap();
        assert_eq!(packed.row_i[0], 10);
    }
}
