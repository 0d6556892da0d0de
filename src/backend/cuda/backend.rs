//! The op set ([`Backend`]) on one GPU: each op takes its output from the backend's caching
//! allocator ([`DevicePools`]; after the first forward of a batch shape no driver allocation
//! happens) and queues our kernels or cuBLAS on the device's one stream. Nothing
//! synchronizes except [`Backend::to_host_f32`], which the model calls once per forward for
//! the logits.

use super::attention_plan;
use super::batch_meta::HostBatchMeta;
use super::decode_graphs::{Recordings, SendGraph};
use super::device::CudaDevice;
use super::device_pools::{DeviceI32, DevicePools, DeviceU32};
use super::gemv_norm::{
    add_norm_fusion_pays, add_norm_max_values_from_env, gemv_swiglu_op, AddNormInput, GemvEpilogue,
};
use super::host_copy::refuse_while_recording;
use super::image_flash::FlashLayouts;
use super::moe::{
    group_routes, max_items, moe_device_enabled, moe_device_rows, router_runs_on_device,
    routes_on_device, Combine, GroupedBuffers, GroupedRouter, MoeBuffers, GEMV_EXPERT_ROWS,
};
use super::ops::RopeStyle;
use super::ops_attention::AttentionMetadata;
use super::ops_gated_delta::GatedDeltaScratch;
use super::ops_mamba::{MambaScratch, SlotStates};
use super::ops_qkv::QkvRopeCache;
use super::ops_selective_scan::ScanInputs;
use super::ops_short_conv::ConvBatch;
use super::pool::PoolStats;
use super::tensor::CudaTensor;
use crate::backend::gated_delta::GatedDeltaParams;
use crate::backend::mamba::MambaParams;
use crate::backend::moe::{host_routed_experts, route, ExpertSet, MoeRouting, RouterScoring};
use crate::backend::selective_scan::SelectiveParams;
use crate::backend::slot_conv::SlotConvParams;
use crate::backend::{
    unfused_qkv_rope_write, AttentionShape, Backend, BatchLayout, DType, HeadTerms, KvCacheSpec,
    QkvHeads, QueryTemperature, Rope,
};
use anyhow::{bail, Context, Result};
use candle_core::{CpuStorage, Storage};
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A GPU as a [`Backend`].
pub struct CudaBackend {
    pub(super) dev: CudaDevice,
    ordinal: usize,
    pools: DevicePools,
    /// The buffers of recorded decode steps ([`super::decode_graphs`]): never released.
    pub(super) graph_pools: DevicePools,
    /// Set while a decode step runs to be recorded: ops then take buffers from `graph_pools`.
    pub(super) on_graph_pools: AtomicBool,
    /// Record and replay decode steps (off: `--enforce-eager`).
    pub(super) record_decode: AtomicBool,
    pub(super) recordings: Mutex<Recordings<RecordedStep>>,
    /// Forward passes so far and the counters when the last one began (for the per-step log).
    steps: Mutex<(u64, PoolStats)>,
    /// Run the attention entry as one kernel (`qkv_rope_cache`); `KILN_FUSED_QKV=0` runs the
    /// column copies, rope and cache write separately, for A/B timing.
    fused_qkv: bool,
    /// Fold the residual add + RMS norm into the QKV and gate_up GEMVs, and the SwiGLU into
    /// the gate_up GEMV's epilogue (one or two rows); `KILN_FUSED_GEMV=0` runs them as
    /// separate launches, for A/B timing.
    fused_gemv: bool,
    /// The most `rows * k` values the norm-fused GEMV serves (beyond, the norm runs as its
    /// own launch and the gate_up GEMV keeps only the SwiGLU epilogue);
    /// `KILN_ADD_NORM_GEMV_MAX_VALUES` overrides it for A/B timing.
    add_norm_max_values: usize,
    /// Image attention's sequence metadata per shape, uploaded once.
    pub(super) flash_layouts: FlashLayouts,
}

/// A recorded decode step: the graph, the input buffers it reads (uploaded before each
/// replay) and the logits buffer it writes.
pub(super) struct RecordedStep {
    pub(super) graph: SendGraph,
    pub(super) inputs: CudaBatchMeta,
    pub(super) logits: CudaTensor,
}

/// The paged KV cache: per layer, K and V as `[num_blocks, block_size, kv_heads, head_dim]`.
pub struct CudaKvCache {
    k: Vec<CudaTensor>,
    v: Vec<CudaTensor>,
}

impl CudaBatchMeta {
    /// Where the step's tokens sit, as the convolution and Mamba kernels read it.
    fn conv_batch(&self) -> ConvBatch<'_> {
        ConvBatch {
            slot_mapping: &self.slots,
            block_tables: &self.block_tables,
            max_blocks_per_seq: self.max_blocks_per_seq,
            query_start: &self.query_start,
            context_lens: &self.context_lens,
            num_seqs: self.num_seqs,
        }
    }
}

/// A forward pass's layout, uploaded once and read by every layer.
/// Buffers come from the pool and may be longer than their contents: the counts here are
/// the real lengths.
pub struct CudaBatchMeta {
    pub(super) positions: DeviceI32,
    pub(super) num_tokens: usize,
    pub(super) slots: DeviceI32,
    pub(super) block_tables: DeviceI32,
    pub(super) max_blocks_per_seq: usize,
    pub(super) query_start: DeviceI32,
    pub(super) context_lens: DeviceI32,
    /// Per sequence, its recurrent-state slot (read by the Mamba mixer only).
    pub(super) state_slots: DeviceI32,
    pub(super) num_seqs: usize,
    /// Leading sequences with one new token each (a mixed batch's decode rows).
    pub(super) decode_prefix: usize,
    /// The tokens' ids, where the step reads them from the device (recorded steps).
    pub(super) token_ids: Option<DeviceU32>,
}

/// The rotary table, uploaded once per model.
pub struct CudaRope {
    inv_freq: CudaSlice<f32>,
    style: RopeStyle,
    scale: f32,
    temperature: Option<QueryTemperature>,
}

impl CudaBackend {
    /// Opens GPU `ordinal` (kernels compiled or loaded from the disk cache, cuBLAS created).
    pub fn new(ordinal: usize) -> Result<Self> {
        let dev = CudaDevice::new(ordinal)?;
        let pools = DevicePools::new(dev.stream());
        let graph_pools = DevicePools::kept(dev.stream());
        Ok(CudaBackend {
            dev,
            ordinal,
            pools,
            graph_pools,
            on_graph_pools: AtomicBool::new(false),
            record_decode: AtomicBool::new(true),
            recordings: Mutex::new(Recordings::default()),
            steps: Mutex::new((0, PoolStats::default())),
            fused_qkv: std::env::var("KILN_FUSED_QKV").map_or(true, |v| v != "0"),
            fused_gemv: std::env::var("KILN_FUSED_GEMV").map_or(true, |v| v != "0"),
            add_norm_max_values: add_norm_max_values_from_env(),
            flash_layouts: FlashLayouts::default(),
        })
    }

    /// Whether decode steps are recorded as CUDA graphs and replayed (default: yes).
    pub fn set_decode_graphs(&self, enabled: bool) {
        self.record_decode.store(enabled, Ordering::SeqCst);
    }

    /// The norm-fused GEMV's `(output, new residual stream)` for one or two rows, or None
    /// (nothing queued, nothing allocated) when the switch is off or the kernel does not
    /// serve the shape and the caller runs the unfused ops.
    #[allow(clippy::too_many_arguments)] // the op's operands, its weight and the epilogue
    fn fused_add_norm_gemv(
        &self,
        x: &CudaTensor,
        residual: &CudaTensor,
        norm: (&CudaTensor, f64),
        w: &CudaTensor,
        b: Option<&CudaTensor>,
        epilogue: GemvEpilogue,
    ) -> Result<Option<(CudaTensor, CudaTensor)>> {
        let (&[rows, width], &[out_features, _]) = (x.shape(), w.shape()) else {
            return Ok(None);
        };
        // Decode rows only: larger batches never reach the kernel, so allocate nothing.
        if !self.fused_gemv || !add_norm_fusion_pays(rows, width, self.add_norm_max_values) {
            return Ok(None);
        }
        let out_cols = match epilogue {
            GemvEpilogue::Plain => out_features,
            GemvEpilogue::SwiGlu => out_features / 2,
        };
        let dtype = x.dtype();
        let mut out = self.output(dtype, &[rows, out_cols])?;
        let mut sum = self.output(dtype, &[rows, width])?;
        let input = AddNormInput {
            x,
            residual,
            norm_weight: norm.0,
            eps: norm.1 as f32,
        };
        Ok(self
            .dev
            .add_norm_gemv(&input, w, b, epilogue, &mut out, &mut sum)?
            .then_some((out, sum)))
    }

    /// The caching allocator's counters since the backend was opened (both pool sets).
    pub fn allocator_stats(&self) -> PoolStats {
        self.pools.stats().plus(self.graph_pools.stats())
    }

    /// The pools ops take their buffers from now.
    pub(super) fn pools(&self) -> &DevicePools {
        if self.on_graph_pools.load(Ordering::SeqCst) {
            &self.graph_pools
        } else {
            &self.pools
        }
    }

    /// Logs (debug) what the previous forward pass cost the driver; called as each begins.
    fn log_previous_step(&self) {
        let now = self.allocator_stats();
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let (count, before) = *steps;
        if count > 0 {
            let step = now.since(before);
            tracing::debug!(
                "cuda allocator: forward {count}: {} driver allocations ({} bytes), {} reuses, \
                 {} bytes idle",
                step.driver_allocations,
                step.driver_bytes,
                step.reuses,
                step.idle_bytes
            );
        }
        *steps = (count + 1, now);
    }

    /// The device address of `t`'s data, for ranks that read it directly (same GPU or
    /// peer access). Valid while `t` lives.
    pub fn device_address(&self, t: &CudaTensor) -> u64 {
        let (ptr, _sync) = t.data().device_ptr(self.dev.stream());
        ptr
    }

    /// Waits for all work queued on this backend's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.dev
            .stream()
            .synchronize()
            .context("synchronizing the stream")
    }

    /// A new tensor of `like`'s shape and dtype holding the element-wise sum of the tensors
    /// at `peers` (device addresses readable from this GPU, each with `like`'s shape and
    /// dtype, their writes complete). The all-reduce's summing step.
    pub fn sum_of_peers(&self, like: &CudaTensor, peers: &[u64]) -> Result<CudaTensor> {
        self.bind()?;
        let mut out = self.output(like.dtype(), like.shape())?;
        self.dev.sum_peers(peers, &mut out)?;
        Ok(out)
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// `(free, total)` bytes of device memory, as the driver reports them now.
    pub fn free_and_total_memory(&self) -> Result<(usize, usize)> {
        self.bind()?;
        self.dev
            .context()
            .mem_get_info()
            .context("querying free GPU memory")
    }

    /// Makes the device's context current on the calling thread (the engine runs the model
    /// on its own thread, and cuBLAS uses whatever context is current).
    pub(super) fn bind(&self) -> Result<()> {
        self.dev
            .context()
            .bind_to_thread()
            .context("binding the CUDA context to this thread")
    }

    /// An output tensor from the pool, contents undefined: only for ops whose kernel writes
    /// every element (all of them today: embedding, cuBLAS with beta = 0, norms, SiLU,
    /// column copies, row gathers, attention, and the image ops of `image_ops.rs`).
    pub(super) fn output(&self, dtype: DType, shape: &[usize]) -> Result<CudaTensor> {
        let bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
        let buffer = self
            .pools()
            .bytes(bytes)
            .with_context(|| format!("allocating a {shape:?} {dtype} activation"))?;
        CudaTensor::from_pooled(buffer, dtype, shape)
    }

    /// A zero-filled activation, for kernels that leave rows unwritten.
    pub(super) fn zeroed_output(&self, dtype: DType, shape: &[usize]) -> Result<CudaTensor> {
        let bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
        let buffer = self
            .pools()
            .zeroed_bytes(bytes)
            .with_context(|| format!("allocating a zeroed {shape:?} {dtype} activation"))?;
        CudaTensor::from_pooled(buffer, dtype, shape)
    }
}

impl CudaBackend {
    /// [`Backend::moe_experts`] for the tokens the device routing does not take (prefill,
    /// large batches): routed on the host, then `moe_layer_grouped`, where the host path
    /// would copy every expert's output back for the weighted sum. Layers whose experts do
    /// not fit the expert kernels take the host path.
    fn moe_experts_grouped(
        &self,
        x: &CudaTensor,
        router_logits: &CudaTensor,
        experts: &ExpertSet<'_, CudaTensor, super::moe::CudaExpertIndex>,
        routing: &MoeRouting<'_, CudaTensor>,
    ) -> Result<CudaTensor> {
        let num_experts = experts.gate_up.len();
        let fits = experts
            .index
            .fits(x, router_logits)
            .filter(|&(tokens, n, ..)| {
                n == num_experts
                    && (1..=n).contains(&routing.top_k)
                    && tokens > 0
                    && moe_device_enabled()
                    && experts.index.suits(routing.activation)
            });
        let Some((tokens, _, hidden, inter, dtype)) = fits else {
            return host_routed_experts(self, x, router_logits, experts, routing);
        };
        self.bind()?;
        let top_k = routing.top_k;
        let logits = self.to_host_f32(router_logits)?;
        let routes = route(&logits, num_experts, &routing.rule());
        let mut grouped = group_routes(&routes, tokens, top_k)?;
        // Llama 4: the weights scale the experts' inputs instead of their outputs.
        let row_scales = if routing.scoring.scales_input() {
            let scales = grouped.move_weights_to_inputs(dtype);
            let mut t = self.output(DType::F32, &[scales.len()])?;
            t.overwrite_from_f32(&self.dev, &scales)?;
            Some(t)
        } else {
            None
        };
        let pairs = tokens * top_k;
        let row_tokens = self.pools().upload_u32(&grouped.row_tokens)?;
        let pair_rows = self.pools().upload_u32(&grouped.pair_rows)?;
        // gpt-oss: the rows' experts pick their biases.
        let row_experts = match experts.index.bias_stacks() {
            (None, None) => None,
            _ => Some(self.pools().upload_u32(&grouped.row_experts())?),
        };
        let mut weights = self.output(DType::F32, &[pairs])?;
        weights.overwrite_from_f32(&self.dev, &grouped.pair_weights)?;
        let mut gathered = self.output(dtype, &[pairs, hidden])?;
        let mut gate_up = self.output(dtype, &[pairs, routing.activation.first_rows(inter)])?;
        let mut act = self.output(dtype, &[pairs, inter])?;
        let mut y = self.output(dtype, &[pairs, hidden])?;
        let mut out = self.output(dtype, &[tokens, hidden])?;
        let combine = Combine {
            shared: routing.shared.as_ref().map(|s| (s.output, s.gate_logits)),
            sum_f32: routing.sum_f32,
        };
        self.dev.moe_layer_grouped(
            (experts.gate_up, experts.down),
            (experts.index, routing.activation),
            x,
            &grouped,
            top_k,
            combine,
            &mut GroupedBuffers {
                row_tokens: &row_tokens,
                row_experts: row_experts.as_deref(),
                pair_rows: &pair_rows,
                weights: &weights,
                row_scales: row_scales.as_ref(),
                x: &mut gathered,
                gate_up: &mut gate_up,
                act: &mut act,
                y: &mut y,
            },
            &mut out,
        )?;
        Ok(out)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let s = self.allocator_stats();
        tracing::info!(
            "cuda allocator: {} driver allocations ({:.1} MiB), {} reuses, {} released",
            s.driver_allocations,
            s.driver_bytes as f64 / (1u64 << 20) as f64,
            s.reuses,
            s.released
        );
    }
}

/// The bytes of a contiguous host tensor, and its dtype.
fn host_bytes(
    t: &candle_core::Tensor,
    f: impl FnOnce(DType, &[u8]) -> Result<CudaTensor>,
) -> Result<CudaTensor> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("upload: the weight is not a host tensor");
    };
    let (start, end) = layout
        .contiguous_offsets()
        .context("upload: the weight is not contiguous")?;
    match cpu {
        CpuStorage::F32(v) => f(DType::F32, bytemuck::cast_slice(&v[start..end])),
        CpuStorage::F16(v) => f(DType::F16, bytemuck::cast_slice(&v[start..end])),
        CpuStorage::BF16(v) => f(DType::BF16, bytemuck::cast_slice(&v[start..end])),
        _ => bail!("upload: unsupported host dtype {:?}", t.dtype()),
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type KvCache = CudaKvCache;
    type BatchMeta = CudaBatchMeta;
    type RopeTable = CudaRope;
    type ExpertIndex = super::moe::CudaExpertIndex;

    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    fn memory_info(&self) -> Option<Result<(usize, usize)>> {
        Some(self.free_and_total_memory())
    }

    fn allocator_stats(&self) -> Option<PoolStats> {
        Some(CudaBackend::allocator_stats(self))
    }

    fn upload(&self, host: candle_core::Tensor) -> Result<CudaTensor> {
        self.bind()?;
        let shape = host.dims().to_vec();
        host_bytes(&host, |dtype, bytes| {
            CudaTensor::from_bytes(&self.dev, dtype, &shape, bytes).with_context(|| {
                format!("uploading a {shape:?} {dtype} weight (out of GPU memory?)")
            })
        })
    }

    fn generate(
        &self,
        parts: &[crate::model::weights::GeneratedPart],
        shape: &[usize],
        dtype: DType,
    ) -> Option<Result<CudaTensor>> {
        Some(self.bind().and_then(|()| {
            let mut out = CudaTensor::zeros(&self.dev, dtype, shape)?;
            self.dev.dummy_fill(parts, &mut out)?;
            Ok(out)
        }))
    }

    fn to_host_f32(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        t.to_f32(&self.dev)
    }

    fn tensor_dims(&self, t: &CudaTensor) -> Result<Vec<usize>> {
        Ok(t.shape().to_vec())
    }

    /// The argmax kernel over the picked rows; only the indices come back.
    fn argmax_rows(&self, logits: &CudaTensor, rows: &[usize]) -> Result<Vec<u32>> {
        self.bind()?;
        let n = logits.shape().first().copied().unwrap_or(0);
        let all_in_order = rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i == r);
        let selected;
        let source = if all_in_order {
            logits
        } else {
            selected = self.select_rows(logits, rows)?;
            &selected
        };
        let mut ids = self
            .pools()
            .u32_buffer(rows.len())
            .context("argmax output buffer")?;
        self.dev.argmax(source, &mut ids)?;
        refuse_while_recording(self.dev.stream(), "copying the picked tokens")?;
        let host = self
            .dev
            .stream()
            .clone_dtoh(&ids.slice(0..rows.len()))
            .context("copying the picked tokens")?;
        Ok(host)
    }

    fn draw_rows(
        &self,
        logits: &CudaTensor,
        rows: &[usize],
        draws: &[super::sampling_draw_rows::DrawRow],
    ) -> Result<Option<Vec<u32>>> {
        if rows.len() != draws.len() {
            bail!("draw_rows: {} rows but {} draws", rows.len(), draws.len());
        }
        if rows.is_empty() {
            return Ok(Some(Vec::new()));
        }
        self.bind()?;
        let vocab = logits.shape().get(1).copied().unwrap_or(0);
        let packed = super::sampling_draw_rows::pack_draw_rows(draws, vocab)?;
        let selected = self.select_rows(logits, rows)?;
        let mut ids = self
            .pools()
            .u32_buffer(rows.len())
            .context("sampling output buffer")?;
        self.dev.sampling_draw(&selected, &packed, &mut ids)?;
        refuse_while_recording(self.dev.stream(), "copying the sampled tokens")?;
        let host = self
            .dev
            .stream()
            .clone_dtoh(&ids.slice(0..rows.len()))
            .context("copying the sampled tokens")?;
        Ok(Some(host))
    }

    fn replace_from_f32(&self, mut t: CudaTensor, values: &[f32]) -> Result<CudaTensor> {
        self.bind()?;
        t.overwrite_from_f32(&self.dev, values)?;
        Ok(t)
    }

    fn prepare_batch(&self, batch: &BatchLayout) -> Result<CudaBatchMeta> {
        self.bind()?;
        self.log_previous_step();
        let host = HostBatchMeta::from_layout(batch)?;
        let upload = |values: &[i32], what: &str| {
            self.pools()
                .upload_i32(values)
                .with_context(|| format!("uploading the batch's {what}"))
        };
        Ok(CudaBatchMeta {
            positions: upload(&host.positions, "positions")?,
            num_tokens: host.positions.len(),
            slots: upload(&host.slots, "slot mapping")?,
            block_tables: upload(&host.block_tables, "block tables")?,
            max_blocks_per_seq: host.max_blocks_per_seq,
            query_start: upload(&host.query_start, "query starts")?,
            context_lens: upload(&host.context_lens, "context lengths")?,
            state_slots: upload(&host.state_slots, "state slots")?,
            num_seqs: batch.num_seqs(),
            decode_prefix: attention_plan::leading_decode_seqs(&host.query_start),
            token_ids: None,
        })
    }

    fn prepare_rope(&self, rope: &Rope) -> Result<CudaRope> {
        self.bind()?;
        Ok(CudaRope {
            inv_freq: self.dev.upload(&rope.inv_freq)?,
            style: if rope.neox {
                RopeStyle::Neox
            } else {
                RopeStyle::Interleaved
            },
            scale: rope.scale,
            temperature: rope.query_temperature,
        })
    }

    fn embedding(&self, table: &CudaTensor, ids: &[u32]) -> Result<CudaTensor> {
        let [vocab, hidden] = *table.shape() else {
            bail!("embedding table must be 2-d, got {:?}", table.shape());
        };
        // The kernel zeroes unknown ids; the CPU reference rejects them, so do we.
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let mut out = self.output(table.dtype(), &[ids.len(), hidden])?;
        if !ids.is_empty() {
            let dev_ids = self
                .pools()
                .upload_u32(ids)
                .context("uploading token ids")?;
            self.dev.embedding(table, &dev_ids, ids.len(), &mut out)?;
        }
        Ok(out)
    }

    fn embed_batch(
        &self,
        table: &CudaTensor,
        batch: &CudaBatchMeta,
        tokens: &[u32],
    ) -> Result<CudaTensor> {
        let Some(ids) = &batch.token_ids else {
            return self.embedding(table, tokens);
        };
        let [vocab, hidden] = *table.shape() else {
            bail!("embedding table must be 2-d, got {:?}", table.shape());
        };
        if let Some(bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let mut out = self.output(table.dtype(), &[batch.num_tokens, hidden])?;
        self.dev.embedding(table, ids, batch.num_tokens, &mut out)?;
        Ok(out)
    }

    fn add_position_embeddings(
        &self,
        mut x: CudaTensor,
        table: &CudaTensor,
        batch: &CudaBatchMeta,
        offset: usize,
    ) -> Result<CudaTensor> {
        self.dev
            .add_position_embedding(&mut x, table, &batch.positions, offset)?;
        Ok(x)
    }

    fn forward_recorded(
        &self,
        tokens: &[u32],
        batch: &BatchLayout,
        body: &mut crate::backend::RecordedBody<'_, CudaBatchMeta, CudaTensor>,
    ) -> Result<Option<CudaTensor>> {
        self.run_recorded(tokens, batch, body)
    }

    fn linear(&self, x: &CudaTensor, w: &CudaTensor, b: Option<&CudaTensor>) -> Result<CudaTensor> {
        let (rows, out_features) = match (x.shape(), w.shape()) {
            (&[rows, _], &[out_features, _]) => (rows, out_features),
            _ => bail!(
                "linear: x {:?} and w {:?} must be 2-d",
                x.shape(),
                w.shape()
            ),
        };
        let mut out = self.output(x.dtype(), &[rows, out_features])?;
        if rows > 0 {
            // The GEMV for a few rows (bias fused), cuBLAS + add_bias otherwise (gemv.rs).
            self.dev.linear_routed(x, w, b, &mut out)?;
        }
        Ok(out)
    }

    fn linear_f32(&self, x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
        let (rows, out_features) = match (x.shape(), w.shape()) {
            (&[rows, _], &[out_features, _]) => (rows, out_features),
            _ => bail!(
                "linear_f32: x {:?} and w {:?} must be 2-d",
                x.shape(),
                w.shape()
            ),
        };
        let mut out = self.output(DType::F32, &[rows, out_features])?;
        if rows == 0 {
            return Ok(out);
        }
        // f32 weights (a router transformers keeps in f32): the input widened to match.
        if w.dtype() == DType::F32 && x.dtype() != DType::F32 {
            let mut wide = self.output(DType::F32, x.shape())?;
            self.dev.widen(x, &mut wide)?;
            self.dev.blas().linear_f32_out(&wide, w, &mut out)?;
        } else {
            self.dev.blas().linear_f32_out(x, w, &mut out)?;
        }
        Ok(out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaTensor, eps: f64) -> Result<CudaTensor> {
        let mut out = self.output(x.dtype(), x.shape())?;
        self.dev.rms_norm(x, weight, eps as f32, &mut out)?;
        Ok(out)
    }

    fn add_rms_norm(
        &self,
        x: CudaTensor,
        residual: CudaTensor,
        weight: &CudaTensor,
        eps: f64,
    ) -> Result<(CudaTensor, CudaTensor)> {
        let (mut x, mut residual) = (x, residual);
        self.dev
            .fused_add_rms_norm(&mut x, &mut residual, weight, eps as f32)?;
        Ok((x, residual))
    }

    fn rope(
        &self,
        q: CudaTensor,
        k: CudaTensor,
        head_dim: usize,
        rope: &CudaRope,
        batch: &CudaBatchMeta,
    ) -> Result<(CudaTensor, CudaTensor)> {
        let (q_shape, k_shape) = (q.shape().to_vec(), k.shape().to_vec());
        let (&[n, q_width], &[_, k_width]) = (q_shape.as_slice(), k_shape.as_slice()) else {
            bail!("rope: q {q_shape:?} and k {k_shape:?} must be 2-d");
        };
        if head_dim == 0 || q_width % head_dim != 0 || k_width % head_dim != 0 {
            bail!("rope: widths {q_width} / {k_width} are not multiples of head dim {head_dim}");
        }
        if batch.num_tokens != n {
            bail!("rope: {} positions for {n} tokens", batch.num_tokens);
        }
        let mut q = q.reshape(&[n, q_width / head_dim, head_dim])?;
        let mut k = k.reshape(&[n, k_width / head_dim, head_dim])?;
        self.dev.rope(
            &mut q,
            &mut k,
            &batch.positions,
            &rope.inv_freq,
            rope.style,
            rope.scale,
            rope.temperature,
        )?;
        Ok((q.reshape(&q_shape)?, k.reshape(&k_shape)?))
    }

    fn silu_mul(&self, gate_up: &CudaTensor) -> Result<CudaTensor> {
        let &[n, width] = gate_up.shape() else {
            bail!("silu_mul: input must be 2-d, got {:?}", gate_up.shape());
        };
        let mut out = self.output(gate_up.dtype(), &[n, width / 2])?;
        self.dev.silu_mul(gate_up, &mut out)?;
        Ok(out)
    }

    fn head_layer_norm(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        head_dim: usize,
        eps: f64,
    ) -> Result<CudaTensor> {
        self.new_output(x, x.shape(), |y| {
            self.device()
                .head_layer_norm_into(x, weight, head_dim, eps as f32, y)
        })
    }

    fn layer_norm(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        bias: &CudaTensor,
        eps: f64,
    ) -> Result<CudaTensor> {
        self.new_output(x, x.shape(), |y| {
            self.device()
                .layer_norm_into(x, (weight, bias), eps as f32, y)
        })
    }

    fn activation(
        &self,
        x: &CudaTensor,
        act: crate::backend::image_ops::Activation,
    ) -> Result<CudaTensor> {
        self.new_output(x, x.shape(), |y| self.device().activation_into(x, act, y))
    }

    fn gelu_tanh_mul(&self, gate_up: &CudaTensor) -> Result<CudaTensor> {
        let &[n, width] = gate_up.shape() else {
            bail!(
                "gelu_tanh_mul: input must be 2-d, got {:?}",
                gate_up.shape()
            );
        };
        let mut out = self.output(gate_up.dtype(), &[n, width / 2])?;
        self.dev.gelu_tanh_mul(gate_up, &mut out)?;
        Ok(out)
    }

    fn clamped_swiglu(&self, gate_up: &CudaTensor, limit: f32, alpha: f32) -> Result<CudaTensor> {
        let &[n, width] = gate_up.shape() else {
            bail!(
                "clamped_swiglu: input must be 2-d, got {:?}",
                gate_up.shape()
            );
        };
        let mut out = self.output(gate_up.dtype(), &[n, width / 2])?;
        self.dev.clamped_swiglu(gate_up, (limit, alpha), &mut out)?;
        Ok(out)
    }

    fn softcap(&self, x: CudaTensor, cap: f32) -> Result<CudaTensor> {
        let mut x = x;
        self.dev.softcap(&mut x, cap)?;
        Ok(x)
    }

    fn add_tensors(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        let mut out = self.output(a.dtype(), a.shape())?;
        self.dev.add(a, b, &mut out)?;
        Ok(out)
    }

    fn mul_scalar(&self, x: &CudaTensor, factor: f32) -> Result<CudaTensor> {
        let mut out = self.output(x.dtype(), x.shape())?;
        self.dev.lincomb_into((x, factor), None, &mut out)?;
        Ok(out)
    }

    fn add_rms_norm_linear(
        &self,
        x: CudaTensor,
        residual: CudaTensor,
        norm: (&CudaTensor, f64),
        w: &CudaTensor,
        b: Option<&CudaTensor>,
    ) -> Result<(CudaTensor, CudaTensor)> {
        if let Some(fused) =
            self.fused_add_norm_gemv(&x, &residual, norm, w, b, GemvEpilogue::Plain)?
        {
            return Ok(fused);
        }
        let (normed, sum) = self.add_rms_norm(x, residual, norm.0, norm.1)?;
        Ok((self.linear(&normed, w, b)?, sum))
    }

    fn add_rms_norm_swiglu(
        &self,
        x: CudaTensor,
        residual: CudaTensor,
        norm: (&CudaTensor, f64),
        w: &CudaTensor,
        b: Option<&CudaTensor>,
    ) -> Result<(CudaTensor, CudaTensor)> {
        if let Some(fused) =
            self.fused_add_norm_gemv(&x, &residual, norm, w, b, GemvEpilogue::SwiGlu)?
        {
            return Ok(fused);
        }
        let (normed, sum) = self.add_rms_norm(x, residual, norm.0, norm.1)?;
        if self.fused_gemv {
            if let (&[rows, _], &[out_features, _]) = (normed.shape(), w.shape()) {
                if gemv_swiglu_op(rows).is_some() {
                    let mut act = self.output(normed.dtype(), &[rows, out_features / 2])?;
                    if self.dev.gemv_swiglu(&normed, w, b, &mut act)? {
                        return Ok((act, sum));
                    }
                }
            }
        }
        Ok((self.silu_mul(&self.linear(&normed, w, b)?)?, sum))
    }

    fn join_heads(
        &self,
        shared: &CudaTensor,
        own: &CudaTensor,
        heads: usize,
    ) -> Result<CudaTensor> {
        let (&[n, s], &[_, own_width]) = (shared.shape(), own.shape()) else {
            bail!(
                "join_heads: inputs must be 2-d, got {:?} and {:?}",
                shared.shape(),
                own.shape()
            );
        };
        if heads == 0 || own_width % heads != 0 {
            bail!("join_heads: {own_width} columns are not {heads} heads");
        }
        let width = heads * (s + own_width / heads);
        let mut out = self.output(shared.dtype(), &[n, width])?;
        self.dev.join_heads(shared, own, heads, &mut out)?;
        Ok(out)
    }

    fn split_columns(&self, x: &CudaTensor, widths: &[usize]) -> Result<Vec<CudaTensor>> {
        let &[n, total] = x.shape() else {
            bail!("split_columns: input must be 2-d, got {:?}", x.shape());
        };
        let sum: usize = widths.iter().sum();
        if sum != total {
            bail!("split_columns: width {total} != {sum}");
        }
        let mut offset = 0;
        let mut parts = Vec::with_capacity(widths.len());
        for &w in widths {
            let mut part = self.output(x.dtype(), &[n, w])?;
            self.dev.copy_columns(x, offset, &mut part)?;
            parts.push(part);
            offset += w;
        }
        Ok(parts)
    }

    fn index_experts(
        &self,
        gate_up: &[CudaTensor],
        down: &[CudaTensor],
        biases: crate::backend::moe::ExpertBiases<'_, CudaTensor>,
    ) -> Result<super::moe::CudaExpertIndex> {
        self.bind()?;
        let index = self.dev.index_experts(gate_up, down)?;
        self.dev.index_expert_biases(index, biases)
    }

    fn moe_experts(
        &self,
        x: &CudaTensor,
        router_logits: &CudaTensor,
        experts: &ExpertSet<'_, CudaTensor, super::moe::CudaExpertIndex>,
        routing: &MoeRouting<'_, CudaTensor>,
    ) -> Result<CudaTensor> {
        // gpt-oss's experts (biases, the clamped SwiGLU) run on the device when the index
        // holds their biases; otherwise, and beyond the device path's rows, on the host.
        let plain = experts.is_plain(routing.activation);
        if (!plain && !experts.index.serves(&experts.biases()))
            || !experts.index.suits(routing.activation)
        {
            return host_routed_experts(self, x, router_logits, experts, routing);
        }
        // GLM-4.5's router routes on the device with its bias there and groups the kernel
        // takes; otherwise on the host, through the grouped path (Llama 4's too: it scales
        // the gathered rows by their weights).
        let grouped = GroupedRouter::new(routing.scoring, routing.correction_bias_tensor)
            .filter(|g| g.fits(experts.gate_up.len()));
        if routing.scoring != RouterScoring::Softmax && grouped.is_none() {
            return self.moe_experts_grouped(x, router_logits, experts, routing);
        }
        let top_k = routing.top_k;
        let on_device = experts
            .index
            .fits(x, router_logits)
            .filter(|&(tokens, n, ..)| {
                n == experts.gate_up.len()
                    && routes_on_device(moe_device_enabled(), tokens, n, top_k)
            });
        let Some((tokens, _, hidden, inter, dtype)) = on_device else {
            return self.moe_experts_grouped(x, router_logits, experts, routing);
        };
        self.bind()?;
        let pairs = tokens * top_k;
        let count = max_items(pairs, experts.gate_up.len());
        let ints = |units: usize, what: &str| {
            self.pools()
                .u32_buffer(units)
                .with_context(|| format!("moe {what} buffer"))
        };
        let mut ids = ints(pairs, "expert ids")?;
        let mut item_expert = ints(count, "item experts")?;
        let mut item_rows = ints(count, "item rows")?;
        let mut item_pairs = ints(count * GEMV_EXPERT_ROWS, "item pairs")?;
        let mut weights = self.output(DType::F32, &[pairs])?;
        let mut act = self.output(dtype, &[pairs, inter])?;
        let mut y = self.output(dtype, &[pairs, hidden])?;
        let mut out = self.output(dtype, &[tokens, hidden])?;
        let combine = Combine {
            shared: routing.shared.as_ref().map(|s| (s.output, s.gate_logits)),
            sum_f32: routing.sum_f32,
        };
        self.dev.moe_layer(
            experts.index,
            x,
            router_logits,
            (top_k, routing.normalize, grouped.as_ref()),
            routing.activation,
            combine,
            &mut MoeBuffers {
                ids: &mut ids,
                weights: &mut weights,
                item_expert: &mut item_expert,
                item_rows: &mut item_rows,
                item_pairs: &mut item_pairs,
                act: &mut act,
                y: &mut y,
            },
            &mut out,
        )?;
        Ok(out)
    }

    fn routes_experts_on_device(&self, tokens: usize, scoring: RouterScoring) -> bool {
        // The layer's own limits (experts, top k, groups) are checked per call; a layer
        // outside them falls back to the host, and a recording of it fails (its host copies
        // are refused while recording) and stays eager.
        moe_device_enabled()
            && (1..=moe_device_rows()).contains(&tokens)
            && router_runs_on_device(scoring)
    }

    fn select_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        let &[n, width] = x.shape() else {
            bail!("select_rows: input must be 2-d, got {:?}", x.shape());
        };
        let ids = rows
            .iter()
            .map(|&r| {
                anyhow::ensure!(r < n, "select_rows: row {r} of {n}");
                Ok(r as u32)
            })
            .collect::<Result<Vec<u32>>>()?;
        let mut out = self.output(x.dtype(), &[ids.len(), width])?;
        if !ids.is_empty() {
            let rows = self.pools().upload_u32(&ids).context("uploading row ids")?;
            self.dev.gather_rows(x, &rows, ids.len(), &mut out)?;
        }
        Ok(out)
    }

    fn new_kv_cache(&self, spec: &KvCacheSpec) -> Result<CudaKvCache> {
        self.bind()?;
        let kv_shape = [
            spec.num_blocks,
            spec.block_size,
            spec.num_kv_heads,
            spec.head_dim,
        ];
        // Owned, not pooled: allocated once, and zeroed so no stale memory is ever read.
        let alloc = |what: &str, layer: usize, shape: &[usize]| {
            CudaTensor::zeros(&self.dev, spec.dtype, shape).with_context(|| {
                format!(
                    "allocating the KV cache ({what} of layer {layer}, {} blocks): out of GPU memory? \
                     lower --gpu-memory-utilization, --num-kv-blocks or --max-model-len",
                    spec.num_blocks
                )
            })
        };
        let mut cache = CudaKvCache {
            k: Vec::with_capacity(spec.num_layers),
            v: Vec::with_capacity(spec.num_layers),
        };
        for layer in 0..spec.num_layers {
            // A Mamba layer: nothing per token, its sequences' states (f32) where V would be.
            if let Some(values) = spec.state_values(layer) {
                let shape = [spec.state_slots, values];
                let states =
                    CudaTensor::zeros(&self.dev, DType::F32, &shape).with_context(|| {
                        format!(
                            "allocating the recurrent states of layer {layer} ({} slots): out of \
                             GPU memory? lower --max-num-seqs",
                            spec.state_slots
                        )
                    })?;
                cache.k.push(alloc("K", layer, &[0])?);
                cache.v.push(states);
                continue;
            }
            match spec.conv_width(layer) {
                // A convolution layer: its rows where K would be, no V.
                Some(width) => {
                    let rows = [spec.num_blocks, spec.block_size, width];
                    cache.k.push(alloc("convolution rows", layer, &rows)?);
                    cache.v.push(alloc("V", layer, &[0])?);
                }
                None => {
                    cache.k.push(alloc("K", layer, &kv_shape)?);
                    cache.v.push(alloc("V", layer, &kv_shape)?);
                }
            }
        }
        Ok(cache)
    }

    fn gated_short_conv(
        &self,
        bcx: &CudaTensor,
        weight: &CudaTensor,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatchMeta,
    ) -> Result<CudaTensor> {
        let Some(rows) = cache.k.get_mut(layer) else {
            bail!("short_conv: no layer {layer} in the cache");
        };
        let conv_batch = batch.conv_batch();
        let &[n, width] = bcx.shape() else {
            bail!("short_conv: rows must be 2-d, got {:?}", bcx.shape());
        };
        let mut out = self.output(bcx.dtype(), &[n, width / 3])?;
        self.dev
            .gated_short_conv(bcx, weight, rows, &conv_batch, &mut out)?;
        Ok(out)
    }

    fn mamba_mixer(
        &self,
        zxbcdt: &CudaTensor,
        params: &MambaParams<'_, CudaTensor>,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatchMeta,
    ) -> Result<CudaTensor> {
        let Some(states) = cache.v.get_mut(layer) else {
            bail!("mamba: no layer {layer} in the cache");
        };
        let conv_batch = batch.conv_batch();
        let &[n, _] = zxbcdt.shape() else {
            bail!("mamba: zxbcdt must be 2-d, got {:?}", zxbcdt.shape());
        };
        let sh = params.shape;
        let mut xbc = self.output(zxbcdt.dtype(), &[n, sh.conv_dim()])?;
        let mut y = self.output(DType::F32, &[n, sh.inner()])?;
        let mut out = self.output(zxbcdt.dtype(), &[n, sh.inner()])?;
        self.dev.mamba_mixer(
            zxbcdt,
            params,
            SlotStates {
                states,
                state_slots: &batch.state_slots,
            },
            &conv_batch,
            MambaScratch {
                xbc: &mut xbc,
                y: &mut y,
            },
            &mut out,
        )?;
        Ok(out)
    }

    fn gated_delta_net(
        &self,
        qkvzba: &CudaTensor,
        params: &GatedDeltaParams<'_, CudaTensor>,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatchMeta,
    ) -> Result<CudaTensor> {
        let Some(states) = cache.v.get_mut(layer) else {
            bail!("gated delta net: no layer {layer} in the cache");
        };
        let conv_batch = batch.conv_batch();
        let &[n, _] = qkvzba.shape() else {
            bail!(
                "gated delta net: rows must be 2-d, got {:?}",
                qkvzba.shape()
            );
        };
        let sh = params.shape;
        let mut qkv = self.output(qkvzba.dtype(), &[n, sh.conv_dim()])?;
        let mut o = self.output(DType::F32, &[n, sh.value_dim()])?;
        let mut out = self.output(qkvzba.dtype(), &[n, sh.value_dim()])?;
        self.dev.gated_delta_net(
            qkvzba,
            params,
            SlotStates {
                states,
                state_slots: &batch.state_slots,
            },
            &conv_batch,
            GatedDeltaScratch {
                qkv: &mut qkv,
                o: &mut o,
            },
            &mut out,
        )?;
        Ok(out)
    }

    fn slot_conv(
        &self,
        src: &CudaTensor,
        conv: &SlotConvParams<'_, CudaTensor>,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatchMeta,
    ) -> Result<CudaTensor> {
        let Some(states) = cache.v.get_mut(layer) else {
            bail!("slot_conv: no layer {layer} in the cache");
        };
        let &[n, _] = src.shape() else {
            bail!("slot_conv: rows must be 2-d, got {:?}", src.shape());
        };
        let mut out = self.output(src.dtype(), &[n, conv.channels])?;
        let mut slots = SlotStates {
            states,
            state_slots: &batch.state_slots,
        };
        self.dev
            .slot_conv(src, conv, &mut slots, &batch.conv_batch(), &mut out)?;
        Ok(out)
    }

    fn selective_scan(
        &self,
        x: &CudaTensor,
        dt: &CudaTensor,
        (b, c): (&CudaTensor, &CudaTensor),
        xz: &CudaTensor,
        params: &SelectiveParams<'_, CudaTensor>,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatchMeta,
    ) -> Result<CudaTensor> {
        let Some(states) = cache.v.get_mut(layer) else {
            bail!("selective scan: no layer {layer} in the cache");
        };
        let &[n, _] = x.shape() else {
            bail!("selective scan: x must be 2-d, got {:?}", x.shape());
        };
        let mut out = self.zeroed_output(x.dtype(), &[n, params.shape.inner])?;
        let inputs = ScanInputs { x, dt, b, c, xz };
        let slots = SlotStates {
            states,
            state_slots: &batch.state_slots,
        };
        self.dev
            .selective_scan(&inputs, params, slots, &batch.conv_batch(), &mut out)?;
        Ok(out)
    }

    fn sigmoid_gate(&self, x: &CudaTensor, gate: &CudaTensor) -> Result<CudaTensor> {
        let mut out = self.output(x.dtype(), x.shape())?;
        self.dev.sigmoid_gate(x, gate, &mut out)?;
        Ok(out)
    }

    fn write_kv(
        &self,
        cache: &mut CudaKvCache,
        layer: usize,
        k: &CudaTensor,
        v: &CudaTensor,
        batch: &CudaBatchMeta,
    ) -> Result<()> {
        let (Some(k_cache), Some(v_cache)) = (cache.k.get_mut(layer), cache.v.get_mut(layer))
        else {
            bail!("write_kv: no layer {layer} in the cache");
        };
        self.dev.kv_write(k_cache, v_cache, k, v, &batch.slots)
    }

    fn qkv_rope_write(
        &self,
        qkv: &CudaTensor,
        widths: (usize, usize),
        head: &QkvHeads<'_, Self>,
        rope: &CudaRope,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatchMeta,
    ) -> Result<CudaTensor> {
        // The fused kernel norms one head at a time (Qwen3, Gemma 3); OLMo 2's norms span
        // the whole projection.
        // Nor does it take per-head LayerNorms (Command R+).
        let per_head_norms = head
            .norms
            .is_none_or(|(q, k, _)| q.shape() == [head.head_dim] && k.shape() == [head.head_dim]);
        if !self.fused_qkv || !per_head_norms || head.layer_norm {
            return unfused_qkv_rope_write(self, qkv, widths, head, rope, cache, layer, batch);
        }
        let &[n, _] = qkv.shape() else {
            bail!("qkv_rope_write: input must be 2-d, got {:?}", qkv.shape());
        };
        if batch.num_tokens != n {
            bail!(
                "qkv_rope_write: {} positions for {n} tokens",
                batch.num_tokens
            );
        }
        let (Some(k_cache), Some(v_cache)) = (cache.k.get_mut(layer), cache.v.get_mut(layer))
        else {
            bail!("qkv_rope_write: no layer {layer} in the cache");
        };
        let mut q = self.output(qkv.dtype(), &[n, widths.0])?;
        let params = QkvRopeCache {
            positions: &batch.positions,
            slot_mapping: &batch.slots,
            inv_freq: &rope.inv_freq,
            style: rope.style,
            scale: rope.scale,
            head_dim: head.head_dim,
            norms: head.norms.map(|(q, k, eps)| (q, k, eps as f32)),
            norm_after_rope: head.norm_after_rope,
            temperature: rope.temperature,
        };
        self.dev
            .qkv_rope_cache(qkv, &mut q, k_cache, v_cache, &params)?;
        Ok(q)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        cache: &CudaKvCache,
        layer: usize,
        batch: &CudaBatchMeta,
        shape: &AttentionShape,
        terms: HeadTerms<'_, CudaTensor>,
    ) -> Result<CudaTensor> {
        let (Some(k_cache), Some(v_cache)) = (cache.k.get(layer), cache.v.get(layer)) else {
            bail!("attention: no layer {layer} in the cache");
        };
        let meta = AttentionMetadata {
            block_tables: &batch.block_tables,
            max_blocks_per_seq: batch.max_blocks_per_seq,
            query_start: &batch.query_start,
            context_lens: &batch.context_lens,
            num_seqs: batch.num_seqs,
            window: shape.window,
            softcap: shape.logit_softcap,
            sinks: terms.sinks,
            alibi: terms.alibi,
            decode_prefix: batch.decode_prefix,
        };
        let scale = shape.scale();
        let mut out = self.output(q.dtype(), q.shape())?;
        self.dev
            .attention(q, k_cache, v_cache, &meta, scale, self.pools(), &mut out)?;
        Ok(out)
    }
}
