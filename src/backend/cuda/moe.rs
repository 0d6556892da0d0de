//! Mixture-of-experts layers routed on the GPU for the tokens of a decode step.
//!
//! The portable path ([`crate::backend::moe::host_routed_experts`]) copies each layer's
//! router logits to the host: a stream synchronisation per layer (48 in Qwen3-30B-A3B), a
//! gather and three launches per used expert (at batch 32 about 110 of Qwen3's 128), and a
//! step no CUDA graph can record. For up to [`MOE_DEVICE_MAX_ROWS`] tokens the layer stays
//! on the device instead, in four launches:
//!
//! 1. `moe_route` (kernels/moe.cu, one block): softmax, top-k and the weights per token,
//!    as `top_k` (expert, weight) pairs sorted by expert; then the pairs grouped by expert
//!    into work items of up to [`GEMV_EXPERT_ROWS`] pairs;
//! 2. `gemv_expert_swiglu` (kernels/gemv.cu): per item, its expert's gate_up GEMV on the
//!    item's tokens, the SwiGLU as epilogue, the expert's weights found through a device
//!    table of expert addresses made at load ([`CudaExpertIndex`]);
//! 3. `gemv_expert`: per item, its expert's down GEMV on the items' activations;
//! 4. `moe_combine`: the weighted sum per token, rounded as HF's loop rounds it, the
//!    shared expert last.
//!
//! An expert's weights are read once per item: once per step while at most four of the
//! step's tokens share it. Prefill chunks keep the host path, whose per-expert GEMMs read
//! each expert once for any number of tokens.

use super::device::CudaDevice;
use super::gemv::{gemv_launch, GEMV_K_MULTIPLE};
use super::launch::{as_i32, elementwise};
use super::tensor::CudaTensor;
use crate::backend::image_ops::Activation;
use crate::backend::moe::{ExpertActivation, ExpertBiases, RouterScoring};
use crate::backend::DType;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

/// Most tokens routed on the device: decode batches (and their recorded buckets) up to 64
/// sequences.
pub const MOE_DEVICE_MAX_ROWS: usize = 64;
/// `MOE_MAX_GROUPS` in kernels/moe.cu (the kept groups are a 32-bit mask).
pub const MOE_MAX_GROUPS: usize = 32;

/// The null pointer `moe_route` reads as "score with a softmax".
const NO_BIAS: u64 = 0;

/// GLM-4.5's router for `moe_route` (`RouterScoring::SigmoidGrouped`): its per-expert
/// correction bias on the device (f32 `[experts]`), its groups and scale; LFM2-MoE's
/// (`RouterScoring::SigmoidInDtype`) the same with one group and `in_dtype`.
pub struct GroupedRouter<'a> {
    pub bias: &'a CudaTensor,
    pub groups: usize,
    pub top_groups: usize,
    pub scale: f32,
    /// Scores and weights rounded to the logits' dtype, as LFM2-MoE's router computes them.
    pub in_dtype: bool,
}

impl<'a> GroupedRouter<'a> {
    /// The router `scoring` describes with `bias` on the device; `None` for a softmax router
    /// (or without a bias).
    pub fn new(scoring: RouterScoring, bias: Option<&'a CudaTensor>) -> Option<Self> {
        match (scoring, bias) {
            (
                RouterScoring::SigmoidGrouped {
                    groups,
                    top_groups,
                    scale,
                },
                Some(bias),
            ) => Some(GroupedRouter {
                bias,
                groups,
                top_groups,
                scale,
                in_dtype: false,
            }),
            (RouterScoring::SigmoidInDtype { scale }, Some(bias)) => Some(GroupedRouter {
                bias,
                groups: 1,
                top_groups: 1,
                scale,
                in_dtype: true,
            }),
            _ => None,
        }
    }

    /// Whether the routing kernel takes this router over `experts` experts.
    pub fn fits(&self, experts: usize) -> bool {
        (1..=MOE_MAX_GROUPS).contains(&self.groups)
            && experts.is_multiple_of(self.groups)
            && (1..=self.groups).contains(&self.top_groups)
    }
}

/// Whether `moe_route` implements this router: the softmax top k, and GLM-4.5 / DeepSeek-V3's
/// grouped sigmoid; DeepSeek-V2's grouped softmax routes on the host.
pub fn router_runs_on_device(scoring: RouterScoring) -> bool {
    match scoring {
        RouterScoring::Softmax
        | RouterScoring::SigmoidGrouped { .. }
        | RouterScoring::SigmoidInDtype { .. } => true,
        RouterScoring::SoftmaxGrouped { .. }
        | RouterScoring::SparseMixer { .. }
        | RouterScoring::SigmoidScaledInput => false,
    }
}

/// `MOE_MAX_EXPERTS` in kernels/moe.cu (16 per lane of a routing warp).
pub const MOE_MAX_EXPERTS: usize = 512;
/// `MOE_MAX_TOP_K` in kernels/moe.cu.
pub const MOE_MAX_TOP_K: usize = 32;
/// `MOE_MAX_PAIRS` in kernels/moe.cu: tokens x top_k of one step.
pub const MOE_MAX_PAIRS: usize = 1024;
/// `MOE_ROUTE_THREADS` in kernels/moe.cu: the one routing block.
pub const MOE_ROUTE_THREADS: u32 = 256;
/// `GEMV_EXPERT_ROWS` in kernels/gemv.cu (= `MOE_ITEM_ROWS` in kernels/moe.cu): pairs per
/// work item of the expert GEMVs.
pub const GEMV_EXPERT_ROWS: usize = 4;

/// The most work items `pairs` routed pairs over `experts` experts can form: each expert's
/// pairs in items of [`GEMV_EXPERT_ROWS`], so at most one part-filled item per used expert.
pub fn max_items(pairs: usize, experts: usize) -> usize {
    pairs.div_ceil(GEMV_EXPERT_ROWS) + experts.min(pairs)
}

/// Whether `tokens` rows of a layer of `experts` experts, `top_k` per token, go through the
/// device path.
pub fn routes_on_device(enabled: bool, tokens: usize, experts: usize, top_k: usize) -> bool {
    enabled
        && (1..=moe_device_rows()).contains(&tokens)
        && route_kernel_fits(experts, top_k)
        && tokens * top_k <= MOE_MAX_PAIRS
}

/// Whether `moe_route` takes a layer of `experts` experts, `top_k` per token.
fn route_kernel_fits(experts: usize, top_k: usize) -> bool {
    (1..=MOE_MAX_EXPERTS).contains(&experts) && (1..=MOE_MAX_TOP_K.min(experts)).contains(&top_k)
}

/// `KILN_MOE_DEVICE=0` (read once) keeps every MoE layer on the portable host path, for
/// A/B runs.
pub fn moe_device_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("KILN_MOE_DEVICE").map_or(true, |v| v.trim() != "0"))
}

/// Most tokens routed on the device: [`MOE_DEVICE_MAX_ROWS`], or fewer with
/// `KILN_MOE_DEVICE_ROWS` (read once), so that checks can send short prompts down the
/// grouped prefill path.
pub fn moe_device_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| device_rows(std::env::var("KILN_MOE_DEVICE_ROWS").ok().as_deref()))
}

/// `KILN_MOE_DEVICE_ROWS`'s value, capped at [`MOE_DEVICE_MAX_ROWS`] (unset or not a
/// number: the cap).
fn device_rows(value: Option<&str>) -> usize {
    value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(MOE_DEVICE_MAX_ROWS, |rows| rows.min(MOE_DEVICE_MAX_ROWS))
}

/// Which of an expert's two GEMVs [`CudaDevice::moe_expert_gemv`] runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExpertGemv {
    /// gate_up, with the activation as its epilogue.
    GateUp(ExpertActivation),
    Down,
}

/// One layer's experts as the device path reads them. `None` inside when they do not fit
/// the kernels (shapes or dtypes that differ between experts, K not a multiple of 8,
/// misaligned weights): the layer then always takes the host path.
pub struct CudaExpertIndex {
    tables: Option<ExpertTables>,
}

struct ExpertTables {
    /// Device address of each expert's `[2 * inter, hidden]` gate_up weight (`[inter,
    /// hidden]`, up rows alone, for ungated experts).
    gate_up: CudaSlice<u64>,
    /// Device address of each expert's `[hidden, inter]` down weight.
    down: CudaSlice<u64>,
    experts: usize,
    hidden: usize,
    /// This rank's intermediate width.
    inter: usize,
    /// Whether gate_up holds gate and up rows (SwiGLU) or up rows alone (ReLU²).
    gated: bool,
    dtype: DType,
    /// gpt-oss: the experts' gate/up biases stacked `[experts, 2 * inter]`, and their down
    /// biases `[experts, hidden]` (on the rank that holds them).
    gate_up_bias: Option<CudaTensor>,
    down_bias: Option<CudaTensor>,
}

impl CudaExpertIndex {
    /// The layer's `(experts, hidden, inter, dtype)` when it can take the device path.
    pub fn shape(&self) -> Option<(usize, usize, usize, DType)> {
        self.tables
            .as_ref()
            .map(|t| (t.experts, t.hidden, t.inter, t.dtype))
    }

    /// gpt-oss's stacked gate/up and down biases, where the index holds them.
    pub fn bias_stacks(&self) -> (Option<&CudaTensor>, Option<&CudaTensor>) {
        match &self.tables {
            Some(t) => (t.gate_up_bias.as_ref(), t.down_bias.as_ref()),
            None => (None, None),
        }
    }

    /// Whether the experts' first projection is laid out for `activation` (gate and up
    /// rows, or up rows alone): the kernels' premise, checked before either path runs.
    pub fn suits(&self, activation: ExpertActivation) -> bool {
        self.tables
            .as_ref()
            .is_some_and(|t| t.gated == activation.is_gated())
    }

    /// Whether the device path computes these experts: it has their biases exactly when
    /// they have biases.
    pub fn serves(&self, biases: &ExpertBiases<'_, CudaTensor>) -> bool {
        self.tables.as_ref().is_some_and(|t| {
            t.gate_up_bias.is_some() == biases.gate_up.is_some()
                && t.down_bias.is_some() == biases.down.is_some()
        })
    }

    /// `(tokens, experts, hidden, inter, dtype)` when `x` (`[tokens, hidden]`) and the
    /// router's `logits` (`[tokens, experts]`) fit this layer's kernels.
    pub fn fits(
        &self,
        x: &CudaTensor,
        logits: &CudaTensor,
    ) -> Option<(usize, usize, usize, usize, DType)> {
        let (experts, hidden, inter, dtype) = self.shape()?;
        let tokens = x.shape().first().copied()?;
        (x.shape() == [tokens, hidden] && x.dtype() == dtype && logits.shape() == [tokens, experts])
            .then_some((tokens, experts, hidden, inter, dtype))
    }
}

/// kernels/gemv.cu's epilogue activations (`GEMV_ACT_*`) of the expert GEMVs.
const GEMV_ACT_NONE: i32 = 0;
const GEMV_ACT_CLAMPED: i32 = 1;
const GEMV_ACT_RELU2: i32 = 2;

/// How `moe_combine` adds each token's expert outputs up.
#[derive(Clone, Copy)]
pub struct Combine<'a> {
    /// Qwen2-MoE's shared expert: its output and gate logits, added last.
    pub shared: Option<(&'a CudaTensor, &'a CudaTensor)>,
    /// In f32, rounded to the dtype once (`MoeRouting::sum_f32`), not per add.
    pub sum_f32: bool,
}

/// The intermediates of one device-routed layer ([`CudaDevice::moe_layer`]): what
/// `moe_route` writes (each pair's expert as i32 and weight as f32, and the work items of
/// [`WorkItems`]), the pairs' activations `act` (`[pairs, inter]`) and expert outputs `y`
/// (`[pairs, hidden]`).
pub struct MoeBuffers<'a> {
    pub ids: &'a mut CudaSlice<u32>,
    pub weights: &'a mut CudaTensor,
    pub item_expert: &'a mut CudaSlice<u32>,
    pub item_rows: &'a mut CudaSlice<u32>,
    pub item_pairs: &'a mut CudaSlice<u32>,
    pub act: &'a mut CudaTensor,
    pub y: &'a mut CudaTensor,
}

/// The expert GEMVs' work items of one step: item `i`'s expert, its number of pairs (0 past
/// the step's items) and its pairs (`GEMV_EXPERT_ROWS` slots each); `count` =
/// [`max_items`] of the step, the GEMVs' grid height.
pub struct WorkItems<'a> {
    pub expert: &'a CudaSlice<u32>,
    pub rows: &'a CudaSlice<u32>,
    pub pairs: &'a CudaSlice<u32>,
    pub count: usize,
}

impl CudaDevice {
    /// The address tables of one layer's experts. The tables point into `gate_up` and
    /// `down`, which the caller keeps alive (and unmoved on the device) as long as the index.
    /// The experts are gated when their first projection has twice the rows of down's
    /// columns, ungated when as many.
    pub fn index_experts(
        &self,
        gate_up: &[CudaTensor],
        down: &[CudaTensor],
    ) -> Result<CudaExpertIndex> {
        let (Some(first), Some(first_down)) = (gate_up.first(), down.first()) else {
            return Ok(CudaExpertIndex { tables: None });
        };
        let (dtype, shape) = (first.dtype(), first.shape().to_vec());
        let (&[rows, hidden], &[_, inter]) = (shape.as_slice(), first_down.shape()) else {
            return Ok(CudaExpertIndex { tables: None });
        };
        let gated = rows == 2 * inter;
        let uniform = gate_up.len() == down.len()
            && gate_up.len() <= MOE_MAX_EXPERTS
            && (gated || rows == inter)
            && gate_up
                .iter()
                .all(|w| w.dtype() == dtype && w.shape() == [rows, hidden])
            && down
                .iter()
                .all(|w| w.dtype() == dtype && w.shape() == [hidden, inter])
            && hidden.is_multiple_of(GEMV_K_MULTIPLE)
            && inter.is_multiple_of(GEMV_K_MULTIPLE)
            && as_i32(rows * hidden, "expert size").is_ok()
            && gate_up.iter().chain(down).all(|w| self.aligned16(w));
        if !uniform {
            return Ok(CudaExpertIndex { tables: None });
        }
        let addresses = |ws: &[CudaTensor]| -> Vec<u64> {
            ws.iter()
                .map(|w| w.data().device_ptr(self.stream()).0)
                .collect()
        };
        Ok(CudaExpertIndex {
            tables: Some(ExpertTables {
                gate_up: self.upload(&addresses(gate_up))?,
                down: self.upload(&addresses(down))?,
                experts: gate_up.len(),
                hidden,
                inter,
                gated,
                dtype,
                gate_up_bias: None,
                down_bias: None,
            }),
        })
    }

    /// `index` with gpt-oss's expert biases stacked beside it (each expert's `[n]` bias as
    /// row e of one `[experts, n]` tensor, which the expert GEMVs index by expert). Biases
    /// that do not fit leave the layer on the host path.
    pub fn index_expert_biases(
        &self,
        mut index: CudaExpertIndex,
        biases: ExpertBiases<'_, CudaTensor>,
    ) -> Result<CudaExpertIndex> {
        let Some(t) = index.tables.as_mut() else {
            return Ok(index);
        };
        let stack = |parts: &[CudaTensor], width: usize| -> Result<Option<CudaTensor>> {
            let fits = parts.len() == t.experts
                && parts
                    .iter()
                    .all(|b| b.shape() == [width] && b.dtype() == t.dtype);
            if !fits {
                return Ok(None);
            }
            let mut host = Vec::with_capacity(t.experts * width);
            for b in parts {
                host.extend(b.to_f32(self)?);
            }
            Ok(Some(CudaTensor::from_f32(
                self,
                t.dtype,
                &[t.experts, width],
                &host,
            )?))
        };
        if let Some(parts) = biases.gate_up {
            t.gate_up_bias = stack(parts, 2 * t.inter)?;
        }
        if let Some(parts) = biases.down {
            t.down_bias = stack(parts, t.hidden)?;
        }
        Ok(index)
    }

    /// `moe_route`: `top_k` (expert, weight) pairs per row of `logits` (`[tokens, experts]`)
    /// into `out.ids` (as i32) and `out.weights` (f32 `[tokens * top_k]`), sorted by expert,
    /// and the pairs grouped into the expert GEMVs' work items (`out.item_*`). Scored by a
    /// softmax, or by `grouped`'s sigmoid router where given.
    pub fn moe_route(
        &self,
        logits: &CudaTensor,
        (top_k, normalize): (usize, bool),
        grouped: Option<&GroupedRouter<'_>>,
        out: &mut MoeBuffers<'_>,
    ) -> Result<()> {
        let &[tokens, experts] = logits.shape() else {
            bail!(
                "moe_route: logits must be [tokens, experts], got {:?}",
                logits.shape()
            );
        };
        let pairs = tokens * top_k;
        ensure!(
            route_kernel_fits(experts, top_k) && pairs <= MOE_MAX_PAIRS,
            "moe_route: {experts} experts, top {top_k}, {pairs} pairs (the kernel takes up to \
             {MOE_MAX_EXPERTS} experts, top {MOE_MAX_TOP_K} and {MOE_MAX_PAIRS} pairs)"
        );
        let items = max_items(pairs, experts);
        ensure!(
            out.ids.len() >= pairs
                && out.weights.numel() >= pairs
                && out.item_expert.len() >= items
                && out.item_rows.len() >= items
                && out.item_pairs.len() >= items * GEMV_EXPERT_ROWS,
            "moe_route: outputs too small for {tokens} x {top_k} pairs"
        );
        out.weights.expect_dtype(DType::F32, "moe_route weights")?;
        if let Some(g) = grouped {
            g.bias
                .expect_shape(&[experts], "moe_route correction bias")?;
            g.bias
                .expect_dtype(DType::F32, "moe_route correction bias")?;
            ensure!(
                g.fits(experts),
                "moe_route: {} groups (top {}) of {experts} experts (the kernel takes up to \
                 {MOE_MAX_GROUPS} equal groups)",
                g.groups,
                g.top_groups
            );
        }
        if tokens == 0 {
            return Ok(());
        }
        let ints = [tokens, experts, top_k, usize::from(normalize), items]
            .map(|v| as_i32(v, "moe_route size"))
            .into_iter()
            .collect::<Result<Vec<i32>>>()?;
        let f = self.kernels().get("moe_route", logits.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(logits.data())
            .arg(&mut *out.ids)
            .arg(out.weights.data_mut())
            .arg(&mut *out.item_expert)
            .arg(&mut *out.item_rows)
            .arg(&mut *out.item_pairs);
        for v in &ints {
            args.arg(v);
        }
        // The grouped router's bias (null: softmax), groups, kept groups and scale.
        let grouped_ints = grouped
            .map(|g| [g.groups, g.top_groups])
            .unwrap_or([1, 1])
            .map(|v| as_i32(v, "moe_route groups"))
            .into_iter()
            .collect::<Result<Vec<i32>>>()?;
        let scale = grouped.map_or(1.0f32, |g| g.scale);
        let in_dtype = i32::from(grouped.is_some_and(|g| g.in_dtype));
        match grouped {
            Some(g) => args.arg(g.bias.data()),
            None => args.arg(&NO_BIAS),
        };
        for v in &grouped_ints {
            args.arg(v);
        }
        args.arg(&scale).arg(&in_dtype);
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (MOE_ROUTE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches kernels/moe.cu; sizes checked above.
        unsafe { args.launch(config) }.context("moe_route launch")?;
        Ok(())
    }

    /// The routed experts' weighted sum of `x` (`[tokens, hidden]`) into `out`, given the
    /// router's `logits`: `moe_route`, the two expert GEMVs over its work items, and
    /// `moe_combine` (with the shared expert's output and gate logits when given).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_layer(
        &self,
        index: &CudaExpertIndex,
        x: &CudaTensor,
        logits: &CudaTensor,
        (top_k, normalize, grouped): (usize, bool, Option<&GroupedRouter<'_>>),
        activation: ExpertActivation,
        combine: Combine<'_>,
        buffers: &mut MoeBuffers<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let experts = logits.shape().get(1).copied().unwrap_or(0);
        let pairs = buffers.act.shape().first().copied().unwrap_or(0);
        self.moe_route(logits, (top_k, normalize), grouped, buffers)?;
        let items = WorkItems {
            expert: buffers.item_expert,
            rows: buffers.item_rows,
            pairs: buffers.item_pairs,
            count: max_items(pairs, experts),
        };
        let gate_up = ExpertGemv::GateUp(activation);
        self.moe_expert_gemv(index, gate_up, x, &items, top_k, buffers.act)?;
        self.moe_expert_gemv(
            index,
            ExpertGemv::Down,
            buffers.act,
            &items,
            top_k,
            buffers.y,
        )?;
        self.moe_combine(buffers.y, buffers.weights, top_k, combine, None, out)
    }

    /// The expert GEMVs over the work items `moe_route` made for `pairs` pairs of top
    /// `top_k`: [`ExpertGemv::GateUp`] gives `out[p] = act(g, u)` of `x[p / top_k]` through
    /// expert p's gate_up (`out` `[pairs, inter]`); [`ExpertGemv::Down`] `out[p] = down_e
    /// act[p]` (`x` the `[pairs, inter]` activations, `out` `[pairs, hidden]`). The experts'
    /// biases join where the index has them.
    pub fn moe_expert_gemv(
        &self,
        index: &CudaExpertIndex,
        gemv: ExpertGemv,
        x: &CudaTensor,
        items: &WorkItems<'_>,
        top_k: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let Some(t) = &index.tables else {
            bail!("moe expert gemv: this layer's experts do not fit the device path");
        };
        let &[pairs, width] = out.shape() else {
            bail!("moe expert gemv: out must be 2-d, got {:?}", out.shape());
        };
        let first = matches!(gemv, ExpertGemv::GateUp(_));
        let (n, k, x_rows, x_div, table, op) = match gemv {
            ExpertGemv::GateUp(activation) => {
                ensure!(
                    activation.is_gated() == t.gated,
                    "moe expert gemv: {activation:?} on experts laid out for the other kind"
                );
                let op = if t.gated {
                    "gemv_expert_swiglu"
                } else {
                    "gemv_expert"
                };
                let rows = activation.first_rows(t.inter);
                (rows, t.hidden, pairs / top_k.max(1), top_k, &t.gate_up, op)
            }
            ExpertGemv::Down => (t.hidden, t.inter, pairs, 1, &t.down, "gemv_expert"),
        };
        let out_width = if first { t.inter } else { t.hidden };
        ensure!(
            top_k >= 1 && pairs.is_multiple_of(top_k) && width == out_width,
            "moe expert gemv: out {:?} for {} pairs of top {top_k} and width {out_width}",
            out.shape(),
            pairs
        );
        x.expect_shape(&[x_rows, k], "moe expert gemv input")?;
        ensure!(
            x.dtype() == t.dtype && out.dtype() == t.dtype && self.aligned16(x),
            "moe expert gemv: x / out must be aligned {} tensors",
            t.dtype
        );
        let count = max_items(pairs, t.experts);
        ensure!(
            items.count == count
                && items.expert.len() >= count
                && items.rows.len() >= count
                && items.pairs.len() >= count * GEMV_EXPERT_ROWS,
            "moe expert gemv: work items for another step shape"
        );
        if pairs == 0 {
            return Ok(());
        }
        let (x_div_i, n_i, k_i) = (as_i32(x_div, "top_k")?, as_i32(n, "N")?, as_i32(k, "K")?);
        let bias = if first { &t.gate_up_bias } else { &t.down_bias };
        let has_bias = i32::from(bias.is_some());
        let (act_mode, limit, alpha) = match gemv {
            ExpertGemv::GateUp(ExpertActivation::ClampedSwiGlu { limit, alpha }) => {
                (GEMV_ACT_CLAMPED, limit, alpha)
            }
            ExpertGemv::GateUp(ExpertActivation::Relu2) => (GEMV_ACT_RELU2, 0.0, 0.0),
            _ => (GEMV_ACT_NONE, 0.0f32, 0.0f32),
        };
        let items_y = u32::try_from(count)
            .ok()
            .filter(|&c| c <= 65_535)
            .context("moe expert gemv: more than 65535 work items")?;
        let mut config = gemv_launch(n)?;
        config.grid_dim.1 = items_y;
        let f = self.kernels().get(op, t.dtype)?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(x.data())
            .arg(table)
            .arg(items.expert)
            .arg(items.rows)
            .arg(items.pairs)
            .arg(&x_div_i)
            .arg(&n_i)
            .arg(&k_i);
        // Without biases the kernel never reads the pointer; x stands in.
        match bias {
            Some(b) => args.arg(b.data()),
            None => args.arg(x.data()),
        };
        args.arg(&has_bias).arg(&act_mode).arg(&limit).arg(&alpha);
        // SAFETY: matches kernels/gemv.cu's expert kernels: the table holds `experts`
        // addresses of [n, k] weights of this dtype (checked at indexing); the items come
        // from moe_route for this step's shape (experts below `experts`, pairs below
        // `pairs`, rows at most GEMV_EXPERT_ROWS); x / out shapes and alignment checked.
        unsafe { args.launch(config) }.context("moe expert gemv launch")?;
        Ok(())
    }

    /// `moe_combine`: `out[t] = sum_s y[row(t * top_k + s)] * weights[..]` (rounded per
    /// add, or in f32 and rounded once), then the shared expert's `output[t] *
    /// sigmoid(gate_logits[t])` when given; `row(p)` is `p`, or `pair_rows[p]` when given
    /// (expert outputs grouped by expert).
    pub fn moe_combine(
        &self,
        y: &CudaTensor,
        weights: &CudaTensor,
        top_k: usize,
        Combine { shared, sum_f32 }: Combine<'_>,
        pair_rows: Option<&CudaSlice<u32>>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let &[tokens, hidden] = out.shape() else {
            bail!(
                "moe_combine: out must be [tokens, hidden], got {:?}",
                out.shape()
            );
        };
        y.expect_shape(&[tokens * top_k, hidden], "moe_combine expert outputs")?;
        weights.expect_dtype(DType::F32, "moe_combine weights")?;
        ensure!(
            weights.numel() >= tokens * top_k && y.dtype() == out.dtype(),
            "moe_combine: weights or dtypes do not fit"
        );
        if let Some((output, gate)) = shared {
            output.expect_shape(&[tokens, hidden], "moe_combine shared expert")?;
            gate.expect_shape(&[tokens, 1], "moe_combine shared gate")?;
            ensure!(
                output.dtype() == out.dtype() && gate.dtype() == out.dtype(),
                "moe_combine: the shared expert's dtype differs"
            );
        }
        ensure!(
            pair_rows.is_none_or(|r| r.len() >= tokens * top_k),
            "moe_combine: fewer pair rows than pairs"
        );
        if tokens * hidden == 0 {
            return Ok(());
        }
        let (rows_i, hidden_i, top_k_i) = (
            as_i32(tokens, "tokens")?,
            as_i32(hidden, "hidden")?,
            as_i32(top_k, "top_k")?,
        );
        let has_shared = i32::from(shared.is_some());
        // Without a shared expert the kernel never reads those pointers; y stands in.
        let (shared_out, shared_gate) =
            shared.map_or((y.data(), y.data()), |(o, g)| (o.data(), g.data()));
        let f = self.kernels().get("moe_combine", out.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(y.data())
            .arg(weights.data())
            .arg(&rows_i)
            .arg(&hidden_i)
            .arg(&top_k_i)
            .arg(shared_out)
            .arg(shared_gate)
            .arg(&has_shared);
        // Without a row map the kernel never reads it; the weights stand in.
        let has_pair_rows = i32::from(pair_rows.is_some());
        match pair_rows {
            Some(rows) => args.arg(rows),
            None => args.arg(weights.data()),
        };
        let sum_f32 = i32::from(sum_f32);
        args.arg(&has_pair_rows).arg(&sum_f32);
        // SAFETY: matches kernels/moe.cu; shapes checked above; a row map holds rows of y
        // (the host built it from the same routes, `group_routes`).
        unsafe { args.launch(elementwise(tokens * hidden)) }.context("moe_combine launch")?;
        Ok(())
    }
}

/// The host path's routes laid out for [`CudaDevice::moe_layer_grouped`]: the routed pairs
/// grouped by expert into the rows of one buffer (expert `e`'s rows `expert_rows[..]`, in
/// expert order), the token each grouped row reads, and per pair `p = t * top_k + s` (a
/// token's pairs in expert order, as the combine adds them) its grouped row and weight.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedRoutes {
    pub expert_rows: Vec<(usize, std::ops::Range<usize>)>,
    pub row_tokens: Vec<u32>,
    pub pair_rows: Vec<u32>,
    pub pair_weights: Vec<f32>,
}

impl GroupedRoutes {
    /// Llama 4's router: each grouped row's scale (its pair's weight, rounded to `dtype` as
    /// transformers rounds the router's scores), and the pairs' weights made ones, so the
    /// experts see scaled inputs and their outputs add up as they are.
    pub fn move_weights_to_inputs(&mut self, dtype: DType) -> Vec<f32> {
        let mut scales = vec![0f32; self.row_tokens.len()];
        for (&row, w) in self.pair_rows.iter().zip(self.pair_weights.iter_mut()) {
            scales[row as usize] = dtype.round(*w);
            *w = 1.0;
        }
        scales
    }

    /// Each grouped row's expert (rows are grouped by expert, in `expert_rows`).
    pub fn row_experts(&self) -> Vec<u32> {
        let mut experts = vec![0u32; self.row_tokens.len()];
        for (e, rows) in &self.expert_rows {
            experts[rows.clone()].fill(*e as u32);
        }
        experts
    }
}

/// Groups [`crate::backend::moe::route`]'s per-expert rows and weights (`tokens` tokens,
/// `top_k` experts each).
pub fn group_routes(
    routes: &[(Vec<usize>, Vec<f32>)],
    tokens: usize,
    top_k: usize,
) -> Result<GroupedRoutes> {
    let pairs = tokens * top_k;
    let mut g = GroupedRoutes {
        expert_rows: Vec::new(),
        row_tokens: Vec::with_capacity(pairs),
        pair_rows: vec![0; pairs],
        pair_weights: vec![0.0; pairs],
    };
    let mut slots = vec![0usize; tokens];
    for (e, (rows, weights)) in routes.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let start = g.row_tokens.len();
        for (&t, &w) in rows.iter().zip(weights) {
            ensure!(
                t < tokens && slots[t] < top_k,
                "moe routes: token {t} routed more than {top_k} times or out of {tokens}"
            );
            let p = t * top_k + slots[t];
            slots[t] += 1;
            g.pair_rows[p] = u32::try_from(g.row_tokens.len())?;
            g.pair_weights[p] = w;
            g.row_tokens.push(u32::try_from(t)?);
        }
        g.expert_rows.push((e, start..g.row_tokens.len()));
    }
    ensure!(
        slots.iter().all(|&s| s == top_k),
        "moe routes: a token is routed to fewer than {top_k} experts"
    );
    Ok(g)
}

/// The buffers of one host-routed grouped layer ([`CudaDevice::moe_layer_grouped`]): the
/// uploaded routes (`GroupedRoutes::row_tokens`, `pair_rows`, `pair_weights` as f32
/// `[pairs]`) and the grouped rows' inputs `x` (`[pairs, hidden]`), gate/up outputs
/// (`[pairs, 2 * inter]`; `[pairs, inter]` for ungated experts), activations (`[pairs, inter]`) and expert outputs `y`
/// (`[pairs, hidden]`).
pub struct GroupedBuffers<'a> {
    pub row_tokens: &'a CudaSlice<u32>,
    /// gpt-oss: each grouped row's expert, for its biases (`None`: no biases).
    pub row_experts: Option<&'a CudaSlice<u32>>,
    pub pair_rows: &'a CudaSlice<u32>,
    pub weights: &'a CudaTensor,
    /// Llama 4: each grouped row's router weight (f32), which scales the row before the
    /// experts (the combine's `weights` are then ones).
    pub row_scales: Option<&'a CudaTensor>,
    pub x: &'a mut CudaTensor,
    pub gate_up: &'a mut CudaTensor,
    pub act: &'a mut CudaTensor,
    pub y: &'a mut CudaTensor,
}

impl CudaDevice {
    /// A MoE layer routed on the host (prefill and large batches): one gather of the
    /// routed rows grouped by expert, each expert's gate_up and down GEMMs on its block of
    /// rows, one activation over all of them, and `moe_combine` through the pair-row map, so
    /// nothing but the router's logits leaves the device. gpt-oss's biases (the index's
    /// stacks) are gathered into the GEMMs' outputs first, by `b.row_experts`, and the GEMMs
    /// add to them.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_layer_grouped(
        &self,
        (gate_up, down): (&[CudaTensor], &[CudaTensor]),
        (index, activation): (&CudaExpertIndex, ExpertActivation),
        x: &CudaTensor,
        routes: &GroupedRoutes,
        top_k: usize,
        combine: Combine<'_>,
        b: &mut GroupedBuffers<'_>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let pairs = routes.row_tokens.len();
        ensure!(
            routes.pair_rows.len() == pairs && b.row_tokens.len() >= pairs,
            "moe grouped layer: routes and buffers for different pair counts"
        );
        if pairs == 0 {
            return Ok(());
        }
        self.gather_rows(x, b.row_tokens, pairs, b.x)?;
        if let Some(scales) = b.row_scales {
            self.scale_rows(b.x, scales)?;
        }
        let (gate_up_bias, down_bias) = index.bias_stacks();
        // Each grouped row's bias, where the GEMM then adds its product.
        let preload = |bias: Option<&CudaTensor>, out: &mut CudaTensor| -> Result<bool> {
            match (bias, b.row_experts) {
                (Some(bias), Some(experts)) => {
                    self.gather_rows(bias, experts, pairs, out)?;
                    Ok(true)
                }
                (None, _) => Ok(false),
                (Some(_), None) => bail!("moe grouped layer: biases without the rows' experts"),
            }
        };
        let with_bias = preload(gate_up_bias, b.gate_up)?;
        let blas = self.blas();
        for (e, rows) in &routes.expert_rows {
            let w = gate_up
                .get(*e)
                .context("moe grouped layer: no such expert")?;
            let at = rows.start;
            blas.linear_row_block(b.x, at, w, b.gate_up, at, rows.len(), with_bias)?;
        }
        match activation {
            ExpertActivation::SwiGlu => self.silu_mul(b.gate_up, b.act)?,
            ExpertActivation::ClampedSwiGlu { limit, alpha } => {
                self.clamped_swiglu(b.gate_up, (limit, alpha), b.act)?
            }
            ExpertActivation::Relu2 => self.activation_into(b.gate_up, Activation::Relu2, b.act)?,
        }
        let with_bias = preload(down_bias, b.y)?;
        for (e, rows) in &routes.expert_rows {
            let w = down.get(*e).context("moe grouped layer: no such expert")?;
            let at = rows.start;
            blas.linear_row_block(b.act, at, w, b.y, at, rows.len(), with_bias)?;
        }
        self.moe_combine(b.y, b.weights, top_k, combine, Some(b.pair_rows), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_batches_of_real_moe_models_route_on_the_device() {
        // Qwen3-30B-A3B (128 experts, top 8), Mixtral (8, top 2), Qwen1.5-MoE (60, top 4),
        // DeepSeek-V3-like (256, top 8).
        for (experts, top_k) in [(128, 8), (8, 2), (60, 4), (256, 8)] {
            for tokens in 1..=MOE_DEVICE_MAX_ROWS {
                assert!(routes_on_device(true, tokens, experts, top_k));
            }
            assert!(!routes_on_device(
                true,
                MOE_DEVICE_MAX_ROWS + 1,
                experts,
                top_k
            ));
            assert!(!routes_on_device(false, 1, experts, top_k));
        }
    }

    #[test]
    fn only_routers_the_routing_kernel_implements_are_recorded() {
        // DeepSeek-V2's grouped softmax routes on the host: its decode steps must not be
        // recorded (an H200 run replayed such a recording into freed host memory).
        let (groups, top_groups, scale) = (8, 3, 16.0);
        assert!(router_runs_on_device(RouterScoring::Softmax));
        let sigmoid = RouterScoring::SigmoidGrouped {
            groups,
            top_groups,
            scale,
        };
        assert!(router_runs_on_device(sigmoid));
        assert!(router_runs_on_device(RouterScoring::SigmoidInDtype {
            scale
        }));
        assert!(!router_runs_on_device(RouterScoring::SoftmaxGrouped {
            groups,
            top_groups,
            scale
        }));
    }

    #[test]
    fn shapes_past_the_kernels_limits_stay_on_the_host() {
        assert!(!routes_on_device(true, 0, 8, 2));
        assert!(!routes_on_device(true, 1, MOE_MAX_EXPERTS + 1, 8));
        assert!(!routes_on_device(true, 1, 64, MOE_MAX_TOP_K + 1));
        assert!(!routes_on_device(true, 1, 4, 5));
        assert!(!routes_on_device(true, 1, 4, 0));
        // 64 tokens of top 32 are 2048 pairs: past the routing block's pair buffer.
        assert!(!routes_on_device(true, 64, 64, 32));
        assert!(routes_on_device(true, 32, 64, 32));
    }

    #[test]
    fn kernel_constants_match_the_host() {
        let src = include_str!("../../../kernels/moe.cu");
        for (name, value) in [
            ("MOE_ROUTE_THREADS", MOE_ROUTE_THREADS as usize),
            ("MOE_MAX_EXPERTS", MOE_MAX_EXPERTS),
            ("MOE_MAX_TOP_K", MOE_MAX_TOP_K),
            ("MOE_MAX_PAIRS", MOE_MAX_PAIRS),
            ("MOE_ITEM_ROWS", GEMV_EXPERT_ROWS),
        ] {
            assert!(src.contains(&format!("#define {name} {value}")), "{name}");
        }
        let gemv = include_str!("../../../kernels/gemv.cu");
        assert!(gemv.contains(&format!("#define GEMV_EXPERT_ROWS {GEMV_EXPERT_ROWS}\n")));
    }

    #[test]
    fn grouped_routes_put_each_pair_on_its_experts_row() {
        use crate::backend::moe::{route, RouteRule};
        // 3 tokens, 4 experts, top 2.
        let logits = [
            0.0, 3.0, 1.0, -1.0, // token 0: experts 1, 2
            2.0, 0.0, 0.0, 2.5, // token 1: experts 3, 0
            0.0, 1.0, 0.0, 0.5, // token 2: experts 1, 3
        ];
        let routes = route(&logits, 4, &RouteRule::softmax(2, true));
        let g = group_routes(&routes, 3, 2).unwrap();
        // Expert order: 0 {t1}, 1 {t0, t2}, 2 {t0}, 3 {t1, t2}.
        assert_eq!(g.row_tokens, vec![1, 0, 2, 0, 1, 2]);
        assert_eq!(
            g.expert_rows,
            vec![(0, 0..1), (1, 1..3), (2, 3..4), (3, 4..6)]
        );
        // Each row's expert (gpt-oss's biases are gathered by it).
        assert_eq!(g.row_experts(), vec![0, 1, 1, 2, 3, 3]);
        // Token 0's pairs in expert order (1, 2), token 1's (0, 3), token 2's (1, 3).
        assert_eq!(g.pair_rows, vec![1, 3, 0, 4, 2, 5]);
        for (p, &row) in g.pair_rows.iter().enumerate() {
            let (t, e) = (
                p / 2,
                g.expert_rows
                    .iter()
                    .find(|(_, r)| r.contains(&(row as usize)))
                    .unwrap()
                    .0,
            );
            assert_eq!(g.row_tokens[row as usize] as usize, t);
            let (rows, weights) = &routes[e];
            let at = rows.iter().position(|&r| r == t).unwrap();
            assert_eq!(g.pair_weights[p], weights[at]);
        }
        // Routes that do not give every token top_k experts are refused.
        assert!(group_routes(&routes, 3, 3).is_err());
    }

    /// Llama 4: each grouped row takes its pair's weight (rounded to the dtype) as the scale
    /// of its input; the combine then adds outputs with weight one.
    #[test]
    fn weights_move_to_the_rows_they_scale() {
        use crate::backend::moe::{route, RouteRule};
        let logits = [0.0f32, 3.0, 1.0, -1.0, 2.0, 0.0, 0.0, 2.5];
        let routes = route(&logits, 4, &RouteRule::sigmoid_scaled_input(1));
        let mut g = group_routes(&routes, 2, 1).unwrap();
        // Token 0 takes expert 1 (row 0), token 1 expert 3 (row 1).
        assert_eq!(g.row_tokens, vec![0, 1]);
        let scales = g.move_weights_to_inputs(DType::BF16);
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert_eq!(
            scales,
            vec![
                DType::BF16.round(sigmoid(3.0)),
                DType::BF16.round(sigmoid(2.5))
            ]
        );
        assert_eq!(g.pair_weights, vec![1.0, 1.0]);
    }

    #[test]
    fn the_row_limit_can_only_go_down() {
        assert_eq!(device_rows(None), MOE_DEVICE_MAX_ROWS);
        assert_eq!(device_rows(Some("1")), 1);
        assert_eq!(device_rows(Some(" 0 ")), 0);
        assert_eq!(device_rows(Some("1000")), MOE_DEVICE_MAX_ROWS);
        assert_eq!(device_rows(Some("many")), MOE_DEVICE_MAX_ROWS);
    }

    #[test]
    fn work_items_cover_any_grouping_of_the_pairs() {
        // Every pair on its own expert: one item each.
        assert!(max_items(8, 128) >= 8);
        // All pairs on one expert: pairs / 4 items.
        assert!(max_items(64, 1) >= 16);
        // The worst mix: one part-filled item per used expert plus full ones.
        for (pairs, experts) in [(512, 128), (64, 8), (1024, 512), (3, 2)] {
            let used = experts.min(pairs);
            let worst = (pairs - used) / GEMV_EXPERT_ROWS + used;
            assert!(max_items(pairs, experts) >= worst, "{pairs} {experts}");
        }
    }
}
