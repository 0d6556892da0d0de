//! When each request is sent: all at once for an infinite rate, otherwise gaps drawn from a
//! gamma distribution with shape = burstiness and mean 1 / rate (burstiness 1 is a Poisson
//! process; below 1 burstier, above 1 more regular), as vLLM's `bench serve` does.

use anyhow::{bail, ensure, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Requests per second: `inf` or a positive number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestRate {
    Infinite,
    PerSecond(f64),
}

impl FromStr for RequestRate {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("inf") || s.eq_ignore_ascii_case("infinity") {
            return Ok(RequestRate::Infinite);
        }
        let rate: f64 = s
            .parse()
            .with_context(|| format!("request rate {s:?} is neither `inf` nor a number"))?;
        if rate.is_infinite() && rate > 0.0 {
            return Ok(RequestRate::Infinite);
        }
        if !(rate.is_finite() && rate > 0.0) {
            bail!("request rate must be positive, got {s}");
        }
        Ok(RequestRate::PerSecond(rate))
    }
}

impl fmt::Display for RequestRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestRate::Infinite => write!(f, "inf"),
            RequestRate::PerSecond(r) => write!(f, "{r}"),
        }
    }
}

/// The send time of each of `count` requests, as offsets from the start of the run. The
/// first request goes at zero; each later one waits one drawn gap after the previous.
pub fn send_offsets(
    count: usize,
    rate: RequestRate,
    burstiness: f64,
    seed: u64,
) -> Result<Vec<Duration>> {
    ensure!(
        burstiness.is_finite() && burstiness > 0.0,
        "--burstiness must be positive, got {burstiness}"
    );
    let RequestRate::PerSecond(rate) = rate else {
        return Ok(vec![Duration::ZERO; count]);
    };
    // Mean of Gamma(shape k, scale theta) is k * theta; choose theta so it is 1 / rate.
    let theta = 1.0 / (rate * burstiness);
    let gamma = Gamma::new(burstiness, theta).context("building the arrival distribution")?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut at = 0.0_f64;
    Ok((0..count)
        .map(|i| {
            if i > 0 {
                at += gamma.sample(&mut rng);
            }
            Duration::from_secs_f64(at)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(offsets: &[Duration]) -> Vec<f64> {
        offsets
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect()
    }

    fn mean_and_cv(xs: &[f64]) -> (f64, f64) {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn rate_parses_inf_and_numbers_and_rejects_nonsense() {
        assert_eq!("inf".parse::<RequestRate>().unwrap(), RequestRate::Infinite);
        assert_eq!(
            "2.5".parse::<RequestRate>().unwrap(),
            RequestRate::PerSecond(2.5)
        );
        assert!("0".parse::<RequestRate>().is_err());
        assert!("-1".parse::<RequestRate>().is_err());
        assert!("fast".parse::<RequestRate>().is_err());
    }

    #[test]
    fn infinite_rate_sends_everything_at_once() {
        let at = send_offsets(5, RequestRate::Infinite, 1.0, 0).unwrap();
        assert_eq!(at, vec![Duration::ZERO; 5]);
    }

    #[test]
    fn poisson_gaps_have_the_requested_mean_and_unit_variation() {
        let at = send_offsets(20_000, RequestRate::PerSecond(4.0), 1.0, 1).unwrap();
        let (mean, cv) = mean_and_cv(&gaps(&at));
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
        // Exponential gaps have a coefficient of variation of 1.
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
    }

    #[test]
    fn burstiness_changes_variation_not_mean() {
        let regular = send_offsets(20_000, RequestRate::PerSecond(4.0), 4.0, 1).unwrap();
        let (mean, cv) = mean_and_cv(&gaps(&regular));
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
        // Gamma with shape k has cv = 1 / sqrt(k).
        assert!((cv - 0.5).abs() < 0.05, "cv {cv}");
    }

    #[test]
    fn offsets_are_seeded() {
        let a = send_offsets(10, RequestRate::PerSecond(3.0), 1.0, 9).unwrap();
        let b = send_offsets(10, RequestRate::PerSecond(3.0), 1.0, 9).unwrap();
        let c = send_offsets(10, RequestRate::PerSecond(3.0), 1.0, 10).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(send_offsets(3, RequestRate::PerSecond(1.0), 0.0, 0).is_err());
    }
}
