//! Log-probabilities of a request's own prompt tokens: what OpenAI's `echo` + `logprobs`
//! returns and what evaluation harnesses (lm-evaluation-harness' loglikelihood tasks) score
//! prompts with. The prefill computes every prompt position anyway; such a request gets an
//! extra logits row per position, and its prompt is never served from the prefix cache
//! (cached positions have no logits).

use super::output::TokenLogprob;
use super::sampler::{log_softmax, top_n};
use std::ops::Range;

#[derive(Debug)]
pub struct PromptLogprobs {
    /// Alternatives per token.
    top: usize,
    /// One entry per prompt token scored so far; the first token has nothing before it.
    entries: Vec<Option<TokenLogprob>>,
    sent: bool,
}

impl PromptLogprobs {
    pub fn new(top: usize) -> Self {
        PromptLogprobs {
            top,
            entries: vec![None],
            sent: false,
        }
    }

    /// The positions of a computed `chunk` whose logits score a prompt token not scored
    /// yet (position p scores token p + 1). A recomputed chunk (after a preemption) wants
    /// none of the positions it already gave, nor any once the scores were sent (the
    /// entries went with them).
    pub fn wanted(&self, num_prompt: usize, chunk: Range<usize>) -> Range<usize> {
        if self.sent {
            return chunk.start..chunk.start;
        }
        let from = (self.entries.len() - 1).max(chunk.start);
        let to = chunk.end.min(num_prompt.saturating_sub(1));
        from..to.max(from)
    }

    /// Scores the token after `position` from that position's logits.
    pub fn record(&mut self, position: usize, tokens: &[u32], logits: &[f32]) {
        debug_assert_eq!(position + 1, self.entries.len(), "positions come in order");
        let token = tokens[position + 1];
        let logprobs = log_softmax(logits);
        let logprob = logprobs[token as usize];
        let above = logprobs.iter().filter(|&&l| l > logprob).count();
        self.entries.push(Some(TokenLogprob {
            token_id: token,
            logprob,
            top: top_n(&logprobs, self.top),
            rank: Some(above as u32 + 1),
        }));
    }

    /// Every prompt token's entry, once all `num_prompt` are scored; then never again.
    pub fn take_complete(&mut self, num_prompt: usize) -> Option<Vec<Option<TokenLogprob>>> {
        if self.sent || self.entries.len() < num_prompt {
            return None;
        }
        self.sent = true;
        Some(std::mem::take(&mut self.entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_wanted_once_and_only_for_prompt_tokens() {
        let mut p = PromptLogprobs::new(1);
        // A 5-token prompt: positions 0..4 score tokens 1..5.
        assert_eq!(p.wanted(5, 0..3), 0..3);
        let tokens = [0, 1, 2, 3, 4, 9];
        for pos in 0..3 {
            p.record(pos, &tokens, &[0.0, 1.0, 2.0, 3.0, 4.0]);
        }
        assert_eq!(p.take_complete(5), None, "two tokens still unscored");
        // A recomputation from 0 (preemption) wants only what is missing; the generated
        // token's position (4, scoring token 5 = output) is never wanted.
        assert_eq!(p.wanted(5, 0..5), 3..4);
        p.record(3, &tokens, &[0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(p.wanted(5, 4..6), 4..4);
        let all = p.take_complete(5).unwrap();
        assert_eq!(all.len(), 5);
        assert!(
            p.wanted(5, 0..5).is_empty(),
            "a recomputation after sending"
        );
        assert!(all[0].is_none());
        let last = all[4].as_ref().unwrap();
        assert_eq!(last.token_id, 4);
        assert_eq!(
            last.top,
            vec![(4, last.logprob)],
            "the top alternative is the argmax"
        );
        // Ranks in the vocabulary: token 1 after position 0 is the 4th likeliest of 5.
        assert_eq!(all[1].as_ref().unwrap().rank, Some(4));
        assert_eq!(last.rank, Some(1));
        assert_eq!(p.take_complete(5), None, "sent once");
        assert_eq!(PromptLogprobs::new(0).take_complete(1).unwrap(), vec![None]);
    }
}
