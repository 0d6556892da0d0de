//! A request's output text: incremental detokenization plus stop strings, with text held
//! back while it could still be the start of a stop string.

use crate::model::detokenizer::IncrementalDetokenizer;
use crate::model::tokenizer::Tokenizer;
use anyhow::Result;
use std::sync::Arc;

pub struct OutputText {
    detok: IncrementalDetokenizer,
    stop: Vec<String>,
    include_stop: bool,
    /// Text decoded but not yet handed out.
    pending: String,
    hold: usize,
}

/// What one token did to the text.
pub struct TextStep {
    pub emit: String,
    /// The stop string that matched; the text after it is dropped.
    pub stopped_by: Option<String>,
}

impl OutputText {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        prompt: &[u32],
        stop: Vec<String>,
        include_stop: bool,
        skip_special: bool,
    ) -> Self {
        let hold = stop
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        OutputText {
            detok: IncrementalDetokenizer::new(tokenizer, prompt, skip_special),
            stop,
            include_stop,
            pending: String::new(),
            hold,
        }
    }

    pub fn push(&mut self, token: u32) -> Result<TextStep> {
        let delta = self.detok.push(token)?;
        self.pending.push_str(&delta);
        for s in &self.stop {
            if let Some(i) = self.pending.find(s.as_str()) {
                let end = if self.include_stop { i + s.len() } else { i };
                let emit = self.pending[..end].to_string();
                self.pending.clear();
                return Ok(TextStep {
                    emit,
                    stopped_by: Some(s.clone()),
                });
            }
        }
        let mut cut = self.pending.len().saturating_sub(self.hold);
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        let emit: String = self.pending.drain(..cut).collect();
        Ok(TextStep {
            emit,
            stopped_by: None,
        })
    }

    /// Everything still held back, at the end of the request.
    pub fn finish(&mut self) -> Result<String> {
        let rest = self.detok.finish()?;
        self.pending.push_str(&rest);
        Ok(std::mem::take(&mut self.pending))
    }
}
