//! Engine logprobs in OpenAI's two layouts: chat (`content` entries) and legacy completions
//! (parallel lists with text offsets).

use super::types::chat::{ChatLogprobs, TokenLogprobEntry, TopLogprob};
use super::types::completion::CompletionLogprobs;
use crate::engine::output::TokenLogprob;
use crate::model::tokenizer::Tokenizer;

/// A token's text as clients see it (special tokens included, byte-level marks decoded).
pub fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

pub fn chat(tokenizer: &Tokenizer, logprobs: &[TokenLogprob]) -> ChatLogprobs {
    let content = logprobs
        .iter()
        .map(|lp| {
            let token = token_text(tokenizer, lp.token_id);
            TokenLogprobEntry {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: lp.logprob,
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = token_text(tokenizer, id);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs {
        content,
        refusal: None,
    }
}

/// Completions logprobs; `offset` is where the first token starts in the choice's text and
/// is advanced past the last one (so streamed chunks continue the count).
pub fn completion(
    tokenizer: &Tokenizer,
    logprobs: &[TokenLogprob],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for lp in logprobs {
        push_entry(&mut out, tokenizer, lp.token_id, Some(lp), offset);
    }
    out
}

/// An echoed prompt's entries, from offset 0: each prompt token with its score (`None` for
/// the first, which nothing precedes).
pub fn completion_prompt(
    tokenizer: &Tokenizer,
    prompt: &[u32],
    scores: &[Option<TokenLogprob>],
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    for (k, &id) in prompt.iter().enumerate() {
        let score = scores.get(k).and_then(Option::as_ref);
        push_entry(&mut out, tokenizer, id, score, &mut offset);
    }
    out
}

fn push_entry(
    out: &mut CompletionLogprobs,
    tokenizer: &Tokenizer,
    id: u32,
    score: Option<&TokenLogprob>,
    offset: &mut usize,
) {
    let token = token_text(tokenizer, id);
    out.text_offset.push(*offset);
    *offset += token.len();
    out.tokens.push(token);
    out.token_logprobs.push(score.map(|s| s.logprob));
    out.top_logprobs.push(score.map(|s| {
        s.top
            .iter()
            .map(|&(id, logprob)| (token_text(tokenizer, id), logprob))
            .collect()
    }));
}
