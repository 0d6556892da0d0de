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

/// How logprobs name their tokens: by text, or as `token_id:<id>` (vLLM's
/// `return_tokens_as_token_ids`, for clients that must tell apart tokens whose texts are
/// equal or not valid UTF-8 alone).
#[derive(Clone, Copy)]
pub struct TokenNames<'a> {
    pub tokenizer: &'a Tokenizer,
    pub as_ids: bool,
}

impl<'a> TokenNames<'a> {
    pub fn new(tokenizer: &'a Tokenizer, as_ids: bool) -> Self {
        TokenNames { tokenizer, as_ids }
    }

    /// The token's name, and the UTF-8 bytes of its text (the text's whatever the name).
    fn name(&self, id: u32) -> (String, Vec<u8>) {
        let text = token_text(self.tokenizer, id);
        let bytes = text.as_bytes().to_vec();
        if self.as_ids {
            (format!("token_id:{id}"), bytes)
        } else {
            (text, bytes)
        }
    }
}

pub fn chat(names: TokenNames<'_>, logprobs: &[TokenLogprob]) -> ChatLogprobs {
    let content = logprobs
        .iter()
        .map(|lp| {
            let (token, bytes) = names.name(lp.token_id);
            TokenLogprobEntry {
                bytes,
                token,
                logprob: lp.logprob,
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let (token, bytes) = names.name(id);
                        TopLogprob {
                            bytes,
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
    names: TokenNames<'_>,
    logprobs: &[TokenLogprob],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for lp in logprobs {
        push_entry(&mut out, names, lp.token_id, Some(lp), offset);
    }
    out
}

/// An echoed prompt's entries, from offset 0: each prompt token with its score (`None` for
/// the first, which nothing precedes) and at most `top` alternatives (the scores may hold
/// more, when vLLM's `prompt_logprobs` asked for more than `logprobs`).
pub fn completion_prompt(
    names: TokenNames<'_>,
    prompt: &[u32],
    scores: &[Option<TokenLogprob>],
    top: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    for (k, &id) in prompt.iter().enumerate() {
        let score = scores
            .get(k)
            .and_then(Option::as_ref)
            .map(|s| TokenLogprob {
                top: s.top.iter().take(top).copied().collect(),
                ..s.clone()
            });
        push_entry(&mut out, names, id, score.as_ref(), &mut offset);
    }
    out
}

/// One token's entry. Offsets count the token's text, whatever name it is given, so they
/// stay positions in the choice's text.
fn push_entry(
    out: &mut CompletionLogprobs,
    names: TokenNames<'_>,
    id: u32,
    score: Option<&TokenLogprob>,
    offset: &mut usize,
) {
    let (token, text) = names.name(id);
    out.text_offset.push(*offset);
    *offset += text.len();
    out.tokens.push(token);
    out.token_logprobs.push(score.map(|s| s.logprob));
    out.top_logprobs.push(score.map(|s| {
        s.top
            .iter()
            .map(|&(id, logprob)| (names.name(id).0, logprob))
            .collect()
    }));
}

/// One prompt position of vLLM's `prompt_logprobs`: token id (as a string) to its logprob,
/// rank and decoded text; the scored token first, then its `top` likeliest alternatives.
pub type PromptLogprobEntry = serde_json::Map<String, serde_json::Value>;

/// vLLM's `prompt_logprobs` for a prompt's `scores` (the first position `null`), with
/// `top` alternatives per position.
pub fn vllm_prompt(
    names: TokenNames<'_>,
    scores: &[Option<TokenLogprob>],
    top: usize,
) -> Vec<Option<PromptLogprobEntry>> {
    let entry = |id: u32, logprob: f32, rank: Option<u32>| {
        serde_json::json!({
            "logprob": logprob,
            "rank": rank,
            "decoded_token": names.name(id).0,
        })
    };
    scores
        .iter()
        .map(|score| {
            let score = score.as_ref()?;
            let mut map = PromptLogprobEntry::new();
            map.insert(
                score.token_id.to_string(),
                entry(score.token_id, score.logprob, score.rank),
            );
            for (i, &(id, logprob)) in score.top.iter().take(top).enumerate() {
                map.entry(id.to_string())
                    .or_insert_with(|| entry(id, logprob, Some(i as u32 + 1)));
            }
            Some(map)
        })
        .collect()
}
