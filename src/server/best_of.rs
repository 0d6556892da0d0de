//! OpenAI's `best_of` on `/v1/completions`: `best_of` candidates are generated per prompt and
//! the `n` with the highest log-probability per token are returned, best first. The
//! candidates' tokens are all generated (and counted in `usage`); only the choices are cut.

use super::error::{ApiError, ApiResult};
use crate::engine::RequestOutput;

/// Most candidates one prompt may ask for.
pub const MAX_BEST_OF: usize = 20;

/// The candidates per prompt a request asks for (`n` without `best_of`), refusing what
/// OpenAI refuses: fewer than `n`, streaming, and (kiln's) more than [`MAX_BEST_OF`].
pub fn candidates(best_of: Option<usize>, n: usize, stream: bool) -> ApiResult<usize> {
    let Some(best_of) = best_of else {
        return Ok(n);
    };
    let refuse = |message: String| Err(ApiError::invalid(Some("best_of"), message));
    if best_of < n {
        return refuse(format!("best_of ({best_of}) must be at least n ({n})"));
    }
    if best_of > MAX_BEST_OF {
        return refuse(format!(
            "best_of must be at most {MAX_BEST_OF}, got {best_of}"
        ));
    }
    if stream && best_of > n {
        return refuse("best_of cannot be combined with stream".into());
    }
    Ok(best_of)
}

/// Mean log-probability per generated token (the ranking OpenAI documents).
fn per_token(out: &RequestOutput) -> f64 {
    if out.logprobs.is_empty() {
        return f64::NEG_INFINITY;
    }
    let total: f64 = out.logprobs.iter().map(|l| f64::from(l.logprob)).sum();
    total / out.logprobs.len() as f64
}

/// From `finals` (prompt `p`'s candidates at `p * best_of ..`), each prompt's `n` best,
/// best first, laid out prompt-major like any `n` choices. Logprobs are dropped unless the
/// request asked for them (they were computed for the ranking).
pub fn pick(
    finals: Vec<RequestOutput>,
    best_of: usize,
    n: usize,
    keep_logprobs: bool,
) -> Vec<RequestOutput> {
    let mut picked = Vec::with_capacity(finals.len() / best_of.max(1) * n);
    let mut candidates = finals.into_iter().peekable();
    while candidates.peek().is_some() {
        let mut group: Vec<RequestOutput> = candidates.by_ref().take(best_of).collect();
        // Stable: equal scores keep the order they were generated in.
        group.sort_by(|a, b| per_token(b).total_cmp(&per_token(a)));
        picked.extend(group.into_iter().take(n).map(|mut out| {
            if !keep_logprobs {
                out.logprobs.clear();
            }
            out
        }));
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::output::TokenLogprob;

    fn candidate(text: &str, logprobs: &[f32]) -> RequestOutput {
        RequestOutput {
            text: text.into(),
            logprobs: logprobs
                .iter()
                .map(|&logprob| TokenLogprob {
                    token_id: 0,
                    logprob,
                    top: vec![],
                    rank: None,
                })
                .collect(),
            ..RequestOutput::default()
        }
    }

    #[test]
    fn each_prompt_keeps_its_best_per_token_candidates() {
        let finals = vec![
            candidate("a", &[-1.0, -1.0]),
            candidate("b", &[-0.1, -0.3, -0.2]),
            candidate("c", &[-3.0]),
            candidate("d", &[-2.0]),
            candidate("e", &[-0.5]),
            candidate("f", &[-0.4, -0.6, -0.5]),
        ];
        // Per token: a -1.0, b -0.2, c -3.0 | d -2.0, e -0.5, f -0.5 (tie: e first).
        let picked = pick(finals, 3, 2, false);
        let texts: Vec<_> = picked.iter().map(|o| o.text.as_str()).collect();
        assert_eq!(texts, ["b", "a", "e", "f"]);
        assert!(picked.iter().all(|o| o.logprobs.is_empty()));
        let kept = pick(vec![candidate("x", &[-1.0])], 1, 1, true);
        assert_eq!(kept[0].logprobs.len(), 1);
    }

    #[test]
    fn refuses_what_openai_refuses() {
        assert_eq!(candidates(None, 3, true).unwrap(), 3);
        assert_eq!(candidates(Some(4), 2, false).unwrap(), 4);
        assert_eq!(candidates(Some(2), 2, true).unwrap(), 2);
        assert!(candidates(Some(1), 2, false).is_err());
        assert!(candidates(Some(4), 2, true).is_err());
        assert!(candidates(Some(MAX_BEST_OF + 1), 1, false).is_err());
    }
}
