//! Structured output: a grammar (any JSON object, a JSON schema, a regular expression, one of
//! fixed strings) decides which tokens a request may produce next. llguidance compiles the
//! grammar against the model's vocabulary and gives a mask per step; the sampler drops
//! every token outside it.

use super::tokenizer::Tokenizer;
use anyhow::{anyhow, Context, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};

/// The tokens a constrained request may take next.
pub type TokenMask = SimpleVob;

/// What a request's output must match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Structure {
    /// Any JSON object (`response_format` `json_object`).
    JsonObject,
    /// A JSON value valid under this schema (`json_schema`, vLLM's `guided_json`).
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression (`guided_regex`).
    Regex(String),
    /// Exactly one of these strings (`guided_choice`).
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (forced tool calls).
    Lark(String),
}

/// Whitespace allowed between two JSON tokens unless a schema says otherwise (in
/// llguidance's `x-guidance` options): a space or two, or a line break and an indent of up
/// to 16; enough for compact or pretty-printed output, never unbounded, so a model that
/// keeps choosing whitespace still has to write the value.
pub const JSON_WHITESPACE: &str = r"[\x20\x09]{1,2}|\x0D?\x0A[\x20\x09]{0,16}";

/// `schema` with the default whitespace rule, unless it sets its own options.
fn with_default_options(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object
            .entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_pattern": JSON_WHITESPACE}));
    }
    schema
}

impl Structure {
    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Structure::JsonObject => TopLevelGrammar::from_json_schema(with_default_options(
                &serde_json::json!({"type": "object"}),
            )),
            Structure::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(with_default_options(schema))
            }
            Structure::Regex(rx) => TopLevelGrammar::from_regex(rx),
            // GBNF (vLLM's xgrammar form) is rewritten; Lark passes as it is.
            Structure::Lark(lark) if super::gbnf::is_gbnf(lark) => {
                TopLevelGrammar::from_lark(super::gbnf::to_lark(lark))
            }
            Structure::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Structure::Choice(options) => {
                let alternatives: Vec<String> = options.iter().map(|o| escape_regex(o)).collect();
                TopLevelGrammar::from_regex(&format!("({})", alternatives.join("|")))
            }
        }
    }
}

/// `text` as a regular expression matching exactly itself.
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A model's vocabulary, ready to compile grammars against. Built once per model (a trie
/// over every token's bytes).
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// For `tokenizer`'s tokens, padded to the model's `vocab_size` (ids past the
    /// tokenizer's are never allowed), ending at its EOS tokens.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_str(
            &tokenizer
                .inner()
                .to_string(false)
                .map_err(|e| anyhow!("serialising the tokenizer: {e}"))?,
        )?;
        // The conversion asserts on vocabularies it does not expect; that is an error here.
        let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
            .map_err(|_| anyhow!("the tokenizer's vocabulary could not be read as bytes"))?
            .context("reading the tokenizer's token bytes")?;
        let mut words = words;
        anyhow::ensure!(
            words.len() <= vocab_size,
            "the tokenizer has {} tokens, more than the model's {vocab_size}",
            words.len()
        );
        words.resize(vocab_size, Vec::new());
        for (id, word) in words.iter_mut().enumerate() {
            if word.is_empty() {
                // A hole in the vocabulary: a special-marked name no grammar can match.
                *word = format!("\u{ff}<[{id}]>").into_bytes();
                word[0] = TokTrie::SPECIAL_TOKEN_MARKER;
            }
        }
        let eos = tokenizer.eos_token_ids();
        let first = *eos
            .first()
            .context("structured output needs the model's end-of-sequence token")?;
        let info = TokRxInfo::new(vocab_size as u32, first);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let factory = ParserFactory::new_simple(&env)?;
        Ok(GrammarCompiler { factory })
    }

    /// A fresh constraint for one request; an error names what is wrong with the grammar.
    pub fn compile(&self, structure: &Structure) -> Result<Constraint> {
        let mut parser = self.factory.create_parser(structure.grammar())?;
        parser.start_without_prompt();
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            anyhow::bail!("{e}");
        }
        Ok(Constraint { matcher })
    }
}

/// One request's position in its grammar.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// The tokens allowed next: only end-of-sequence once the grammar is complete.
    pub fn mask(&mut self) -> Result<TokenMask> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| anyhow!("grammar: {e}"))
    }

    /// Moves past `token`.
    pub fn advance(&mut self, token: u32) -> Result<()> {
        self.matcher
            .consume_token(token)
            .map_err(|e| anyhow!("grammar: {e}"))
    }

    /// Nothing but end-of-sequence can follow (or the grammar failed).
    pub fn finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests;
