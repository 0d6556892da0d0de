//! Selftest of device sampling (`kernels/sampling_draw.cu`): the device's token for each row
//! must be the host sampler's for the same logits, parameters and uniform `u` (the host's
//! `u` is the first draw of a cloned random stream, so `sampler::sample` uses the same one).

use super::compare::Check;
use super::suite::Suite;
use crate::backend::cuda::sampling_draw_rows::{pack_draw_rows, DrawRow};
use crate::backend::cuda::{CudaTensor, DType};
use crate::engine::device_draw::draw_row;
use crate::engine::params::SamplingParams;
use crate::engine::sampler::{sample, SampleContext};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Whether `kiln selftest` runs this case: only while device sampling is opt-in.
pub fn enabled() -> bool {
    std::env::var("KILN_GPU_SAMPLING").is_ok_and(|v| v == "1")
}

fn param_sets() -> Vec<SamplingParams> {
    let base = SamplingParams::default();
    vec![
        base.clone(),
        SamplingParams {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.3,
            min_p: 0.05,
            top_p: 0.5,
            ..base.clone()
        },
        SamplingParams {
            repetition_penalty: 1.2,
            presence_penalty: 0.3,
            frequency_penalty: 0.2,
            min_tokens: 8,
            ..base.clone()
        },
        SamplingParams {
            repetition_penalty: 1.2,
            ..SamplingParams::greedy()
        },
    ]
}

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let vocab = s.sizes.vocab;
    let draws_per_set = 8;
    let sets = param_sets();
    let rows = sets.len() * draws_per_set;
    let logits_host = s.random(rows * vocab, 6.0, dtype);
    let prompt: Vec<u32> = (0..32).map(|i| (i * 37 % vocab) as u32).collect();
    let output: Vec<u32> = (0..5).map(|i| (i * 11 % vocab) as u32).collect();
    let end_tokens = [0u32, 2];
    let mut expected = Vec::with_capacity(rows);
    let mut us = Vec::with_capacity(rows);
    for r in 0..rows {
        let params = &sets[r / draws_per_set];
        let ctx = SampleContext {
            params,
            prompt: &prompt,
            output: &output,
            end_tokens: &end_tokens,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(r as u64);
        us.push(rng.clone().random::<f32>());
        let mut row = logits_host[r * vocab..(r + 1) * vocab].to_vec();
        expected.push(sample(&mut row, &ctx, &mut rng).token as f32);
    }
    let draw_rows: Vec<DrawRow> = (0..rows)
        .map(|r| {
            let p = &sets[r / draws_per_set];
            let masked: &[u32] = if output.len() < p.min_tokens {
                &end_tokens
            } else {
                &[]
            };
            draw_row(p, &prompt, &output, masked, us[r])
        })
        .collect();
    let packed = pack_draw_rows(&draw_rows, vocab)?;
    let dev = s.dev;
    let logits = CudaTensor::from_f32(dev, dtype, &[rows, vocab], &logits_host)?;
    let mut out = dev.stream().alloc_zeros::<u32>(rows)?;
    dev.sampling_draw(&logits, &packed, &mut out)?;
    let gpu: Vec<f32> = dev.download(&out)?.into_iter().map(|t| t as f32).collect();
    let row = s.check(
        "sampling_draw",
        format!("[{rows}, {vocab}]"),
        dtype,
        Check::Exact,
        &gpu,
        &expected,
    );
    s.rows[row].note = "tokens vs the host sampler (same u)".into();
    s.time(row, || dev.sampling_draw(&logits, &packed, &mut out))?;
    Ok(())
}
