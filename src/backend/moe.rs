//! The experts' part of a mixture-of-experts MLP as a backend op ([`Backend::moe_experts`]):
//! given the router's logits for each token, send the token through its `top_k` best experts
//! and add their outputs up with the router's weights (plus, in Qwen2-MoE, a shared expert's
//! output weighted by a sigmoid gate).
//!
//! [`host_routed_experts`] is the portable path every backend has: the logits are copied to
//! the host, routed there ([`route`]), each expert runs on just its tokens through the
//! ordinary ops, and [`Backend::weighted_row_sum`] adds the results up. A GPU backend may
//! route on the device instead for a few tokens (decode), with the same semantics: no host
//! round trip, and a step a CUDA graph can record.

use super::{Backend, DType, RowContribution};
use anyhow::Result;

/// One MoE layer's experts (this rank's slice of each): expert `e`'s stacked gate and up
/// rows `gate_up[e]` (`[2 * intermediate, hidden]`; ungated experts' up rows alone,
/// `[intermediate, hidden]`) and its `down[e]` (`[hidden, intermediate]`), plus whatever
/// the backend prepared from them ([`Backend::index_experts`]).
pub struct ExpertSet<'a, T, I> {
    pub gate_up: &'a [T],
    pub down: &'a [T],
    pub index: &'a I,
    /// gpt-oss: each expert's gate/up bias (`[2 * intermediate]`, laid out as its rows) and
    /// down bias (`[hidden]`; on one tensor-parallel rank only, the others hold none).
    pub gate_up_bias: Option<&'a [T]>,
    pub down_bias: Option<&'a [T]>,
}

/// gpt-oss's expert biases as [`ExpertSet`] holds them: per expert, gate/up (`[2 *
/// intermediate]`) and down (`[hidden]`, one tensor-parallel rank only).
pub struct ExpertBiases<'a, T> {
    pub gate_up: Option<&'a [T]>,
    pub down: Option<&'a [T]>,
}

// Copy whatever T is (derive would ask T: Copy): it holds only references.
impl<T> Clone for ExpertBiases<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ExpertBiases<'_, T> {}

impl<T> ExpertBiases<'_, T> {
    pub const NONE: Self = ExpertBiases {
        gate_up: None,
        down: None,
    };
}

impl<'a, T, I> ExpertSet<'a, T, I> {
    pub fn biases(&self) -> ExpertBiases<'a, T> {
        ExpertBiases {
            gate_up: self.gate_up_bias,
            down: self.down_bias,
        }
    }

    /// Experts without biases, SwiGLU or ungated ReLU²: what the device-routed kernels
    /// compute without an index of biases.
    pub fn is_plain(&self, activation: ExpertActivation) -> bool {
        self.gate_up_bias.is_none()
            && self.down_bias.is_none()
            && matches!(
                activation,
                ExpertActivation::SwiGlu | ExpertActivation::Relu2
            )
    }
}

/// What an expert computes between its gate/up and down projections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExpertActivation {
    /// `silu(gate) * up`.
    SwiGlu,
    /// gpt-oss: gate clamped to at most `limit`, up to `[-limit, limit]`, then
    /// `(up + 1) * gate * sigmoid(alpha * gate)`.
    ClampedSwiGlu { limit: f32, alpha: f32 },
    /// Nemotron 3: no gate; `relu(up)²` of the up projection (rounded to the dtype first,
    /// as the linear layer stores it).
    Relu2,
}

impl ExpertActivation {
    /// Whether the first projection holds gate and up rows (`2 * intermediate`) rather
    /// than up rows alone.
    pub fn is_gated(self) -> bool {
        self != ExpertActivation::Relu2
    }

    /// Rows of an expert's first projection for `intermediate` columns of activation.
    pub fn first_rows(self, intermediate: usize) -> usize {
        if self.is_gated() {
            2 * intermediate
        } else {
            intermediate
        }
    }

    /// The activation of the first projection's output `gate_up` through the ordinary
    /// ops (the host path, and shared experts).
    pub fn apply<B: Backend + ?Sized>(self, be: &B, gate_up: &B::Tensor) -> Result<B::Tensor> {
        match self {
            ExpertActivation::SwiGlu => be.silu_mul(gate_up),
            ExpertActivation::ClampedSwiGlu { limit, alpha } => {
                be.clamped_swiglu(gate_up, limit, alpha)
            }
            ExpertActivation::Relu2 => be.activation(gate_up, super::image_ops::Activation::Relu2),
        }
    }
}

/// Qwen2-MoE's shared expert, already run on every token: its output (`[tokens, hidden]`)
/// and its gate's logits (`[tokens, 1]`); the output is scaled by the gate's sigmoid and
/// added after the routed experts.
pub struct SharedExpertOutput<'a, T> {
    pub output: &'a T,
    pub gate_logits: &'a T,
}

/// How a router turns a token's logits into its experts and their weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RouterScoring {
    /// A softmax over all experts; the `top_k` most probable (Mixtral, Qwen, gpt-oss).
    Softmax,
    /// GLM-4.5 (and DeepSeek-V3's router): each expert's score is the sigmoid of its logit;
    /// experts are chosen by score plus a learned per-expert correction bias, only among
    /// the `top_groups` best of `groups` equal groups (a group ranks by its two best biased
    /// scores); the weights are the chosen experts' unbiased scores (renormalised when
    /// `normalize`), times `scale`.
    SigmoidGrouped {
        groups: usize,
        top_groups: usize,
        scale: f32,
    },
    /// DeepSeek-V2: the softmax over all experts; experts chosen only among the `top_groups`
    /// best of `groups` equal groups (a group ranks by its best probability; one group is
    /// V2-Lite's plain top k); the weights are the chosen probabilities (renormalised when
    /// `normalize`), times `scale`.
    SoftmaxGrouped {
        groups: usize,
        top_groups: usize,
        scale: f32,
    },
    /// Phi-3.5-MoE's SparseMixer at inference, two experts: the best logit, weighted by a
    /// softmax over the experts whose logits lie within a relative `2 * jitter_eps` of it;
    /// then, without that expert, the next best, weighted the same way. The two weights
    /// are not renormalised.
    SparseMixer { jitter_eps: f32 },
    /// LFM2-MoE: as [`RouterScoring::SigmoidGrouped`] with one group, but in the model's
    /// dtype, as its router computes it: the sigmoid scores rounded to the dtype (their
    /// frequent ties then broken by the correction bias), the chosen ones renormalised
    /// (their sum plus 1e-6) and scaled, each step rounded.
    SigmoidInDtype { scale: f32 },
    /// Llama 4: the `top_k` largest logits choose the experts; each chosen expert's *input*
    /// (not its output) is scaled by the sigmoid of its logit (rounded to the model dtype),
    /// and the outputs are added as they are.
    SigmoidScaledInput,
}

impl RouterScoring {
    /// Whether the router's weights scale the experts' inputs rather than their outputs.
    pub fn scales_input(self) -> bool {
        self == RouterScoring::SigmoidScaledInput
    }
}

/// How the router's choice is made and its results combined.
pub struct MoeRouting<'a, T> {
    pub top_k: usize,
    /// Rescale the chosen experts' probabilities to sum to one (Mixtral, most Qwen3-MoE).
    pub normalize: bool,
    pub scoring: RouterScoring,
    /// [`RouterScoring::SigmoidGrouped`]'s correction bias, one per expert: on the host, and
    /// as an f32 tensor for a backend that routes on the device.
    pub correction_bias: Option<&'a [f32]>,
    pub correction_bias_tensor: Option<&'a T>,
    /// The model's dtype: the rounding of the weighted sum follows HF's loop in it.
    pub dtype: DType,
    /// DeepSeek-V2 / V3, GLM-4.5, dots.llm1, Nemotron 3: transformers' loop adds the
    /// weighted outputs in the router's f32 and rounds the sum to the dtype once.
    pub sum_f32: bool,
    pub activation: ExpertActivation,
    pub shared: Option<SharedExpertOutput<'a, T>>,
}

impl<'a, T> MoeRouting<'a, T> {
    /// The weighted sum's output dtype and the dtype its steps are rounded to.
    pub fn sum_dtypes(&self) -> (DType, DType) {
        (
            self.dtype,
            if self.sum_f32 { DType::F32 } else { self.dtype },
        )
    }

    /// The routing decision's part.
    pub fn rule(&self) -> RouteRule<'a> {
        RouteRule {
            top_k: self.top_k,
            normalize: self.normalize,
            scoring: self.scoring,
            correction_bias: self.correction_bias,
            dtype: self.dtype,
        }
    }
}

/// What decides a token's experts and their weights (see [`route`]).
#[derive(Clone, Copy, Debug)]
pub struct RouteRule<'a> {
    pub top_k: usize,
    pub normalize: bool,
    pub scoring: RouterScoring,
    pub correction_bias: Option<&'a [f32]>,
    /// The model's dtype ([`RouterScoring::SigmoidInDtype`] rounds in it).
    pub dtype: DType,
}

impl RouteRule<'static> {
    /// The softmax router's rule.
    pub fn softmax(top_k: usize, normalize: bool) -> Self {
        RouteRule {
            top_k,
            normalize,
            scoring: RouterScoring::Softmax,
            correction_bias: None,
            dtype: DType::F32,
        }
    }

    /// Llama 4's router's rule.
    pub fn sigmoid_scaled_input(top_k: usize) -> Self {
        RouteRule {
            top_k,
            normalize: false,
            scoring: RouterScoring::SigmoidScaledInput,
            correction_bias: None,
            dtype: DType::F32,
        }
    }
}

pub use super::moe_route::route;

/// [`Backend::moe_experts`] through the host: route there, run each used expert on its rows,
/// add up with [`Backend::weighted_row_sum`] (experts in order, the shared expert last).
pub fn host_routed_experts<B: Backend + ?Sized>(
    be: &B,
    x: &B::Tensor,
    router_logits: &B::Tensor,
    experts: &ExpertSet<'_, B::Tensor, B::ExpertIndex>,
    routing: &MoeRouting<'_, B::Tensor>,
) -> Result<B::Tensor> {
    let dims = be.tensor_dims(x)?;
    let &[tokens, hidden] = dims.as_slice() else {
        anyhow::bail!("moe experts: x must be [tokens, hidden], got {dims:?}");
    };
    let num_experts = experts.gate_up.len();
    anyhow::ensure!(
        experts.down.len() == num_experts && (1..=num_experts).contains(&routing.top_k),
        "moe experts: {num_experts} gate_up, {} down weights, top {}",
        experts.down.len(),
        routing.top_k
    );
    let logits = be.to_host_f32(router_logits)?;
    anyhow::ensure!(
        logits.len() == tokens * num_experts,
        "moe experts: {} router logits for {tokens} tokens and {num_experts} experts",
        logits.len()
    );
    let mut routes = route(&logits, num_experts, &routing.rule());
    let mut outputs = Vec::new();
    for (e, (rows, weights)) in routes.iter_mut().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let mut input = be.select_rows(x, rows)?;
        if routing.scoring.scales_input() {
            // Each row times its weight in the model dtype, as `hidden * score` rounds it;
            // the output then joins the sum unweighted.
            let scales: Vec<f32> = weights.iter().map(|&w| routing.dtype.round(w)).collect();
            let own_rows: Vec<usize> = (0..rows.len()).collect();
            let scaled = RowContribution {
                tensor: &input,
                rows: &own_rows,
                weights: &scales,
            };
            let dtypes = (routing.dtype, routing.dtype);
            input = be.weighted_row_sum(rows.len(), hidden, dtypes, &[scaled])?;
            weights.iter_mut().for_each(|w| *w = 1.0);
        }
        let gate_up_bias = experts.gate_up_bias.and_then(|b| b.get(e));
        let gate_up = be.linear(&input, &experts.gate_up[e], gate_up_bias)?;
        let act = routing.activation.apply(be, &gate_up)?;
        let down_bias = experts.down_bias.and_then(|b| b.get(e));
        outputs.push(be.linear(&act, &experts.down[e], down_bias)?);
    }
    let mut parts: Vec<RowContribution<'_, B::Tensor>> = routes
        .iter()
        .filter(|(rows, _)| !rows.is_empty())
        .zip(&outputs)
        .map(|((rows, weights), tensor)| RowContribution {
            tensor,
            rows,
            weights,
        })
        .collect();
    let all_rows: Vec<usize> = (0..tokens).collect();
    let shared_weights: Vec<f32>;
    if let Some(shared) = &routing.shared {
        // sigmoid of the gate's logit as it is stored (in the model dtype).
        shared_weights = be
            .to_host_f32(shared.gate_logits)?
            .into_iter()
            .map(|g| routing.dtype.round(1.0 / (1.0 + (-g).exp())))
            .collect();
        anyhow::ensure!(
            shared_weights.len() == tokens,
            "moe experts: {} shared-expert gate logits for {tokens} tokens",
            shared_weights.len()
        );
        parts.push(RowContribution {
            tensor: shared.output,
            rows: &all_rows,
            weights: &shared_weights,
        });
    }
    be.weighted_row_sum(tokens, hidden, routing.sum_dtypes(), &parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_goes_to_its_top_k_experts_with_softmax_weights() {
        // Row 0 prefers expert 2 then 0; row 1 prefers 1 then 3.
        let logits = [1.0, 0.0, 2.0, -1.0, 0.0, 3.0, -2.0, 1.0];
        let routes = route(&logits, 4, &RouteRule::softmax(2, false));
        assert_eq!(routes[0].0, vec![0]);
        assert_eq!(routes[1].0, vec![1]);
        assert_eq!(routes[2].0, vec![0]);
        assert_eq!(routes[3].0, vec![1]);
        let z: f32 = [1.0f32, 0.0, 2.0, -1.0].iter().map(|x| x.exp()).sum();
        assert!((routes[2].1[0] - 2f32.exp() / z).abs() < 1e-6);
        assert!((routes[0].1[0] - 1f32.exp() / z).abs() < 1e-6);

        let normalized = route(&logits, 4, &RouteRule::softmax(2, true));
        let sum = normalized[2].1[0] + normalized[0].1[0];
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((normalized[2].1[0] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn weighted_rows_add_up_rounded_as_a_loop_of_index_adds() {
        use crate::backend::cpu::CpuBackend;
        let be = CpuBackend::new();
        let dev = candle_core::Device::Cpu;
        let a = candle_core::Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let b = candle_core::Tensor::new(&[[10.0f32, 20.0]], &dev).unwrap();
        let parts = [
            RowContribution {
                tensor: &a,
                rows: &[2, 0],
                weights: &[0.5, 0.25],
            },
            RowContribution {
                tensor: &b,
                rows: &[2],
                weights: &[0.1],
            },
        ];
        let sum = be
            .weighted_row_sum(3, 2, (DType::F32, DType::F32), &parts)
            .unwrap();
        let values: Vec<f32> = sum.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(values, vec![0.75, 1.0, 0.0, 0.0, 0.5 + 1.0, 1.0 + 2.0]);

        // In bf16 the running sum is rounded at each add: 1 + 0.01 is 1.0078125 there.
        let (x, y) = (
            candle_core::Tensor::new(&[[1.0f32]], &dev).unwrap(),
            candle_core::Tensor::new(&[[0.01f32]], &dev).unwrap(),
        );
        let parts = [&x, &y].map(|tensor| RowContribution {
            tensor,
            rows: &[0],
            weights: &[1.0],
        });
        let sum = be
            .weighted_row_sum(1, 1, (DType::BF16, DType::BF16), &parts)
            .unwrap();
        let value: Vec<f32> = sum
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(value, vec![1.0078125]);
    }

    /// GLM-4.5's router: sigmoid scores, choice by score plus bias within the best group,
    /// weights from the unbiased scores, renormalised and scaled.
    #[test]
    fn sigmoid_grouped_routing_follows_transformers_step_by_step() {
        let rule = |bias: &'static [f32], scale: f32| RouteRule {
            top_k: 2,
            normalize: true,
            scoring: RouterScoring::SigmoidGrouped {
                groups: 2,
                top_groups: 1,
                scale,
            },
            correction_bias: Some(bias),
            dtype: DType::F32,
        };
        // Equal scores (0.5); the bias makes group 1 (experts 2, 3) the better one (1.5 +
        // -0.3 against 0.5 + 0.5), but expert 3's biased score is negative, and the dropped
        // group's experts compete with 0: expert 0 (the lower of the tie) is second.
        let routes = route(&[0.0; 4], 4, &rule(&[0.0, 0.0, 1.0, -0.8], 2.0));
        assert_eq!(routes[2], (vec![0], vec![1.0]));
        assert_eq!(routes[0], (vec![0], vec![1.0]));
        assert!(routes[1].0.is_empty() && routes[3].0.is_empty());
        // Unequal scores: the weights are the chosen sigmoids, renormalised, times the scale.
        let logits = [-1.0, 0.5, 2.0, 1.0];
        let routes = route(&logits, 4, &rule(&[0.0; 4], 2.5));
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let total = sig(2.0) + sig(1.0);
        assert_eq!(routes[2].0, vec![0]);
        assert_eq!(routes[3].0, vec![0]);
        assert!((routes[2].1[0] - 2.5 * sig(2.0) / total).abs() < 1e-6);
        assert!((routes[3].1[0] - 2.5 * sig(1.0) / total).abs() < 1e-6);
    }

    /// DeepSeek-V2's `group_limited_greedy`: softmax probabilities, the groups ranked by
    /// their best one, the rest of the groups' experts out of the running even where their
    /// probabilities are higher than a kept group's second best.
    #[test]
    fn softmax_grouped_routing_picks_within_the_best_groups() {
        let rule = |groups: usize, normalize: bool| RouteRule {
            top_k: 2,
            normalize,
            scoring: RouterScoring::SoftmaxGrouped {
                groups,
                top_groups: 1,
                scale: 2.0,
            },
            correction_bias: None,
            dtype: DType::F32,
        };
        // Group 0 (experts 0, 1) holds the best expert; group 1's experts both beat expert 1.
        let logits = [3.0, -1.0, 2.0, 2.5];
        let exps: Vec<f32> = logits.iter().map(|&l: &f32| (l - 3.0).exp()).collect();
        let total: f32 = exps.iter().sum();
        let p = |e: usize| exps[e] / total;
        let routes = route(&logits, 4, &rule(2, false));
        assert_eq!(routes[0].0, vec![0]);
        assert_eq!(routes[1].0, vec![0]);
        assert!(routes[2].0.is_empty() && routes[3].0.is_empty());
        assert!((routes[0].1[0] - 2.0 * p(0)).abs() < 1e-6);
        assert!((routes[1].1[0] - 2.0 * p(1)).abs() < 1e-6);
        // One group: V2-Lite's plain top k, here renormalised.
        let routes = route(&logits, 4, &rule(1, true));
        assert_eq!((routes[0].0.len(), routes[3].0.len()), (1, 1));
        assert!((routes[0].1[0] - 2.0 * p(0) / (p(0) + p(3))).abs() < 1e-6);
    }

    #[test]
    fn ties_go_to_the_lower_expert() {
        let routes = route(&[0.5, 0.5, 0.5], 3, &RouteRule::softmax(1, true));
        assert_eq!(routes[0], (vec![0], vec![1.0]));
        assert!(routes[1].0.is_empty() && routes[2].0.is_empty());
    }

    #[test]
    fn host_path_sends_each_token_through_its_experts_and_the_shared_one() {
        use crate::backend::cpu::CpuBackend;
        use candle_core::{Device, Tensor};
        let be = CpuBackend::new();
        let dev = Device::Cpu;
        // Two experts of intermediate 1 on hidden 2: expert e's gate row is all ones and its
        // up row picks x[e]; down maps the activation to [a, 2a].
        let gate_up = [
            Tensor::new(&[[1.0f32, 1.0], [1.0, 0.0]], &dev).unwrap(),
            Tensor::new(&[[1.0f32, 1.0], [0.0, 1.0]], &dev).unwrap(),
        ];
        let down = [
            Tensor::new(&[[1.0f32], [2.0]], &dev).unwrap(),
            Tensor::new(&[[1.0f32], [2.0]], &dev).unwrap(),
        ];
        let x = Tensor::new(&[[1.0f32, 2.0]], &dev).unwrap();
        // The token prefers expert 1 (logit 1 against 0).
        let logits = Tensor::new(&[[0.0f32, 1.0]], &dev).unwrap();
        let shared_out = Tensor::new(&[[4.0f32, 8.0]], &dev).unwrap();
        let gate_logits = Tensor::new(&[[0.0f32]], &dev).unwrap();
        let experts = ExpertSet {
            gate_up: &gate_up,
            down: &down,
            index: &(),
            gate_up_bias: None,
            down_bias: None,
        };
        let silu = |v: f32| v / (1.0 + (-v).exp());
        let routing = MoeRouting {
            top_k: 1,
            normalize: false,
            scoring: RouterScoring::Softmax,
            correction_bias: None,
            correction_bias_tensor: None,
            dtype: DType::F32,
            sum_f32: false,
            activation: ExpertActivation::SwiGlu,
            shared: Some(SharedExpertOutput {
                output: &shared_out,
                gate_logits: &gate_logits,
            }),
        };
        let out = host_routed_experts(&be, &x, &logits, &experts, &routing).unwrap();
        let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        let p1 = 1f32.exp() / (1.0 + 1f32.exp());
        let a = silu(3.0) * 2.0; // gate 1 + 2, up x[1]
        let want = [a * p1 + 2.0, 2.0 * a * p1 + 4.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }
}
