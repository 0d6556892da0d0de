//! Mixture-of-experts MLPs (Qwen3-MoE, Qwen2-MoE, Mixtral, gpt-oss, GLM-4.5, Nemotron 3): a
//! router scores the experts for each token, the token goes through its `top_k` best, and
//! their outputs are summed with the router's weights (plus, in Qwen2-MoE, GLM-4.5 and
//! Nemotron 3, a shared expert every token goes through: weighted by a sigmoid gate in
//! Qwen2-MoE, added as it is in the others). Nemotron 3's experts are ungated (ReLU² of
//! the up projection) and may run in a latent space projected down from the hidden state
//! and back up around them.
//!
//! The layer computes the router's logits (and the shared expert) through the ordinary ops
//! and hands the routed part to [`Backend::moe_experts`]: routed on the host on every
//! backend, on the device for the few tokens of a decode step where the backend can
//! (CUDA: no round trip, and such steps can be recorded as graphs). Under tensor
//! parallelism every rank holds a slice of every expert's intermediate dimension, like a
//! dense MLP, and routes identically (its input is the all-reduced hidden state).

use super::config::{Architecture, ExpertActivation, ModelConfig, MoeConfig};
use super::llama::{cols_part, load_stacked, rows_part};
use super::weights::WeightSource;
use crate::backend::moe::{ExpertBiases, ExpertSet, MoeRouting, RouterScoring, SharedExpertOutput};
use crate::backend::{Backend, DType};
use crate::parallel::ShardLayout;
use anyhow::{Context, Result};

struct Expert<B: Backend> {
    /// This rank's gate and up rows, stacked: `[2 * intermediate, hidden]` (an ungated
    /// expert's up rows alone).
    gate_up: B::Tensor,
    down: B::Tensor,
}

impl<B: Backend> Expert<B> {
    /// The expert whose gate, up and down weights are `names`, `(hidden, intermediate)`
    /// in size: this rank's intermediate columns `cols` of it. An ungated expert
    /// (`gated` false: Nemotron 3's) has no gate weight; its name goes unread.
    fn load(
        be: &B,
        src: &dyn WeightSource,
        ([gate, up, down], gated): ([String; 3], bool),
        (h, inter): (usize, usize),
        cols: std::ops::Range<usize>,
        dtype: DType,
    ) -> Result<Self> {
        let up = rows_part(up, vec![inter, h], cols.clone());
        let gate_up = if gated {
            load_stacked(
                be,
                src,
                &[rows_part(gate, vec![inter, h], cols.clone()), up],
                dtype,
            )?
        } else {
            load_stacked(be, src, &[up], dtype)?
        };
        Ok(Expert {
            gate_up,
            down: load_stacked(be, src, &[cols_part(down, vec![h, inter], cols)], dtype)?,
        })
    }
}

pub struct SparseMlp<B: Backend> {
    /// `[experts, hidden]`, whole on every rank.
    router: B::Tensor,
    /// gpt-oss: the router's bias, and each expert's gate/up and down biases (the down ones
    /// on rank 0 only, as the ranks' partial sums are all-reduced).
    router_bias: Option<B::Tensor>,
    gate_up_bias: Option<Vec<B::Tensor>>,
    down_bias: Option<Vec<B::Tensor>>,
    activation: ExpertActivation,
    /// Expert `e`'s gate and up rows (this rank's), stacked: `[2 * intermediate, hidden]`.
    gate_up: Vec<B::Tensor>,
    /// Expert `e`'s down projection (this rank's columns).
    down: Vec<B::Tensor>,
    /// What the backend prepared from them (`Backend::index_experts`).
    index: B::ExpertIndex,
    top_k: usize,
    normalize_top_k: bool,
    scoring: RouterScoring,
    /// Router logits in f32 (`MoeConfig::router_f32`).
    router_f32: bool,
    /// The weighted sum in f32, rounded once (`MoeConfig::sum_f32`).
    sum_f32: bool,
    /// GLM-4.5: the router's per-expert correction bias (it only steers choices), on the host
    /// and as an f32 tensor for device routing.
    correction_bias: Option<(Vec<f32>, B::Tensor)>,
    /// An expert for every token (Qwen2-MoE, GLM-4.5), and in Qwen2-MoE its gate
    /// (`[1, hidden]`, whole on every rank): the expert's output is scaled by
    /// `sigmoid(gate . x)` and added last. Without a gate it is added as it is.
    shared: Option<SharedExpert<B>>,
    /// Nemotron 3's latent projections (`MoeConfig::latent_size`): the routed experts run
    /// on `down(x)` (`[latent, hidden]`, whole on every rank) and their weighted sum goes
    /// back through `up` (`[hidden, latent]`; linear, so each rank may lift its partial
    /// sum before the all-reduce).
    latent: Option<Latent<B>>,
}

/// The projections into and out of the routed experts' latent space.
struct Latent<B: Backend> {
    down: B::Tensor,
    up: B::Tensor,
}

/// A shared expert and, in Qwen2-MoE, its gate (`[1, hidden]`).
type SharedExpert<B> = (Expert<B>, Option<<B as Backend>::Tensor>);

/// Checkpoint names of layer `prefix`'s router and of expert `e`'s gate, up and down
/// projections.
fn names(arch: Architecture, prefix: &str, e: usize) -> (String, [String; 3]) {
    match arch {
        Architecture::Mixtral | Architecture::PhiMoe => {
            let moe = format!("{prefix}.block_sparse_moe");
            let w = |n: &str| format!("{moe}.experts.{e}.{n}.weight");
            (format!("{moe}.gate.weight"), [w("w1"), w("w3"), w("w2")])
        }
        // LFM2-MoE: Mixtral's expert names under the MLP's.
        Architecture::Lfm2 => {
            let w = |n: &str| format!("{prefix}.mlp.experts.{e}.{n}.weight");
            (
                format!("{prefix}.mlp.gate.weight"),
                [w("w1"), w("w3"), w("w2")],
            )
        }
        _ => {
            let w = |n: &str| format!("{prefix}.mlp.experts.{e}.{n}_proj.weight");
            (
                format!("{prefix}.mlp.gate.weight"),
                [w("gate"), w("up"), w("down")],
            )
        }
    }
}

impl<B: Backend> SparseMlp<B> {
    /// Layer `prefix`'s router and this rank's slice of each expert.
    pub fn load(
        be: &B,
        src: &dyn WeightSource,
        config: &ModelConfig,
        moe: &MoeConfig,
        prefix: &str,
        layout: &ShardLayout,
        dtype: DType,
    ) -> Result<Self> {
        if config.architecture == Architecture::GptOss {
            return super::moe_fused::load_gpt_oss(be, src, config, moe, prefix, layout, dtype);
        }
        if config.architecture == Architecture::GraniteMoe {
            return super::moe_fused::load_granite_moe(be, src, config, moe, prefix, layout, dtype);
        }
        // Granite MoE-shared and Granite 4.0's MoE hybrids: Granite MoE's experts beside the
        // shared MLP.
        if matches!(
            config.architecture,
            Architecture::GraniteMoeShared | Architecture::GraniteMoeHybrid
        ) {
            let mut mlp =
                super::moe_fused::load_granite_moe(be, src, config, moe, prefix, layout, dtype)?;
            mlp.shared = Self::load_granite_shared(be, src, config, moe, prefix, layout, dtype)?;
            return Ok(mlp);
        }
        let shared = Self::load_shared(be, src, config, moe, prefix, layout, dtype)?;
        if moe.stacked {
            // Qwen3-VL-MoE's experts, and Llama 4's (with its shared expert).
            let mut mlp =
                super::moe_fused::load_qwen3_vl_moe(be, src, config, moe, prefix, layout, dtype)?;
            mlp.shared = shared;
            return Ok(mlp);
        }
        let (h, inter) = (config.hidden_size, moe.expert_intermediate_size);
        let (router_name, _) = names(config.architecture, prefix, 0);
        let router_dtype = if moe.router_weight_f32 {
            DType::F32
        } else {
            dtype
        };
        let router =
            super::llama::load(be, src, &router_name, &[moe.num_experts, h], router_dtype)?;
        let latent = match moe.latent_size {
            None => None,
            Some(l) => {
                let proj = |n: &str, shape: &[usize]| {
                    let name = format!("{prefix}.mlp.{n}_latent_proj.weight");
                    super::llama::load(be, src, &name, shape, dtype)
                };
                Some(Latent {
                    down: proj("fc1", &[l, h])?,
                    up: proj("fc2", &[h, l])?,
                })
            }
        };
        // The routed experts' input width: the latent space's where there is one.
        let expert_in = moe.latent_size.unwrap_or(h);
        let gated = moe.activation.is_gated();
        // The correction bias, where the router has one: GLM-4.5's / DeepSeek-V3's beside the
        // router, ERNIE 4.5's in `moe_statics` (one group's row).
        let bias_at = match (moe.scoring, config.architecture) {
            // LFM2-MoE's `expert_bias` (none with `use_expert_bias` false: no correction).
            (_, Architecture::Lfm2) => Some(format!("{prefix}.mlp.expert_bias"))
                .filter(|name| src.contains(name))
                .map(|name| (name, vec![moe.num_experts])),
            (RouterScoring::SigmoidGrouped { .. }, _) => Some((
                format!("{prefix}.mlp.gate.e_score_correction_bias"),
                vec![moe.num_experts],
            )),
            (_, Architecture::Ernie45Moe) => Some((
                format!("{prefix}.mlp.moe_statics.e_score_correction_bias"),
                vec![1, moe.num_experts],
            )),
            _ => None,
        };
        let correction_bias = match bias_at {
            None => None,
            Some((name, shape)) => {
                // Read once: kept on the host for host routing, uploaded for device routing.
                let bias = src
                    .tensor(&name, &shape, DType::F32)?
                    .reshape(moe.num_experts)?;
                let host = bias.to_vec1::<f32>()?;
                Some((host, be.upload(bias)?))
            }
        };
        let (gate_up, down): (Vec<_>, Vec<_>) = (0..moe.num_experts)
            .map(|e| {
                let (_, names) = names(config.architecture, prefix, e);
                let cols = layout.expert_intermediate.clone();
                let shape = (expert_in, inter);
                let expert = Expert::load(be, src, (names, gated), shape, cols, dtype)?;
                Ok((expert.gate_up, expert.down))
            })
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("loading the experts of {prefix}"))?
            .into_iter()
            .unzip();
        let index = be
            .index_experts(&gate_up, &down, ExpertBiases::NONE)
            .with_context(|| format!("indexing the experts of {prefix}"))?;
        let mut mlp = Self::from_parts((router, None), gate_up, down, None, None, index, moe);
        mlp.shared = shared;
        mlp.correction_bias = correction_bias;
        mlp.latent = latent;
        Ok(mlp)
    }

    /// Layer `prefix`'s shared expert, where the model has one: Qwen2-MoE's `shared_expert`
    /// and its gate; GLM-4.5's (and the others') ungated `shared_experts`.
    #[allow(clippy::too_many_arguments)] // the loader's arguments, passed on
    fn load_shared(
        be: &B,
        src: &dyn WeightSource,
        config: &ModelConfig,
        moe: &MoeConfig,
        prefix: &str,
        layout: &ShardLayout,
        dtype: DType,
    ) -> Result<Option<SharedExpert<B>>> {
        let Some(inter) = moe.shared_expert_intermediate_size else {
            return Ok(None);
        };
        let h = config.hidden_size;
        let module = if moe.shared_expert_gated {
            "shared_expert"
        } else {
            "shared_experts"
        };
        let w = |n: &str| format!("{prefix}.mlp.{module}.{n}_proj.weight");
        let cols = layout.shared_expert_intermediate.clone();
        let names = [w("gate"), w("up"), w("down")];
        let gated = moe.activation.is_gated();
        let expert = Expert::load(be, src, (names, gated), (h, inter), cols, dtype)?;
        let gate = if moe.shared_expert_gated {
            let gate_name = format!("{prefix}.mlp.shared_expert_gate.weight");
            Some(super::llama::load(be, src, &gate_name, &[1, h], dtype)?)
        } else {
            None
        };
        Ok(Some((expert, gate)))
    }

    /// Granite 4.0's shared MLP as the shared expert: its fused `input_linear` (gate rows,
    /// then up rows) and `output_linear`, which takes Granite's residual multiplier as the
    /// routed experts' down weights do.
    #[allow(clippy::too_many_arguments)] // the loader's arguments, passed on
    fn load_granite_shared(
        be: &B,
        src: &dyn WeightSource,
        config: &ModelConfig,
        moe: &MoeConfig,
        prefix: &str,
        layout: &ShardLayout,
        dtype: DType,
    ) -> Result<Option<SharedExpert<B>>> {
        let Some(inter) = moe.shared_expert_intermediate_size else {
            return Ok(None);
        };
        let h = config.hidden_size;
        let (_, residual_scale) = config.folded_scales();
        let cols = layout.shared_expert_intermediate.clone();
        let name = |n: &str| format!("{prefix}.shared_mlp.{n}.weight");
        let up_rows = inter + cols.start..inter + cols.end;
        let gate_up = [
            rows_part(name("input_linear"), vec![2 * inter, h], cols.clone()),
            rows_part(name("input_linear"), vec![2 * inter, h], up_rows),
        ];
        let down = cols_part(name("output_linear"), vec![h, inter], cols).scaled(residual_scale);
        let expert = Expert {
            gate_up: load_stacked(be, src, &gate_up, dtype)?,
            down: load_stacked(be, src, &[down], dtype)?,
        };
        Ok(Some((expert, None)))
    }

    /// A layer without a shared expert, from its loaded parts.
    #[allow(clippy::too_many_arguments)] // the parts of one layer
    pub(super) fn from_parts(
        router: (B::Tensor, Option<B::Tensor>),
        gate_up: Vec<B::Tensor>,
        down: Vec<B::Tensor>,
        gate_up_bias: Option<Vec<B::Tensor>>,
        down_bias: Option<Vec<B::Tensor>>,
        index: B::ExpertIndex,
        moe: &MoeConfig,
    ) -> Self {
        SparseMlp {
            router: router.0,
            router_bias: router.1,
            gate_up_bias,
            down_bias,
            activation: moe.activation,
            gate_up,
            down,
            index,
            top_k: moe.top_k,
            normalize_top_k: moe.normalize_top_k,
            scoring: moe.scoring,
            router_f32: moe.router_f32,
            sum_f32: moe.sum_f32,
            correction_bias: None,
            shared: None,
            latent: None,
        }
    }

    /// The experts' weighted sum for each row of `x` (`[tokens, hidden]`, normed).
    pub fn forward(&self, be: &B, x: &B::Tensor, dtype: DType) -> Result<B::Tensor> {
        let router_logits = if self.router_f32 && self.router_bias.is_none() {
            be.linear_f32(x, &self.router)?
        } else {
            be.linear(x, &self.router, self.router_bias.as_ref())?
        };
        let shared_output = match &self.shared {
            None => None,
            Some((expert, _)) => {
                let act = self
                    .activation
                    .apply(be, &be.linear(x, &expert.gate_up, None)?)?;
                Some(be.linear(&act, &expert.down, None)?)
            }
        };
        // A gated shared expert joins the weighted sum; an ungated one is added after it.
        let gate_logits = match &self.shared {
            Some((_, Some(gate))) => Some(be.linear(x, gate, None)?),
            _ => None,
        };
        let shared = shared_output.as_ref().zip(gate_logits.as_ref());
        let experts = ExpertSet {
            gate_up: &self.gate_up,
            down: &self.down,
            index: &self.index,
            gate_up_bias: self.gate_up_bias.as_deref(),
            down_bias: self.down_bias.as_deref(),
        };
        let routing = MoeRouting {
            top_k: self.top_k,
            normalize: self.normalize_top_k,
            scoring: self.scoring,
            correction_bias: self.correction_bias.as_ref().map(|(h, _)| h.as_slice()),
            correction_bias_tensor: self.correction_bias.as_ref().map(|(_, t)| t),
            dtype,
            sum_f32: self.sum_f32,
            activation: self.activation,
            shared: shared.map(|(output, gate_logits)| SharedExpertOutput {
                output,
                gate_logits,
            }),
        };
        let routed = match &self.latent {
            None => be.moe_experts(x, &router_logits, &experts, &routing)?,
            Some(latent) => {
                anyhow::ensure!(
                    routing.shared.is_none(),
                    "a gated shared expert beside latent experts"
                );
                let lowered = be.linear(x, &latent.down, None)?;
                let sum = be.moe_experts(&lowered, &router_logits, &experts, &routing)?;
                be.linear(&sum, &latent.up, None)?
            }
        };
        match (&shared_output, &gate_logits) {
            (Some(output), None) => be.add_tensors(&routed, output),
            _ => Ok(routed),
        }
    }
}
