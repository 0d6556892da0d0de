//! A mixture-of-experts layer on the GPU at Qwen3-30B-A3B's expert shape (hidden 2048,
//! intermediate 768, top 8 renormalised) and with Qwen1.5-MoE's shared expert (top 4,
//! intermediate 1408), against a host reference with the host path's semantics
//! (`backend::moe::route`, each expert output rounded to the dtype, the sum rounded as HF's
//! loop). 1, 8, 32 and 64 tokens take the device-routed path (`moe_route`, the expert GEMVs,
//! `moe_combine`: src/backend/cuda/moe.rs); 256 tokens (a prefill chunk) the grouped
//! host-routed one (`moe_layer_grouped`). 32 experts: more than the top 8 and, at 9.4 MB
//! each in bf16, more than fits the L2 cache, so the device path's timing (one layer, four
//! launches) is a fair read of the weight bandwidth: the note carries the GB/s of the
//! distinct experts read (a step reads an expert once per work item of up to four of its
//! tokens). A third layer has gpt-oss-20b's experts (hidden and intermediate 2880, top 4
//! of 32, biases, the clamped SwiGLU) on both paths, a fourth GLM-4.5's router (sigmoid
//! scores, a correction bias, 2 of 4 groups kept, scale 2.5) at GLM-4.5-Air's expert width,
//! a fifth Llama 4's (the top logits' sigmoids scale the experts' inputs: the grouped
//! path at every token count, its gathered rows scaled by `scale_rows`), and a sixth
//! LFM2-MoE's at LFM2-8B-A1B's shape (sigmoid scores rounded to the dtype, a bias, top 4 of
//! 32, scale 1.5), and a seventh Nemotron 3 Nano's (DeepSeek-V3's router in one group,
//! scale 2.5, top 6; ungated ReLU² experts of its width 1856 on hidden 2688).

use super::compare::Check;
use super::suite::Suite;
use crate::backend::cuda::moe::{
    group_routes, max_items, Combine, GroupedBuffers, GroupedRouter, MoeBuffers, GEMV_EXPERT_ROWS,
    MOE_DEVICE_MAX_ROWS,
};
use crate::backend::cuda::{CudaTensor, DType};
use crate::backend::moe::{route, ExpertActivation, ExpertBiases, RouteRule, RouterScoring};
use anyhow::Result;
use rayon::prelude::*;

/// What sets a case's layer apart from plain SwiGLU experts under a softmax router.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    /// Qwen1.5-MoE's gated shared expert.
    Shared,
    /// gpt-oss's biases and clamped SwiGLU.
    GptOss,
    /// GLM-4.5's router ([`GROUPED`]).
    Glm,
    /// Llama 4's router: the top logits' sigmoids scale the experts' inputs.
    Llama4,
    /// LFM2-MoE's router ([`RouterScoring::SigmoidInDtype`]).
    Lfm2,
    /// Nemotron 3's ungated ReLU² experts under [`NEMOTRON3`]'s router.
    Nemotron3,
}

/// `(hidden, intermediate, experts, top_k, normalize, kind)`.
const LAYERS: [(usize, usize, usize, usize, bool, Kind); 7] = [
    (2048, 768, 32, 8, true, Kind::Plain),
    (2048, 1408, 16, 4, false, Kind::Shared),
    (2880, 2880, 32, 4, true, Kind::GptOss),
    (2048, 1408, 32, 8, true, Kind::Glm),
    // Llama 4 Scout's 16 experts (narrower), two per token to exercise the pair order.
    (2048, 1024, 16, 2, false, Kind::Llama4),
    (2048, 1792, 32, 4, true, Kind::Lfm2),
    (2688, 1856, 32, 6, true, Kind::Nemotron3),
];

/// Nemotron 3 Nano's router: sigmoid scores and a correction bias in one group, scale 2.5.
const NEMOTRON3: RouterScoring = RouterScoring::SigmoidGrouped {
    groups: 1,
    top_groups: 1,
    scale: 2.5,
};

/// The GLM-4.5-style router of the fourth layer: groups, kept groups, scale.
const GROUPED: RouterScoring = RouterScoring::SigmoidGrouped {
    groups: 4,
    top_groups: 2,
    scale: 2.5,
};

/// gpt-oss's activation (its limit 7 is rarely reached at these magnitudes; 0.5 is).
const CLAMPED: ExpertActivation = ExpertActivation::ClampedSwiGlu {
    limit: 0.5,
    alpha: 1.702,
};

/// Up to 64 tokens route on the device; 256 (a prefill chunk) take the grouped host path.
const TOKENS: [usize; 5] = [1, 8, 32, 64, 256];

/// Per expert, one bias vector: (gate/up, down).
type HostBiases = (Vec<Vec<f32>>, Vec<Vec<f32>>);

struct HostLayer {
    hidden: usize,
    inter: usize,
    gate_up: Vec<Vec<f32>>,
    down: Vec<Vec<f32>>,
    /// gpt-oss: per expert, the gate/up (`[2 * inter]`) and down (`[hidden]`) biases.
    biases: Option<HostBiases>,
    activation: ExpertActivation,
}

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    for (hidden, inter, experts, top_k, normalize, kind) in LAYERS {
        let (shared, gpt_oss, llama4) = (
            kind == Kind::Shared,
            kind == Kind::GptOss,
            kind == Kind::Llama4,
        );
        // GLM-4.5: the router's correction bias (f32), on the host and on the device.
        let bias = matches!(kind, Kind::Glm | Kind::Lfm2 | Kind::Nemotron3)
            .then(|| s.random(experts, 0.5, DType::F32));
        let bias_dev = match &bias {
            Some(b) => Some(CudaTensor::from_f32(s.dev, DType::F32, &[experts], b)?),
            None => None,
        };
        let rule = RouteRule {
            top_k,
            normalize,
            scoring: match kind {
                Kind::Glm => GROUPED,
                Kind::Llama4 => RouterScoring::SigmoidScaledInput,
                Kind::Lfm2 => RouterScoring::SigmoidInDtype { scale: 1.5 },
                Kind::Nemotron3 => NEMOTRON3,
                _ => RouterScoring::Softmax,
            },
            correction_bias: bias.as_deref(),
            dtype,
        };
        let router = GroupedRouter::new(rule.scoring, bias_dev.as_ref());
        let activation = match kind {
            Kind::GptOss => CLAMPED,
            Kind::Nemotron3 => ExpertActivation::Relu2,
            _ => ExpertActivation::SwiGlu,
        };
        let first_rows = activation.first_rows(inter);
        // GLM-4.5's and Nemotron 3's loops add the weighted outputs in f32.
        let sum_f32 = matches!(kind, Kind::Glm | Kind::Nemotron3);
        let layer = HostLayer {
            hidden,
            inter,
            gate_up: (0..experts)
                .map(|_| s.random(first_rows * hidden, 0.05, dtype))
                .collect(),
            down: (0..experts)
                .map(|_| s.random(hidden * inter, 0.05, dtype))
                .collect(),
            biases: gpt_oss.then(|| {
                (
                    (0..experts)
                        .map(|_| s.random(2 * inter, 0.5, dtype))
                        .collect(),
                    (0..experts).map(|_| s.random(hidden, 0.5, dtype)).collect(),
                )
            }),
            activation,
        };
        let dev = s.dev;
        let upload = |ws: &[Vec<f32>], shape: [usize; 2]| -> Result<Vec<CudaTensor>> {
            ws.iter()
                .map(|w| CudaTensor::from_f32(dev, dtype, &shape, w))
                .collect()
        };
        let gate_up = upload(&layer.gate_up, [first_rows, hidden])?;
        let down = upload(&layer.down, [hidden, inter])?;
        let bias_tensors = match &layer.biases {
            Some((gu, d)) => Some((
                gu.iter()
                    .map(|b| CudaTensor::from_f32(dev, dtype, &[2 * inter], b))
                    .collect::<Result<Vec<_>>>()?,
                d.iter()
                    .map(|b| CudaTensor::from_f32(dev, dtype, &[hidden], b))
                    .collect::<Result<Vec<_>>>()?,
            )),
            None => None,
        };
        let biases = ExpertBiases {
            gate_up: bias_tensors.as_ref().map(|b| b.0.as_slice()),
            down: bias_tensors.as_ref().map(|b| b.1.as_slice()),
        };
        let index = dev.index_expert_biases(dev.index_experts(&gate_up, &down)?, biases)?;
        anyhow::ensure!(
            index.shape().is_some() && index.serves(&biases),
            "the experts did not fit the device path"
        );
        for tokens in TOKENS {
            let inputs = Inputs::new(s, (tokens, hidden, experts), shared, dtype);
            let reference = reference(
                &layer,
                &inputs.x,
                &inputs.logits,
                &rule,
                inputs.shared.as_ref(),
                (dtype, sum_f32),
            );
            let x = CudaTensor::from_f32(dev, dtype, &[tokens, hidden], &inputs.x)?;
            let logits = CudaTensor::from_f32(dev, dtype, &[tokens, experts], &inputs.logits)?;
            let shared_dev = match &inputs.shared {
                Some((out, gate)) => Some((
                    CudaTensor::from_f32(dev, dtype, &[tokens, hidden], out)?,
                    CudaTensor::from_f32(dev, dtype, &[tokens, 1], gate)?,
                )),
                None => None,
            };
            let kind = match kind {
                Kind::Shared => " +shared",
                Kind::GptOss => " gpt-oss (biases, clamped SwiGLU)",
                Kind::Glm => " GLM-4.5 router (sigmoid, bias, 2 of 4 groups, f32 sum)",
                Kind::Llama4 => " Llama 4 router (sigmoid-scaled inputs)",
                Kind::Lfm2 => " LFM2-MoE router (sigmoid in the dtype, bias)",
                Kind::Nemotron3 => " Nemotron 3 (ungated ReLU², sigmoid router, bias, f32 sum)",
                Kind::Plain => "",
            };
            let shape = format!(
                "tokens={tokens} hidden={hidden} inter={inter} top {top_k} of {experts}{kind}"
            );
            // Llama 4's router has no device kernel: every step takes the grouped path.
            if tokens > MOE_DEVICE_MAX_ROWS || llama4 {
                // Prefill: routed on the host, the experts' GEMMs on their row blocks.
                let routes = route(&inputs.logits, experts, &rule);
                let mut grouped = group_routes(&routes, tokens, top_k)?;
                let row_scales = match llama4 {
                    true => Some(CudaTensor::from_f32(
                        dev,
                        DType::F32,
                        &[tokens * top_k],
                        &grouped.move_weights_to_inputs(dtype),
                    )?),
                    false => None,
                };
                let pairs = tokens * top_k;
                let row_tokens = dev.upload(&grouped.row_tokens)?;
                let row_experts = dev.upload(&grouped.row_experts())?;
                let pair_rows = dev.upload(&grouped.pair_rows)?;
                let weights =
                    CudaTensor::from_f32(dev, DType::F32, &[pairs], &grouped.pair_weights)?;
                let mut gathered = CudaTensor::zeros(dev, dtype, &[pairs, hidden])?;
                let mut gate_up_out = CudaTensor::zeros(dev, dtype, &[pairs, first_rows])?;
                let mut act = CudaTensor::zeros(dev, dtype, &[pairs, inter])?;
                let mut y = CudaTensor::zeros(dev, dtype, &[pairs, hidden])?;
                let mut out = CudaTensor::zeros(dev, dtype, &[tokens, hidden])?;
                let shared_parts = shared_dev.as_ref().map(|(o, g)| (o, g));
                let mut grouped_layer = |out: &mut CudaTensor| -> Result<()> {
                    let mut buffers = GroupedBuffers {
                        row_tokens: &row_tokens,
                        row_experts: Some(&row_experts),
                        pair_rows: &pair_rows,
                        weights: &weights,
                        row_scales: row_scales.as_ref(),
                        x: &mut gathered,
                        gate_up: &mut gate_up_out,
                        act: &mut act,
                        y: &mut y,
                    };
                    dev.moe_layer_grouped(
                        (&gate_up, &down),
                        (&index, layer.activation),
                        &x,
                        &grouped,
                        top_k,
                        Combine {
                            shared: shared_parts,
                            sum_f32,
                        },
                        &mut buffers,
                        out,
                    )
                };
                grouped_layer(&mut out)?;
                let row = s.check(
                    "moe_experts(grouped)",
                    shape,
                    dtype,
                    Check::Reduction,
                    &out.to_f32(dev)?,
                    &reference,
                );
                let us = s.time(row, || grouped_layer(&mut out))?;
                let distinct = distinct_experts(&inputs.logits, experts, &rule);
                s.rows[row].note = format!(
                    "{distinct} experts, {} GEMMs; device part only (routing on the host not timed), {:.0} us",
                    2 * grouped.expert_rows.len(),
                    us
                );
                continue;
            }
            let pairs = tokens * top_k;
            let count = max_items(pairs, experts);
            let mut ids = dev.upload(&vec![0u32; pairs])?;
            let mut item_expert = dev.upload(&vec![0u32; count])?;
            let mut item_rows = dev.upload(&vec![0u32; count])?;
            let mut item_pairs = dev.upload(&vec![0u32; count * GEMV_EXPERT_ROWS])?;
            let mut weights = CudaTensor::zeros(dev, DType::F32, &[pairs])?;
            let mut act = CudaTensor::zeros(dev, dtype, &[pairs, inter])?;
            let mut y = CudaTensor::zeros(dev, dtype, &[pairs, hidden])?;
            let mut out = CudaTensor::zeros(dev, dtype, &[tokens, hidden])?;
            let shared_parts = shared_dev.as_ref().map(|(o, g)| (o, g));
            let mut layer_on_device = |out: &mut CudaTensor| -> Result<()> {
                let mut buffers = MoeBuffers {
                    ids: &mut ids,
                    weights: &mut weights,
                    item_expert: &mut item_expert,
                    item_rows: &mut item_rows,
                    item_pairs: &mut item_pairs,
                    act: &mut act,
                    y: &mut y,
                };
                dev.moe_layer(
                    &index,
                    &x,
                    &logits,
                    (top_k, normalize, router.as_ref()),
                    layer.activation,
                    Combine {
                        shared: shared_parts,
                        sum_f32,
                    },
                    &mut buffers,
                    out,
                )
            };
            layer_on_device(&mut out)?;
            let shape = format!(
                "tokens={tokens} hidden={hidden} inter={inter} top {top_k} of {experts}{kind}"
            );
            let row = s.check(
                "moe_experts",
                shape,
                dtype,
                Check::Reduction,
                &out.to_f32(dev)?,
                &reference,
            );
            let us = s.time(row, || layer_on_device(&mut out))?;
            let distinct = distinct_experts(&inputs.logits, experts, &rule);
            let bytes = distinct * (first_rows + hidden) * inter * dtype.size_in_bytes();
            s.rows[row].note = format!(
                "{distinct} experts read, {:.0} GB/s",
                bytes as f64 / (us * 1e-6) / 1e9
            );
        }
    }
    Ok(())
}

/// One case's host inputs: x, the router logits and (Qwen2-MoE) the shared expert's output
/// and gate logits.
struct Inputs {
    x: Vec<f32>,
    logits: Vec<f32>,
    shared: Option<(Vec<f32>, Vec<f32>)>,
}

impl Inputs {
    fn new(
        s: &mut Suite<'_>,
        (tokens, hidden, experts): (usize, usize, usize),
        shared: bool,
        dtype: DType,
    ) -> Self {
        Inputs {
            x: s.random(tokens * hidden, 1.0, dtype),
            logits: s.random(tokens * experts, 2.0, dtype),
            shared: shared.then(|| {
                (
                    s.random(tokens * hidden, 0.5, dtype),
                    s.random(tokens, 3.0, dtype),
                )
            }),
        }
    }
}

/// How many distinct experts the tokens route to (each pair reads its expert once, so a
/// batch sharing experts reads more than this).
fn distinct_experts(logits: &[f32], experts: usize, rule: &RouteRule<'_>) -> usize {
    route(logits, experts, rule)
        .iter()
        .filter(|(rows, _)| !rows.is_empty())
        .count()
}

/// The layer on the host with the host path's semantics.
fn reference(
    layer: &HostLayer,
    x: &[f32],
    logits: &[f32],
    rule: &RouteRule<'_>,
    shared: Option<&(Vec<f32>, Vec<f32>)>,
    (dtype, sum_f32): (DType, bool),
) -> Vec<f32> {
    // Each weight, product and running sum rounds to `steps`; the sum to the dtype.
    let steps = if sum_f32 { DType::F32 } else { dtype };
    let (hidden, inter) = (layer.hidden, layer.inter);
    let experts = layer.gate_up.len();
    let routes = route(logits, experts, rule);
    let tokens = x.len() / hidden;
    // Per token, its (expert, weight) pairs in expert order.
    let mut per_token = vec![Vec::new(); tokens];
    for (e, (rows, weights)) in routes.iter().enumerate() {
        for (&t, &w) in rows.iter().zip(weights) {
            per_token[t].push((e, w));
        }
    }
    let dot = |a: &[f32], b: &[f32]| -> f32 {
        a.iter()
            .zip(b)
            .map(|(&p, &q)| p as f64 * q as f64)
            .sum::<f64>() as f32
    };
    (0..tokens)
        .into_par_iter()
        .flat_map_iter(|t| {
            let mut acc = vec![0f32; hidden];
            for &(e, w) in &per_token[t] {
                // Llama 4: the weight scales the expert's input (rounded as transformers'
                // `hidden * score`), and the output adds up as it is.
                let (xs, w): (Vec<f32>, f32) = if rule.scoring.scales_input() {
                    let w = dtype.round(w);
                    let x = x[t * hidden..(t + 1) * hidden].iter();
                    (x.map(|&v| dtype.round(v * w)).collect(), 1.0)
                } else {
                    (x[t * hidden..(t + 1) * hidden].to_vec(), w)
                };
                let xt = &xs[..];
                let gu = &layer.gate_up[e];
                let bias = |which: usize, i: usize| -> f32 {
                    layer.biases.as_ref().map_or(0.0, |b| {
                        if which == 0 {
                            b.0[e][i]
                        } else {
                            b.1[e][i]
                        }
                    })
                };
                let act: Vec<f32> = (0..inter)
                    .map(|c| {
                        let row = |r: usize| &gu[r * hidden..(r + 1) * hidden];
                        // The first row (an ungated expert's up row), and a gated one's up.
                        let g = dtype.round(dot(xt, row(c)) + bias(0, c));
                        let u = || dtype.round(dot(xt, row(inter + c)) + bias(0, inter + c));
                        dtype.round(match layer.activation {
                            ExpertActivation::SwiGlu => g / (1.0 + (-g).exp()) * u(),
                            ExpertActivation::ClampedSwiGlu { limit, alpha } => {
                                let (g, u) = (g.min(limit), u().clamp(-limit, limit));
                                (u + 1.0) * (g / (1.0 + (-alpha * g).exp()))
                            }
                            ExpertActivation::Relu2 => g.max(0.0) * g.max(0.0),
                        })
                    })
                    .collect();
                let w = steps.round(w);
                for (j, a) in acc.iter_mut().enumerate() {
                    let down_row = &layer.down[e][j * inter..(j + 1) * inter];
                    let y = dtype.round(dot(&act, down_row) + bias(1, j));
                    *a = steps.round(*a + steps.round(y * w));
                }
            }
            acc.iter_mut().for_each(|a| *a = dtype.round(*a));
            if let Some((out, gate)) = shared {
                let g = dtype.round(1.0 / (1.0 + (-gate[t]).exp()));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = dtype.round(*a + dtype.round(out[t * hidden + j] * g));
                }
            }
            acc
        })
        .collect()
}
