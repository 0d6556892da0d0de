//! Streaming token ids to text, one token at a time.
//!
//! Decoding one token alone is wrong in two ways: a character may span several byte
//! tokens (a lone piece decodes to U+FFFD), and SentencePiece-style decoders drop the
//! leading space of whatever text they decode first. So each step decodes a short window:
//! the tokens whose text was already emitted last time (`window[..read_offset]`, context
//! only) plus the new ones, and emits the difference between the two decodings. While the
//! decoded window ends in U+FFFD a character is still incomplete and nothing is emitted.
//! Once text is emitted the window slides forward, so each step costs O(window), not
//! O(sequence length).

use crate::model::tokenizer::Tokenizer;
use anyhow::Result;
use std::sync::Arc;

/// How many prompt tokens to keep as context for the first generated token.
const PROMPT_CONTEXT_TOKENS: usize = 5;

const REPLACEMENT: char = '\u{FFFD}';

pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    /// The last emitted chunk of tokens (context) followed by tokens not yet emitted.
    window: Vec<u32>,
    /// `window[..read_offset]` is context whose text was already emitted (or is prompt).
    read_offset: usize,
}

impl IncrementalDetokenizer {
    /// Starts after `prompt` (may be empty). Its last few tokens become context so the
    /// first generated token decodes as it would inside the full text (leading space
    /// included); none of the prompt's text is emitted.
    pub fn new(tokenizer: Arc<Tokenizer>, prompt: &[u32], skip_special_tokens: bool) -> Self {
        let window = prompt_context(&tokenizer, prompt, skip_special_tokens).to_vec();
        IncrementalDetokenizer {
            tokenizer,
            skip_special_tokens,
            read_offset: window.len(),
            window,
        }
    }

    /// Adds one generated token and returns the text it completes, possibly empty.
    pub fn push(&mut self, token: u32) -> Result<String> {
        self.window.push(token);
        let context_text = self.decode(&self.window[..self.read_offset])?;
        let full_text = self.decode(&self.window)?;
        // Hold back while a character is incomplete, and while the new tokens add no text
        // (e.g. skipped special tokens): keeping them in the window keeps the context that
        // decides the next token's leading space.
        if full_text.ends_with(REPLACEMENT) || full_text.len() <= context_text.len() {
            return Ok(String::new());
        }
        let delta = text_after(&context_text, &full_text).to_string();
        self.slide();
        Ok(delta)
    }

    /// Emits whatever is held back, at the end of the sequence. Text that never became
    /// valid UTF-8 comes out with its U+FFFD, as a full decode would show it.
    pub fn finish(&mut self) -> Result<String> {
        if self.read_offset == self.window.len() {
            return Ok(String::new());
        }
        let context_text = self.decode(&self.window[..self.read_offset])?;
        let full_text = self.decode(&self.window)?;
        let delta = text_after(&context_text, &full_text).to_string();
        self.slide();
        Ok(delta)
    }

    /// The just-emitted tokens become the context for the next step; older ones are dropped.
    fn slide(&mut self) {
        self.window.drain(..self.read_offset);
        self.read_offset = self.window.len();
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, self.skip_special_tokens)
    }
}

/// The last few prompt tokens, starting where their text does not begin mid-character
/// (a window starting with a stray continuation byte would decode to U+FFFD there).
fn prompt_context<'p>(tokenizer: &Tokenizer, prompt: &'p [u32], skip_special: bool) -> &'p [u32] {
    let first = prompt.len().saturating_sub(PROMPT_CONTEXT_TOKENS);
    (first..prompt.len())
        .map(|start| &prompt[start..])
        .find(|context| {
            tokenizer
                .decode(context, skip_special)
                .is_ok_and(|text| !text.starts_with(REPLACEMENT))
        })
        .unwrap_or(&[])
}

/// The part of `full` after `context`. Decoders only append at the end, so `context` is
/// normally a prefix of `full`; if a decoder rewrote earlier text, emit from the first
/// difference (what was already sent cannot be taken back).
fn text_after<'a>(context: &str, full: &'a str) -> &'a str {
    if let Some(rest) = full.strip_prefix(context) {
        return rest;
    }
    let common: usize = context
        .chars()
        .zip(full.chars())
        .take_while(|(a, b)| a == b)
        .map(|(c, _)| c.len_utf8())
        .sum();
    &full[common..]
}

#[cfg(test)]
mod tests;
