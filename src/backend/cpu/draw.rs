//! The device-sampling contract ([`crate::backend::Backend::draw_rows`]) on the CPU: the
//! rows' penalty edits applied as the CUDA kernel applies them, then the host sampler's own
//! draw with the row's `u`. The CPU is the reference, so this is the host sampler itself;
//! it exists so the engine's device-sampling route (rows, `u` taken from each request's
//! stream, the stream advanced after) is tested end to end without a GPU.

use crate::backend::cuda::sampling_draw_rows::{apply_edits, pack_draw_rows, DrawRow};
use crate::engine::sampler::{argmax, draw};
use crate::engine::SamplingParams;
use anyhow::{ensure, Result};

/// Samples `draws[i]` from row `rows[i]` of `logits` (`[n, vocab]`, row-major f32).
pub fn draw_rows(
    logits: &[f32],
    vocab: usize,
    rows: &[usize],
    draws: &[DrawRow],
) -> Result<Vec<u32>> {
    ensure!(
        rows.len() == draws.len(),
        "draw_rows: {} rows but {} draws",
        rows.len(),
        draws.len()
    );
    let packed = pack_draw_rows(draws, vocab)?;
    let mut tokens = Vec::with_capacity(rows.len());
    for (i, (&r, d)) in rows.iter().zip(draws).enumerate() {
        ensure!(
            (r + 1) * vocab <= logits.len(),
            "draw_rows: row {r} is outside the logits"
        );
        let mut row = logits[r * vocab..(r + 1) * vocab].to_vec();
        apply_edits(&packed, i, &mut row);
        let params = SamplingParams {
            temperature: d.temperature,
            top_k: d.top_k,
            top_p: d.top_p,
            min_p: d.min_p,
            ..SamplingParams::greedy()
        };
        tokens.push(if params.is_greedy() {
            argmax(&row)
        } else {
            draw(&row, &params, d.u)
        });
    }
    Ok(tokens)
}
