//! Beam search (vLLM's `use_beam_search`), run over the engine from outside it.
//!
//! Each round asks the model for the top `2 * width` next tokens of every live beam (one
//! single-token request per beam, so the prefix cache serves each beam's prompt and earlier
//! tokens, and only its newest tokens are computed), extends every beam by each candidate,
//! and keeps the `width` extensions with the highest cumulative log-probability. A beam
//! whose candidate is an end token is complete instead. At the end, completed and live
//! beams together are ranked by `cumulative logprob / length^length_penalty`, the length
//! counting the prompt and not a final end token (vLLM's score), and the best `width` are
//! returned.
//!
//! The scores are the model's raw log-probabilities: temperature, penalties and other
//! logit edits do not apply (the server refuses the ones that would change the result).

use super::handle::{merge, EngineHandle};
use super::output::{FinishReason, RequestOutput, TokenLogprob};
use super::params::{SamplingParams, MAX_TOP_LOGPROBS};
use super::RequestError;
use futures_util::future::try_join_all;
use std::future::Future;

/// The widest beam whose `2 * width` candidates fit in one request's top logprobs.
pub const MAX_BEAM_WIDTH: usize = MAX_TOP_LOGPROBS / 2;

/// What a search looks for.
#[derive(Clone, Debug, PartialEq)]
pub struct BeamConfig {
    /// Beams kept after each round, and beams returned.
    pub width: usize,
    /// Rounds: the most tokens a beam generates.
    pub max_tokens: usize,
    /// Tokens that complete a beam (EOS, stop token ids); empty under `ignore_eos`.
    pub end_tokens: Vec<u32>,
    /// Exponent of the length the final score divides by (1: per-token average).
    pub length_penalty: f64,
    /// Keep a completing end token in the beam's tokens.
    pub keep_end_token: bool,
}

/// One finished beam: the tokens it generated and their scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Beam {
    pub tokens: Vec<u32>,
    /// Each generated token's log-probability with the best alternatives of its round.
    pub logprobs: Vec<TokenLogprob>,
    pub cumulative_logprob: f64,
    /// Completed by an end token (as opposed to running out of rounds).
    pub ended: bool,
}

impl Beam {
    /// vLLM's ranking score for a beam after a prompt of `prompt_len` tokens: a kept end
    /// token does not count towards the length.
    fn score(&self, prompt_len: usize, config: &BeamConfig) -> f64 {
        let kept_end = self.ended && config.keep_end_token;
        let len = prompt_len + self.tokens.len() - usize::from(kept_end);
        self.cumulative_logprob / (len.max(1) as f64).powf(config.length_penalty)
    }
}

/// Runs a search after `prompt`. `expand` takes the full token sequences of the live beams
/// and returns, for each, its next-token candidates as `(token, logprob)`, best first (at
/// least `2 * width` of them where the vocabulary has that many).
pub async fn search<E, F, Fut>(
    prompt: &[u32],
    config: &BeamConfig,
    mut expand: F,
) -> Result<Vec<Beam>, E>
where
    F: FnMut(Vec<Vec<u32>>) -> Fut,
    Fut: Future<Output = Result<Vec<Vec<(u32, f32)>>, E>>,
{
    let width = config.width.max(1);
    let mut live = vec![Beam {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        cumulative_logprob: 0.0,
        ended: false,
    }];
    let mut done: Vec<Beam> = Vec::new();
    for _ in 0..config.max_tokens {
        if live.is_empty() {
            break;
        }
        let sequences = live
            .iter()
            .map(|b| prompt.iter().chain(&b.tokens).copied().collect())
            .collect();
        let candidates = expand(sequences).await?;
        let mut extended: Vec<Beam> = Vec::new();
        for (beam, options) in live.iter().zip(candidates) {
            let top: Vec<(u32, f32)> = options.iter().take(2 * width).copied().collect();
            for &(token, logprob) in &top {
                let mut next = beam.clone();
                next.cumulative_logprob += f64::from(logprob);
                next.logprobs.push(TokenLogprob {
                    token_id: token,
                    logprob,
                    top: top.clone(),
                    rank: None,
                });
                if config.end_tokens.contains(&token) {
                    if config.keep_end_token {
                        next.tokens.push(token);
                    }
                    next.ended = true;
                    done.push(next);
                } else {
                    next.tokens.push(token);
                    extended.push(next);
                }
            }
        }
        // Stable: equal scores keep the order of their beams and candidates.
        extended.sort_by(|a, b| b.cumulative_logprob.total_cmp(&a.cumulative_logprob));
        extended.truncate(width);
        live = extended;
    }
    done.extend(live);
    let prompt_len = prompt.len();
    done.sort_by(|a, b| {
        b.score(prompt_len, config)
            .total_cmp(&a.score(prompt_len, config))
    });
    done.truncate(width);
    Ok(done)
}

/// A search over `handle`'s model. `params` carries what every beam request shares (LoRA
/// adapter, cache salt, priority); each round's requests ask for one token with the top
/// `2 * width` log-probabilities (at least `top_logprobs`, for the caller's logprobs).
pub async fn search_engine(
    handle: &EngineHandle,
    prompt: &[u32],
    config: &BeamConfig,
    params: &SamplingParams,
    top_logprobs: usize,
) -> Result<Vec<Beam>, BeamError> {
    let round = SamplingParams {
        max_tokens: Some(1),
        temperature: 0.0,
        ignore_eos: true,
        logprobs: Some((2 * config.width).max(top_logprobs).min(MAX_TOP_LOGPROBS)),
        lora_adapter: params.lora_adapter,
        cache_salt: params.cache_salt.clone(),
        priority: params.priority,
        ..SamplingParams::default()
    };
    search(prompt, config, |sequences: Vec<Vec<u32>>| {
        let round = &round;
        async move {
            let streams = sequences
                .into_iter()
                .map(|ids| handle.submit(ids, round.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(BeamError::Refused)?;
            try_join_all(streams.into_iter().map(|mut stream| async move {
                let mut all = RequestOutput::default();
                while let Some(event) = stream.next().await {
                    merge(&mut all, event.map_err(BeamError::Engine)?);
                    if all.finish_reason.is_some() {
                        break;
                    }
                }
                let first = all.logprobs.into_iter().next().ok_or_else(|| {
                    BeamError::Engine("the engine returned no logprobs for a beam".into())
                })?;
                Ok(first.top)
            }))
            .await
        }
    })
    .await
}

/// Why a search stopped.
#[derive(Debug)]
pub enum BeamError {
    /// The engine refused a beam's request (queue full, engine down, ...).
    Refused(RequestError),
    /// A beam's request failed inside the engine.
    Engine(String),
}

/// A finished beam as a request's single output.
pub fn beam_output(
    beam: Beam,
    prompt_tokens: usize,
    text: String,
    top_logprobs: Option<usize>,
) -> RequestOutput {
    let logprobs = match top_logprobs {
        None => Vec::new(),
        Some(n) => beam
            .logprobs
            .into_iter()
            .map(|mut l| {
                l.top.truncate(n);
                l
            })
            .collect(),
    };
    RequestOutput {
        completion_tokens: beam.tokens.len(),
        token_ids: beam.tokens,
        text,
        logprobs,
        finish_reason: Some(if beam.ended {
            FinishReason::Stop
        } else {
            FinishReason::Length
        }),
        prompt_tokens,
        ..RequestOutput::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A model given as a table: the next-token log-probabilities after each generated
    /// prefix (the prompt is `[0]`); prefixes not in the table end with token 9 for sure.
    type Candidates = Vec<Vec<(u32, f32)>>;

    fn table_model(
        table: HashMap<Vec<u32>, Vec<(u32, f32)>>,
    ) -> impl FnMut(Vec<Vec<u32>>) -> std::future::Ready<Result<Candidates, ()>> {
        move |sequences| {
            let out = sequences
                .iter()
                .map(|s| {
                    let mut c = table.get(&s[1..]).cloned().unwrap_or(vec![(9, 0.0)]);
                    c.sort_by(|a, b| b.1.total_cmp(&a.1));
                    c
                })
                .collect();
            std::future::ready(Ok(out))
        }
    }

    fn run(
        table: HashMap<Vec<u32>, Vec<(u32, f32)>>,
        config: &BeamConfig,
    ) -> Vec<(Vec<u32>, f64, bool)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let beams = runtime
            .block_on(search(&[0], config, table_model(table)))
            .unwrap();
        beams
            .into_iter()
            .map(|b| (b.tokens, b.cumulative_logprob, b.ended))
            .collect()
    }

    fn config(width: usize, max_tokens: usize) -> BeamConfig {
        BeamConfig {
            width,
            max_tokens,
            end_tokens: vec![],
            length_penalty: 1.0,
            keep_end_token: false,
        }
    }

    /// Greedy takes 1 (-0.5) and then only poor tokens; the beam finds 2 then 5.
    fn garden_path() -> HashMap<Vec<u32>, Vec<(u32, f32)>> {
        HashMap::from([
            (vec![], vec![(1, -0.5), (2, -0.9), (3, -3.0)]),
            (vec![1], vec![(4, -2.0), (5, -2.1)]),
            (vec![2], vec![(5, -0.1), (4, -3.0)]),
            (vec![3], vec![(4, -0.1)]),
        ])
    }

    #[test]
    fn width_one_is_greedy_and_a_wider_beam_finds_the_better_path() {
        let greedy = run(garden_path(), &config(1, 2));
        assert_eq!(greedy.len(), 1);
        assert_eq!(greedy[0].0, [1, 4]);
        let beams = run(garden_path(), &config(2, 2));
        let tokens: Vec<_> = beams.iter().map(|b| b.0.clone()).collect();
        assert_eq!(tokens, [vec![2, 5], vec![1, 4]]);
        assert!((beams[0].1 - (-1.0)).abs() < 1e-6, "{beams:?}");
        assert!((beams[1].1 - (-2.5)).abs() < 1e-6);
    }

    #[test]
    fn each_round_keeps_the_best_extensions_over_all_beams() {
        // Width 2 after round one holds [1] and [2]; round two's best two extensions are
        // both children of [2], so [1]'s line is dropped.
        let mut table = garden_path();
        table.insert(vec![2], vec![(5, -0.1), (6, -0.2), (4, -3.0)]);
        let beams = run(table, &config(2, 2));
        let tokens: Vec<_> = beams.iter().map(|b| b.0.clone()).collect();
        assert_eq!(tokens, [vec![2, 5], vec![2, 6]]);
    }

    #[test]
    fn end_tokens_complete_beams_and_length_penalty_ranks_them() {
        // Token 7 ends. [7] completes at round one with -1.25; the live beam [1, 4] ends
        // at -2.5. With the one-token prompt their lengths are 1 and 3.
        let table = HashMap::from([
            (vec![], vec![(1, -0.5), (7, -1.25)]),
            (vec![1], vec![(4, -2.0)]),
            (vec![1, 4], vec![(8, -0.1)]),
        ]);
        let mut c = config(2, 2);
        c.end_tokens = vec![7];
        // length_penalty 0: the raw cumulative logprob ranks.
        c.length_penalty = 0.0;
        let beams = run(table.clone(), &c);
        assert_eq!(beams[0], (vec![], -1.25, true));
        assert_eq!(beams[1].0, [1, 4]);
        assert!(!beams[1].2);
        // Per-token average (1): -2.5 / 3 beats -1.25 / 1.
        c.length_penalty = 1.0;
        let averaged = run(table.clone(), &c);
        assert_eq!(averaged[0].0, [1, 4], "{averaged:?}");
        // Kept, the end token is in the tokens but not in the length: -1.25 / 1 still.
        c.keep_end_token = true;
        let kept = run(table, &c);
        assert_eq!(kept[1], (vec![7], -1.25, true), "{kept:?}");
    }

    #[test]
    fn beam_scores_divide_by_the_prompt_and_generated_length() {
        let beam = Beam {
            tokens: vec![3, 4],
            logprobs: vec![],
            cumulative_logprob: -6.0,
            ended: true,
        };
        let mut c = config(1, 1);
        assert!((beam.score(4, &c) - (-1.0)).abs() < 1e-12);
        c.keep_end_token = true;
        assert!((beam.score(4, &c) - (-1.2)).abs() < 1e-12);
        c.length_penalty = 0.0;
        assert!((beam.score(4, &c) - (-6.0)).abs() < 1e-12);
    }

    #[test]
    fn output_truncates_alternatives_and_sets_the_finish_reason() {
        let beam = Beam {
            tokens: vec![5, 6],
            logprobs: vec![
                TokenLogprob {
                    token_id: 5,
                    logprob: -0.1,
                    top: vec![(5, -0.1), (6, -2.0), (7, -3.0)],
                    rank: None,
                };
                2
            ],
            cumulative_logprob: -0.2,
            ended: true,
        };
        let out = beam_output(beam.clone(), 4, "ab".into(), Some(1));
        assert_eq!(out.finish_reason, Some(FinishReason::Stop));
        assert_eq!(out.completion_tokens, 2);
        assert_eq!(out.prompt_tokens, 4);
        assert_eq!(out.logprobs[0].top, [(5, -0.1)]);
        assert!(beam_output(beam, 4, "ab".into(), None).logprobs.is_empty());
    }
}
