//! The run's result: a summary table for people and a JSON document (configuration,
//! aggregates under vLLM's key names, error counts and every request) for tools.

use super::client::RequestOutcome;
use super::metrics::Aggregates;
use super::stats::Summary;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Everything one `kiln bench serve` run produced.
#[derive(Debug, Clone, Serialize)]
pub struct ServeReport {
    pub config: Value,
    pub aggregates: Aggregates,
    pub outcomes: Vec<RequestOutcome>,
}

impl ServeReport {
    /// Distinct error messages with how many requests failed with each.
    pub fn error_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for error in self.outcomes.iter().filter_map(|o| o.error.as_ref()) {
            *counts.entry(error.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The JSON document written by `--result-json`.
    pub fn to_json(&self) -> Value {
        let a = &self.aggregates;
        let mut out = Map::new();
        out.insert("config".into(), self.config.clone());
        let flat = json!({
            "completed": a.completed,
            "failed": a.failed,
            "duration": a.duration_s,
            "total_input_tokens": a.total_input_tokens,
            "total_output_tokens": a.total_output_tokens,
            "request_throughput": a.request_throughput,
            "request_goodput": a.request_goodput,
            "good_requests": a.good_requests,
            "output_throughput": a.output_throughput,
            "total_token_throughput": a.total_token_throughput,
            "max_output_tokens_per_s": a.max_output_tokens_per_s,
        });
        if let Value::Object(fields) = flat {
            out.extend(fields);
        }
        for (name, summary) in self.latencies() {
            out.insert(format!("mean_{name}_ms"), json!(summary.mean_ms));
            out.insert(format!("median_{name}_ms"), json!(summary.median_ms));
            out.insert(format!("std_{name}_ms"), json!(summary.std_ms));
            for (p, value) in &summary.percentiles_ms {
                out.insert(format!("p{p}_{name}_ms"), json!(value));
            }
        }
        out.insert("errors".into(), json!(self.error_counts()));
        out.insert("requests".into(), json!(self.outcomes));
        Value::Object(out)
    }

    fn latencies(&self) -> [(&'static str, &Summary); 4] {
        let a = &self.aggregates;
        [
            ("ttft", &a.ttft),
            ("tpot", &a.tpot),
            ("itl", &a.itl),
            ("e2el", &a.e2el),
        ]
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let a = &self.aggregates;
        let mut t = String::new();
        let mut row = |label: &str, value: String| {
            let _ = writeln!(t, "{label:<42}{value:>12}");
        };
        let heading = |t: &mut String, title: &str| {
            let _ = writeln!(t, "{:-^54}", format!(" {title} "));
        };
        row("Successful requests:", a.completed.to_string());
        row("Failed requests:", a.failed.to_string());
        row("Benchmark duration (s):", format!("{:.2}", a.duration_s));
        row("Total input tokens:", a.total_input_tokens.to_string());
        row("Total generated tokens:", a.total_output_tokens.to_string());
        row(
            "Request throughput (req/s):",
            format!("{:.2}", a.request_throughput),
        );
        if let (Some(goodput), Some(good)) = (a.request_goodput, a.good_requests) {
            row(
                &format!("Request goodput (req/s, {good} met SLOs):"),
                format!("{goodput:.2}"),
            );
        }
        row(
            "Output token throughput (tok/s):",
            format!("{:.2}", a.output_throughput),
        );
        row(
            "Peak output token throughput (tok/s):",
            format!("{:.2}", a.max_output_tokens_per_s),
        );
        row(
            "Total token throughput (tok/s):",
            format!("{:.2}", a.total_token_throughput),
        );
        let mut out = String::new();
        let _ = writeln!(out, "{:=^54}", " Serving Benchmark Result ");
        out.push_str(&t);
        for (name, summary, title) in [
            ("TTFT", &a.ttft, "Time to First Token"),
            ("TPOT", &a.tpot, "Time per Output Token (excl. 1st)"),
            ("ITL", &a.itl, "Inter-token Latency"),
            ("E2EL", &a.e2el, "End-to-end Latency"),
        ] {
            heading(&mut out, title);
            let mut line = |label: String, v: f64| {
                let _ = writeln!(out, "{label:<42}{v:>12.2}");
            };
            line(format!("Mean {name} (ms):"), summary.mean_ms);
            line(format!("Median {name} (ms):"), summary.median_ms);
            line(format!("Std {name} (ms):"), summary.std_ms);
            for (p, v) in &summary.percentiles_ms {
                line(format!("P{p} {name} (ms):"), *v);
            }
        }
        let _ = writeln!(out, "{}", "=".repeat(54));
        let errors = self.error_counts();
        if !errors.is_empty() {
            let _ = writeln!(out, "Errors ({} failed requests):", a.failed);
            for (message, count) in errors.iter().take(5) {
                let _ = writeln!(out, "  {count} x {message}");
            }
            if errors.len() > 5 {
                let _ = writeln!(
                    out,
                    "  ... and {} other messages (see --result-json)",
                    errors.len() - 5
                );
            }
        }
        out
    }
}
