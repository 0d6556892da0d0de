// Mixture-of-experts routing and recombination on the device, for the decode steps of MoE
// models (src/backend/cuda/moe.rs): the router's logits never leave the GPU, so the step
// needs no host round trip per layer and can be recorded as a CUDA graph. Between the two
// kernels here run the expert GEMVs of kernels/gemv.cu (gemv_expert_swiglu, gemv_expert).
// The semantics are those of the host path (src/backend/moe.rs), which follows HF.
//
// moe_route: one block for the whole step. Each warp routes tokens (warp w: tokens w, w +
// MOE_ROUTE_WARPS, ...): a softmax over the token's expert logits (in f32), its top_k
// largest probabilities (ties to the lower expert), optionally rescaled to sum to one,
// written as top_k (expert, weight) pairs sorted by expert id, so that the recombination adds
// the experts in the order HF's per-expert loop does. Pair p is token p / top_k's slot
// p % top_k. Then the block groups the pairs by expert into the expert GEMVs' work items:
// expert e's pairs, in pair order, cut into items of GEMV_EXPERT_ROWS (items of expert e
// before those of e + 1); item i gets its expert, its row count and its pairs; the items
// past the step's count up to `max_items` get no rows. Experts <= MOE_MAX_EXPERTS,
// top_k <= MOE_MAX_TOP_K, pairs <= MOE_MAX_PAIRS (the host checks all three and sizes
// max_items as pairs / GEMV_EXPERT_ROWS rounded up plus min(experts, pairs)).
//
// With a correction bias (GLM-4.5's router; null otherwise) moe_route scores instead as
// src/backend/moe.rs `route_sigmoid_grouped`: each expert's sigmoid in f32, the choice by
// sigmoid plus bias among the `top_groups` best of `groups` equal groups (a group ranks by
// the sum of its two best biased scores, ties to the lower group; experts of the other groups
// compete with 0), the weights the chosen sigmoids, over their sum plus 1e-20 when
// `normalize`, times `scale`. groups <= MOE_MAX_GROUPS. With `in_dtype` (LFM2-MoE's router,
// src/backend/moe_route.rs `sigmoid_in_dtype_row`) each sigmoid is rounded to the dtype
// before the bias is added, and the weights are the chosen (rounded) sigmoids over their
// rounded sum plus 1e-6, times `scale`, each step rounded to the dtype.
//
// moe_combine: out[t, c] = sum over the token's pairs s of y[row(t * top_k + s), c] * weight,
// each weight, product and running sum rounded to the dtype as a loop of index_adds rounds
// them, or (sum_f32: DeepSeek-V2 / V3, GLM-4.5, dots.llm1, Nemotron 3, whose loops add in
// the router's f32) the f32 weight, each product and running sum rounded to f32 (unfused,
// as separate PyTorch ops compute them) and the sum rounded to the dtype once; then
// (Qwen2-MoE) the shared expert's row times sigmoid of its gate's logit, added last. row(p) is p, or pair_rows[p] when has_pair_rows (the host-routed prefill path,
// whose expert outputs are grouped by expert).

#define MOE_ROUTE_THREADS 256
#define MOE_ROUTE_WARPS (MOE_ROUTE_THREADS / 32)
#define MOE_MAX_EXPERTS 512
#define MOE_MAX_TOP_K 32
#define MOE_MAX_PAIRS 1024
#define MOE_PER_LANE (MOE_MAX_EXPERTS / 32)
#define MOE_MAX_GROUPS 32
#define MOE_ITEM_ROWS 4  // GEMV_EXPERT_ROWS of kernels/gemv.cu

// The warp's largest value (lane l holds experts l, l + 32, ...: the first, lowest expert,
// of its largest, then the larger over the lanes, the lower expert on equal values) and, in
// `best_e`, its expert. Values at or below `floor` never win.
__device__ __forceinline__ float moe_warp_best(const float* v, float floor, int& best_e) {
    const int lane = threadIdx.x & 31;
    float best = floor;
    best_e = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < MOE_PER_LANE; ++i) {
        if (v[i] > best) {
            best = v[i];
            best_e = lane + 32 * i;
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(KILN_FULL_MASK, best, offset);
        const int other_e = __shfl_xor_sync(KILN_FULL_MASK, best_e, offset);
        if (other > best || (other == best && other_e < best_e)) {
            best = other;
            best_e = other_e;
        }
    }
    return best;
}

// Lane 0 writes token `row`'s chosen experts (sorted by id) and their weights (with
// `in_dtype`, the kept mass and each weight rounded to the dtype at every step).
template <typename D>
__device__ __forceinline__ void moe_write_pairs(int* __restrict__ ids, float* __restrict__ weights,
                                                int* pair_expert, int* chosen, float* chosen_p,
                                                long long row, int top_k, int normalize,
                                                float add_to_kept, float scale, int in_dtype) {
    auto round = [in_dtype](float v) { return in_dtype ? D::load(D::store(v)) : v; };
    // The kept mass, summed in the order the experts were chosen, then `add_to_kept` (as the
    // host does).
    float kept = 0.0f;
    for (int r = 0; r < top_k; ++r) kept += chosen_p[r];
    kept = round(round(kept) + add_to_kept);
    // Insertion sort by expert id (top_k is small).
    for (int a = 1; a < top_k; ++a) {
        const int e = chosen[a];
        const float p = chosen_p[a];
        int b = a - 1;
        while (b >= 0 && chosen[b] > e) {
            chosen[b + 1] = chosen[b];
            chosen_p[b + 1] = chosen_p[b];
            --b;
        }
        chosen[b + 1] = e;
        chosen_p[b + 1] = p;
    }
    for (int r = 0; r < top_k; ++r) {
        const long long p = row * top_k + r;
        ids[p] = chosen[r];
        pair_expert[p] = chosen[r];
        weights[p] = round((normalize ? round(chosen_p[r] / kept) : chosen_p[r]) * scale);
    }
}

// Warp `warp` routes token `row`: its pairs into ids / weights and the block's `pair_expert`.
template <typename D>
__device__ __forceinline__ void moe_route_token(const typename D::T* __restrict__ logits,
                                                int* __restrict__ ids,
                                                float* __restrict__ weights, int* pair_expert,
                                                int* chosen, float* chosen_p, long long row,
                                                int experts, int top_k, int normalize) {
    const int lane = threadIdx.x & 31;
    const typename D::T* s = logits + row * experts;

    // Lane l holds experts l, l + 32, ...; empty places hold -1 (below every exp).
    float v[MOE_PER_LANE];
    float mx = KILN_NEG_INF;
#pragma unroll
    for (int i = 0; i < MOE_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        v[i] = e < experts ? D::load(s[e]) : KILN_NEG_INF;
        mx = fmaxf(mx, v[i]);
    }
    mx = kiln_warp_max(mx);
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < MOE_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        v[i] = e < experts ? expf(v[i] - mx) : -1.0f;
        total += e < experts ? v[i] : 0.0f;
    }
    total = kiln_warp_sum(total);

    for (int r = 0; r < top_k; ++r) {
        int best_e;
        const float best = moe_warp_best(v, -2.0f, best_e);
        // Its owner takes it out of the running (no dynamic register indexing).
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; ++i) {
            if (lane + 32 * i == best_e) v[i] = -1.0f;
        }
        if (lane == 0) {
            chosen[r] = best_e;
            chosen_p[r] = best / total;
        }
    }
    // Only lane 0 wrote this warp's `chosen` and only it reads it back: no barrier needed.
    if (lane == 0) {
        moe_write_pairs<D>(ids, weights, pair_expert, chosen, chosen_p, row, top_k, normalize, 0.0f,
                           1.0f, 0);
    }
}

// The two largest of a lane's (best, second) and another's, merged.
__device__ __forceinline__ void moe_top2_merge(float& a1, float& a2, float b1, float b2) {
    if (b1 > a1) {
        a2 = fmaxf(a1, b2);
        a1 = b1;
    } else {
        a2 = fmaxf(a2, b1);
    }
}

// Warp `warp` routes token `row` by sigmoid scores, correction bias and groups (see the top).
template <typename D>
__device__ __forceinline__ void moe_route_token_grouped(
    const typename D::T* __restrict__ logits, const float* __restrict__ bias,
    int* __restrict__ ids, float* __restrict__ weights, int* pair_expert, int* chosen,
    float* chosen_p, long long row, int experts, int top_k, int normalize, int groups,
    int top_groups, float scale, int in_dtype) {
    const int lane = threadIdx.x & 31;
    const typename D::T* s = logits + row * experts;
    const int per_group = experts / groups;

    // Lane l holds experts l, l + 32, ...: sigmoid scores and biased choices (empty places
    // -inf, below every choice).
    float score[MOE_PER_LANE];
    float c[MOE_PER_LANE];
#pragma unroll
    for (int i = 0; i < MOE_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        const float sig = e < experts ? 1.0f / (1.0f + expf(-D::load(s[e]))) : 0.0f;
        score[i] = in_dtype ? D::load(D::store(sig)) : sig;
        c[i] = e < experts ? score[i] + bias[e] : KILN_NEG_INF;
    }
    if (groups > 1) {
        // Each group's rank: the sum of its two best choices, reduced over the warp.
        float rank[MOE_MAX_GROUPS];
        for (int g = 0; g < groups; ++g) {
            float b1 = KILN_NEG_INF, b2 = KILN_NEG_INF;
#pragma unroll
            for (int i = 0; i < MOE_PER_LANE; ++i) {
                const int e = lane + 32 * i;
                if (e < experts && e / per_group == g) moe_top2_merge(b1, b2, c[i], KILN_NEG_INF);
            }
            for (int offset = 16; offset > 0; offset >>= 1) {
                const float o1 = __shfl_xor_sync(KILN_FULL_MASK, b1, offset);
                const float o2 = __shfl_xor_sync(KILN_FULL_MASK, b2, offset);
                moe_top2_merge(b1, b2, o1, o2);
            }
            // A group of one expert ranks by it alone.
            rank[g] = b2 == KILN_NEG_INF ? b1 : b1 + b2;
        }
        // The kept groups: the best `top_groups` ranks, ties to the lower group.
        unsigned kept = 0u;
        for (int k = 0; k < top_groups; ++k) {
            int best = -1;
            for (int g = 0; g < groups; ++g) {
                if ((kept >> g) & 1u) continue;
                if (best < 0 || rank[g] > rank[best]) best = g;
            }
            kept |= 1u << best;
        }
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; ++i) {
            const int e = lane + 32 * i;
            if (e < experts && !((kept >> (e / per_group)) & 1u)) c[i] = 0.0f;
        }
    }

    for (int r = 0; r < top_k; ++r) {
        int best_e;
        moe_warp_best(c, KILN_NEG_INF, best_e);
        // Its owner takes it out of the running and hands over its unbiased score.
        float mine = 0.0f;
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; ++i) {
            if (lane + 32 * i == best_e) {
                mine = score[i];
                c[i] = KILN_NEG_INF;
            }
        }
        const float chosen_score = kiln_warp_sum(mine);
        if (lane == 0) {
            chosen[r] = best_e;
            chosen_p[r] = chosen_score;
        }
    }
    if (lane == 0) {
        moe_write_pairs<D>(ids, weights, pair_expert, chosen, chosen_p, row, top_k, normalize,
                           in_dtype ? 1e-6f : 1e-20f, scale, in_dtype);
    }
}

template <typename D>
__device__ __forceinline__ void moe_route_impl(const typename D::T* __restrict__ logits,
                                               int* __restrict__ ids, float* __restrict__ weights,
                                               int* __restrict__ item_expert,
                                               int* __restrict__ item_rows,
                                               int* __restrict__ item_pairs, int tokens,
                                               int experts, int top_k, int normalize,
                                               int max_items, const float* __restrict__ bias,
                                               int groups, int top_groups, float scale,
                                               int in_dtype) {
    __shared__ int chosen[MOE_ROUTE_WARPS][MOE_MAX_TOP_K];
    __shared__ float chosen_p[MOE_ROUTE_WARPS][MOE_MAX_TOP_K];
    __shared__ int pair_expert[MOE_MAX_PAIRS];
    __shared__ int count[MOE_MAX_EXPERTS];
    __shared__ int first_item[MOE_MAX_EXPERTS];
    __shared__ int lane_items[32];
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int pairs = tokens * top_k;

    for (int t = warp; t < tokens; t += MOE_ROUTE_WARPS) {
        if (bias) {
            moe_route_token_grouped<D>(logits, bias, ids, weights, pair_expert, chosen[warp],
                                       chosen_p[warp], t, experts, top_k, normalize, groups,
                                       top_groups, scale, in_dtype);
        } else {
            moe_route_token<D>(logits, ids, weights, pair_expert, chosen[warp], chosen_p[warp], t,
                               experts, top_k, normalize);
        }
    }
    for (int e = tid; e < experts; e += MOE_ROUTE_THREADS) count[e] = 0;
    __syncthreads();
    for (int p = tid; p < pairs; p += MOE_ROUTE_THREADS) atomicAdd(&count[pair_expert[p]], 1);
    __syncthreads();
    // Each expert's first item: lane l of warp 0 sums the items of experts [l * span, (l + 1)
    // * span), then walks them again from the sum of the lanes before it.
    const int span = (experts + 31) / 32;
    if (tid < 32) {
        int items = 0;
        for (int e = tid * span; e < min(experts, (tid + 1) * span); ++e) {
            items += (count[e] + MOE_ITEM_ROWS - 1) / MOE_ITEM_ROWS;
        }
        lane_items[tid] = items;
    }
    __syncthreads();
    int total_items = 0;
    for (int l = 0; l < 32; ++l) total_items += lane_items[l];
    if (tid < 32) {
        int next = 0;
        for (int l = 0; l < tid; ++l) next += lane_items[l];
        for (int e = tid * span; e < min(experts, (tid + 1) * span); ++e) {
            first_item[e] = next;
            next += (count[e] + MOE_ITEM_ROWS - 1) / MOE_ITEM_ROWS;
        }
    }
    __syncthreads();
    // Pair p is number `rank` of its expert's pairs (in pair order).
    for (int p = tid; p < pairs; p += MOE_ROUTE_THREADS) {
        const int e = pair_expert[p];
        int rank = 0;
        for (int q = 0; q < p; ++q) rank += pair_expert[q] == e ? 1 : 0;
        const int item = first_item[e] + rank / MOE_ITEM_ROWS;
        const int slot = rank % MOE_ITEM_ROWS;
        item_pairs[item * MOE_ITEM_ROWS + slot] = p;
        if (slot == 0) {
            item_expert[item] = e;
            item_rows[item] = min(MOE_ITEM_ROWS, count[e] - rank);
        }
    }
    for (int i = total_items + tid; i < max_items; i += MOE_ROUTE_THREADS) {
        item_expert[i] = 0;
        item_rows[i] = 0;
    }
}

template <typename D>
__device__ __forceinline__ void moe_combine_impl(typename D::T* __restrict__ out,
                                                 const typename D::T* __restrict__ y,
                                                 const float* __restrict__ weights, int rows,
                                                 int hidden, int top_k,
                                                 const typename D::T* __restrict__ shared,
                                                 const typename D::T* __restrict__ shared_gate,
                                                 int has_shared,
                                                 const int* __restrict__ pair_rows,
                                                 int has_pair_rows, int sum_f32) {
    const long long total = (long long)rows * hidden;
    KILN_GRID_STRIDE(i, total) {
        const long long t = i / hidden;
        const long long c = i - t * hidden;
        float acc = 0.0f;
        for (int s = 0; s < top_k; ++s) {
            const long long p = t * top_k + s;
            const long long row = has_pair_rows ? pair_rows[p] : p;
            const float v = D::load(y[row * hidden + c]);
            if (sum_f32) {
                acc = __fadd_rn(acc, __fmul_rn(v, weights[p]));
            } else {
                const float w = D::load(D::store(weights[p]));
                acc = D::load(D::store(acc + D::load(D::store(v * w))));
            }
        }
        acc = D::load(D::store(acc));
        if (has_shared) {
            const float g = D::load(shared_gate[t]);
            const float gate = D::load(D::store(1.0f / (1.0f + expf(-g))));
            acc = D::load(D::store(acc + D::load(D::store(D::load(shared[i]) * gate))));
        }
        out[i] = D::store(acc);
    }
}

#define KILN_MOE(S, D)                                                                         \
    extern "C" __global__ void __launch_bounds__(MOE_ROUTE_THREADS)                            \
        moe_route_##S(const D::T* logits, int* ids, float* weights, int* item_expert,          \
                      int* item_rows, int* item_pairs, int tokens, int experts, int top_k,     \
                      int normalize, int max_items, const float* bias, int groups,             \
                      int top_groups, float scale, int in_dtype) {                             \
        moe_route_impl<D>(logits, ids, weights, item_expert, item_rows, item_pairs, tokens,    \
                          experts, top_k, normalize, max_items, bias, groups, top_groups,      \
                          scale, in_dtype);                                                    \
    }                                                                                          \
    extern "C" __global__ void moe_combine_##S(D::T* out, const D::T* y, const float* weights, \
                                               int rows, int hidden, int top_k,                \
                                               const D::T* shared, const D::T* shared_gate,    \
                                               int has_shared, const int* pair_rows,           \
                                               int has_pair_rows, int sum_f32) {               \
        moe_combine_impl<D>(out, y, weights, rows, hidden, top_k, shared, shared_gate,         \
                            has_shared, pair_rows, has_pair_rows, sum_f32);                    \
    }
KILN_FOR_EACH_DTYPE(KILN_MOE)
