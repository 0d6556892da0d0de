//! Recording and replaying decode steps as CUDA graphs: the backend side of
//! [`crate::backend::Backend::forward_recorded`]. What is recorded and why it is safe to
//! replay is in [`super::decode_graphs`].

use super::backend::{CudaBackend, CudaBatchMeta, RecordedStep};
use super::decode_graphs::{pad_decode, PaddedDecode, SendGraph};
use super::tensor::CudaTensor;
use crate::backend::{Backend, BatchLayout, RecordedBody};
use anyhow::{Context, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;

/// The forward pass a recording is made of (see `Backend::forward_recorded`).
type StepBody<'a> = RecordedBody<'a, CudaBatchMeta, CudaTensor>;

/// Routes the backend's buffers to the recording pools while it lives; on drop (also on an
/// error or a panic) back to the ordinary pools, unfrozen.
struct OnGraphPools<'a>(&'a CudaBackend);

impl<'a> OnGraphPools<'a> {
    fn new(be: &'a CudaBackend) -> Self {
        be.on_graph_pools.store(true, Ordering::SeqCst);
        Self(be)
    }
}

impl Drop for OnGraphPools<'_> {
    fn drop(&mut self) {
        self.0.graph_pools.set_frozen(false);
        self.0.on_graph_pools.store(false, Ordering::SeqCst);
    }
}

impl CudaBackend {
    /// Replays the recording of `batch`'s shape (recording it first if this is the first
    /// time), or `None` for the eager path.
    pub(super) fn run_recorded(
        &self,
        tokens: &[u32],
        batch: &BatchLayout,
        body: &mut StepBody<'_>,
    ) -> Result<Option<CudaTensor>> {
        if !self.record_decode.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let Some(padded) = pad_decode(batch, tokens) else {
            return Ok(None);
        };
        self.bind()?;
        let mut guard = self.recordings.lock().unwrap_or_else(|p| p.into_inner());
        let recordings = &mut *guard;
        let key = padded.key;
        if recordings.failed.contains(&key) {
            return Ok(None);
        }
        let step = match recordings.recorded.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(slot) => {
                let started = std::time::Instant::now();
                match self.record(&padded, body) {
                    Ok(step) => {
                        tracing::info!(
                            "recorded decode steps of {} sequences (block tables {} wide) as a \
                             CUDA graph in {:.0} ms",
                            key.seqs,
                            key.blocks,
                            started.elapsed().as_secs_f64() * 1e3
                        );
                        slot.insert(step)
                    }
                    Err(e) => {
                        tracing::warn!(
                            "decode steps of {} sequences (block tables {} wide) run without a \
                             CUDA graph: {e:#}",
                            key.seqs,
                            key.blocks
                        );
                        recordings.failed.insert(key);
                        return Ok(None);
                    }
                }
            }
        };
        self.upload_inputs(&padded, &mut step.inputs)?;
        step.graph
            .0
            .launch()
            .context("replaying a recorded decode step")?;
        // The caller's rows in a buffer of its own: the next replay overwrites the recording's.
        Backend::select_rows(self, &step.logits, &batch.logits_rows).map(Some)
    }

    /// Runs the step once eagerly on the recording pools (compiling whatever is not yet
    /// compiled and leaving every buffer the step needs idle there), then records it with
    /// those pools frozen.
    fn record(&self, padded: &PaddedDecode, body: &mut StepBody<'_>) -> Result<RecordedStep> {
        let _on = OnGraphPools::new(self);
        let inputs = self.graph_inputs(padded)?;
        drop(
            body(&inputs, &padded.tokens, &padded.layout)
                .context("running the step before recording it")?,
        );
        self.graph_pools.set_frozen(true);
        let stream = self.dev.stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .context("starting a CUDA graph capture")?;
        let logits = body(&inputs, &padded.tokens, &padded.layout);
        // Always ended, so the stream leaves capture mode whatever the body did.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        let logits = logits.context("recording the step")?;
        let graph = graph
            .context("ending the CUDA graph capture")?
            .context("the capture recorded nothing")?;
        graph.upload().context("uploading the CUDA graph")?;
        Ok(RecordedStep {
            graph: SendGraph(graph),
            inputs,
            logits,
        })
    }

    /// The recording's input buffers (from the recording pools, kept with it), holding
    /// `padded`'s values.
    fn graph_inputs(&self, padded: &PaddedDecode) -> Result<CudaBatchMeta> {
        let pools = &self.graph_pools;
        let host = &padded.host;
        let i32s = |values: &[i32], what: &str| {
            pools
                .upload_i32(values)
                .with_context(|| format!("the recorded step's {what}"))
        };
        Ok(CudaBatchMeta {
            positions: i32s(&host.positions, "positions")?,
            num_tokens: padded.key.seqs,
            slots: i32s(&host.slots, "slots")?,
            block_tables: i32s(&host.block_tables, "block tables")?,
            max_blocks_per_seq: host.max_blocks_per_seq,
            query_start: i32s(&host.query_start, "query starts")?,
            context_lens: i32s(&host.context_lens, "context lengths")?,
            state_slots: i32s(&host.state_slots, "state slots")?,
            num_seqs: padded.key.seqs,
            decode_prefix: padded.key.seqs,
            token_ids: Some(
                pools
                    .upload_u32(&padded.tokens)
                    .context("the recorded step's token ids")?,
            ),
        })
    }

    /// Copies this step's padded values into the recording's input buffers (queued after
    /// the previous replay, which reads them, on the same stream).
    fn upload_inputs(&self, padded: &PaddedDecode, inputs: &mut CudaBatchMeta) -> Result<()> {
        let pools = &self.graph_pools;
        let host = &padded.host;
        pools.copy_into_i32(&host.positions, &mut inputs.positions)?;
        pools.copy_into_i32(&host.slots, &mut inputs.slots)?;
        pools.copy_into_i32(&host.block_tables, &mut inputs.block_tables)?;
        pools.copy_into_i32(&host.query_start, &mut inputs.query_start)?;
        pools.copy_into_i32(&host.context_lens, &mut inputs.context_lens)?;
        pools.copy_into_i32(&host.state_slots, &mut inputs.state_slots)?;
        let ids = inputs
            .token_ids
            .as_mut()
            .context("a recorded step without token ids")?;
        pools
            .copy_into_u32(&padded.tokens, ids)
            .context("uploading a recorded step's inputs")
    }
}
