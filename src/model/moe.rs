//! Mixture-of-experts MLPs (Qwen3-MoE, Qwen2-MoE, Mixtral): a router scores the experts for
//! each token, the token goes through its `top_k` best, and their outputs are summed with
//! the router's weights (plus, in Qwen2-MoE, a shared expert every token goes through,
//! weighted by a sigmoid gate).
//!
//! The routing is decided on the host: the router's logits (`[tokens, experts]`, small) are
//! copied back, each expert then runs on just its tokens through the backend's ordinary
//! ops (row gather, GEMM, SwiGLU, GEMM), and `Backend::weighted_row_sum` adds the results
//! up. Correct on every backend; on a GPU it costs a host round trip per layer and keeps
//! such models off recorded (graph) decode steps. Under tensor parallelism every rank holds
//! a slice of every expert's intermediate dimension, like a dense MLP, and routes
//! identically (its input is the all-reduced hidden state).

use super::config::{Architecture, ModelConfig, MoeConfig};
use super::llama::{cols_part, load_stacked, rows_part};
use super::weights::WeightSource;
use crate::backend::{Backend, DType, RowContribution};
use crate::parallel::ShardLayout;
use anyhow::{Context, Result};

struct Expert<B: Backend> {
    /// This rank's gate and up rows, stacked: `[2 * intermediate, hidden]`.
    gate_up: B::Tensor,
    down: B::Tensor,
}

impl<B: Backend> Expert<B> {
    /// The expert whose gate, up and down weights are `names`, `(hidden, intermediate)`
    /// in size: this rank's intermediate columns `cols` of it.
    fn load(
        be: &B,
        src: &dyn WeightSource,
        [gate, up, down]: [String; 3],
        (h, inter): (usize, usize),
        cols: std::ops::Range<usize>,
        dtype: DType,
    ) -> Result<Self> {
        let gate_up = [
            rows_part(gate, vec![inter, h], cols.clone()),
            rows_part(up, vec![inter, h], cols.clone()),
        ];
        Ok(Expert {
            gate_up: load_stacked(be, src, &gate_up, dtype)?,
            down: load_stacked(be, src, &[cols_part(down, vec![h, inter], cols)], dtype)?,
        })
    }
}

pub struct SparseMlp<B: Backend> {
    /// `[experts, hidden]`, whole on every rank.
    router: B::Tensor,
    experts: Vec<Expert<B>>,
    top_k: usize,
    normalize_top_k: bool,
    /// Qwen2-MoE: an expert for every token, and its gate (`[1, hidden]`, whole on every
    /// rank): the expert's output is scaled by `sigmoid(gate . x)` and added last.
    shared: Option<(Expert<B>, B::Tensor)>,
}

/// Checkpoint names of layer `prefix`'s router and of expert `e`'s gate, up and down
/// projections.
fn names(arch: Architecture, prefix: &str, e: usize) -> (String, [String; 3]) {
    match arch {
        Architecture::Mixtral => {
            let moe = format!("{prefix}.block_sparse_moe");
            let w = |n: &str| format!("{moe}.experts.{e}.{n}.weight");
            (format!("{moe}.gate.weight"), [w("w1"), w("w3"), w("w2")])
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
        let (h, inter) = (config.hidden_size, moe.expert_intermediate_size);
        let (router_name, _) = names(config.architecture, prefix, 0);
        let router = super::llama::load(be, src, &router_name, &[moe.num_experts, h], dtype)?;
        let shared = match moe.shared_expert_intermediate_size {
            None => None,
            Some(inter) => {
                let w = |n: &str| format!("{prefix}.mlp.shared_expert.{n}_proj.weight");
                let cols = layout.shared_expert_intermediate.clone();
                let names = [w("gate"), w("up"), w("down")];
                let expert = Expert::load(be, src, names, (h, inter), cols, dtype)?;
                let gate_name = format!("{prefix}.mlp.shared_expert_gate.weight");
                let gate = super::llama::load(be, src, &gate_name, &[1, h], dtype)?;
                Some((expert, gate))
            }
        };
        let experts = (0..moe.num_experts)
            .map(|e| {
                let (_, [gate, up, down]) = names(config.architecture, prefix, e);
                let cols = layout.expert_intermediate.clone();
                Expert::load(be, src, [gate, up, down], (h, inter), cols, dtype)
            })
            .collect::<Result<_>>()
            .with_context(|| format!("loading the experts of {prefix}"))?;
        Ok(SparseMlp {
            router,
            experts,
            top_k: moe.top_k,
            normalize_top_k: moe.normalize_top_k,
            shared,
        })
    }

    /// The experts' weighted sum for each row of `x` (`[tokens, hidden]`, normed).
    pub fn forward(&self, be: &B, x: &B::Tensor, dtype: DType) -> Result<B::Tensor> {
        let dims = be.tensor_dims(x)?;
        let (tokens, hidden) = (dims[0], dims[1]);
        let logits = be.to_host_f32(&be.linear(x, &self.router, None)?)?;
        let routes = route(
            &logits,
            self.experts.len(),
            self.top_k,
            self.normalize_top_k,
        );
        let mut outputs = Vec::new();
        for (expert, (rows, _)) in self.experts.iter().zip(&routes) {
            if rows.is_empty() {
                continue;
            }
            let input = be.select_rows(x, rows)?;
            let act = be.silu_mul(&be.linear(&input, &expert.gate_up, None)?)?;
            outputs.push(be.linear(&act, &expert.down, None)?);
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
        let shared = match &self.shared {
            None => None,
            Some((expert, gate)) => {
                let act = be.silu_mul(&be.linear(x, &expert.gate_up, None)?)?;
                let output = be.linear(&act, &expert.down, None)?;
                // sigmoid of the gate's logit as it is stored (in the model dtype).
                let weights: Vec<f32> = be
                    .to_host_f32(&be.linear(x, gate, None)?)?
                    .into_iter()
                    .map(|g| dtype.round(1.0 / (1.0 + (-g).exp())))
                    .collect();
                Some((output, weights, (0..tokens).collect::<Vec<usize>>()))
            }
        };
        if let Some((tensor, weights, rows)) = &shared {
            parts.push(RowContribution {
                tensor,
                rows,
                weights,
            });
        }
        be.weighted_row_sum(tokens, hidden, dtype, &parts)
    }
}

/// For each expert, the rows routed to it and their weights: per row, a softmax over the
/// experts' logits (`[rows, experts]`, f32), its `top_k` largest (ties to the lower expert),
/// rescaled to sum to one when `normalize`.
pub fn route(
    logits: &[f32],
    num_experts: usize,
    top_k: usize,
    normalize: bool,
) -> Vec<(Vec<usize>, Vec<f32>)> {
    let mut routes = vec![(Vec::new(), Vec::new()); num_experts];
    for (row, scores) in logits.chunks_exact(num_experts).enumerate() {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
        let total: f32 = exps.iter().sum();
        let mut order: Vec<usize> = (0..num_experts).collect();
        order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]).then(a.cmp(&b)));
        let chosen = &order[..top_k];
        let probs: Vec<f32> = chosen.iter().map(|&e| exps[e] / total).collect();
        let kept: f32 = probs.iter().sum();
        for (&e, &p) in chosen.iter().zip(&probs) {
            routes[e].0.push(row);
            routes[e].1.push(if normalize { p / kept } else { p });
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_goes_to_its_top_k_experts_with_softmax_weights() {
        // Row 0 prefers expert 2 then 0; row 1 prefers 1 then 3.
        let logits = [1.0, 0.0, 2.0, -1.0, 0.0, 3.0, -2.0, 1.0];
        let routes = route(&logits, 4, 2, false);
        assert_eq!(routes[0].0, vec![0]);
        assert_eq!(routes[1].0, vec![1]);
        assert_eq!(routes[2].0, vec![0]);
        assert_eq!(routes[3].0, vec![1]);
        let z: f32 = [1.0f32, 0.0, 2.0, -1.0].iter().map(|x| x.exp()).sum();
        assert!((routes[2].1[0] - 2f32.exp() / z).abs() < 1e-6);
        assert!((routes[0].1[0] - 1f32.exp() / z).abs() < 1e-6);

        let normalized = route(&logits, 4, 2, true);
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
        let sum = be.weighted_row_sum(3, 2, DType::F32, &parts).unwrap();
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
        let sum = be.weighted_row_sum(1, 1, DType::BF16, &parts).unwrap();
        let value: Vec<f32> = sum
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(value, vec![1.0078125]);
    }

    #[test]
    fn ties_go_to_the_lower_expert() {
        let routes = route(&[0.5, 0.5, 0.5], 3, 1, true);
        assert_eq!(routes[0], (vec![0], vec![1.0]));
        assert!(routes[1].0.is_empty() && routes[2].0.is_empty());
    }
}
