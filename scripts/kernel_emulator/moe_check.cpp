// Runs the device-routed mixture-of-experts kernels on the CPU through cuda_emu.h:
//
// * moe_route (kernels/moe.cu) against the host's routing (src/backend/moe.rs `route`,
//   transcribed: softmax in f32, the top_k largest with ties to the lower expert, optional
//   renormalisation), output sorted by expert: the same experts exactly, weights within
//   8 + experts / 4 f32 ulps (the warp sums the softmax's denominator in another order). Expert counts
//   of real models (8, 60, 128) and the kernel's limit (512), ties, every dtype.
//   Its work items must partition the pairs by expert (each pair once, in its expert's
//   items, at most GEMV_EXPERT_ROWS per item, unused items cleared).
// * gemv_expert_swiglu / gemv_expert (kernels/gemv.cu), with expert addresses in a table as
//   src/backend/cuda/moe.rs builds it and work items grouped on the host: each pair's row
//   must equal gemv1 run on that one row with that expert's weights (then silu_mul for the
//   SwiGLU, or relu(v)^2 of the rounded value for Nemotron 3's ungated experts) bit for bit.
// * moe_combine against the host's weighted_row_sum loop (src/backend/mod.rs), shared
//   expert included, expert outputs in pair order or grouped (through a pair-row map):
//   bit for bit.
//
//   moe_check      exit status 1 if any case is off
#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "activation.cu"
#include "gemv.cu"
#include "moe.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "emu_tensor.h"

namespace {

using kiln_emu::Order;
using kiln_emu_tensor::Buffer;
using kiln_emu_tensor::DType;
using kiln_emu_tensor::dtype_name;
using kiln_emu_tensor::round_to;

std::mt19937 rng(23);
int failures = 0;
int cases = 0;

std::vector<float> random(DType d, size_t n, float range) {
    return kiln_emu_tensor::random_values(n, range, d, rng);
}

void report(bool ok, const char* what) {
    failures += ok ? 0 : 1;
    ++cases;
    std::printf("%s  %s\n", ok ? "ok  " : "FAIL", what);
}

// The host's route for one row: (expert, weight) pairs sorted by expert.
std::vector<std::pair<int, float>> host_route(const std::vector<float>& s, int top_k,
                                              bool normalize) {
    const int n = static_cast<int>(s.size());
    float mx = -INFINITY;
    for (float v : s) mx = std::max(mx, v);
    std::vector<float> exps(n);
    float total = 0.0f;
    for (int e = 0; e < n; ++e) {
        exps[e] = std::exp(s[e] - mx);
        total += exps[e];
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return exps[a] > exps[b]; });
    std::vector<std::pair<int, float>> chosen;
    float kept = 0.0f;
    for (int r = 0; r < top_k; ++r) {
        chosen.push_back({order[r], exps[order[r]] / total});
        kept += chosen.back().second;
    }
    if (normalize) {
        for (auto& c : chosen) c.second /= kept;
    }
    std::sort(chosen.begin(), chosen.end());
    return chosen;
}

// GLM-4.5's router (src/backend/moe.rs `route_sigmoid_grouped`, transcribed): sigmoid
// scores, the choice by score plus bias among the best `top_groups` groups (a group ranks by
// its two best biased scores, ties to the lower group; other groups' experts compete with
// 0), the top_k largest choices (ties to the lower expert), weights the chosen scores over
// their sum plus 1e-20 when `normalize`, times `scale`. Sorted by expert.
struct Grouped {
    std::vector<float> bias;
    int groups;
    int top_groups;
    float scale;
    // LFM2-MoE's router (src/backend/moe_route.rs `sigmoid_in_dtype_row`): the scores rounded
    // to the dtype before the bias, the weights over their rounded sum plus 1e-6, scaled,
    // each step rounded.
    bool in_dtype = false;
};

std::vector<std::pair<int, float>> host_route_grouped(const std::vector<float>& s, int top_k,
                                                      bool normalize, const Grouped& g, DType d) {
    const int n = static_cast<int>(s.size());
    const int per_group = n / g.groups;
    auto round = [&](float v) { return g.in_dtype ? static_cast<float>(round_to(d, v)) : v; };
    std::vector<float> score(n), choice(n);
    for (int e = 0; e < n; ++e) {
        score[e] = round(1.0f / (1.0f + std::exp(-s[e])));
        choice[e] = score[e] + g.bias[e];
    }
    if (g.groups > 1) {
        std::vector<float> rank(g.groups);
        for (int grp = 0; grp < g.groups; ++grp) {
            std::vector<float> members(choice.begin() + grp * per_group,
                                       choice.begin() + (grp + 1) * per_group);
            std::sort(members.begin(), members.end(), std::greater<float>());
            rank[grp] = 0.0f;
            for (size_t i = 0; i < std::min<size_t>(2, members.size()); ++i) rank[grp] += members[i];
        }
        std::vector<int> order(g.groups);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return rank[a] > rank[b]; });
        for (int e = 0; e < n; ++e) {
            const bool kept = std::find(order.begin(), order.begin() + g.top_groups, e / per_group) !=
                              order.begin() + g.top_groups;
            if (!kept) choice[e] = 0.0f;
        }
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return choice[a] > choice[b]; });
    float total = 0.0f;
    for (int r = 0; r < top_k; ++r) total += score[order[r]];
    total = round(round(total) + (g.in_dtype ? 1e-6f : 1e-20f));
    std::vector<std::pair<int, float>> chosen;
    for (int r = 0; r < top_k; ++r) {
        const int e = order[r];
        chosen.push_back({e, round((normalize ? round(score[e] / total) : score[e]) * g.scale)});
    }
    std::sort(chosen.begin(), chosen.end());
    return chosen;
}

using RouteFn = void (*)(const void*, int*, float*, int*, int*, int*, int, int, int, int, int,
                         const float*, int, int, float, int);

int max_items(int pairs, int experts) {
    return (pairs + GEMV_EXPERT_ROWS - 1) / GEMV_EXPERT_ROWS + std::min(experts, pairs);
}

// The work items must partition the pairs: each pair in exactly one item, of its own
// expert, in pair order within an expert, at most GEMV_EXPERT_ROWS per item; items past the
// used ones have no rows.
size_t item_errors(const std::vector<int>& ids, const std::vector<int>& item_expert,
                   const std::vector<int>& item_rows, const std::vector<int>& item_pairs) {
    size_t errors = 0;
    std::vector<int> seen(ids.size(), 0);
    std::vector<int> last(1024, -1);
    bool ended = false;
    for (size_t i = 0; i < item_rows.size(); ++i) {
        const int rows = item_rows[i];
        if (rows == 0) {
            ended = true;
            continue;
        }
        if (ended || rows < 0 || rows > GEMV_EXPERT_ROWS) {
            ++errors;
            continue;
        }
        for (int m = 0; m < rows; ++m) {
            const int p = item_pairs[i * GEMV_EXPERT_ROWS + m];
            if (p < 0 || p >= static_cast<int>(ids.size())) {
                ++errors;
                continue;
            }
            ++seen[p];
            const int e = item_expert[i];
            errors += ids[p] == e ? 0 : 1;
            errors += p > last[e] ? 0 : 1;
            last[e] = p;
        }
    }
    for (int n : seen) errors += n == 1 ? 0 : 1;
    return errors;
}

void check_route(DType d, int tokens, int experts, int top_k, bool normalize, bool ties,
                 Order order, const Grouped* grouped = nullptr) {
    std::vector<float> logits = random(d, static_cast<size_t>(tokens) * experts, 4.0f);
    if (ties) {
        // Runs of equal logits across lanes and within a lane, among the largest.
        for (int t = 0; t < tokens; ++t) {
            for (int e = 0; e < experts; e += 3) logits[static_cast<size_t>(t) * experts + e] = round_to(d, 3.5f);
        }
    }
    Buffer lb(d, logits);
    const int pairs = tokens * top_k;
    const int items = max_items(pairs, experts);
    std::vector<int> ids(pairs, -1);
    std::vector<float> weights(pairs, NAN);
    // Garbage where the kernel must write: it has to clear unused items itself.
    std::vector<int> item_expert(items, -7), item_rows(items, -7), item_pairs(items * GEMV_EXPERT_ROWS, -7);
    auto route = KILN_PICK(RouteFn, moe_route, d);
    kiln_emu::launch({1, 1, 1}, {MOE_ROUTE_THREADS, 1, 1}, order, 5, [&] {
        route(lb.data(), ids.data(), weights.data(), item_expert.data(), item_rows.data(),
              item_pairs.data(), tokens, experts, top_k, normalize ? 1 : 0, items,
              grouped ? grouped->bias.data() : nullptr, grouped ? grouped->groups : 1,
              grouped ? grouped->top_groups : 1, grouped ? grouped->scale : 1.0f,
              grouped && grouped->in_dtype ? 1 : 0);
    });
    size_t wrong_ids = 0;
    double worst = 0.0;
    for (int t = 0; t < tokens; ++t) {
        std::vector<float> row(experts);
        for (int e = 0; e < experts; ++e) row[e] = lb.at(static_cast<size_t>(t) * experts + e);
        const auto want = grouped ? host_route_grouped(row, top_k, normalize, *grouped, d)
                                  : host_route(row, top_k, normalize);
        for (int r = 0; r < top_k; ++r) {
            const size_t p = static_cast<size_t>(t) * top_k + r;
            wrong_ids += ids[p] == want[r].first ? 0 : 1;
            const double err = std::fabs(static_cast<double>(weights[p]) - want[r].second);
            // The denominator's f32 sum runs in another order: a few ulps per term. (The
            // grouped router sums in the host's order; its sigmoids may differ by an ulp.)
            const double bound = (8.0 + experts / 4.0) * 0x1p-24 * std::max(std::fabs(want[r].second), 1e-30f);
            worst = std::max(worst, std::isnan(err) ? INFINITY : err / bound);
        }
    }
    const size_t bad_items = item_errors(ids, item_expert, item_rows, item_pairs);
    char what[220];
    char kind[48] = "";
    if (grouped) std::snprintf(kind, sizeof kind, " sigmoid %d/%d groups", grouped->top_groups, grouped->groups);
    std::snprintf(what, sizeof what,
                  "moe_route tokens=%-2d experts=%-3d top_k=%-2d %-9s %-4s %-4s%s  %zu ids differ, worst weight err/bound %.3f, %zu item errors",
                  tokens, experts, top_k, normalize ? "normalize" : "", ties ? "ties" : "", dtype_name(d), kind,
                  wrong_ids, worst, bad_items);
    report(wrong_ids == 0 && worst <= 1.0 && bad_items == 0, what);
}

// The host's grouping of pairs into work items (any partition the kernel accepts).
void group(const std::vector<int>& ids, int experts, std::vector<int>& item_expert,
           std::vector<int>& item_rows, std::vector<int>& item_pairs) {
    const int items = max_items(static_cast<int>(ids.size()), experts);
    item_expert.assign(items, 0);
    item_rows.assign(items, 0);
    item_pairs.assign(static_cast<size_t>(items) * GEMV_EXPERT_ROWS, -1);
    int next = 0;
    for (int e = 0; e < experts; ++e) {
        int rank = 0;
        for (size_t p = 0; p < ids.size(); ++p) {
            if (ids[p] != e) continue;
            if (rank % GEMV_EXPERT_ROWS == 0) {
                item_expert[next] = e;
                ++next;
            }
            item_rows[next - 1] += 1;
            item_pairs[static_cast<size_t>(next - 1) * GEMV_EXPERT_ROWS + rank % GEMV_EXPERT_ROWS] = static_cast<int>(p);
            ++rank;
        }
    }
}

using ExpertFn = void (*)(void*, const void*, const unsigned long long*, const int*, const int*,
                         const int*, int, int, int, const void*, int, int, float, float);
using ClampedFn = void (*)(void*, const void*, long long, int, float, float);
using GemvFn = void (*)(void*, const void*, const void*, const void*, int, int, int, int);
using SiluMulFn = void (*)(void*, const void*, long long, int);

// Every pair of `tokens` tokens routed to `top_k` of `experts` experts (ids drawn at
// random, repeats across tokens included), through the expert kernels with a table of
// expert addresses, against gemv1 (+ silu_mul) per pair: bit for bit. `gpt_oss`: with
// per-expert biases and the clamped SwiGLU (limit 1.5, so many values clamp), against gemv1
// with the bias and clamped_swiglu. `relu2`: ungated experts (up rows alone), their up GEMV
// through the plain kernel with the ReLU² epilogue, against gemv1 and relu(v)^2 rounded.
void check_expert_gemv(DType d, int tokens, int top_k, int experts, int hidden, int inter,
                       Order order, bool gpt_oss = false, bool relu2 = false) {
    const float limit = 1.5f, alpha = 1.702f;
    // Rows of the first projection: gate and up, or up alone.
    const int first = relu2 ? inter : 2 * inter;
    Buffer gu_bias(d, random(d, static_cast<size_t>(experts) * 2 * inter, 1.0f));
    Buffer down_bias(d, random(d, static_cast<size_t>(experts) * hidden, 1.0f));
    const int has_bias = gpt_oss ? 1 : 0;
    const int pairs = tokens * top_k;
    std::vector<Buffer> gate_up, down;
    std::vector<unsigned long long> gate_up_table, down_table;
    for (int e = 0; e < experts; ++e) {
        gate_up.emplace_back(d, random(d, static_cast<size_t>(first) * hidden, 1.0f));
        down.emplace_back(d, random(d, static_cast<size_t>(hidden) * inter, 1.0f));
    }
    for (int e = 0; e < experts; ++e) {
        gate_up_table.push_back(reinterpret_cast<unsigned long long>(gate_up[e].data()));
        down_table.push_back(reinterpret_cast<unsigned long long>(down[e].data()));
    }
    std::vector<int> ids(pairs);
    std::uniform_int_distribution<int> pick(0, experts - 1);
    for (int& id : ids) id = pick(rng);
    Buffer x(d, random(d, static_cast<size_t>(tokens) * hidden, 2.0f));
    Buffer act = Buffer::unwritten(d, static_cast<size_t>(pairs) * inter);
    Buffer y = Buffer::unwritten(d, static_cast<size_t>(pairs) * hidden);
    auto swiglu = KILN_PICK(ExpertFn, gemv_expert_swiglu, d);
    auto plain = KILN_PICK(ExpertFn, gemv_expert, d);
    std::vector<int> item_expert, item_rows, item_pairs;
    group(ids, experts, item_expert, item_rows, item_pairs);
    const unsigned items = static_cast<unsigned>(item_rows.size());
    const unsigned per_block = GEMV_WARPS * GEMV_ROWS_PER_WARP;
    const unsigned gu_blocks = (first + per_block - 1) / per_block;
    const unsigned down_blocks = (hidden + per_block - 1) / per_block;
    kiln_emu::launch({gu_blocks, items, 1}, {GEMV_THREADS, 1, 1}, order, 7, [&] {
        if (relu2) {
            plain(act.data(), x.data(), gate_up_table.data(), item_expert.data(), item_rows.data(),
                  item_pairs.data(), top_k, inter, hidden, gu_bias.data(), 0, GEMV_ACT_RELU2, 0.0f,
                  0.0f);
        } else {
            swiglu(act.data(), x.data(), gate_up_table.data(), item_expert.data(),
                   item_rows.data(), item_pairs.data(), top_k, 2 * inter, hidden, gu_bias.data(),
                   has_bias, has_bias ? GEMV_ACT_CLAMPED : GEMV_ACT_NONE, limit, alpha);
        }
    });
    kiln_emu::launch({down_blocks, items, 1}, {GEMV_THREADS, 1, 1}, order, 9, [&] {
        plain(y.data(), act.data(), down_table.data(), item_expert.data(), item_rows.data(),
              item_pairs.data(), 1, hidden, inter, down_bias.data(), has_bias, 0, 0.0f, 0.0f);
    });
    // The reference: gemv1 on each pair's row alone, with its expert's weights.
    auto gemv1 = KILN_PICK(GemvFn, gemv1, d);
    auto silu = KILN_PICK(SiluMulFn, silu_mul, d);
    auto clamped = KILN_PICK(ClampedFn, clamped_swiglu, d);
    const std::vector<float> xs = x.values(), gub = gu_bias.values(), db = down_bias.values();
    // Expert e's bias rows, as the host path's linear reads them.
    auto bias_of = [&](const std::vector<float>& all, int e, int n) {
        return Buffer(d, std::vector<float>(all.begin() + static_cast<long>(e) * n,
                                            all.begin() + static_cast<long>(e + 1) * n));
    };
    const std::vector<float> acts = act.values();
    size_t act_differ = 0, y_differ = 0;
    for (int p = 0; p < pairs; ++p) {
        const int t = p / top_k;
        Buffer xr(d, std::vector<float>(xs.begin() + static_cast<long>(t) * hidden,
                                        xs.begin() + static_cast<long>(t + 1) * hidden));
        Buffer gu = Buffer::unwritten(d, first);
        Buffer gb = bias_of(gub, ids[p], 2 * inter), dbr = bias_of(db, ids[p], hidden);
        kiln_emu::launch({gu_blocks, 1, 1}, {GEMV_THREADS, 1, 1}, Order::Forward, 1, [&] {
            gemv1(gu.data(), xr.data(), gate_up[ids[p]].data(), gb.data(), 1, first, hidden, has_bias);
        });
        Buffer a = Buffer::unwritten(d, inter);
        if (relu2) {
            std::vector<float> relu2s(inter);
            for (int c = 0; c < inter; ++c) {
                const float v = std::max(gu.at(c), 0.0f);
                relu2s[c] = v * v;
            }
            a = Buffer(d, relu2s);  // rounded to the dtype as it is stored
        } else {
            kiln_emu::launch({1, 1, 1}, {64, 1, 1}, Order::Forward, 1, [&] {
                if (gpt_oss) {
                    clamped(a.data(), gu.data(), inter, inter, limit, alpha);
                } else {
                    silu(a.data(), gu.data(), inter, inter);
                }
            });
        }
        // The down GEMV from the kernel's own activation row (compared above).
        Buffer ar(d, std::vector<float>(acts.begin() + static_cast<long>(p) * inter,
                                        acts.begin() + static_cast<long>(p + 1) * inter));
        Buffer yr = Buffer::unwritten(d, hidden);
        kiln_emu::launch({down_blocks, 1, 1}, {GEMV_THREADS, 1, 1}, Order::Forward, 1, [&] {
            gemv1(yr.data(), ar.data(), down[ids[p]].data(), dbr.data(), 1, hidden, inter, has_bias);
        });
        for (int c = 0; c < inter; ++c) {
            const float got = act.at(static_cast<size_t>(p) * inter + c);
            act_differ += (got == a.at(c) && !std::isnan(got)) ? 0 : 1;
        }
        for (int c = 0; c < hidden; ++c) {
            const float got = y.at(static_cast<size_t>(p) * hidden + c);
            y_differ += (got == yr.at(c) && !std::isnan(got)) ? 0 : 1;
        }
    }
    char what[200];
    std::snprintf(what, sizeof what,
                  "gemv_expert(_swiglu)%s tokens=%d top_k=%d experts=%d hidden=%-4d inter=%-4d %-4s  %zu act, %zu y values differ from gemv1 per pair",
                  gpt_oss ? " gpt-oss" : relu2 ? " relu2" : "", tokens, top_k, experts, hidden, inter, dtype_name(d), act_differ, y_differ);
    report(act_differ == 0 && y_differ == 0, what);
}

using CombineFn = void (*)(void*, const void*, const float*, int, int, int, const void*, const void*, int,
                          const int*, int, int);

// With `grouped`, the expert outputs sit in rows of a shuffled order, found through a
// pair-row map (the host-routed prefill path). With `sum_f32`, the sum as DeepSeek-V3's
// loop adds in its router's f32: unrounded weights, products and sums, rounded once.
void check_combine(DType d, int tokens, int top_k, int hidden, bool shared, Order order,
                   bool grouped = false, bool sum_f32 = false) {
    const int pairs = tokens * top_k;
    Buffer y(d, random(d, static_cast<size_t>(pairs) * hidden, 3.0f));
    std::vector<float> weights(pairs);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (float& w : weights) w = u(rng);
    Buffer so(d, random(d, static_cast<size_t>(tokens) * hidden, 3.0f));
    Buffer sg(d, random(d, tokens, 4.0f));
    Buffer out = Buffer::unwritten(d, static_cast<size_t>(tokens) * hidden);
    std::vector<int> pair_rows(pairs);
    std::iota(pair_rows.begin(), pair_rows.end(), 0);
    if (grouped) std::shuffle(pair_rows.begin(), pair_rows.end(), rng);
    auto combine = KILN_PICK(CombineFn, moe_combine, d);
    kiln_emu::launch({3, 1, 1}, {64, 1, 1}, order, 11, [&] {
        combine(out.data(), y.data(), weights.data(), tokens, hidden, top_k, shared ? so.data() : y.data(),
                shared ? sg.data() : y.data(), shared ? 1 : 0, grouped ? pair_rows.data() : nullptr,
                grouped ? 1 : 0, sum_f32 ? 1 : 0);
    });
    // weighted_row_sum's loop: each weight, product and running sum rounded to the dtype.
    size_t differ = 0;
    for (int t = 0; t < tokens; ++t) {
        for (int c = 0; c < hidden; ++c) {
            float acc = 0.0f;
            for (int s = 0; s < top_k; ++s) {
                const size_t p = static_cast<size_t>(t) * top_k + s;
                const size_t row = static_cast<size_t>(pair_rows[p]);
                if (sum_f32) {
                    const float prod = y.at(row * hidden + c) * weights[p];
                    acc = acc + prod;
                } else {
                    const float w = round_to(d, weights[p]);
                    acc = round_to(d, acc + round_to(d, y.at(row * hidden + c) * w));
                }
            }
            acc = round_to(d, acc);
            if (shared) {
                const float g = round_to(d, 1.0f / (1.0f + std::exp(-sg.at(t))));
                acc = round_to(d, acc + round_to(d, so.at(static_cast<size_t>(t) * hidden + c) * g));
            }
            const float got = out.at(static_cast<size_t>(t) * hidden + c);
            differ += got == acc ? 0 : 1;
        }
    }
    char what[160];
    std::snprintf(what, sizeof what, "moe_combine tokens=%d top_k=%d hidden=%d %-7s %-7s %-7s %-4s  %zu of %d values differ",
                  tokens, top_k, hidden, shared ? "+shared" : "", grouped ? "grouped" : "", sum_f32 ? "sum f32" : "",
                  dtype_name(d), differ, tokens * hidden);
    report(differ == 0, what);
}

}  // namespace

int main() {
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
        std::printf("== %s\n", dtype_name(d));
        // Mixtral (8, top 2, renormalised), Qwen1.5-MoE (60, top 4), Qwen3-30B-A3B (128, top
        // 8) at 1, 8 and 64 tokens (tokens sharing experts: items of up to 4 pairs, several
        // per expert), the kernel's limits (512 experts, 16 per lane; top 32; 1024 pairs),
        // ties among the largest.
        check_route(d, 3, 8, 2, true, false, Order::Forward);
        check_route(d, 2, 60, 4, false, false, Order::Reverse);
        check_route(d, 8, 128, 8, true, false, Order::Random);
        check_route(d, 64, 128, 8, true, false, Order::Forward);
        check_route(d, 1, 128, 8, false, false, Order::Reverse);
        check_route(d, 2, 512, 32, false, false, Order::Forward);
        check_route(d, 32, 64, 32, false, false, Order::Random);
        check_route(d, 4, 128, 8, false, true, Order::Random);
        check_route(d, 1, 7, 7, true, true, Order::Forward);
        check_route(d, 20, 4, 2, true, false, Order::Reverse);
        // GLM-4.5's router: GLM-4.5-Air's shape (128 experts, top 8, one group), DeepSeek-V3's
        // groups (256 experts in 8, the best 4 kept; here 64 in 8), biases that push some
        // biased scores below 0 (where the dropped groups' zeros win), a scale.
        const Grouped air{random(DType::F32, 128, 0.05f), 1, 1, 1.0f};
        const Grouped eight{random(DType::F32, 64, 0.5f), 8, 4, 2.5f};
        const Grouped negative{random(DType::F32, 16, 1.5f), 4, 1, 2.5f};
        check_route(d, 1, 128, 8, true, false, Order::Forward, &air);
        check_route(d, 16, 128, 8, true, false, Order::Random, &air);
        check_route(d, 8, 64, 8, true, false, Order::Reverse, &eight);
        check_route(d, 5, 64, 6, false, false, Order::Random, &eight);
        check_route(d, 12, 16, 4, true, false, Order::Forward, &negative);
        // LFM2-MoE's router: LFM2-8B-A1B's 32 experts, top 4, a scale.
        const Grouped lfm2{random(DType::F32, 32, 0.3f), 1, 1, 1.5f, true};
        check_route(d, 1, 32, 4, true, false, Order::Forward, &lfm2);
        check_route(d, 24, 32, 4, true, false, Order::Random, &lfm2);
        // Tokens sharing experts (items of 1 to 4 pairs, several per expert), one token
        // with four, K = hidden crossing the x chunk of the 4-row GEMV (the host sends only
        // hidden and intermediate widths that are multiples of 8, so every block is full).
        check_expert_gemv(d, 3, 2, 4, 64, 24, Order::Random);
        check_expert_gemv(d, 9, 2, 2, 32, 16, Order::Forward);
        check_expert_gemv(d, 1, 4, 6, 136, 40, Order::Reverse);
        check_expert_gemv(d, 2, 2, 2, 4104, 8, Order::Forward);
        // gpt-oss: biases per expert and the clamped SwiGLU.
        check_expert_gemv(d, 3, 2, 4, 64, 24, Order::Random, true);
        check_expert_gemv(d, 5, 4, 8, 136, 40, Order::Reverse, true);
        // Nemotron 3: ungated ReLU² experts (top 6), several items per expert.
        check_expert_gemv(d, 3, 6, 8, 64, 24, Order::Random, false, true);
        check_expert_gemv(d, 1, 6, 16, 136, 40, Order::Reverse, false, true);
        check_expert_gemv(d, 7, 2, 3, 72, 16, Order::Forward, false, true);
        // Recombination, with and without Qwen2-MoE's shared expert.
        check_combine(d, 3, 2, 40, false, Order::Forward);
        check_combine(d, 5, 8, 72, true, Order::Random);
        check_combine(d, 7, 4, 40, true, Order::Reverse, true);
        // DeepSeek-V3, GLM-4.5, Nemotron 3: the sum in f32, rounded once.
        check_combine(d, 3, 8, 72, false, Order::Forward, false, true);
        check_combine(d, 6, 6, 40, false, Order::Random, true, true);
    }
    std::printf("%d cases: %s\n", cases,
                failures == 0 ? "the moe kernels match the host path" : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
