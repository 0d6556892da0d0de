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
//!
//! Byte-level BPE tokenizers (most current models) skip the decoder altogether: each
//! token's bytes come from a table ([`crate::model::byte_pieces`]) and complete UTF-8
//! characters are emitted as they form; the deltas are the window's, step for step.

use crate::model::tokenizer::Tokenizer;
use anyhow::Result;
use std::sync::Arc;

/// How many prompt tokens to keep as context for the first generated token.
const PROMPT_CONTEXT_TOKENS: usize = 5;

const REPLACEMENT: char = '\u{FFFD}';

pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    mode: Mode,
}

enum Mode {
    /// Any tokenizer: decode a short window of tokens per step (above).
    Window {
        /// The last emitted chunk of tokens (context) followed by tokens not yet emitted.
        window: Vec<u32>,
        /// `window[..read_offset]` is context whose text was already emitted (or is prompt).
        read_offset: usize,
    },
    /// Byte-level BPE: append each token's bytes, emit the complete characters. The same
    /// text as the window, without running the decoder.
    Bytes {
        /// Bytes of a character not yet complete.
        pending: Vec<u8>,
    },
}

impl IncrementalDetokenizer {
    /// Starts after `prompt` (may be empty). Its last few tokens become context so the
    /// first generated token decodes as it would inside the full text (leading space
    /// included); none of the prompt's text is emitted.
    pub fn new(tokenizer: Arc<Tokenizer>, prompt: &[u32], skip_special_tokens: bool) -> Self {
        let mode = match tokenizer.byte_pieces() {
            // A character the prompt leaves unfinished is not the output's to finish: like
            // the window (whose context starts on a character), start clean.
            Some(_) => Mode::Bytes {
                pending: Vec::new(),
            },
            None => Self::window_mode(&tokenizer, prompt, skip_special_tokens),
        };
        IncrementalDetokenizer {
            tokenizer,
            skip_special_tokens,
            mode,
        }
    }

    /// Decodes through the window whatever the tokenizer (to compare the two in tests).
    #[cfg(test)]
    fn windowed(tokenizer: Arc<Tokenizer>, prompt: &[u32], skip_special_tokens: bool) -> Self {
        let mode = Self::window_mode(&tokenizer, prompt, skip_special_tokens);
        IncrementalDetokenizer {
            tokenizer,
            skip_special_tokens,
            mode,
        }
    }

    fn window_mode(tokenizer: &Tokenizer, prompt: &[u32], skip_special_tokens: bool) -> Mode {
        let window = prompt_context(tokenizer, prompt, skip_special_tokens).to_vec();
        Mode::Window {
            read_offset: window.len(),
            window,
        }
    }

    /// Adds one generated token and returns the text it completes, possibly empty.
    pub fn push(&mut self, token: u32) -> Result<String> {
        let (window, read_offset) = match &mut self.mode {
            Mode::Bytes { pending } => {
                let pieces = self.tokenizer.byte_pieces().expect("bytes mode has pieces");
                // Ids outside the vocabulary add nothing, as in the tokenizer's decoding.
                pending.extend_from_slice(
                    pieces.piece(token, self.skip_special_tokens).unwrap_or(&[]),
                );
                return Ok(complete_characters(pending, false));
            }
            Mode::Window {
                window,
                read_offset,
            } => (window, read_offset),
        };
        window.push(token);
        let (context_text, full_text) = decode_window(
            &self.tokenizer,
            window,
            *read_offset,
            self.skip_special_tokens,
        )?;
        // Hold back while a character is incomplete, and while the new tokens add no text
        // (e.g. skipped special tokens): keeping them in the window keeps the context that
        // decides the next token's leading space.
        if full_text.ends_with(REPLACEMENT) || full_text.len() <= context_text.len() {
            return Ok(String::new());
        }
        let delta = text_after(&context_text, &full_text).to_string();
        slide(window, read_offset);
        Ok(delta)
    }

    /// Emits whatever is held back, at the end of the sequence. Text that never became
    /// valid UTF-8 comes out with its U+FFFD, as a full decode would show it.
    pub fn finish(&mut self) -> Result<String> {
        let (window, read_offset) = match &mut self.mode {
            Mode::Bytes { pending } => return Ok(complete_characters(pending, true)),
            Mode::Window {
                window,
                read_offset,
            } => (window, read_offset),
        };
        if *read_offset == window.len() {
            return Ok(String::new());
        }
        let (context_text, full_text) = decode_window(
            &self.tokenizer,
            window,
            *read_offset,
            self.skip_special_tokens,
        )?;
        let delta = text_after(&context_text, &full_text).to_string();
        slide(window, read_offset);
        Ok(delta)
    }
}

/// The just-emitted tokens become the context for the next step; older ones are dropped.
fn slide(window: &mut Vec<u32>, read_offset: &mut usize) {
    window.drain(..*read_offset);
    *read_offset = window.len();
}

/// The text of the window's context and of the whole window.
fn decode_window(
    tokenizer: &Tokenizer,
    window: &[u32],
    read_offset: usize,
    skip_special: bool,
) -> Result<(String, String)> {
    Ok((
        tokenizer.decode(&window[..read_offset], skip_special)?,
        tokenizer.decode(window, skip_special)?,
    ))
}

/// Takes the complete characters off the front of `pending`; bytes that can never form
/// one become U+FFFD, as the decoder's lossy reading shows them. An unfinished character
/// at the end stays, unless `at_end`.
fn complete_characters(pending: &mut Vec<u8>, at_end: bool) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(pending) {
            Ok(text) => {
                out.push_str(text);
                pending.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&pending[..valid]).expect("checked valid"));
                match e.error_len() {
                    Some(bad) => {
                        out.push(REPLACEMENT);
                        pending.drain(..valid + bad);
                    }
                    None => {
                        pending.drain(..valid);
                        if at_end {
                            out.push(REPLACEMENT);
                            pending.clear();
                        }
                        return out;
                    }
                }
            }
        }
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
