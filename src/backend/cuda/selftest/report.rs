//! Selftest results: one row per (op, shape, dtype), printed as a table or JSON.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub op: String,
    pub shape: String,
    pub dtype: String,
    pub max_abs_err: f64,
    pub tolerance: f64,
    pub pass: bool,
    /// Mean time of one call, from CUDA events around repeated calls.
    pub us_per_call: Option<f64>,
    /// Extra measurement, e.g. achieved GB/s.
    pub note: String,
}

impl Row {
    pub fn checked(op: &str, shape: String, dtype: &str, err: f64, tolerance: f64) -> Self {
        Self {
            op: op.to_string(),
            shape,
            dtype: dtype.to_string(),
            max_abs_err: err,
            tolerance,
            pass: err <= tolerance,
            us_per_call: None,
            note: String::new(),
        }
    }
}

/// The whole run, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub kernels_target: String,
    pub nvrtc_version: String,
    pub rows: Vec<Row>,
    pub passed: usize,
    pub failed: usize,
    pub seconds: f64,
}

/// Fixed-width table for humans.
pub fn format_table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<20} {:<36} {:<5} {:>11} {:>11} {:<4} {:>10}  {}\n",
        "op", "shape", "dtype", "max_err", "tolerance", "ok", "us/call", "note"
    );
    for r in rows {
        let us = r
            .us_per_call
            .map(|u| format!("{u:.1}"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<20} {:<36} {:<5} {:>11.3e} {:>11.3e} {:<4} {:>10}  {}\n",
            r.op,
            r.shape,
            r.dtype,
            r.max_abs_err,
            r.tolerance,
            if r.pass { "ok" } else { "FAIL" },
            us,
            r.note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_rows_are_marked() {
        let ok = Row::checked("add", "[2, 3]".into(), "bf16", 0.0, 0.1);
        let bad = Row::checked("add", "[2, 3]".into(), "bf16", 0.5, 0.1);
        assert!(ok.pass && !bad.pass);
        let table = format_table(&[ok, bad]);
        assert_eq!(table.lines().count(), 3);
        assert!(table.contains("FAIL"));
    }
}
