//! Host routing of a mixture-of-experts layer: each token's experts and weights from its
//! router logits. The CUDA backend's prefill path and the host path run it once per layer
//! on every token of the step, so it is built for batches of thousands of rows: each row's
//! top k by partial selection (not a sort of all experts) with scratch buffers reused across
//! rows, and rows spread over threads. The choice (ties to the lower expert) and the f32
//! arithmetic are those of a full sort, row by row (a test checks them bit for bit against
//! that).

use super::moe::{RouteRule, RouterScoring};
use super::DType;
use rayon::prelude::*;
use std::cmp::Ordering;

/// Rows below this are routed on the calling thread (a decode step's few tokens).
const PARALLEL_MIN_ROWS: usize = 64;

/// For each expert, the rows routed to it and their weights, by `rule`'s scoring of the
/// experts' logits (`[rows, experts]`, f32). [`RouterScoring::Softmax`]: per row, a softmax
/// over the logits, its `top_k` largest (ties to the lower expert), rescaled to sum to one
/// when `normalize`.
pub fn route(
    logits: &[f32],
    num_experts: usize,
    rule: &RouteRule<'_>,
) -> Vec<(Vec<usize>, Vec<f32>)> {
    let top_k = rule.top_k.min(num_experts);
    let picks = match rule.scoring {
        RouterScoring::Softmax => pick_rows(logits, num_experts, top_k, |row, s, out| {
            softmax_row(row, rule.normalize, s, out)
        }),
        RouterScoring::SigmoidGrouped {
            groups,
            top_groups,
            scale,
        } => {
            let g = Groups::new(groups, top_groups, num_experts);
            let bias = rule.correction_bias.unwrap_or(&[]);
            pick_rows(logits, num_experts, top_k, |row, s, out| {
                sigmoid_grouped_row(row, &g, bias, (rule.normalize, scale), s, out)
            })
        }
        RouterScoring::SoftmaxGrouped {
            groups,
            top_groups,
            scale,
        } => {
            let g = Groups::new(groups, top_groups, num_experts);
            let bias = rule.correction_bias.unwrap_or(&[]);
            pick_rows(logits, num_experts, top_k, |row, s, out| {
                softmax_grouped_row(row, &g, bias, (rule.normalize, scale), s, out)
            })
        }
        RouterScoring::SigmoidInDtype { scale } => {
            let bias = rule.correction_bias.unwrap_or(&[]);
            pick_rows(logits, num_experts, top_k, |row, s, out| {
                sigmoid_in_dtype_row(row, bias, (rule.normalize, scale, rule.dtype), s, out)
            })
        }
        RouterScoring::SparseMixer { jitter_eps } => {
            pick_rows(logits, num_experts, top_k, |row, _, out| {
                sparse_mixer_row(row, jitter_eps, out)
            })
        }
        RouterScoring::SigmoidScaledInput => {
            pick_rows(logits, num_experts, top_k, |row, s, out| {
                top_logits_sigmoid_row(row, s, out)
            })
        }
    };
    let mut routes = vec![(Vec::new(), Vec::new()); num_experts];
    for (row, chosen) in picks.chunks(top_k.max(1)).enumerate() {
        for &(e, w) in chosen.iter().filter(|(e, _)| *e != NONE) {
            routes[e].0.push(row);
            routes[e].1.push(w);
        }
    }
    routes
}

/// An empty slot of a row's picks (a grouped router whose kept groups hold fewer than top k
/// experts).
const NONE: usize = usize::MAX;

/// A row's reusable buffers.
#[derive(Default)]
struct Scratch {
    values: Vec<f32>,
    scores: Vec<f32>,
    order: Vec<usize>,
}

/// Every row's `top_k` picks `(expert, weight)`, in choice order, `top_k` slots per row,
/// from `pick(row logits, scratch, slots)`; rows on several threads when there are many.
fn pick_rows<F>(logits: &[f32], num_experts: usize, top_k: usize, pick: F) -> Vec<(usize, f32)>
where
    F: Fn(&[f32], &mut Scratch, &mut [(usize, f32)]) + Sync,
{
    let rows = logits.len() / num_experts.max(1);
    let mut picks = vec![(NONE, 0.0f32); rows * top_k];
    if top_k == 0 || num_experts == 0 {
        return picks;
    }
    let row_logits = logits.chunks_exact(num_experts);
    if rows < PARALLEL_MIN_ROWS {
        let mut scratch = Scratch::default();
        for (row, out) in row_logits.zip(picks.chunks_mut(top_k)) {
            pick(row, &mut scratch, out);
        }
    } else {
        picks
            .par_chunks_mut(top_k)
            .zip(logits.par_chunks_exact(num_experts))
            .with_min_len(PARALLEL_MIN_ROWS / 4)
            .for_each_init(Scratch::default, |scratch, (out, row)| {
                pick(row, scratch, out)
            });
    }
    picks
}

/// `candidates` reordered so its first `k` are the `k` best by `better` (a total order), in
/// that order: the same as the first `k` of a full sort.
fn top_k_in_order(candidates: &mut [usize], k: usize, better: impl Fn(&usize, &usize) -> Ordering) {
    let k = k.min(candidates.len());
    if k == 0 {
        return;
    }
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, &better);
    }
    candidates[..k].sort_by(&better);
}

/// Higher `values` first, ties to the lower index.
fn by_value<'a>(values: &'a [f32]) -> impl Fn(&usize, &usize) -> Ordering + 'a {
    move |&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b))
}

fn softmax_row(row: &[f32], normalize: bool, s: &mut Scratch, out: &mut [(usize, f32)]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    s.values.clear();
    s.values.extend(row.iter().map(|&l| (l - max).exp()));
    let total: f32 = s.values.iter().sum();
    s.order.clear();
    s.order.extend(0..row.len());
    top_k_in_order(&mut s.order, out.len(), by_value(&s.values));
    let chosen = &s.order[..out.len()];
    let kept: f32 = chosen.iter().map(|&e| s.values[e] / total).sum();
    for (slot, &e) in out.iter_mut().zip(chosen) {
        let p = s.values[e] / total;
        *slot = (e, if normalize { p / kept } else { p });
    }
}

/// [`RouterScoring::SigmoidScaledInput`]'s choice: the best logits (ties to the lower
/// expert), each weighted by its sigmoid.
fn top_logits_sigmoid_row(row: &[f32], s: &mut Scratch, out: &mut [(usize, f32)]) {
    s.order.clear();
    s.order.extend(0..row.len());
    top_k_in_order(&mut s.order, out.len(), by_value(row));
    for (slot, &e) in out.iter_mut().zip(&s.order) {
        *slot = (e, 1.0 / (1.0 + (-row[e]).exp()));
    }
}

/// [`RouterScoring::SparseMixer`] as transformers' `sparsemixer` runs it at inference, in
/// its order of operations: pick `i` = the best logit `m` among the experts still in play;
/// an expert `e` stays in its softmax unless `(m - l_e) / max(|l_e|, m) > 2 eps`; `i`'s
/// weight is its probability in that softmax. The second pick repeats this without the
/// first expert. `out` has room for the two picks (fewer slots take fewer).
fn sparse_mixer_row(row: &[f32], jitter_eps: f32, out: &mut [(usize, f32)]) {
    let mut taken: Option<usize> = None;
    for slot in out.iter_mut() {
        let in_play = |e: usize| Some(e) != taken;
        // The best in play, ties to the lower expert (torch's max keeps the first).
        let Some(best) =
            (0..row.len())
                .filter(|&e| in_play(e))
                .reduce(|a, b| if row[b] > row[a] { b } else { a })
        else {
            return;
        };
        let m = row[best];
        // Written as the comparison transformers makes: a NaN ratio (a zero best logit
        // over a zero logit) masks nothing.
        let masked = |e: usize| (m - row[e]) / row[e].abs().max(m) > 2.0 * jitter_eps;
        let total: f32 = (0..row.len())
            .filter(|&e| in_play(e) && !masked(e))
            .map(|e| (row[e] - m).exp())
            .sum();
        *slot = (best, 1.0 / total);
        taken = Some(best);
    }
}

/// A grouped router's groups: `count` equal groups of `per_group` experts, `top` kept.
struct Groups {
    count: usize,
    per_group: usize,
    top: usize,
}

impl Groups {
    fn new(groups: usize, top_groups: usize, num_experts: usize) -> Self {
        let count = groups.max(1);
        Groups {
            count,
            per_group: num_experts / count,
            top: top_groups,
        }
    }

    /// Whether the groups are ranked at all (one group, or groups of no experts, keep all).
    fn ranked(&self) -> bool {
        self.count > 1 && self.per_group > 0
    }
}

/// Per group, whether it is among the `top` best by `rank(group)` (ties to the lower group).
fn kept_groups(g: &Groups, rank: impl Fn(usize) -> f32) -> Vec<bool> {
    let ranks: Vec<f32> = (0..g.count).map(rank).collect();
    let mut order: Vec<usize> = (0..g.count).collect();
    order.sort_by(by_value(&ranks));
    let mut kept = vec![false; g.count];
    for &grp in &order[..g.top.clamp(1, g.count)] {
        kept[grp] = true;
    }
    kept
}

/// The sum of the two largest of `values` (of one if there is one), as the sum of the first
/// two of a descending sort.
fn two_best_sum(values: &[f32]) -> f32 {
    let (mut best, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in values {
        if v.total_cmp(&best) == Ordering::Greater {
            second = best;
            best = v;
        } else if v.total_cmp(&second) == Ordering::Greater {
            second = v;
        }
    }
    [best, second][..values.len().min(2)].iter().sum()
}

/// [`RouterScoring::SigmoidGrouped`], step for step as transformers' `Glm4MoeTopkRouter`:
/// experts outside the chosen groups compete with a biased score of 0 (not minus
/// infinity), so a chosen group's experts with negative biased scores can lose to them, as
/// there.
fn sigmoid_grouped_row(
    row: &[f32],
    g: &Groups,
    bias: &[f32],
    (normalize, scale): (bool, f32),
    s: &mut Scratch,
    out: &mut [(usize, f32)],
) {
    biased_sigmoid_scores(row, bias, DType::F32, s);
    if g.ranked() {
        // A group's rank: the sum of its two best biased scores.
        let choice = &s.values;
        let kept = kept_groups(g, |grp| {
            two_best_sum(&choice[grp * g.per_group..(grp + 1) * g.per_group])
        });
        for (e, c) in s.values.iter_mut().enumerate() {
            if !kept[e / g.per_group] {
                *c = 0.0;
            }
        }
    }
    s.order.clear();
    s.order.extend(0..row.len());
    top_k_in_order(&mut s.order, out.len(), by_value(&s.values));
    let chosen = &s.order[..out.len()];
    let total: f32 = chosen.iter().map(|&e| s.scores[e]).sum::<f32>() + 1e-20;
    for (slot, &e) in out.iter_mut().zip(chosen) {
        let weight = if normalize {
            s.scores[e] / total
        } else {
            s.scores[e]
        };
        *slot = (e, weight * scale);
    }
}

/// Each expert's sigmoid score (rounded to `dtype`) into `s.scores`, plus its `bias` (in
/// f32) into `s.values`, the sigmoid routers' choice values.
fn biased_sigmoid_scores(row: &[f32], bias: &[f32], dtype: DType, s: &mut Scratch) {
    s.scores.clear();
    s.scores
        .extend(row.iter().map(|&l| dtype.round(1.0 / (1.0 + (-l).exp()))));
    s.values.clear();
    s.values.extend(
        s.scores
            .iter()
            .enumerate()
            .map(|(e, &sc)| sc + bias.get(e).copied().unwrap_or(0.0)),
    );
}

/// [`RouterScoring::SigmoidInDtype`], as LFM2-MoE's router computes it: each sigmoid score
/// rounded to `dtype`, the choice by score plus `bias` (in f32), the chosen scores
/// renormalised by their sum plus 1e-6 and scaled, each step rounded to `dtype`.
fn sigmoid_in_dtype_row(
    row: &[f32],
    bias: &[f32],
    (normalize, scale, dtype): (bool, f32, DType),
    s: &mut Scratch,
    out: &mut [(usize, f32)],
) {
    // The bias stays in f32 (transformers keeps the buffer so), and so does the sum.
    biased_sigmoid_scores(row, bias, dtype, s);
    s.order.clear();
    s.order.extend(0..row.len());
    top_k_in_order(&mut s.order, out.len(), by_value(&s.values));
    let chosen = &s.order[..out.len()];
    let sum = dtype.round(chosen.iter().map(|&e| s.scores[e]).sum::<f32>());
    let total = dtype.round(sum + 1e-6);
    for (slot, &e) in out.iter_mut().zip(chosen) {
        let weight = if normalize {
            dtype.round(s.scores[e] / total)
        } else {
            s.scores[e]
        };
        *slot = (e, dtype.round(weight * scale));
    }
}

/// [`RouterScoring::SoftmaxGrouped`], as DeepSeek-V2's `group_limited_greedy`: the softmax
/// of the row, the groups ranked by their best probability, the experts of the other groups
/// out of the running. With a correction `bias` (ERNIE 4.5's `moe_statics`), experts and
/// groups are chosen by probability plus bias, and weighed by probability alone.
fn softmax_grouped_row(
    row: &[f32],
    g: &Groups,
    bias: &[f32],
    (normalize, scale): (bool, f32),
    s: &mut Scratch,
    out: &mut [(usize, f32)],
) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    s.values.clear();
    s.values.extend(row.iter().map(|&l| (l - max).exp()));
    let total: f32 = s.values.iter().sum();
    s.scores.clear();
    s.scores.extend(s.values.iter().map(|&e| e / total));
    let probs = &s.scores;
    // The choice's scores, in `values` (the exponentials are spent).
    s.values.clear();
    s.values.extend(
        probs
            .iter()
            .enumerate()
            .map(|(e, &p)| p + bias.get(e).copied().unwrap_or(0.0)),
    );
    let choice = &s.values;
    let kept = if g.ranked() {
        kept_groups(g, |grp| {
            choice[grp * g.per_group..(grp + 1) * g.per_group]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        })
    } else {
        vec![true; g.count]
    };
    s.order.clear();
    s.order
        .extend((0..row.len()).filter(|&e| kept[(e / g.per_group.max(1)).min(g.count - 1)]));
    let k = out.len().min(s.order.len());
    top_k_in_order(&mut s.order, k, by_value(choice));
    let chosen = &s.order[..k];
    let kept_mass: f32 = chosen.iter().map(|&e| probs[e]).sum();
    for (slot, &e) in out.iter_mut().zip(chosen) {
        let weight = if normalize {
            probs[e] / kept_mass
        } else {
            probs[e]
        };
        *slot = (e, weight * scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SparseMixer keeps only the experts near each pick in that pick's softmax: here the
    /// first pick's softmax holds experts 0, 1 and 3 (expert 2 is too far below), the
    /// second's, without expert 0, holds 3 and 1.
    #[test]
    fn sparse_mixer_weights_each_pick_by_its_near_rivals() {
        let logits = [1.0f32, 0.9, -0.5, 0.95, 0.3, 0.2];
        let rule = RouteRule {
            top_k: 2,
            normalize: false,
            scoring: RouterScoring::SparseMixer { jitter_eps: 0.1 },
            correction_bias: None,
            dtype: DType::F32,
        };
        let routes = route(&logits, 6, &rule);
        let first = 1.0 / (1.0 + (-0.1f32).exp() + (-0.05f32).exp());
        let second = 1.0 / (1.0 + (-0.05f32).exp());
        assert_eq!(routes[0].0, [0]);
        assert_eq!(routes[3].0, [0]);
        assert!((routes[0].1[0] - first).abs() < 1e-6, "{routes:?}");
        assert!((routes[3].1[0] - second).abs() < 1e-6, "{routes:?}");
        assert!(routes
            .iter()
            .enumerate()
            .all(|(e, r)| r.0.is_empty() || e == 0 || e == 3));
        // A tiny eps keeps each pick alone in its softmax: both weigh 1.
        let alone = RouteRule {
            scoring: RouterScoring::SparseMixer { jitter_eps: 1e-4 },
            ..rule
        };
        let routes = route(&logits, 6, &alone);
        assert_eq!((routes[0].1[0], routes[3].1[0]), (1.0, 1.0));
    }

    /// Llama 4's router: the best logits choose, each weighted by its own sigmoid (not a
    /// softmax over the experts, not renormalised).
    /// LFM2-MoE's router in bf16: scores that round to the same bf16 value tie, and the
    /// bias breaks the tie; the weights are the rounded scores renormalised in bf16.
    #[test]
    fn sigmoid_in_dtype_routing_rounds_its_scores() {
        // sigmoid(0.001) and sigmoid(0.002) both round to 0.5 in bf16.
        let logits = [0.002f32, 0.001, -3.0, 2.0];
        let bias = [0.0f32, 0.01, 0.0, -1.0];
        let rule = RouteRule {
            top_k: 2,
            normalize: true,
            scoring: RouterScoring::SigmoidInDtype { scale: 2.0 },
            correction_bias: Some(&bias),
            dtype: DType::BF16,
        };
        let routes = route(&logits, 4, &rule);
        // Expert 1 wins the tie by its bias, expert 3 (0.88 - 1) loses to expert 0.
        assert_eq!((routes[0].0.len(), routes[1].0.len()), (1, 1));
        assert!(routes[3].0.is_empty() && routes[2].0.is_empty());
        // 0.5 / (0.5 + 0.5) * 2, each step in bf16.
        assert_eq!((routes[0].1[0], routes[1].1[0]), (1.0, 1.0));
        // In f32 the unrounded scores differ: expert 0's weight is above expert 1's.
        let f32_routes = route(
            &logits,
            4,
            &RouteRule {
                dtype: DType::F32,
                ..rule
            },
        );
        assert!(f32_routes[0].1[0] > f32_routes[1].1[0]);
    }

    #[test]
    fn sigmoid_scaled_input_weighs_each_top_logit_by_its_sigmoid() {
        let logits = [0.5f32, 2.0, -1.0, 2.0];
        let rule = RouteRule::sigmoid_scaled_input(1);
        let routes = route(&logits, 4, &rule);
        // A tie goes to the lower expert.
        assert_eq!(routes[1], (vec![0], vec![1.0 / (1.0 + (-2f32).exp())]));
        assert!(routes[3].0.is_empty());
        let two = route(&logits, 4, &RouteRule { top_k: 2, ..rule });
        assert_eq!(two[3].1, vec![1.0 / (1.0 + (-2f32).exp())]);
        assert!(two[0].0.is_empty() && two[2].0.is_empty());
    }

    // The routing as it was before partial selection (a full sort of every row), the
    // oracle for the choice and the f32 arithmetic.
    fn reference_route(
        logits: &[f32],
        num_experts: usize,
        rule: &RouteRule<'_>,
    ) -> Vec<(Vec<usize>, Vec<f32>)> {
        let (top_k, normalize) = (rule.top_k, rule.normalize);
        match rule.scoring {
            RouterScoring::Softmax => {}
            // Have no full-sort form: their tests check them by hand.
            RouterScoring::SparseMixer { .. } | RouterScoring::SigmoidInDtype { .. } => {
                return route(logits, num_experts, rule)
            }
            RouterScoring::SigmoidScaledInput => {
                let mut routes = vec![(Vec::new(), Vec::new()); num_experts];
                for (row, scores) in logits.chunks_exact(num_experts).enumerate() {
                    let mut order: Vec<usize> = (0..num_experts).collect();
                    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                    for &e in &order[..top_k] {
                        routes[e].0.push(row);
                        routes[e].1.push(1.0 / (1.0 + (-scores[e]).exp()));
                    }
                }
                return routes;
            }
            RouterScoring::SigmoidGrouped {
                groups,
                top_groups,
                scale,
            }
            | RouterScoring::SoftmaxGrouped {
                groups,
                top_groups,
                scale,
            } => {
                let grouped = GroupedScoring {
                    groups,
                    top_groups,
                    scale,
                    correction_bias: rule.correction_bias.unwrap_or(&[]),
                };
                return if matches!(rule.scoring, RouterScoring::SigmoidGrouped { .. }) {
                    route_sigmoid_grouped(logits, num_experts, top_k, normalize, &grouped)
                } else {
                    route_softmax_grouped(logits, num_experts, top_k, normalize, &grouped)
                };
            }
        }
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

    struct GroupedScoring<'a> {
        groups: usize,
        top_groups: usize,
        scale: f32,
        correction_bias: &'a [f32],
    }

    fn route_sigmoid_grouped(
        logits: &[f32],
        num_experts: usize,
        top_k: usize,
        normalize: bool,
        g: &GroupedScoring<'_>,
    ) -> Vec<(Vec<usize>, Vec<f32>)> {
        let groups = g.groups.max(1);
        let per_group = num_experts / groups;
        let bias = |e: usize| g.correction_bias.get(e).copied().unwrap_or(0.0);
        let mut routes = vec![(Vec::new(), Vec::new()); num_experts];
        for (row, row_logits) in logits.chunks_exact(num_experts).enumerate() {
            let scores: Vec<f32> = row_logits
                .iter()
                .map(|&l| 1.0 / (1.0 + (-l).exp()))
                .collect();
            let mut choice: Vec<f32> = (0..num_experts).map(|e| scores[e] + bias(e)).collect();
            if groups > 1 && per_group > 0 {
                // A group's rank: the sum of its two best biased scores.
                let group_score = |grp: usize| {
                    let mut members: Vec<f32> =
                        choice[grp * per_group..(grp + 1) * per_group].to_vec();
                    members.sort_by(|a, b| b.total_cmp(a));
                    members.iter().take(2).sum::<f32>()
                };
                let ranks: Vec<f32> = (0..groups).map(group_score).collect();
                let kept = kept_groups(&ranks, g.top_groups);
                for (e, c) in choice.iter_mut().enumerate() {
                    if !kept[e / per_group] {
                        *c = 0.0;
                    }
                }
            }
            let mut order: Vec<usize> = (0..num_experts).collect();
            order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]).then(a.cmp(&b)));
            let chosen = &order[..top_k];
            let total: f32 = chosen.iter().map(|&e| scores[e]).sum::<f32>() + 1e-20;
            for &e in chosen {
                let weight = if normalize {
                    scores[e] / total
                } else {
                    scores[e]
                };
                routes[e].0.push(row);
                routes[e].1.push(weight * g.scale);
            }
        }
        routes
    }

    fn kept_groups(ranks: &[f32], top: usize) -> Vec<bool> {
        let mut order: Vec<usize> = (0..ranks.len()).collect();
        order.sort_by(|&a, &b| ranks[b].total_cmp(&ranks[a]).then(a.cmp(&b)));
        let mut kept = vec![false; ranks.len()];
        for &grp in &order[..top.clamp(1, ranks.len())] {
            kept[grp] = true;
        }
        kept
    }

    fn route_softmax_grouped(
        logits: &[f32],
        num_experts: usize,
        top_k: usize,
        normalize: bool,
        g: &GroupedScoring<'_>,
    ) -> Vec<(Vec<usize>, Vec<f32>)> {
        let groups = g.groups.max(1);
        let per_group = num_experts / groups;
        let mut routes = vec![(Vec::new(), Vec::new()); num_experts];
        for (row, row_logits) in logits.chunks_exact(num_experts).enumerate() {
            let max = row_logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row_logits.iter().map(|&l| (l - max).exp()).collect();
            let total: f32 = exps.iter().sum();
            let probs: Vec<f32> = exps.iter().map(|&e| e / total).collect();
            let bias = |e: usize| g.correction_bias.get(e).copied().unwrap_or(0.0);
            let choice: Vec<f32> = probs
                .iter()
                .enumerate()
                .map(|(e, &p)| p + bias(e))
                .collect();
            let mut kept_group = vec![true; groups];
            if groups > 1 && per_group > 0 {
                let best = |grp: usize| {
                    choice[grp * per_group..(grp + 1) * per_group]
                        .iter()
                        .copied()
                        .fold(f32::NEG_INFINITY, f32::max)
                };
                let ranks: Vec<f32> = (0..groups).map(best).collect();
                kept_group = kept_groups(&ranks, g.top_groups);
            }
            let mut order: Vec<usize> = (0..num_experts)
                .filter(|&e| kept_group[(e / per_group.max(1)).min(groups - 1)])
                .collect();
            order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]).then(a.cmp(&b)));
            let chosen = &order[..top_k.min(order.len())];
            let kept: f32 = chosen.iter().map(|&e| probs[e]).sum();
            for &e in chosen {
                let weight = if normalize { probs[e] / kept } else { probs[e] };
                routes[e].0.push(row);
                routes[e].1.push(weight * g.scale);
            }
        }
        routes
    }

    /// Logits on a coarse grid (many ties) or spread, deterministic.
    fn logits(rows: usize, experts: usize, seed: u64, coarse: bool) -> Vec<f32> {
        (0..(rows * experts) as u64)
            .map(|i| {
                let h = (i ^ seed)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(23);
                let u = (h >> 40) as f32 / (1u64 << 24) as f32;
                if coarse {
                    (u * 6.0).floor() - 3.0
                } else {
                    u * 8.0 - 4.0
                }
            })
            .collect()
    }

    fn same(a: &[(Vec<usize>, Vec<f32>)], b: &[(Vec<usize>, Vec<f32>)]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|((ra, wa), (rb, wb))| {
                ra == rb
                    && wa.len() == wb.len()
                    && wa.iter().zip(wb).all(|(x, y)| x.to_bits() == y.to_bits())
            })
    }

    #[test]
    fn partial_selection_routes_exactly_as_a_full_sort() {
        let bias: Vec<f32> = logits(1, 256, 7, false).iter().map(|v| v * 0.05).collect();
        let scorings = [
            RouterScoring::Softmax,
            RouterScoring::SigmoidGrouped {
                groups: 8,
                top_groups: 4,
                scale: 2.5,
            },
            RouterScoring::SigmoidGrouped {
                groups: 1,
                top_groups: 1,
                scale: 1.0,
            },
            RouterScoring::SoftmaxGrouped {
                groups: 8,
                top_groups: 3,
                scale: 16.0,
            },
            RouterScoring::SoftmaxGrouped {
                groups: 4,
                top_groups: 1,
                scale: 1.0,
            },
            // ERNIE 4.5's: one group, the bias steering the choice only.
            RouterScoring::SoftmaxGrouped {
                groups: 1,
                top_groups: 1,
                scale: 1.0,
            },
            RouterScoring::SigmoidScaledInput,
        ];
        // Rows on one thread (3) and on several (300); 64 and 256 experts; ties and not.
        for (rows, experts, top_k) in [(3, 64, 8), (300, 64, 6), (300, 256, 8)] {
            for coarse in [true, false] {
                let x = logits(rows, experts, rows as u64 * 31 + experts as u64, coarse);
                for scoring in scorings {
                    for normalize in [true, false] {
                        let rule = RouteRule {
                            top_k,
                            normalize,
                            scoring,
                            correction_bias: Some(&bias[..experts]),
                            dtype: DType::F32,
                        };
                        assert!(
                            same(
                                &route(&x, experts, &rule),
                                &reference_route(&x, experts, &rule)
                            ),
                            "{rows} rows, {experts} experts, top {top_k}, {scoring:?}, \
                             normalize {normalize}, coarse {coarse}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn two_best_sum_is_the_sorted_sum() {
        assert_eq!(two_best_sum(&[1.0, 3.0, 2.0]), 5.0);
        assert_eq!(two_best_sum(&[4.0]), 4.0);
        assert_eq!(two_best_sum(&[-1.0, -1.0, -5.0]), -2.0);
    }
}
