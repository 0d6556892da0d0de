//! `--plot FILE.png`: three panels side by side — TTFT histogram, TPOT histogram, output
//! tokens per second over time (one bar per second). Drawn with plotters' bitmap backend and
//! no text (no font dependency): the numbers are in the table and the JSON; the picture
//! shows the shapes.

use super::client::RequestOutcome;
use super::metrics::tpot;
use super::report::ServeReport;
use super::timeline::output_tokens_per_window;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const BINS: usize = 40;
const PANEL_COLOURS: [RGBColor; 3] = [
    RGBColor(52, 101, 164),
    RGBColor(204, 121, 0),
    RGBColor(78, 154, 6),
];

pub fn draw(path: &Path, report: &ServeReport) -> Result<()> {
    let ok: Vec<&RequestOutcome> = report.outcomes.iter().filter(|o| o.success).collect();
    let ttfts: Vec<f64> = ok.iter().map(|o| o.ttft_s * 1000.0).collect();
    let tpots: Vec<f64> = ok
        .iter()
        .filter_map(|o| tpot(o))
        .map(|t| t * 1000.0)
        .collect();
    let per_second = output_tokens_per_window(&report.outcomes, 1.0);
    let root = BitMapBackend::new(path, (1500, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, 3));
    bars(&panels[0], &histogram(&ttfts), PANEL_COLOURS[0])?;
    bars(&panels[1], &histogram(&tpots), PANEL_COLOURS[1])?;
    bars(&panels[2], &per_second, PANEL_COLOURS[2])?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Counts of `values` in `BINS` equal bins over their range.
fn histogram(values: &[f64]) -> Vec<f64> {
    let mut counts = vec![0.0; BINS];
    let (low, high) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if values.is_empty() {
        return counts;
    }
    let width = ((high - low) / BINS as f64).max(f64::MIN_POSITIVE);
    for v in values {
        let bin = (((v - low) / width) as usize).min(BINS - 1);
        counts[bin] += 1.0;
    }
    counts
}

/// One bar per value, scaled to the panel, inside a frame.
fn bars(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    heights: &[f64],
    colour: RGBColor,
) -> Result<()> {
    let area = area.margin(20, 20, 20, 20);
    let top = heights.iter().copied().fold(0.0, f64::max).max(1e-9);
    let mut chart = ChartBuilder::on(&area)
        .build_cartesian_2d(0.0..heights.len().max(1) as f64, 0.0..top * 1.05)
        .map_err(plot_error)?;
    chart
        .draw_series(heights.iter().enumerate().map(|(i, &h)| {
            Rectangle::new(
                [(i as f64 + 0.1, 0.0), (i as f64 + 0.9, h)],
                colour.filled(),
            )
        }))
        .map_err(plot_error)?;
    let (w, h) = area.dim_in_pixel();
    area.draw(&Rectangle::new(
        [(0, 0), (w as i32 - 1, h as i32 - 1)],
        BLACK.stroke_width(1),
    ))
    .map_err(plot_error)?;
    Ok(())
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_extremes_in_the_end_bins() {
        let h = histogram(&[0.0, 1.0, 1.0, 10.0]);
        assert_eq!(h.len(), BINS);
        assert_eq!((h[0], h[BINS - 1]), (1.0, 1.0));
        assert_eq!(h.iter().sum::<f64>(), 4.0);
        assert_eq!(histogram(&[5.0, 5.0])[0], 2.0);
    }
}
