//! The run's aggregate metrics, defined as vLLM's `bench serve` defines them:
//! - TTFT: time to the first content chunk, per successful request.
//! - TPOT: (E2EL - TTFT) / (output tokens - 1), per successful request with more than one
//!   output token.
//! - ITL: every gap between consecutive content chunks, pooled over requests.
//! - E2EL: from sending to the last content chunk.
//! - Throughputs divide by the wall-clock duration of the whole run; failed requests add no
//!   tokens but are counted.
//! - Goodput: successful requests meeting every SLO given (metric <= SLO), per second.

use super::client::RequestOutcome;
use super::stats::Summary;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::str::FromStr;

/// Service-level objectives for goodput, in milliseconds; `None` is not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl FromStr for Slo {
    type Err = anyhow::Error;

    /// `ttft:500,tpot:50,e2el:2000` (any subset, each once).
    fn from_str(s: &str) -> Result<Self> {
        let mut slo = Slo::default();
        for part in s.split([',', ' ']).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .with_context(|| format!("goodput SLO {part:?} is not NAME:MILLISECONDS"))?;
            let ms: f64 = value
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .with_context(|| {
                    format!("goodput SLO {part:?}: {value:?} is not a number of milliseconds")
                })?;
            let slot = match name.trim().to_ascii_lowercase().as_str() {
                "ttft" => &mut slo.ttft_ms,
                "tpot" => &mut slo.tpot_ms,
                "e2el" => &mut slo.e2el_ms,
                other => bail!("goodput SLO {other:?} is not one of ttft, tpot, e2el"),
            };
            if slot.replace(ms).is_some() {
                bail!("goodput SLO {name:?} is given twice");
            }
        }
        if slo == Slo::default() {
            bail!("--goodput needs at least one of ttft:MS, tpot:MS, e2el:MS");
        }
        Ok(slo)
    }
}

impl Slo {
    fn met_by(&self, outcome: &RequestOutcome) -> bool {
        let ok = |slo: Option<f64>, seconds: f64| slo.is_none_or(|ms| seconds * 1000.0 <= ms);
        ok(self.ttft_ms, outcome.ttft_s)
            && ok(self.tpot_ms, tpot(outcome).unwrap_or(0.0))
            && ok(self.e2el_ms, outcome.e2el_s)
    }
}

/// TPOT of one successful request; `None` with a single output token (undefined).
pub fn tpot(outcome: &RequestOutcome) -> Option<f64> {
    (outcome.success && outcome.output_tokens > 1)
        .then(|| (outcome.e2el_s - outcome.ttft_s) / (outcome.output_tokens - 1) as f64)
}

/// Everything the summary table and the JSON report show.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregates {
    pub completed: usize,
    pub failed: usize,
    pub duration_s: f64,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    /// Requests meeting the SLOs; `None` without `--goodput`.
    pub good_requests: Option<usize>,
    pub request_goodput: Option<f64>,
    /// The busiest one-second window of output tokens.
    pub max_output_tokens_per_s: f64,
    pub ttft: Summary,
    pub tpot: Summary,
    pub itl: Summary,
    pub e2el: Summary,
}

pub fn aggregate(
    outcomes: &[RequestOutcome],
    duration_s: f64,
    percentiles: &[f64],
    slo: Option<&Slo>,
) -> Aggregates {
    let ok: Vec<&RequestOutcome> = outcomes.iter().filter(|o| o.success).collect();
    let total_input_tokens = ok.iter().map(|o| o.prompt_tokens).sum();
    let total_output_tokens = ok.iter().map(|o| o.output_tokens).sum();
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    let ttfts: Vec<f64> = ok.iter().map(|o| o.ttft_s).collect();
    let tpots: Vec<f64> = ok.iter().filter_map(|o| tpot(o)).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|o| o.itl_s.iter().copied()).collect();
    let e2els: Vec<f64> = ok.iter().map(|o| o.e2el_s).collect();
    let good_requests = slo.map(|slo| ok.iter().filter(|o| slo.met_by(o)).count());
    Aggregates {
        completed: ok.len(),
        failed: outcomes.len() - ok.len(),
        duration_s,
        total_input_tokens,
        total_output_tokens,
        request_throughput: per_s(ok.len() as f64),
        output_throughput: per_s(total_output_tokens as f64),
        total_token_throughput: per_s((total_input_tokens + total_output_tokens) as f64),
        good_requests,
        request_goodput: good_requests.map(|g| per_s(g as f64)),
        max_output_tokens_per_s: super::timeline::output_tokens_per_window(outcomes, 1.0)
            .into_iter()
            .fold(0.0, f64::max),
        ttft: Summary::of_seconds(&ttfts, percentiles),
        tpot: Summary::of_seconds(&tpots, percentiles),
        itl: Summary::of_seconds(&itls, percentiles),
        e2el: Summary::of_seconds(&e2els, percentiles),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::serve::client::TokenSource;

    fn outcome(ttft_s: f64, e2el_s: f64, output_tokens: usize) -> RequestOutcome {
        RequestOutcome {
            index: 0,
            success: true,
            error: None,
            start_s: 0.0,
            ttft_s,
            e2el_s,
            itl_s: vec![
                (e2el_s - ttft_s) / (output_tokens.max(2) - 1) as f64;
                output_tokens.saturating_sub(1)
            ],
            prompt_tokens: 10,
            output_tokens,
            output_tokens_source: TokenSource::Usage,
            content_chunks: output_tokens,
        }
    }

    #[test]
    fn slo_parses_subsets_and_rejects_mistakes() {
        let slo: Slo = "ttft:500,e2el:2000".parse().unwrap();
        assert_eq!(
            slo,
            Slo {
                ttft_ms: Some(500.0),
                tpot_ms: None,
                e2el_ms: Some(2000.0)
            }
        );
        for bad in ["", "ttft", "ttft:fast", "itl:5", "ttft:1,ttft:2", "tpot:-1"] {
            assert!(bad.parse::<Slo>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn single_token_requests_have_no_tpot_but_count_everywhere_else() {
        let failed = RequestOutcome {
            success: false,
            error: Some("x".into()),
            ..outcome(0.0, 0.0, 0)
        };
        let runs = [outcome(0.1, 0.5, 5), outcome(0.2, 0.2, 1), failed];
        let a = aggregate(&runs, 2.0, &[99.0], None);
        assert_eq!((a.completed, a.failed), (2, 1));
        assert_eq!((a.total_input_tokens, a.total_output_tokens), (20, 6));
        assert!(
            (a.tpot.mean_ms - 100.0).abs() < 1e-9,
            "only the 5-token request has a TPOT"
        );
        assert!((a.ttft.mean_ms - 150.0).abs() < 1e-9);
        assert_eq!(a.itl.percentiles_ms.len(), 1);
        assert!((a.request_throughput - 1.0).abs() < 1e-12);
        assert!((a.output_throughput - 3.0).abs() < 1e-12);
        assert!((a.total_token_throughput - 13.0).abs() < 1e-12);
        assert_eq!(a.good_requests, None);
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo_inclusively() {
        let runs = [
            outcome(0.1, 0.5, 5),
            outcome(0.3, 0.7, 5),
            outcome(0.1, 0.9, 5),
        ];
        let slo: Slo = "ttft:100,tpot:100".parse().unwrap();
        let a = aggregate(&runs, 1.0, &[], Some(&slo));
        // Only the first: the second misses TTFT, the third misses TPOT (200 ms).
        assert_eq!(a.good_requests, Some(1));
        assert_eq!(a.request_goodput, Some(1.0));
    }
}
