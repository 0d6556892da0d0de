//! `kiln check-chat-templates CASES`: renders the cases that scripts/chat_template_parity.py
//! recorded with transformers and checks kiln's prompt is the same text, byte for byte.
//! Exit status 1 on any difference. This is how kiln's Jinja environment is held to the
//! one models' templates were written for, on templates none of us wrote.

use crate::model::chat_template::{ChatMessage, ChatTemplate};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CheckChatTemplatesArgs {
    /// The cases file written by scripts/chat_template_parity.py.
    pub cases: PathBuf,
    /// Print every difference in full, not only where it starts.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Deserialize)]
struct CasesFile {
    templates: BTreeMap<String, TemplateEntry>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct TemplateEntry {
    source: String,
    bos_token: String,
    eos_token: String,
}

#[derive(Deserialize)]
struct Case {
    template: String,
    case: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    tools: Option<serde_json::Value>,
    #[serde(default)]
    kwargs: serde_json::Map<String, serde_json::Value>,
    expected: Option<String>,
    error: Option<String>,
}

/// How one case came out.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Same,
    /// Both refused the conversation.
    BothRaised,
    /// transformers hit a Python error (iterating None, say) where kiln rendered: kiln is
    /// more lenient, which no valid request notices.
    KilnLenient,
    Differs(String),
}

/// The tally of a cases file.
#[derive(Debug, Default)]
pub struct Summary {
    pub same: usize,
    pub both_raised: usize,
    pub lenient: usize,
    pub differences: Vec<String>,
}

pub fn run(args: CheckChatTemplatesArgs) -> Result<bool> {
    let summary = check_file(&args.cases, args.verbose)?;
    for difference in &summary.differences {
        println!("{difference}");
    }
    println!(
        "{} same, {} refused by both, {} rendered by kiln where transformers hit a Python error, \
         {} differ",
        summary.same,
        summary.both_raised,
        summary.lenient,
        summary.differences.len()
    );
    Ok(summary.differences.is_empty())
}

/// Checks every case of the file at `path`.
pub fn check_file(path: &std::path::Path, verbose: bool) -> Result<Summary> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: CasesFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut compiled = BTreeMap::new();
    for (name, entry) in &file.templates {
        let template = ChatTemplate::new(
            &entry.source,
            Some(entry.bos_token.clone()),
            Some(entry.eos_token.clone()),
        );
        compiled.insert(name.as_str(), template);
    }
    let mut summary = Summary::default();
    for case in &file.cases {
        let label = format!("{} / {}", case.template, case.case);
        let outcome = match compiled.get(case.template.as_str()) {
            Some(Ok(template)) => check_case(template, case, verbose),
            Some(Err(e)) => Outcome::Differs(format!("does not compile: {e}")),
            None => anyhow::bail!("{label}: no template of that name in the file"),
        };
        match outcome {
            Outcome::Same => summary.same += 1,
            Outcome::BothRaised => summary.both_raised += 1,
            Outcome::KilnLenient => summary.lenient += 1,
            Outcome::Differs(how) => summary.differences.push(format!("{label}: {how}")),
        }
    }
    Ok(summary)
}

/// Renders `case` as the chat endpoint does (the request's kwargs and tools as template
/// variables) and compares.
fn check_case(template: &ChatTemplate, case: &Case, verbose: bool) -> Outcome {
    let mut extra = case.kwargs.clone();
    if let Some(tools) = &case.tools {
        extra.insert("tools".into(), tools.clone());
    }
    let rendered = template.render(
        &case.messages,
        case.add_generation_prompt,
        serde_json::Value::Object(extra),
    );
    match (rendered, &case.expected, &case.error) {
        (Ok(got), Some(expected), _) if &got == expected => Outcome::Same,
        (Ok(got), Some(expected), _) => Outcome::Differs(first_difference(&got, expected, verbose)),
        (Err(_), None, _) => Outcome::BothRaised,
        (Err(e), Some(_), _) => {
            Outcome::Differs(format!("kiln raised where transformers rendered: {e}"))
        }
        // The template's own raise_exception surfaces as jinja2's TemplateError: a
        // conversation it refuses must be refused here too.
        (Ok(_), None, Some(error)) if !error.starts_with("TemplateError") => Outcome::KilnLenient,
        (Ok(_), None, error) => Outcome::Differs(format!(
            "kiln rendered where the template raised: {}",
            error.as_deref().unwrap_or("(no message)")
        )),
    }
}

/// Where two renderings part, with some text around it.
fn first_difference(got: &str, expected: &str, verbose: bool) -> String {
    if verbose {
        return format!("\n--- kiln\n{got}\n--- transformers\n{expected}\n---");
    }
    let at = got
        .chars()
        .zip(expected.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let around = |s: &str| -> String { s.chars().skip(at.saturating_sub(40)).take(120).collect() };
    format!(
        "differs at character {at}\n  kiln:         {:?}\n  transformers: {:?}",
        around(got),
        around(expected)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The templates in tests/data/chat_templates use the idioms found in real ones (tool
    /// schemas through tojson in the request's key order, dicts printed as Python reprs,
    /// `tools is not none`, `|length` of a missing field, loop controls); transformers
    /// rendered the expected prompts.
    #[test]
    fn kiln_renders_the_recorded_cases_as_transformers_does() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/chat_templates/cases.json");
        let summary = check_file(&path, true).unwrap();
        assert!(
            summary.differences.is_empty(),
            "{}",
            summary.differences.join("\n")
        );
        assert_eq!(summary.same, 39);
    }
}
