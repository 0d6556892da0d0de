// Sampling on the device, one CTA per row of logits [rows, vocab], with the semantics of
// src/engine/sampler.rs (`sample` after the logprobs): penalties and min_tokens masking as
// per-row edits the host prepares, then greedy argmax, or temperature, top-k, min-p, top-p
// and a draw with the row's uniform `u` (drawn on the host from the sequence's own stream,
// so a seed reproduces whatever the device).
//
// No sort: every cut is a position in the candidate order (higher weight first, ties lower
// id first), found by binary search, first over the f32 bit pattern of the weight (weights
// are in [0, 1], where the bit pattern orders like the value) and then over the id among the
// tokens of that weight. Each probe is one block reduction of a count or a mass over the
// row, so the result is deterministic for a given block size.
//
// Per row r:
//   row_f[r*4 + 0..4] = temperature (0 = greedy), top_p, min_p, u in [0, 1)
//   row_i[r*3 + 0..3] = top_k (0 = off), first edit, end of edits
//   edit_token[e], edit_value[e*2 + 0..2] = repetition factor, subtracted bias; a bias of
//     +inf masks the token (min_tokens). Tokens are unique within a row.
//   scratch[r*vocab ..]: f32 working space (the edited logits, then the weights).

#define KILN_DRAW_WEIGHT_ONE 0x3f800000u  // bit pattern of 1.0f, the largest weight

// A position in the candidate order: every candidate with a larger weight, and those with
// this weight and an id up to `id`. `active == 0` means no cut.
struct KilnCut {
    float w;
    int id;
    int active;
};

__device__ __forceinline__ bool kiln_cut_keeps(KilnCut c, int j, float w) {
    return !c.active || w > c.w || (w == c.w && j <= c.id);
}

// The candidates still in play: not excluded (weight -1), at or above min_p, and inside the
// top-k and top-p cuts.
struct KilnKept {
    float min_w;
    KilnCut top_k;
    KilnCut top_p;
};

__device__ __forceinline__ bool kiln_kept(const KilnKept& k, int j, float w) {
    return w >= k.min_w && kiln_cut_keeps(k.top_k, j, w) && kiln_cut_keeps(k.top_p, j, w);
}

// Count (or mass, with `by_mass`) of the kept candidates with weight >= s; with `ties_only`
// just those of weight exactly s and id <= max_id.
__device__ __forceinline__ float kiln_draw_measure(const float* w_row, int vocab,
                                                   const KilnKept& kept, bool by_mass, float s,
                                                   bool ties_only, int max_id, float* red) {
    float acc = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float w = w_row[j];
        const bool in = ties_only ? (w == s && j <= max_id) : (w >= s);
        if (in && kiln_kept(kept, j, w)) acc += by_mass ? w : 1.0f;
    }
    return kiln_block_sum(acc, red);
}

__device__ __forceinline__ bool kiln_meets(float measure, float target, bool strict) {
    return strict ? measure > target : measure >= target;
}

// The shortest prefix of the kept candidates, in order, whose count (or mass) reaches
// `target` (exceeds it, with `strict`). `*through` gets the measure of that prefix. Inactive
// when even all kept candidates do not reach it.
__device__ __forceinline__ KilnCut kiln_find_cut(const float* w_row, int vocab,
                                                 const KilnKept& kept, bool by_mass,
                                                 float target, bool strict, float* through,
                                                 float* red) {
    KilnCut cut;
    cut.w = 0.0f;
    cut.id = vocab - 1;
    cut.active = 0;
    const float all = kiln_draw_measure(w_row, vocab, kept, by_mass, 0.0f, false, 0, red);
    *through = all;
    if (!kiln_meets(all, target, strict)) return cut;
    // Largest weight s with measure(w >= s) reaching the target: the cut's weight.
    unsigned int lo = 0, hi = KILN_DRAW_WEIGHT_ONE;
    while (lo < hi) {
        const unsigned int mid = lo + (hi - lo + 1) / 2;
        const float m =
            kiln_draw_measure(w_row, vocab, kept, by_mass, __uint_as_float(mid), false, 0, red);
        if (kiln_meets(m, target, strict)) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    cut.w = __uint_as_float(lo);
    // Among the tokens of that weight, the lowest id at which the prefix reaches the target.
    const float above = lo == KILN_DRAW_WEIGHT_ONE
                            ? 0.0f
                            : kiln_draw_measure(w_row, vocab, kept, by_mass,
                                                __uint_as_float(lo + 1), false, 0, red);
    int id_lo = 0, id_hi = vocab - 1;
    while (id_lo < id_hi) {
        const int mid = id_lo + (id_hi - id_lo) / 2;
        const float m =
            above + kiln_draw_measure(w_row, vocab, kept, by_mass, cut.w, true, mid, red);
        if (kiln_meets(m, target, strict)) {
            id_hi = mid;
        } else {
            id_lo = mid + 1;
        }
    }
    cut.id = id_lo;
    cut.active = 1;
    *through = above + kiln_draw_measure(w_row, vocab, kept, by_mass, cut.w, true, id_lo, red);
    return cut;
}

// Lowest index of the largest value (NaN ignored; none: 0), as sampler.rs `argmax`.
__device__ __forceinline__ unsigned int kiln_draw_argmax(const float* row, int vocab,
                                                         float* red) {
    float best = KILN_NEG_INF;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) best = fmaxf(best, row[j]);
    best = kiln_block_max(best, red);
    float first = (float)vocab;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        if (row[j] == best) {
            first = fminf(first, (float)j);
            break;
        }
    }
    first = -kiln_block_max(-first, red);
    return first < (float)vocab ? (unsigned int)first : 0u;
}

template <typename D>
__device__ __forceinline__ void sampling_draw_impl(unsigned int* out, const typename D::T* logits,
                                                   int vocab, const float* row_f,
                                                   const int* row_i, const int* edit_token,
                                                   const float* edit_value, float* scratch) {
    __shared__ float red[32];
    const long long base = (long long)blockIdx.x * vocab;
    float* row = scratch + base;
    const float temperature = row_f[blockIdx.x * 4 + 0];
    const float top_p = row_f[blockIdx.x * 4 + 1];
    const float min_p = row_f[blockIdx.x * 4 + 2];
    const float u = row_f[blockIdx.x * 4 + 3];
    const int top_k = row_i[blockIdx.x * 3 + 0];
    const int edits_begin = row_i[blockIdx.x * 3 + 1];
    const int edits_end = row_i[blockIdx.x * 3 + 2];
    const float pos_inf = __int_as_float(0x7f800000);

    for (int j = threadIdx.x; j < vocab; j += blockDim.x) row[j] = D::load(logits[base + j]);
    __syncthreads();
    // Penalties (repetition, then presence + frequency) and min_tokens masking.
    for (int e = edits_begin + threadIdx.x; e < edits_end; e += blockDim.x) {
        const int t = edit_token[e];
        if (t < 0 || t >= vocab) continue;
        const float factor = edit_value[2 * e];
        const float bias = edit_value[2 * e + 1];
        float l = row[t];
        l = l > 0.0f ? l / factor : l * factor;
        row[t] = bias == pos_inf ? KILN_NEG_INF : l - bias;
    }
    __syncthreads();
    if (temperature == 0.0f || top_k == 1) {
        const unsigned int pick = kiln_draw_argmax(row, vocab, red);
        if (threadIdx.x == 0) out[blockIdx.x] = pick;
        return;
    }
    // Tempered logits of the finite candidates; the rest are excluded (weight -1 below).
    float local_max = KILN_NEG_INF;
    float local_count = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float l = row[j];
        if (l - l == 0.0f) {  // finite
            local_max = fmaxf(local_max, l / temperature);
            local_count += 1.0f;
        }
    }
    const float max_c = kiln_block_max(local_max, red);
    const float finite = kiln_block_sum(local_count, red);
    if (finite == 0.0f) {
        const unsigned int pick = kiln_draw_argmax(row, vocab, red);
        if (threadIdx.x == 0) out[blockIdx.x] = pick;
        return;
    }
    // Weights relative to the most likely candidate (weight 1).
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float l = row[j];
        row[j] = l - l == 0.0f ? expf(l / temperature - max_c) : -1.0f;
    }
    __syncthreads();

    KilnKept kept;
    kept.min_w = 0.0f;
    kept.top_k.active = 0;
    kept.top_p.active = 0;
    float measure = 0.0f;
    if (top_k > 0 && (float)top_k < finite) {
        kept.top_k = kiln_find_cut(row, vocab, kept, false, (float)top_k, false, &measure, red);
    }
    const float total = kiln_draw_measure(row, vocab, kept, true, 0.0f, false, 0, red);
    // min_p keeps p_i >= min_p * p_max, i.e. w_i >= min_p (the best has weight 1 >= min_p).
    kept.min_w = min_p;
    float kept_weight = kiln_draw_measure(row, vocab, kept, true, 0.0f, false, 0, red);
    if (top_p < 1.0f) {
        const KilnCut cut = kiln_find_cut(row, vocab, kept, true, top_p * total, false,
                                          &measure, red);
        if (cut.active) {
            kept.top_p = cut;
            kept_weight = measure;
        }
    }
    // The draw: the first candidate at which the running mass exceeds u * kept_weight.
    KilnCut pick = kiln_find_cut(row, vocab, kept, true, u * kept_weight, true, &measure, red);
    if (!pick.active) {
        // Rounding left the target at the total: the last kept candidate, as the host walk.
        const float count = kiln_draw_measure(row, vocab, kept, false, 0.0f, false, 0, red);
        pick = kiln_find_cut(row, vocab, kept, false, count, false, &measure, red);
    }
    if (threadIdx.x == 0) out[blockIdx.x] = pick.active ? (unsigned int)pick.id : 0u;
}

#define KILN_SAMPLING_DRAW(S, D)                                                             \
    extern "C" __global__ void sampling_draw_##S(                                            \
        unsigned int* out, const D::T* logits, int vocab, const float* row_f,                \
        const int* row_i, const int* edit_token, const float* edit_value, float* scratch) { \
        sampling_draw_impl<D>(out, logits, vocab, row_f, row_i, edit_token, edit_value,     \
                              scratch);                                                      \
    }
KILN_FOR_EACH_DTYPE(KILN_SAMPLING_DRAW)
