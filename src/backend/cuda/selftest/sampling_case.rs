//! Selftest of device sampling (`kernels/sampling_draw.cu`): the device's token for each row
//! must be the host sampler's for the same logits, parameters and uniform `u` (the host's
//! `u` is the first draw of a cloned random stream, so `sampler::sample` uses the same one),
//! or differ from it only by rounding: the device sums masses in another order (fixed point,
//! in parallel) than the host's f32 walk, so where `u * kept mass` falls within rounding of the
//! boundary between two candidates the two may pick neighbours. [`judge`] accepts a token
//! when, over the host's candidate order with masses summed in f64, moving the target by at
//! most [`TOLERANCE`] of the kept mass reaches it (a top-p cut within that tolerance of its
//! own target may fall on either side); anything else fails: a token outside the cuts, a
//! masked token, a pick further away, any difference on a greedy row.

use super::report::Row;
use super::suite::Suite;
use crate::backend::cuda::sampling_draw_rows::{apply_edits, pack_draw_rows, DrawRow};
use crate::backend::cuda::{CudaTensor, DType};
use crate::engine::device_draw::draw_row;
use crate::engine::params::SamplingParams;
use crate::engine::sampler::{argmax, sample, SampleContext};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Whether `kiln selftest` runs this case: unless device sampling is turned off
/// (`KILN_GPU_SAMPLING=0` or `false`).
pub fn enabled() -> bool {
    std::env::var("KILN_GPU_SAMPLING").map_or(true, |v| v != "0" && v != "false")
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
            allowed: None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(r as u64);
        us.push(rng.clone().random::<f32>());
        let mut row = logits_host[r * vocab..(r + 1) * vocab].to_vec();
        expected.push(sample(&mut row, &ctx, &mut rng).token);
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
    let gpu = dev.download(&out)?;
    let mut differ = 0;
    let mut wrong = 0;
    let mut worst = 0.0f64;
    let mut host_worst = 0.0f64;
    for (r, (&got, &want)) in gpu.iter().zip(&expected).enumerate() {
        if got == want {
            continue;
        }
        differ += 1;
        let mut row = logits_host[r * vocab..(r + 1) * vocab].to_vec();
        apply_edits(&packed, r, &mut row);
        let distance = judge(&row, &sets[r / draws_per_set], us[r], got);
        worst = worst.max(distance);
        host_worst = host_worst.max(judge(&row, &sets[r / draws_per_set], us[r], want));
        if distance > TOLERANCE {
            wrong += 1;
        }
    }
    let mut result = Row::checked(
        "sampling_draw",
        format!("[{rows}, {vocab}]"),
        dtype.kernel_suffix(),
        worst,
        TOLERANCE,
    );
    result.note = format!(
        "tokens vs the host sampler (same u): {differ} of {rows} rows differ, {wrong} beyond \
         the rounding tolerance (max_abs_err: how far from the exact target the device's \
         token is, in kept mass; the host's own f32 walk: {host_worst:.2e})"
    );
    s.rows.push(result);
    let row = s.rows.len() - 1;
    s.time(row, || dev.sampling_draw(&logits, &packed, &mut out))?;
    Ok(())
}

/// How far from the exact target a device token may sit, as a fraction of the kept mass.
pub const TOLERANCE: f64 = 1e-4;

/// How far (a fraction of the kept mass) the draw's target must move for the host's walk,
/// summed exactly, to pick `token` from the edited `logits`: 0 for the host's own pick,
/// infinite for a token no cut keeps (or any other token of a greedy row).
pub fn judge(logits: &[f32], p: &SamplingParams, u: f32, token: u32) -> f64 {
    let argmax_distance = || {
        if token == argmax(logits) {
            0.0
        } else {
            f64::INFINITY
        }
    };
    if p.is_greedy() || p.top_k == 1 {
        return argmax_distance();
    }
    let by_probability = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut order: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l / p.temperature))
        .collect();
    if order.is_empty() {
        return argmax_distance();
    }
    // Top-k orders the tempered logits, the draw the weights.
    order.sort_by(by_probability);
    if p.top_k > 0 && p.top_k < order.len() {
        order.truncate(p.top_k);
    }
    let max = order[0].1;
    for c in order.iter_mut() {
        c.1 = (c.1 - max).exp();
    }
    order.sort_by(by_probability);
    let n = order.len();
    let mut cum = vec![0.0f64; n + 1];
    for (i, c) in order.iter().enumerate() {
        cum[i + 1] = cum[i] + c.1 as f64;
    }
    let n_min_p = if p.min_p > 0.0 {
        order.iter().take_while(|c| c.1 >= p.min_p).count().max(1)
    } else {
        n
    };
    let mut keeps = Vec::new();
    if p.top_p < 1.0 {
        let target = p.top_p as f64 * cum[n];
        let slack = TOLERANCE * cum[n];
        keeps.extend(
            (1..=n_min_p).filter(|&k| cum[k] >= target - slack && cum[k - 1] < target + slack),
        );
        if cum[n_min_p] < target + slack {
            keeps.push(n_min_p);
        }
    } else {
        keeps.push(n_min_p);
    }
    let Some(pos) = order.iter().position(|c| c.0 == token) else {
        return f64::INFINITY;
    };
    let mut best = f64::INFINITY;
    for k in keeps {
        if pos >= k {
            continue;
        }
        let kept = cum[k];
        let t = u as f64 * kept;
        let mut ideal = 0;
        while ideal + 1 < k && cum[ideal + 1] <= t {
            ideal += 1;
        }
        let d = if pos > ideal {
            cum[pos] - t
        } else if pos < ideal {
            t - cum[pos + 1]
        } else {
            0.0
        };
        best = best.min(d.max(0.0) / kept);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn the_rule_accepts_rounding_neighbours_and_nothing_else() {
        // Weights 1, 1, 1, 1 (ids 0..4) then 4 tokens of weight e^-3 (ids 4..8).
        let logits = [0.0, 0.0, 0.0, 0.0, -3.0, -3.0, -3.0, -3.0];
        let p = params(0, 1.0, 0.0);
        let kept: f64 = 4.0 + 4.0 * (-3.0f64).exp();
        // u * kept just below the boundary between token 1 and token 2.
        let u = (2.0 / kept - 1e-6) as f32;
        assert_eq!(judge(&logits, &p, u, 1), 0.0);
        assert!(judge(&logits, &p, u, 2) <= TOLERANCE);
        assert!(judge(&logits, &p, u, 3) > TOLERANCE, "two candidates away");
        assert!(judge(&logits, &p, 0.9, 0) > TOLERANCE);
        // Top-k 4 keeps ids 0..4 only, min_p 0.5 the same, top_p 0.5 ids 0..3 (two tokens
        // hold 2 / 4.2 of the mass, three 3 / 4.2).
        assert_eq!(
            judge(&logits, &params(4, 1.0, 0.0), 0.999, 5),
            f64::INFINITY
        );
        assert_eq!(
            judge(&logits, &params(0, 1.0, 0.5), 0.999, 4),
            f64::INFINITY
        );
        assert!(judge(&logits, &params(0, 0.5, 0.0), 0.2, 0) <= TOLERANCE);
        assert_eq!(
            judge(&logits, &params(0, 0.5, 0.0), 0.999, 3),
            f64::INFINITY
        );
        // Greedy rows: the argmax only; masked tokens are no candidates.
        let greedy = SamplingParams::greedy();
        assert_eq!(judge(&logits, &greedy, 0.5, 0), 0.0);
        assert_eq!(judge(&logits, &greedy, 0.5, 1), f64::INFINITY);
        let masked = [f32::NEG_INFINITY, 0.0, 0.0, 0.0];
        assert_eq!(judge(&masked, &p, 0.0, 0), f64::INFINITY);
        assert_eq!(judge(&masked, &p, 0.0, 1), 0.0);
    }
}
