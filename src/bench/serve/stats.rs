//! Summary statistics as numpy computes them for vLLM's report: population standard
//! deviation and linearly interpolated percentiles; an empty sample summarises to zeros.

use serde::Serialize;

/// One latency metric summarised, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub std_ms: f64,
    /// `(percentile, value in ms)` in the order asked for.
    pub percentiles_ms: Vec<(f64, f64)>,
}

impl Summary {
    /// Summarises samples given in seconds.
    pub fn of_seconds(samples: &[f64], percentiles: &[f64]) -> Summary {
        let mut sorted: Vec<f64> = samples.iter().map(|s| s * 1000.0).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().sum::<f64>() / n
        };
        let variance = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n
        };
        Summary {
            mean_ms: mean,
            median_ms: percentile(&sorted, 50.0),
            std_ms: variance.sqrt(),
            percentiles_ms: percentiles
                .iter()
                .map(|&p| (p, percentile(&sorted, p)))
                .collect(),
        }
    }

    /// The value at percentile `p`, when it was asked for.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        self.percentiles_ms
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, v)| *v)
    }
}

/// numpy's default ("linear") percentile of sorted data.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            let low = rank.floor() as usize;
            let high = rank.ceil() as usize;
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        }
    }
}

/// Parses `--metric-percentiles` ("50,90,99").
pub fn parse_percentiles(text: &str) -> anyhow::Result<Vec<f64>> {
    text.split(',')
        .map(|p| {
            let value: f64 = p
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("percentile {p:?} is not a number"))?;
            anyhow::ensure!(
                (0.0..=100.0).contains(&value),
                "percentile {value} is not in [0, 100]"
            );
            Ok(value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_on_a_small_sample() {
        // numpy: mean 2.5, median 2.5, std 1.118034, p90 3.7, p99 3.97 (times 1000 for ms).
        let s = Summary::of_seconds(&[0.004, 0.001, 0.003, 0.002], &[90.0, 99.0]);
        assert!((s.mean_ms - 2.5).abs() < 1e-9);
        assert!((s.median_ms - 2.5).abs() < 1e-9);
        assert!((s.std_ms - 1.118_033_988_749_895).abs() < 1e-9);
        assert!((s.percentile(90.0).unwrap() - 3.7).abs() < 1e-9);
        assert!((s.percentile(99.0).unwrap() - 3.97).abs() < 1e-9);
    }

    #[test]
    fn empty_and_single_samples() {
        let empty = Summary::of_seconds(&[], &[99.0]);
        assert_eq!(
            (empty.mean_ms, empty.std_ms, empty.percentile(99.0)),
            (0.0, 0.0, Some(0.0))
        );
        let one = Summary::of_seconds(&[0.5], &[1.0]);
        assert_eq!((one.median_ms, one.percentile(1.0)), (500.0, Some(500.0)));
    }

    #[test]
    fn percentile_lists_parse_and_reject_out_of_range() {
        assert_eq!(
            parse_percentiles("50, 90,99.9").unwrap(),
            vec![50.0, 90.0, 99.9]
        );
        assert!(parse_percentiles("101").is_err());
        assert!(parse_percentiles("p99").is_err());
    }
}
