//! Rows sampled by the runner's device instead of the host (`--gpu-sampling`): what the
//! engine hands the runner for such a row. The uniform `u` is peeked from the request's own
//! random stream; the engine advances the stream only once the row comes back sampled, so a
//! row the runner leaves to the host draws the very same `u` there.

use super::params::SamplingParams;
use super::sampler::SampleContext;
use crate::backend::cuda::sampling_draw_rows::DrawRow;

/// One row's sampling, owned (the runner may live on another thread).
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceDraw {
    params: SamplingParams,
    /// Read by the penalties only: empty when no penalty is set.
    prompt: Vec<u32>,
    output: Vec<u32>,
    masked: Vec<u32>,
    u: f32,
}

impl DeviceDraw {
    /// The draw for `ctx` with the stream's next uniform `u`; `None` when the row needs the
    /// host (log-probabilities are computed from the raw logits there).
    pub fn for_row(ctx: &SampleContext, u: f32) -> Option<DeviceDraw> {
        let p = ctx.params;
        // Logit biases and masks are applied on the host only.
        if p.logprobs.is_some() || p.edits_logits() {
            return None;
        }
        let penalised =
            p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        let holds_end = ctx.output.len() < p.min_tokens;
        Some(DeviceDraw {
            params: p.clone(),
            prompt: if penalised {
                ctx.prompt.to_vec()
            } else {
                Vec::new()
            },
            output: if penalised {
                ctx.output.to_vec()
            } else {
                Vec::new()
            },
            masked: if holds_end {
                ctx.end_tokens.to_vec()
            } else {
                Vec::new()
            },
            u,
        })
    }

    /// Whether the row consumes a draw of the stream (greedy rows do not).
    pub fn draws(&self) -> bool {
        !self.params.is_greedy()
    }

    pub fn as_row(&self) -> DrawRow<'_> {
        draw_row(
            &self.params,
            &self.prompt,
            &self.output,
            &self.masked,
            self.u,
        )
    }
}

/// The device sampler's view of `p` for one row: the penalty tokens, the masked end tokens
/// and the uniform `u` (greedy parameters become temperature 0, the kernel's greedy).
pub fn draw_row<'a>(
    p: &SamplingParams,
    prompt: &'a [u32],
    output: &'a [u32],
    masked: &'a [u32],
    u: f32,
) -> DrawRow<'a> {
    DrawRow {
        temperature: if p.is_greedy() { 0.0 } else { p.temperature },
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        prompt,
        output,
        masked,
        u,
    }
}
