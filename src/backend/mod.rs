//! The op set every model is written against, and its backends.
//!
//! A model calls these ops and nothing else, so one implementation runs on the CPU reference
//! backend (`cpu`, candle tensors) and on the CUDA backend (our kernels + cuBLAS). Layouts are
//! fixed here, because both backends and the kernels must agree on them:
//! - activations are row-major `[tokens, width]`; weights are HF's `[out, in]`;
//! - the paged KV cache holds, per layer, K and V as `[blocks, block_size, kv_heads, head_dim]`;
//! - a batch is the concatenation of every scheduled sequence's new tokens (see [`BatchLayout`]).

pub mod batch;
pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod gated_delta;
pub mod image_ops;
pub mod mamba;
pub mod moe;
pub mod moe_route;
pub mod selective_scan;
pub mod slot_conv;

pub use batch::BatchLayout;
pub use dtype::DType;

use anyhow::Result;

/// Shape of the attention part of a model, as the attention ops need it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Which earlier positions a query sees: all, a sliding window, or its chunk.
    pub window: KeyWindow,
    /// Gemma 2: each scaled score `s` becomes `cap * tanh(s / cap)` before the softmax.
    pub logit_softcap: Option<f32>,
}

impl AttentionShape {
    /// The factor q . k is multiplied by before the softmax. (YaRN's and LongRoPE's
    /// attention factors live in the rotation, `Rope::scale`.)
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Which cache positions a query at position `pos` attends to (always up to `pos` itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyWindow {
    /// Every position from 0.
    #[default]
    Full,
    /// Mistral's sliding window: the last `w` positions, `pos + 1 - w ..= pos`.
    Sliding(usize),
    /// Llama 4's chunked layers: the positions of the query's own chunk of `c`,
    /// `(pos / c) * c ..= pos`, so the first token of each chunk sees only itself.
    Chunked(usize),
}

impl KeyWindow {
    /// A sliding window where `w` is given, the whole context otherwise.
    pub fn sliding(w: Option<usize>) -> Self {
        w.map_or(KeyWindow::Full, KeyWindow::Sliding)
    }

    /// The first position a query at `pos` attends to.
    pub fn first_key(self, pos: usize) -> usize {
        match self {
            KeyWindow::Full => 0,
            KeyWindow::Sliding(w) => (pos + 1).saturating_sub(w),
            KeyWindow::Chunked(c) => pos / c.max(1) * c.max(1),
        }
    }

    /// The most keys one query attends to, in a cache of `capacity` positions per sequence.
    pub fn max_keys(self, capacity: usize) -> usize {
        match self {
            KeyWindow::Full => capacity,
            KeyWindow::Sliding(w) | KeyWindow::Chunked(w) => w.min(capacity),
        }
    }

    /// The attention kernels' `sliding_window` argument: 0 for the whole context, `w` for a
    /// sliding window, `-c` for chunks (see `kiln_first_key` in kernels/common.cuh).
    pub fn kernel_arg(self) -> Result<i32> {
        let size = |n: usize, what: &str| -> Result<i32> {
            anyhow::ensure!(n > 0, "attention: a {what} of 0 tokens attends to nothing");
            i32::try_from(n).map_err(|_| anyhow::anyhow!("attention: a {what} of {n} tokens"))
        };
        Ok(match self {
            KeyWindow::Full => 0,
            KeyWindow::Sliding(w) => size(w, "sliding window")?,
            KeyWindow::Chunked(c) => -size(c, "attention chunk")?,
        })
    }
}

/// What an attention adds to its scores per head beyond the scaled (and soft-capped)
/// `q . k`: one f32 `[heads]` vector each, the heads of the call (a tensor-parallel rank's).
pub struct HeadTerms<'a, T: ?Sized> {
    /// gpt-oss: one more logit per head in each softmax, with no value (it only takes
    /// probability mass).
    pub sinks: Option<&'a T>,
    /// ALiBi (BLOOM, MPT, Falcon-RW): the score of head h's query at position i for the key
    /// at position p gains `alibi[h] * (p - i)`, a penalty growing with distance. (Models
    /// write it as `slope * p`; a softmax row does not see the constant `-slope * i`, and
    /// the relative form keeps the terms small at long positions.)
    pub alibi: Option<&'a T>,
}

impl<T: ?Sized> HeadTerms<'_, T> {
    /// No term: plain causal attention.
    pub fn none() -> Self {
        HeadTerms {
            sinks: None,
            alibi: None,
        }
    }
}

impl<T: ?Sized> Clone for HeadTerms<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for HeadTerms<'_, T> {}

/// Rotary position embedding: the per-pair inverse frequencies (scaling already applied) and
/// whether pairs are split halves (`neox`, HF's `rotate_half`) or adjacent elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub neox: bool,
    /// What cos and sin are multiplied by: YaRN's and LongRoPE's attention factor, 1
    /// otherwise. HF folds it into the rotation, so only the rotated values of q and k are
    /// scaled (not the pass-through ones under partial rotary).
    pub scale: f32,
    /// Llama 4's layers without rotary: each query (not key) is also multiplied by a factor
    /// growing with its position, after the rotation.
    pub query_temperature: Option<QueryTemperature>,
}

/// Llama 4's attention temperature tuning (`attn_temperature_tuning`): the query at
/// position `p` is multiplied by `log1p(floor((p + 1) / floor_scale)) * attn_scale + 1`, so
/// its scores stay sharp over contexts far longer than its chunked layers see (the factor is
/// 1 below `floor_scale - 1`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryTemperature {
    pub floor_scale: f32,
    pub attn_scale: f32,
}

impl QueryTemperature {
    /// The factor at position `pos`, in f32 as transformers computes it.
    pub fn factor(&self, pos: u32) -> f32 {
        ((pos as f32 + 1.0) / self.floor_scale).floor().ln_1p() * self.attn_scale + 1.0
    }
}

/// The forward pass [`Backend::forward_recorded`] runs, records or replays: from prepared
/// batch metadata, tokens and layout to logits.
pub type RecordedBody<'a, M, T> = dyn FnMut(&M, &[u32], &BatchLayout) -> Result<T> + 'a;

/// Rows of one tensor to add into a sum: row `i` of `tensor`, times `weights[i]`, goes to
/// row `rows[i]` (see [`Backend::weighted_row_sum`]).
pub struct RowContribution<'a, T> {
    pub tensor: &'a T,
    pub rows: &'a [usize],
    pub weights: &'a [f32],
}

/// The ops a model needs. `Tensor` lives on the backend's device.
///
/// Ops that a GPU does in place (`add_rms_norm`, `rope`) take their inputs by value, so a
/// backend can reuse the buffers instead of copying them.
pub trait Backend: Send + Sync {
    type Tensor: Send + Sync;
    type KvCache: Send;
    /// A [`BatchLayout`] in the form the ops read it (on a GPU: uploaded once per forward).
    type BatchMeta;
    /// A [`Rope`] in the form [`Backend::rope`] reads it (on a GPU: uploaded once per model).
    type RopeTable: Send + Sync;
    /// What [`Backend::moe_experts`] needs of one mixture-of-experts layer beyond its expert
    /// tensors, prepared once at load ([`Backend::index_experts`]; CUDA: a device array of
    /// every expert's weight address).
    type ExpertIndex: Send + Sync;

    /// A short name for logs ("cpu", "cuda:0").
    fn name(&self) -> String;

    /// Whether the ops run on this process's CPU threads (rayon) rather than a device.
    fn computes_on_host(&self) -> bool {
        false
    }

    /// `(free, total)` bytes of device memory, where the device has its own (GPUs).
    fn memory_info(&self) -> Option<Result<(usize, usize)>> {
        None
    }

    /// Counters of the device's caching allocator (driver allocations vs reuses), where
    /// the backend has one (GPUs).
    fn allocator_stats(&self) -> Option<cuda::pool::PoolStats> {
        None
    }

    /// Moves a host tensor (already in the model dtype) onto the device.
    fn upload(&self, host: candle_core::Tensor) -> Result<Self::Tensor>;
    /// A weight of `shape` whose elements are the concatenation of `parts` (generated
    /// dummy weights), computed on the device without a host copy; `None` where the backend
    /// does not do that (the caller then generates on the host and uploads).
    fn generate(
        &self,
        _parts: &[crate::model::weights::GeneratedPart],
        _shape: &[usize],
        _dtype: DType,
    ) -> Option<Result<Self::Tensor>> {
        None
    }
    /// Copies a tensor back as f32 values, row-major.
    fn to_host_f32(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// `t` holding `values` instead (row-major, as many as `t` has, rounded to `t`'s dtype);
    /// written in place where the device can (a host-staged all-reduce writes its sum back).
    fn replace_from_f32(&self, t: Self::Tensor, values: &[f32]) -> Result<Self::Tensor>;

    /// Prepares the per-token and per-sequence metadata of one forward pass, once for all
    /// layers.
    fn prepare_batch(&self, batch: &BatchLayout) -> Result<Self::BatchMeta>;
    /// Prepares the rotary table, once per model.
    fn prepare_rope(&self, rope: &Rope) -> Result<Self::RopeTable>;

    /// Rows of `table` (`[vocab, hidden]`) picked by `ids`.
    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor>;
    /// The embeddings of a forward pass's tokens (`tokens`, as `batch` was prepared for):
    /// [`Backend::embedding`], except where the batch metadata already holds the ids on the
    /// device (a recorded decode step reads them from its own input buffer).
    fn embed_batch(
        &self,
        table: &Self::Tensor,
        _batch: &Self::BatchMeta,
        tokens: &[u32],
    ) -> Result<Self::Tensor> {
        self.embedding(table, tokens)
    }

    /// `x` plus the rows of `table` (`[positions, hidden]`) at each token's position plus
    /// `offset`: GPT-2's and OPT's learned position embeddings. The positions come from the
    /// batch metadata, so a recorded step reads its own input buffer. A position past the
    /// table is an error.
    fn add_position_embeddings(
        &self,
        x: Self::Tensor,
        table: &Self::Tensor,
        batch: &Self::BatchMeta,
        offset: usize,
    ) -> Result<Self::Tensor>;

    /// A decode step through a recording the backend replays (CUDA graphs), where it keeps
    /// them. `body` is the forward pass from prepared metadata, tokens and layout to the
    /// logits of the layout's `logits_rows`; the backend may call it on a padded copy of the
    /// batch (extra sequences that store nothing), to run it eagerly once and record it, and
    /// then replays the recording instead of calling it. The result holds the logits of
    /// `batch.logits_rows`. `Ok(None)`: nothing recorded for this batch (not a pure decode
    /// step, too large, recording off or failed): the caller runs the eager path.
    fn forward_recorded(
        &self,
        _tokens: &[u32],
        _batch: &BatchLayout,
        _body: &mut RecordedBody<'_, Self::BatchMeta, Self::Tensor>,
    ) -> Result<Option<Self::Tensor>> {
        Ok(None)
    }
    /// `x W^T + b` with `x: [n, in]`, `w: [out, in]`, `b: [out]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// `x · wᵀ` as f32 (`[rows, out]`) from inputs in the model's dtype, accumulated in f32
    /// and never rounded to the dtype: the routers transformers runs in f32 (GLM-4.5's,
    /// DeepSeek's, ERNIE 4.5's, dots.llm1's), whose expert choices a rounded logit can flip.
    /// `w` may be f32 where `x` is not (the routers transformers keeps in f32: ERNIE 4.5's,
    /// Nemotron 3's); `x` is then widened exactly.
    fn linear_f32(&self, x: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor>;
    /// RMS norm over the last `weight.len()` elements of each row (also per-head norms).
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f64) -> Result<Self::Tensor>;
    /// `sum = x + residual` (in the model dtype), then `(rms_norm(sum), sum)`.
    fn add_rms_norm(
        &self,
        x: Self::Tensor,
        residual: Self::Tensor,
        weight: &Self::Tensor,
        eps: f64,
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// `add_rms_norm` followed by `linear(normed, w, b)`: `(linear output, sum)`. Devices may
    /// fuse the norm into the linear layer for a few rows.
    fn add_rms_norm_linear(
        &self,
        x: Self::Tensor,
        residual: Self::Tensor,
        norm: (&Self::Tensor, f64),
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let (normed, sum) = self.add_rms_norm(x, residual, norm.0, norm.1)?;
        Ok((self.linear(&normed, w, b)?, sum))
    }
    /// Rotates `q: [n, q_heads * head_dim]` and `k: [n, kv_heads * head_dim]` by each token's
    /// position in `batch`.
    fn rope(
        &self,
        q: Self::Tensor,
        k: Self::Tensor,
        head_dim: usize,
        rope: &Self::RopeTable,
        batch: &Self::BatchMeta,
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// `silu(gate) * up` where `gate_up: [n, 2 * I]` holds gate in its first half.
    fn silu_mul(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor>;
    /// `gelu_tanh(gate) * up` (GeGLU with PyTorch's tanh approximation, Gemma's MLP), laid
    /// out as for [`Backend::silu_mul`].
    fn gelu_tanh_mul(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor>;
    /// Layer norm of each `head_dim`-wide head of `x` (`[n, heads * head_dim]`), head h
    /// scaled by its own row of `weight` (`heads * head_dim` values), no bias; in f32 and
    /// rounded once (Command R+'s and StableLM 2 12B's q / k norms).
    fn head_layer_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        head_dim: usize,
        eps: f64,
    ) -> Result<Self::Tensor>;
    /// Layer norm over the last dimension, with `weight` and `bias` of that width, in f32
    /// and rounded once (StarCoder2's norms; the diffusion models' transformer blocks).
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f64,
    ) -> Result<Self::Tensor>;
    /// An activation, elementwise, in f32 and rounded once (StarCoder2's ungated MLP; the
    /// diffusion models').
    fn activation(&self, x: &Self::Tensor, act: image_ops::Activation) -> Result<Self::Tensor>;
    /// gpt-oss's expert activation, laid out as for [`Backend::silu_mul`]: gate clamped to
    /// at most `limit`, up to `[-limit, limit]`, then `(up + 1) * gate * sigmoid(alpha *
    /// gate)`, in f32 and rounded once.
    fn clamped_swiglu(
        &self,
        gate_up: &Self::Tensor,
        limit: f32,
        alpha: f32,
    ) -> Result<Self::Tensor>;
    /// `x * factor`, rounded once to the tensor's dtype (Gemma's embedding scale).
    fn mul_scalar(&self, x: &Self::Tensor, factor: f32) -> Result<Self::Tensor>;
    /// `a + b` element-wise (rounded once to the dtype): OLMo 2's residual adds, which
    /// no norm follows.
    fn add_tensors(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `cap * tanh(x / cap)` element-wise, computed in f32 and rounded once (Gemma 2's
    /// final logit soft-capping). The GPU works in place.
    fn softcap(&self, x: Self::Tensor, cap: f32) -> Result<Self::Tensor>;
    /// The MLP's head: `add_rms_norm_linear` into the gate_up projection `w: [2 * I, k]`,
    /// then `silu_mul`: `(silu(gate) * up: [n, I], sum)`. Devices may fuse all three for a
    /// few rows.
    fn add_rms_norm_swiglu(
        &self,
        x: Self::Tensor,
        residual: Self::Tensor,
        norm: (&Self::Tensor, f64),
        w: &Self::Tensor,
        b: Option<&Self::Tensor>,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let (gate_up, sum) = self.add_rms_norm_linear(x, residual, norm, w, b)?;
        Ok((self.silu_mul(&gate_up)?, sum))
    }
    /// Splits the columns of `x: [n, sum(widths)]` into consecutive parts.
    fn split_columns(&self, x: &Self::Tensor, widths: &[usize]) -> Result<Vec<Self::Tensor>>;
    /// Per head, a part every head shares followed by the head's own part:
    /// `shared: [n, s]` and `own: [n, heads * o]` give `[n, heads * (s + o)]` whose head `h`
    /// is `shared` then `own`'s head `h`. DeepSeek's decompressed keys: one rotated part,
    /// computed once, beside each head's own unrotated part.
    fn join_heads(
        &self,
        shared: &Self::Tensor,
        own: &Self::Tensor,
        heads: usize,
    ) -> Result<Self::Tensor>;
    /// The given rows of `x`, in order.
    fn select_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;

    /// A zero `[num_rows, width]` tensor of `dtype` with every part's weighted rows added
    /// in, parts in order. Rounding follows a loop of per-part `index_add`s in `steps` (HF's
    /// mixture-of-experts loop): each weight, each product and each running sum is rounded
    /// to `steps` (`dtype`, or f32 where the loop adds in the router's f32), the sum to
    /// `dtype` at the end. The default goes through the host, where the experts' routing was
    /// decided anyway; a device kernel would save one copy each way.
    fn weighted_row_sum(
        &self,
        num_rows: usize,
        width: usize,
        (dtype, steps): (DType, DType),
        parts: &[RowContribution<'_, Self::Tensor>],
    ) -> Result<Self::Tensor> {
        let mut sum = vec![0f32; num_rows * width];
        for part in parts {
            let values = self.to_host_f32(part.tensor)?;
            anyhow::ensure!(
                values.len() == part.rows.len() * width && part.rows.len() == part.weights.len(),
                "{} rows and {} weights for {} values of width {width}",
                part.rows.len(),
                part.weights.len(),
                values.len()
            );
            for ((&row, &weight), src) in part
                .rows
                .iter()
                .zip(part.weights)
                .zip(values.chunks_exact(width))
            {
                anyhow::ensure!(row < num_rows, "row {row} of a {num_rows}-row sum");
                let weight = steps.round(weight);
                let dst = &mut sum[row * width..(row + 1) * width];
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = steps.round(*d + steps.round(v * weight));
                }
            }
        }
        let host =
            candle_core::Tensor::from_vec(sum, (num_rows, width), &candle_core::Device::Cpu)?
                .to_dtype(dtype.to_candle())?;
        self.upload(host)
    }
    /// Prepares one MoE layer's experts (`gate_up[e]`, `down[e]`, and gpt-oss's biases, see
    /// [`moe::ExpertSet`]) for [`Backend::moe_experts`].
    fn index_experts(
        &self,
        gate_up: &[Self::Tensor],
        down: &[Self::Tensor],
        biases: moe::ExpertBiases<'_, Self::Tensor>,
    ) -> Result<Self::ExpertIndex>;
    /// The routed experts' weighted sum for each row of `x` (`[tokens, hidden]`, normed),
    /// given the router's logits (`[tokens, experts]`), plus the shared expert's part when
    /// there is one. The default routes on the host ([`moe::host_routed_experts`]); a GPU
    /// backend routes a few tokens on the device (see [`Backend::routes_experts_on_device`]).
    fn moe_experts(
        &self,
        x: &Self::Tensor,
        router_logits: &Self::Tensor,
        experts: &moe::ExpertSet<'_, Self::Tensor, Self::ExpertIndex>,
        routing: &moe::MoeRouting<'_, Self::Tensor>,
    ) -> Result<Self::Tensor> {
        moe::host_routed_experts(self, x, router_logits, experts, routing)
    }
    /// Whether [`Backend::moe_experts`] on `tokens` rows of a router scoring as `scoring`
    /// stays on the device (no host round trip), so that a decode step of a MoE model can be
    /// recorded.
    fn routes_experts_on_device(&self, _tokens: usize, _scoring: moe::RouterScoring) -> bool {
        false
    }
    /// The index of the largest value (lowest on ties) of each of the given rows of
    /// `logits: [rows, vocab]`. Devices compute it in place and send back only the indices.
    fn argmax_rows(&self, logits: &Self::Tensor, rows: &[usize]) -> Result<Vec<u32>> {
        let dims = self.tensor_dims(logits)?;
        let &[n, vocab] = dims.as_slice() else {
            anyhow::bail!("argmax needs [rows, vocab] logits, got {dims:?}");
        };
        let values = self.to_host_f32(logits)?;
        rows.iter()
            .map(|&r| {
                anyhow::ensure!(r < n, "argmax of row {r} of {n}");
                Ok(crate::engine::sampler::argmax(
                    &values[r * vocab..(r + 1) * vocab],
                ))
            })
            .collect()
    }
    /// Samples the given rows of `logits: [rows, vocab]` on the device, one [`DrawRow`]
    /// (parameters, penalty tokens, the host's uniform `u`) per selected row, with the
    /// semantics of `engine::sampler::sample` (without logprobs). `None`: the backend does
    /// not sample on its device, so the caller samples on the host. Called unless
    /// `--gpu-sampling false`.
    ///
    /// [`DrawRow`]: cuda::sampling_draw_rows::DrawRow
    fn draw_rows(
        &self,
        _logits: &Self::Tensor,
        _rows: &[usize],
        _draws: &[cuda::sampling_draw_rows::DrawRow],
    ) -> Result<Option<Vec<u32>>> {
        Ok(None)
    }
    /// The shape of `t`.
    fn tensor_dims(&self, t: &Self::Tensor) -> Result<Vec<usize>>;

    /// A zeroed paged KV cache.
    fn new_kv_cache(&self, spec: &KvCacheSpec) -> Result<Self::KvCache>;
    /// Writes each token's K and V (`[n, kv_heads * head_dim]`) into its cache slot.
    fn write_kv(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
        batch: &Self::BatchMeta,
    ) -> Result<()>;
    /// The attention block's entry: splits `qkv: [n, q_width + 2 * kv_width]` into q, k and
    /// v, normalises each q and k head when `head.norms` is given (Qwen3), rotates q and k by
    /// position, writes k and v into layer `layer` of the cache, and returns the rotated q
    /// `[n, q_width]`. Devices fuse it into one kernel; this default composes the ops above
    /// (and is the reference the fused version must equal).
    #[allow(clippy::too_many_arguments)]
    fn qkv_rope_write(
        &self,
        qkv: &Self::Tensor,
        widths: (usize, usize),
        head: &QkvHeads<'_, Self>,
        rope: &Self::RopeTable,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::BatchMeta,
    ) -> Result<Self::Tensor> {
        unfused_qkv_rope_write(self, qkv, widths, head, rope, cache, layer, batch)
    }
    /// LFM2's gated short convolution of `bcx` (`[n, 3 * channels]`: gates B, C and input
    /// x): each token's row `B * x` is written into layer `layer`'s cache, convolved
    /// causally and depthwise with its sequence's rows at positions `pos - (L - 1) ..= pos`
    /// (before 0: zeros), `conv[c] = sum_j weight[c, j] * row[pos - (L - 1) + j][c]` with
    /// `weight` `[channels, L]`, and gated: `out = C * conv` (`[n, channels]`). Each of the
    /// three results is rounded to the dtype, as transformers computes them.
    fn gated_short_conv(
        &self,
        bcx: &Self::Tensor,
        weight: &Self::Tensor,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::BatchMeta,
    ) -> Result<Self::Tensor>;
    /// A Mamba-2 mixer from its in-projection `zxbcdt` (`[n, projection_width]`: gate z,
    /// then the convolution's input x / B / C, then one raw `dt` per head) to the gated,
    /// normed scan output `[n, inner]` (before the out-projection). Each token's x / B / C
    /// row is written into layer `layer`'s cache rows and convolved causally with its
    /// sequence's last `taps` rows (plus the bias), then SiLU'd (both rounded to the dtype);
    /// the recurrence `h = exp(dt * A) * h + dt * x B^T`, `y = h C + D x` runs per head from
    /// the sequence's state slot (zeros at position 0) and leaves its state there (see
    /// [`mamba`]); `y * silu(z)` is RMS-normed per `norm_group`
    /// and scaled by the norm weight (rounded to the dtype). All of it in f32.
    fn mamba_mixer(
        &self,
        zxbcdt: &Self::Tensor,
        params: &mamba::MambaParams<'_, Self::Tensor>,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::BatchMeta,
    ) -> Result<Self::Tensor>;
    /// A gated delta rule mixer (Qwen3-Next's linear attention; [`gated_delta`] has the
    /// math and layout) from its in-projection `qkvzba` (`[n, projection_width]`) to the
    /// normed, gated output `[n, value_dim]` (before the out-projection). The convolution
    /// is Mamba's (no bias); the state and window live in the sequence's state slot of layer
    /// `layer`. The recurrence runs in f32; the convolution, the L2-normed q and k, `beta`
    /// and the norm's steps are rounded to the dtype, as transformers computes them.
    fn gated_delta_net(
        &self,
        qkvzba: &Self::Tensor,
        params: &gated_delta::GatedDeltaParams<'_, Self::Tensor>,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::BatchMeta,
    ) -> Result<Self::Tensor>;
    /// A recurrent mixer's causal convolution on its own (Mamba-1's, before its `x_proj`):
    /// `[n, channels]`, each token's columns `conv.offset..` of `src` convolved with its
    /// sequence's last `taps - 1` rows (the window in its state slot of layer `layer`, zeros
    /// at position 0) plus the bias, rounded, SiLU'd and rounded; the slot's window then
    /// holds the step's last rows. The state part of the slot is left alone.
    fn slot_conv(
        &self,
        src: &Self::Tensor,
        conv: &slot_conv::SlotConvParams<'_, Self::Tensor>,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::BatchMeta,
    ) -> Result<Self::Tensor>;
    /// Mamba-1's selective scan ([`selective_scan`] has the math): `x` the convolved
    /// channels `[n, inner]`, `dt` the per-channel raw steps `[n, inner]` (`dt_proj`'s
    /// output), `b` and `c` `[n, state]`, `xz` the in-projection (its gate z from column
    /// `inner`). Per channel the state runs from the sequence's slot (zeros at position 0)
    /// and stays there; returns the gated output `[n, inner]`, each step rounded to the
    /// dtype as transformers' eager scan rounds it (the step, the state before its product
    /// with C, `y`, `D x`, the sum, `silu(z)`, the product).
    #[allow(clippy::too_many_arguments)]
    fn selective_scan(
        &self,
        x: &Self::Tensor,
        dt: &Self::Tensor,
        bc: (&Self::Tensor, &Self::Tensor),
        xz: &Self::Tensor,
        params: &selective_scan::SelectiveParams<'_, Self::Tensor>,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::BatchMeta,
    ) -> Result<Self::Tensor>;
    /// Qwen3-Next's gated attention output: `x * sigmoid(gate)` element-wise, the sigmoid
    /// and the product each rounded to the dtype (as transformers computes it).
    fn sigmoid_gate(&self, x: &Self::Tensor, gate: &Self::Tensor) -> Result<Self::Tensor>;
    /// Causal attention of the batch's queries (`[n, heads * head_dim]`) over the paged cache,
    /// which already holds the batch's own K and V, with the per-head terms `terms` adds to
    /// its scores.
    fn attention(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        batch: &Self::BatchMeta,
        shape: &AttentionShape,
        terms: HeadTerms<'_, Self::Tensor>,
    ) -> Result<Self::Tensor>;
}

/// Geometry of a paged KV cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCacheSpec {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
    /// LFM2's convolution layers, `(layer, width)`: their cache holds one `width`-value row
    /// per token (the short convolution's inputs, [`Backend::short_conv`]) in place of K,
    /// and no V. Paged like keys, so prefix caching and chunked prefill apply unchanged.
    pub conv_layers: Vec<(usize, usize)>,
    /// Recurrent mixer layers (Mamba-1, Mamba-2, gated delta rule), `(layer, values)`:
    /// nothing per token; `state_slots` f32 states of `values` each (recurrent state and
    /// convolution window) in place of V, one per running sequence ([`mamba`]).
    pub state_layers: Vec<(usize, usize)>,
    pub state_slots: usize,
}

impl KvCacheSpec {
    /// Layer `layer`'s convolution row width, if it is a convolution layer.
    pub fn conv_width(&self, layer: usize) -> Option<usize> {
        self.conv_layers
            .iter()
            .find(|&&(l, _)| l == layer)
            .map(|&(_, w)| w)
    }

    /// Layer `layer`'s f32 values per recurrent state, if it is a recurrent mixer layer.
    pub fn state_values(&self, layer: usize) -> Option<usize> {
        self.state_layers
            .iter()
            .find(|&&(l, _)| l == layer)
            .map(|&(_, v)| v)
    }

    /// Bytes one block occupies across all layers.
    pub fn bytes_per_block(&self) -> usize {
        self.bytes_per_token() * self.block_size
    }

    /// Bytes of the recurrent states (all slots, all recurrent layers), beside the blocks.
    pub fn state_bytes(&self) -> usize {
        let values: usize = self.state_layers.iter().map(|&(_, v)| v).sum();
        values * self.state_slots * DType::F32.size_in_bytes()
    }

    /// Values one token occupies in layer `layer`'s K cache and in its V cache.
    pub fn token_widths(&self, layer: usize) -> (usize, usize) {
        if self.state_values(layer).is_some() {
            return (0, 0);
        }
        match self.conv_width(layer) {
            Some(width) => (width, 0),
            None => {
                let kv = self.num_kv_heads * self.head_dim;
                (kv, kv)
            }
        }
    }

    /// Bytes one token occupies across all layers (K and V, or convolution rows), not
    /// counting the recurrent states ([`KvCacheSpec::state_bytes`]).
    pub fn bytes_per_token(&self) -> usize {
        let values: usize = (0..self.num_layers)
            .map(|l| {
                let (k, v) = self.token_widths(l);
                k + v
            })
            .sum();
        values * self.dtype.size_in_bytes()
    }
}

/// [`Backend::qkv_rope_write`] composed of the split, the rotation and the cache write: the
/// default, and what a device with the fused kernel switched off runs.
#[allow(clippy::too_many_arguments)]
pub fn unfused_qkv_rope_write<B: Backend + ?Sized>(
    be: &B,
    qkv: &B::Tensor,
    (q_width, kv_width): (usize, usize),
    head: &QkvHeads<'_, B>,
    rope: &B::RopeTable,
    cache: &mut B::KvCache,
    layer: usize,
    batch: &B::BatchMeta,
) -> Result<B::Tensor> {
    let mut parts = be
        .split_columns(qkv, &[q_width, kv_width, kv_width])?
        .into_iter();
    let (Some(mut q), Some(mut k), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
        anyhow::bail!("qkv_rope_write: split_columns returned fewer than three parts");
    };
    let norms = head.norms.filter(|_| !head.norm_after_rope);
    if let Some((q_norm, k_norm, eps)) = norms {
        if head.layer_norm {
            q = be.head_layer_norm(&q, q_norm, head.head_dim, eps)?;
            k = be.head_layer_norm(&k, k_norm, head.head_dim, eps)?;
        } else {
            q = be.rms_norm(&q, q_norm, eps)?;
            k = be.rms_norm(&k, k_norm, eps)?;
        }
    }
    let (mut q, mut k) = be.rope(q, k, head.head_dim, rope, batch)?;
    if let Some((q_norm, k_norm, eps)) = head.norms.filter(|_| head.norm_after_rope) {
        q = be.rms_norm(&q, q_norm, eps)?;
        k = be.rms_norm(&k, k_norm, eps)?;
    }
    be.write_kv(cache, layer, &k, &v, batch)?;
    Ok(q)
}

/// The heads of a fused QKV row: their width and, for Qwen3, the per-head RMS norms of q and
/// k (`[head_dim]` weights, epsilon) applied before the rotation.
pub struct QkvHeads<'a, B: Backend + ?Sized> {
    pub head_dim: usize,
    pub norms: Option<(&'a B::Tensor, &'a B::Tensor, f64)>,
    /// HunYuan: the norms apply to the rotated heads instead.
    pub norm_after_rope: bool,
    /// Command R+, StableLM 2 12B: the norms are LayerNorms with a weight per head
    /// (`[heads * head_dim]`, [`Backend::head_layer_norm`]), before the rotation.
    pub layer_norm: bool,
}
