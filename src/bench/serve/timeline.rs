//! Output tokens over time, rebuilt from each request's start, TTFT and chunk gaps.

use super::client::RequestOutcome;

/// When each content chunk of a successful request arrived (seconds from the run's start)
/// and how many tokens it carried (the usage total spread evenly over the chunks).
pub fn chunk_arrivals(outcome: &RequestOutcome) -> Vec<(f64, f64)> {
    if !outcome.success || outcome.content_chunks == 0 {
        return Vec::new();
    }
    let tokens_per_chunk = outcome.output_tokens as f64 / outcome.content_chunks as f64;
    let mut at = outcome.start_s + outcome.ttft_s;
    let mut arrivals = vec![(at, tokens_per_chunk)];
    for gap in &outcome.itl_s {
        at += gap;
        arrivals.push((at, tokens_per_chunk));
    }
    arrivals
}

/// Output tokens per second in consecutive windows of `window_s` from the run's start.
pub fn output_tokens_per_window(outcomes: &[RequestOutcome], window_s: f64) -> Vec<f64> {
    let mut windows: Vec<f64> = Vec::new();
    for (at, tokens) in outcomes.iter().flat_map(chunk_arrivals) {
        let slot = (at / window_s).floor().max(0.0) as usize;
        if windows.len() <= slot {
            windows.resize(slot + 1, 0.0);
        }
        windows[slot] += tokens;
    }
    windows.iter().map(|t| t / window_s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::serve::client::TokenSource;

    #[test]
    fn tokens_land_in_the_window_of_their_chunk() {
        let o = RequestOutcome {
            index: 0,
            success: true,
            error: None,
            start_s: 0.5,
            ttft_s: 0.25,
            e2el_s: 1.25,
            itl_s: vec![0.5, 0.5],
            prompt_tokens: 1,
            output_tokens: 6,
            output_tokens_source: TokenSource::Usage,
            content_chunks: 3,
        };
        // Chunks at 0.75, 1.25, 1.75 with two tokens each.
        assert_eq!(
            output_tokens_per_window(std::slice::from_ref(&o), 1.0),
            vec![2.0, 4.0]
        );
        assert_eq!(
            output_tokens_per_window(&[o], 0.5),
            vec![0.0, 4.0, 4.0, 4.0]
        );
    }
}
