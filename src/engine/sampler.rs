//! Turning one sequence's logits into its next token, on the host.
//!
//! Order: logprobs of the raw distribution (what OpenAI clients expect), then penalties,
//! logit biases, a grammar's mask, `min_tokens` masking, and either argmax (greedy) or temperature, top-k, top-p, min-p and a
//! draw from the sequence's own random stream (so a seed gives the same text in any batch).

use super::output::TokenLogprob;
use super::params::SamplingParams;
use crate::model::grammar::TokenMask;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Everything about a sequence the sampler reads.
pub struct SampleContext<'a> {
    pub params: &'a SamplingParams,
    pub prompt: &'a [u32],
    pub output: &'a [u32],
    /// Tokens masked while `output.len() < min_tokens` (EOS and stop token ids).
    pub end_tokens: &'a [u32],
    /// The tokens a structured-output grammar allows now; all others are dropped.
    pub allowed: Option<&'a TokenMask>,
}

pub struct Sampled {
    pub token: u32,
    pub logprob: Option<TokenLogprob>,
}

pub fn sample(logits: &mut [f32], ctx: &SampleContext, rng: &mut ChaCha8Rng) -> Sampled {
    let p = ctx.params;
    let raw_logprobs = p.logprobs.map(|_| log_softmax(logits));
    apply_penalties(logits, ctx);
    for &(token, bias) in &p.logit_bias {
        if let Some(l) = logits.get_mut(token as usize) {
            *l += bias;
        }
    }
    if let Some(allowed) = ctx.allowed {
        for (t, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(t as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if let Some(ids) = &p.allowed_token_ids {
        keep_only(logits, ids);
    }
    for token in banned_next(&p.bad_words_ids, ctx.output) {
        if let Some(l) = logits.get_mut(token as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    if ctx.output.len() < p.min_tokens {
        for &t in ctx.end_tokens {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    let token = if p.is_greedy() {
        argmax(logits)
    } else {
        draw(logits, p, rng.random::<f32>())
    };
    let logprob = raw_logprobs.map(|lp| TokenLogprob {
        token_id: token,
        logprob: lp[token as usize],
        top: top_n(&lp, p.logprobs.unwrap_or(0)),
        rank: None,
    });
    Sampled { token, logprob }
}

/// True when the next token is the plain argmax of the raw logits (greedy, no penalty, no
/// logprobs, no end token to hold back), so the device may pick it without sending the
/// logits to the host. `sample` gives the same token for such a row.
pub fn picks_argmax(ctx: &SampleContext) -> bool {
    let p = ctx.params;
    p.is_greedy()
        && p.logprobs.is_none()
        && p.repetition_penalty == 1.0
        && p.presence_penalty == 0.0
        && p.frequency_penalty == 0.0
        && !p.edits_logits()
        && (ctx.output.len() >= p.min_tokens || ctx.end_tokens.is_empty())
}

/// Sets every logit but those of `ids` to minus infinity (one pass over the vocabulary).
fn keep_only(logits: &mut [f32], ids: &[u32]) {
    let kept: Vec<(usize, f32)> = ids
        .iter()
        .filter_map(|&t| logits.get(t as usize).map(|&l| (t as usize, l)))
        .collect();
    logits.fill(f32::NEG_INFINITY);
    for (t, l) in kept {
        logits[t] = l;
    }
}

/// The tokens that would complete one of `bad_words` after `output`: a one-token word
/// always, a longer one where the output ends with all of it but its last token.
pub fn banned_next<'a>(
    bad_words: &'a [Vec<u32>],
    output: &'a [u32],
) -> impl Iterator<Item = u32> + 'a {
    bad_words.iter().filter_map(move |word| {
        let (&last, prefix) = word.split_last()?;
        output.ends_with(prefix).then_some(last)
    })
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    let log_sum = sum.ln() + max;
    x.iter().map(|v| v - log_sum).collect()
}

/// The `n` most likely tokens, most likely first.
pub fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..logprobs.len() as u32).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    let by_desc = |a: &u32, b: &u32| logprobs[*b as usize].total_cmp(&logprobs[*a as usize]);
    idx.select_nth_unstable_by(n - 1, by_desc);
    idx.truncate(n);
    idx.sort_by(by_desc);
    idx.into_iter().map(|i| (i, logprobs[i as usize])).collect()
}

fn apply_penalties(logits: &mut [f32], ctx: &SampleContext) {
    let p = ctx.params;
    if p.repetition_penalty != 1.0 {
        let mut seen: Vec<u32> = ctx.prompt.iter().chain(ctx.output).copied().collect();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in ctx.output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
    }
}

/// Temperature, then the truncations, then one draw.
/// Draws from the tempered distribution cut by top-k, top-p and min-p. Candidates are
/// walked in order of probability (ties: lower id first), as HF and vLLM define the cuts.
///
/// Sorting a whole 128k vocabulary costs ~10 ms per token on one core, and almost all the
/// probability sits in the first few candidates, so the order is built lazily: the top
/// `SORT_CHUNK` first, more only when a cut or the draw walks past them.
/// `u` in [0, 1) is the request's next uniform draw (the device sampler gets the same one).
pub fn draw(logits: &[f32], p: &SamplingParams, u: f32) -> u32 {
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l / p.temperature))
        .collect();
    if cand.is_empty() {
        return argmax(logits);
    }
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, by_probability);
        cand.truncate(p.top_k);
    }
    // Weights relative to the most likely candidate (weight 1): p_i = w_i / total.
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    for c in cand.iter_mut() {
        c.1 = (c.1 - max).exp();
    }
    let total: f32 = cand.iter().map(|c| c.1).sum();
    let mut order = LazyOrder::new(cand);
    // min_p keeps p_i >= min_p * p_max, i.e. w_i >= min_p: a prefix of the order.
    let (mut keep, mut kept_weight) = if p.min_p > 0.0 {
        let kept = order.cand.iter().filter(|c| c.1 >= p.min_p);
        (kept.clone().count().max(1), kept.map(|c| c.1).sum::<f32>())
    } else {
        (order.len(), total)
    };
    if p.top_p < 1.0 {
        // The shortest prefix holding top_p of the mass.
        let target = p.top_p * total;
        let (mut acc, mut i) = (0.0f32, 0);
        while i < keep {
            acc += order.get(i).1;
            i += 1;
            if acc >= target {
                break;
            }
        }
        if i < keep {
            keep = i;
            kept_weight = acc;
        }
    }
    let mut r = u * kept_weight;
    for i in 0..keep {
        let (id, w) = order.get(i);
        if r < w {
            return id;
        }
        r -= w;
    }
    order.get(keep - 1).0
}

/// Higher weight first, then lower id: the candidate order of [`draw`].
fn by_probability(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Candidates sorted [`by_probability`] on demand, a chunk at a time.
struct LazyOrder {
    cand: Vec<(u32, f32)>,
    /// `cand[..sorted]` is in final order and holds the `sorted` best candidates.
    sorted: usize,
}

/// Candidates ordered by the first extension: enough for a typical draw or top-p cut.
/// Later extensions double the sorted prefix, so a walk deep into a flat tail costs
/// O(n log n) overall, like one full sort, never a selection per chunk.
const SORT_CHUNK: usize = 256;

impl LazyOrder {
    fn new(cand: Vec<(u32, f32)>) -> Self {
        LazyOrder { cand, sorted: 0 }
    }

    fn len(&self) -> usize {
        self.cand.len()
    }

    /// The `i`-th best candidate.
    fn get(&mut self, i: usize) -> (u32, f32) {
        if i >= self.sorted {
            let end = (i + 1)
                .max(2 * self.sorted)
                .max(SORT_CHUNK)
                .min(self.cand.len());
            let rest = &mut self.cand[self.sorted..];
            let take = end - self.sorted;
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, by_probability);
            }
            rest[..take].sort_unstable_by(by_probability);
            self.sorted = end;
        }
        self.cand[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::device_draw::DeviceDraw;
    use rand::SeedableRng;

    fn ctx<'a>(p: &'a SamplingParams, output: &'a [u32]) -> SampleContext<'a> {
        SampleContext {
            params: p,
            prompt: &[],
            output,
            end_tokens: &[3],
            allowed: None,
        }
    }

    #[test]
    fn only_plain_greedy_rows_may_be_picked_on_the_device() {
        let greedy = SamplingParams::greedy();
        assert!(picks_argmax(&ctx(&greedy, &[])));
        let top_k_one = SamplingParams {
            top_k: 1,
            temperature: 1.0,
            ..Default::default()
        };
        assert!(picks_argmax(&ctx(&top_k_one, &[])));
        for p in [
            SamplingParams::default(),
            SamplingParams {
                logprobs: Some(0),
                ..SamplingParams::greedy()
            },
            SamplingParams {
                repetition_penalty: 1.1,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                frequency_penalty: 0.5,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                logit_bias: vec![(2, -1.0)],
                ..SamplingParams::greedy()
            },
        ] {
            assert!(!picks_argmax(&ctx(&p, &[])), "{p:?}");
        }
        // min_tokens masks the end tokens until enough output exists.
        let min = SamplingParams {
            min_tokens: 2,
            ..SamplingParams::greedy()
        };
        assert!(!picks_argmax(&ctx(&min, &[7])));
        assert!(picks_argmax(&ctx(&min, &[7, 8])));
    }

    #[test]
    fn bad_words_ban_the_token_that_would_complete_them() {
        let words = vec![vec![7], vec![3, 4, 5]];
        let banned = |output: &[u32]| banned_next(&words, output).collect::<Vec<_>>();
        // A one-token word is always banned; a longer one only after its prefix.
        assert_eq!(banned(&[]), vec![7]);
        assert_eq!(banned(&[1, 3]), vec![7]);
        assert_eq!(banned(&[1, 3, 4]), vec![7, 5]);
        assert_eq!(banned(&[3, 4, 1]), vec![7]);
        let mut logits = vec![0.0, 1.0, 2.0, 3.0];
        keep_only(&mut logits, &[0, 2]);
        assert_eq!(logits[1], f32::NEG_INFINITY);
        assert_eq!((logits[0], logits[2]), (0.0, 2.0));
        assert_eq!(logits[3], f32::NEG_INFINITY);
    }

    #[test]
    fn logit_biases_move_tokens_before_the_pick_but_not_the_logprobs() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let banned = SamplingParams {
            logit_bias: vec![(1, -100.0)],
            logprobs: Some(1),
            ..SamplingParams::greedy()
        };
        let s = sample(&mut logits.clone(), &ctx(&banned, &[]), &mut rng);
        assert_eq!(s.token, 3, "the argmax is banned, the runner-up wins");
        let raw = log_softmax(&logits);
        assert_eq!(
            s.logprob.unwrap().logprob,
            raw[3],
            "logprobs are of the raw logits"
        );
        // A strong bias makes even a sampled token certain.
        let forced = SamplingParams {
            logit_bias: vec![(2, 100.0)],
            temperature: 1.0,
            ..Default::default()
        };
        for seed in 0..10 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            assert_eq!(
                sample(&mut logits.clone(), &ctx(&forced, &[]), &mut rng).token,
                2
            );
        }
        assert!(
            DeviceDraw::for_row(&ctx(&forced, &[]), 0.5).is_none(),
            "host only"
        );
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let p = SamplingParams::greedy();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            sample(&mut [0.1, 2.0, -1.0, 1.9], &ctx(&p, &[]), &mut rng).token,
            1
        );
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy_whatever_the_seed() {
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let p = SamplingParams {
                top_p: 0.01,
                ..Default::default()
            };
            assert_eq!(
                sample(&mut [0.0, 3.0, 1.0, 2.9], &ctx(&p, &[]), &mut rng).token,
                1
            );
            let p = SamplingParams {
                top_k: 1,
                ..Default::default()
            };
            assert_eq!(
                sample(&mut [0.0, 3.0, 1.0, 2.9], &ctx(&p, &[]), &mut rng).token,
                1
            );
        }
    }

    #[test]
    fn min_p_cuts_unlikely_tokens() {
        let p = SamplingParams {
            min_p: 0.5,
            ..Default::default()
        };
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // exp(-3) relative probability is far below half of the best.
            let t = sample(&mut [0.0, 3.0, 0.0, 2.9], &ctx(&p, &[]), &mut rng).token;
            assert!(t == 1 || t == 3);
        }
    }

    #[test]
    fn the_lazy_order_is_the_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Many ties (values on a coarse grid) and more candidates than one chunk.
        let cand: Vec<(u32, f32)> = (0..2000u32)
            .map(|i| (i, (rng.random::<f32>() * 50.0).floor()))
            .collect();
        let mut full = cand.clone();
        full.sort_by(by_probability);
        let mut lazy = LazyOrder::new(cand);
        // Out-of-order access still sees the final order.
        assert_eq!(lazy.get(700), full[700]);
        for (i, expected) in full.iter().enumerate() {
            assert_eq!(lazy.get(i), *expected, "position {i}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_holding_the_mass() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (tokens 2, 0, 1, 3).
        let logits = [2.0f32.ln(), 1.0f32.ln(), 4.0f32.ln(), 1.0f32.ln()];
        for (top_p, allowed) in [(0.5, vec![2]), (0.7, vec![2, 0]), (0.8, vec![2, 0, 1])] {
            let p = SamplingParams {
                top_p,
                ..Default::default()
            };
            let mut seen = std::collections::BTreeSet::new();
            for seed in 0..300 {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                seen.insert(sample(&mut logits.clone(), &ctx(&p, &[]), &mut rng).token);
            }
            let mut allowed = allowed;
            allowed.sort_unstable();
            assert_eq!(
                seen.into_iter().collect::<Vec<_>>(),
                allowed,
                "top_p {top_p}"
            );
        }
    }

    #[test]
    fn sampling_a_large_vocabulary_follows_the_distribution() {
        // 128k candidates, one of which holds half the mass: it must come up half the time.
        let mut logits = vec![0.0f32; 128_000];
        logits[77_777] = (127_999.0f32).ln();
        let p = SamplingParams::default();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let hits = (0..100)
            .filter(|_| sample(&mut logits.clone(), &ctx(&p, &[]), &mut rng).token == 77_777)
            .count();
        assert!((30..70).contains(&hits), "{hits}");
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let p = SamplingParams::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let ones = (0..4000)
            .filter(|_| sample(&mut logits.clone(), &ctx(&p, &[]), &mut rng).token == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }

    #[test]
    fn penalties_follow_hf_and_openai_definitions() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        };
        let mut l = [4.0, -4.0, 4.0, 1.0];
        let c = SampleContext {
            params: &p,
            prompt: &[0],
            output: &[1, 1],
            end_tokens: &[],
            allowed: None,
        };
        apply_penalties(&mut l, &c);
        assert_eq!(l, [2.0, -8.0 - 0.5 - 0.5, 4.0, 1.0]);
    }

    #[test]
    fn min_tokens_masks_end_tokens_and_logprobs_are_raw() {
        let p = SamplingParams {
            min_tokens: 2,
            logprobs: Some(2),
            ..SamplingParams::greedy()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let s = sample(&mut [0.0, 1.0, 0.0, 5.0], &ctx(&p, &[9]), &mut rng);
        assert_eq!(s.token, 1);
        let lp = s.logprob.unwrap();
        assert_eq!(
            lp.top[0].0, 3,
            "alternatives come from the unmasked distribution"
        );
        let expect = log_softmax(&[0.0, 1.0, 0.0, 5.0])[1];
        assert!((lp.logprob - expect).abs() < 1e-6);
    }
}
