// Sampling on the device, one CTA per row of logits [rows, vocab], with the semantics of
// src/engine/sampler.rs (`sample` after the logprobs): penalties and min_tokens masking as
// per-row edits the host prepares, then greedy argmax, or temperature, top-k, min-p, top-p
// and a draw with the row's uniform `u` (drawn on the host from the sequence's own stream,
// so a seed reproduces whatever the device).
//
// No sort: every cut (top-k, top-p, the draw) is a position in the candidate order (higher
// key first, ties lower id first) where the running count or mass of the kept candidates
// reaches a target. It is found by radix selection over the 32-bit key (the tempered logit
// for top-k, as the host's top-k orders by it; the weight for the rest):
//   * a histogram pass: count and mass of the candidates in the current key range, per bin
//     of the next 11 key bits (the bits above are already fixed); a scan over the bins, high
//     key first, picks the bin where the running measure crosses the target;
//   * once the range holds at most KILN_DRAW_GATHER candidates, one pass gathers them into
//     shared memory, where each finds its own place in the order (key, then id): the cut;
//   * if every key bit is fixed and the range is still larger (that many candidates with
//     one key), a pass over contiguous segments finds the n-th lowest id of that key.
// A cut over a flat 128k row costs 2-3 passes (32 or more with a bitwise binary search).
//
// Masses are fixed point (weight * 2^24 rounded, summed in 64-bit integers), so every pass
// sees exactly the same sums whatever the summation order: a cut is deterministic, and the
// bin a pass picks always holds the crossing found by the pass after it.
//
// Passes over the row: one load (two when the row has penalty edits), one for the weights,
// then per cut 2-3 (top-k on a 128k row 3). Greedy rows stop after the load.
//
// Per row r:
//   row_f[r*4 + 0..4] = temperature (0 = greedy), top_p, min_p, u in [0, 1)
//   row_i[r*3 + 0..3] = top_k (0 = off), first edit, end of edits
//   edit_token[e], edit_value[e*2 + 0..2] = repetition factor, subtracted bias; a bias of
//     +inf masks the token (min_tokens). Tokens are unique within a row.
//   scratch[r*vocab ..]: f32 working space (the edited logits, the tempered logits, then the
//     weights; -1 marks a token that is no candidate).
// Launch with 1024 threads per block (any multiple of 32 works).

typedef unsigned long long kiln_draw_u64;

#define KILN_DRAW_DIGIT 11
#define KILN_DRAW_BINS (1 << KILN_DRAW_DIGIT)
#ifndef KILN_DRAW_GATHER  // the emulator check shrinks it to exercise every path
#define KILN_DRAW_GATHER 1024
#endif
#define KILN_DRAW_WEIGHT_ONE 0x3f800000u  // bit pattern of 1.0f, the largest weight
#define KILN_DRAW_NONE 0xffffffffu

// A histogram bin: count << KILN_DRAW_COUNT_SHIFT | mass, so one atomic adds both.
#define KILN_DRAW_COUNT_SHIFT 43
#define KILN_DRAW_MASS_MASK ((1ull << KILN_DRAW_COUNT_SHIFT) - 1ull)

struct KilnDrawShared {
    kiln_draw_u64 hist[KILN_DRAW_BINS];
    unsigned g_key[KILN_DRAW_GATHER];
    int g_id[KILN_DRAW_GATHER];
    kiln_draw_u64 g_mass[KILN_DRAW_GATHER];
    kiln_draw_u64 warp[32];
    unsigned gathered;
    // The result of the last step, written by the one thread that finds it.
    int found;
    unsigned bin;
    unsigned key;
    int id;
    kiln_draw_u64 before;
    unsigned count_before;
    unsigned bin_count;
};

// A weight's mass in fixed point: w * 2^24, rounded (6e-8 of the largest weight, about its
// f32 rounding). A row's mass stays below 2^43 for vocabularies up to 2^19 (checked by the
// host), and the count of a histogram bin fits the 21 bits above it.
__device__ __forceinline__ kiln_draw_u64 kiln_draw_mass(float w) {
    return __float2ull_rn(w * 16777216.0f);
}

// Every element of a row that thread owns, x = row[j], as f(x, j); with `Write`, row[j]
// becomes what f returns. Four at a time where the row allows (vocab a multiple of 4 and
// the row 16-byte aligned).
struct alignas(16) KilnDrawQuad {
    float x, y, z, w;
};

template <bool Write, typename F>
__device__ __forceinline__ void kiln_draw_each(float* row, int vocab, F f) {
    if ((vocab & 3) == 0 && ((unsigned long long)row & 15ull) == 0) {
        KilnDrawQuad* quads = reinterpret_cast<KilnDrawQuad*>(row);
        for (int q = threadIdx.x; q < (vocab >> 2); q += blockDim.x) {
            KilnDrawQuad v = quads[q];
            const int j = q << 2;
            const float a = f(v.x, j), b = f(v.y, j + 1), c = f(v.z, j + 2), d = f(v.w, j + 3);
            if (Write) {
                v.x = a;
                v.y = b;
                v.z = c;
                v.w = d;
                quads[q] = v;
            }
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float y = f(row[j], j);
            if (Write) row[j] = y;
        }
    }
}

// The bit pattern of a float, as an unsigned key in the order of the value (-0 < +0, as
// Rust's total_cmp).
__device__ __forceinline__ unsigned kiln_draw_order_key(float x) {
    const unsigned b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ unsigned kiln_draw_high_mask(int bits) {
    return bits >= 32 ? 0u : (0xffffffffu << bits);
}

__device__ __forceinline__ kiln_draw_u64 kiln_draw_shfl_xor(kiln_draw_u64 v, int offset) {
    const int lo = __shfl_xor_sync(KILN_FULL_MASK, (int)(unsigned)(v & 0xffffffffull), offset);
    const int hi = __shfl_xor_sync(KILN_FULL_MASK, (int)(unsigned)(v >> 32), offset);
    return ((kiln_draw_u64)(unsigned)hi << 32) | (kiln_draw_u64)(unsigned)lo;
}

// Exclusive prefix sum of `v` in thread order; `*total` gets the block's sum. Every thread
// of the block must call it.
__device__ __forceinline__ kiln_draw_u64 kiln_draw_scan(kiln_draw_u64 v, kiln_draw_u64* total,
                                                        KilnDrawShared& sh) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;
    kiln_draw_u64 inclusive = v, group = v;
    for (int offset = 1; offset < 32; offset <<= 1) {
        const kiln_draw_u64 other = kiln_draw_shfl_xor(group, offset);
        if (lane & offset) inclusive += other;
        group += other;
    }
    __syncthreads();  // sh.warp may still be read by a previous scan
    if (lane == 0) sh.warp[warp] = group;
    __syncthreads();
    kiln_draw_u64 before = 0, all = 0;
    for (int w = 0; w < num_warps; ++w) {
        const kiln_draw_u64 x = sh.warp[w];
        if (w < warp) before += x;
        all += x;
    }
    *total = all;
    return before + inclusive - v;
}

// Which candidates a selection sees, and their key and measure.
struct KilnDrawView {
    int on_logits;  // 1: scratch holds tempered logits (NaN: no candidate), measure = count
    float min_w;    // weights: kept if w >= min_w (>= 0, so -1 is never kept)
    int cut_active; // weights: and inside this cut (the top-p cut)
    unsigned cut_key;
    int cut_id;
};

__device__ __forceinline__ bool kiln_draw_view(const KilnDrawView& v, float x, int j,
                                               unsigned* key, kiln_draw_u64* m) {
    if (v.on_logits) {
        if (x != x) return false;
        *key = kiln_draw_order_key(x);
        *m = 1;
        return true;
    }
    if (!(x >= v.min_w)) return false;
    *key = __float_as_uint(x);
    if (v.cut_active && !(*key > v.cut_key || (*key == v.cut_key && j <= v.cut_id))) {
        return false;
    }
    *m = kiln_draw_mass(x);
    return true;
}

// A position in the candidate order: every candidate with a larger key, and those with
// this key and an id up to `id`; `through` and `count` measure that prefix.
struct KilnDrawCut {
    int active;
    unsigned key;
    int id;
    kiln_draw_u64 through;
    unsigned count;
};

__device__ __forceinline__ bool kiln_draw_crosses(kiln_draw_u64 before, kiln_draw_u64 through,
                                                  kiln_draw_u64 target, bool strict) {
    return strict ? (before <= target && through > target) : (before < target && through >= target);
}

// The shortest prefix of the candidates `view` sees, in order, whose measure reaches
// `target` (exceeds it, with `strict`); inactive when all of them do not. Every candidate's
// key is in [lo, hi]; `count` is how many there are (KILN_DRAW_NONE: not known).
__device__ KilnDrawCut kiln_draw_select(float* row, int vocab, const KilnDrawView& view,
                                        kiln_draw_u64 target, bool strict, unsigned lo,
                                        unsigned hi, unsigned count, KilnDrawShared& sh) {
    KilnDrawCut cut;
    cut.active = 0;
    cut.key = 0;
    cut.id = vocab - 1;
    cut.through = 0;
    cut.count = 0;
    if (!strict && target == 0) target = 1;  // the first candidate reaches a target of 0
    const unsigned diff = lo ^ hi;
    int bits = diff == 0 ? 0 : 32 - __clz((int)diff);  // low key bits not yet fixed
    unsigned prefix = hi & kiln_draw_high_mask(bits);
    kiln_draw_u64 above = 0;  // measure of the candidates before the current key range
    unsigned above_count = 0;
    for (;;) {
        const unsigned range_mask = kiln_draw_high_mask(bits);
        if (count <= KILN_DRAW_GATHER) {
            // Gather the range and let each candidate find its place in the order.
            if (threadIdx.x == 0) {
                sh.gathered = 0;
                sh.found = 0;
            }
            __syncthreads();
            kiln_draw_each<false>(row, vocab, [&](float x, int j) {
                unsigned key;
                kiln_draw_u64 m;
                if (kiln_draw_view(view, x, j, &key, &m) && (key & range_mask) == prefix) {
                    const unsigned slot = atomicAdd(&sh.gathered, 1u);
                    if (slot < KILN_DRAW_GATHER) {
                        sh.g_key[slot] = key;
                        sh.g_id[slot] = j;
                        sh.g_mass[slot] = m;
                    }
                }
                return x;
            });
            __syncthreads();
            const int n = (int)min((int)sh.gathered, KILN_DRAW_GATHER);
            for (int i = threadIdx.x; i < n; i += blockDim.x) {
                const unsigned key = sh.g_key[i];
                const int id = sh.g_id[i];
                kiln_draw_u64 before = above;
                unsigned count_before = above_count;
                for (int q = 0; q < n; ++q) {
                    const unsigned kq = sh.g_key[q];
                    if (kq > key || (kq == key && sh.g_id[q] < id)) {
                        before += sh.g_mass[q];
                        count_before += 1;
                    }
                }
                const kiln_draw_u64 through = before + sh.g_mass[i];
                if (kiln_draw_crosses(before, through, target, strict)) {
                    sh.found = 1;
                    sh.key = key;
                    sh.id = id;
                    sh.before = through;
                    sh.count_before = count_before + 1;
                }
            }
            __syncthreads();
            if (sh.found) {
                cut.active = 1;
                cut.key = sh.key;
                cut.id = sh.id;
                cut.through = sh.before;
                cut.count = sh.count_before;
            }
            __syncthreads();  // sh is reused by the caller's next selection
            return cut;
        }
        if (bits == 0) {
            // More than KILN_DRAW_GATHER candidates of one key, so of one measure: the cut is
            // the n-th lowest id among them. Each thread counts them in its own contiguous
            // segment of the row; a scan finds the segment holding the n-th.
            const kiln_draw_u64 each = view.on_logits ? 1 : kiln_draw_mass(__uint_as_float(prefix));
            if (each == 0) return cut;
            const kiln_draw_u64 need = strict ? (target - above) / each + 1
                                              : (target - above + each - 1) / each;
            const int seg = (vocab + blockDim.x - 1) / blockDim.x;
            const int begin = min(vocab, (int)threadIdx.x * seg);
            const int end = min(vocab, begin + seg);
            kiln_draw_u64 mine = 0;
            for (int j = begin; j < end; ++j) {
                unsigned key;
                kiln_draw_u64 m;
                if (kiln_draw_view(view, row[j], j, &key, &m) && key == prefix) mine += 1;
            }
            if (threadIdx.x == 0) sh.found = 0;
            kiln_draw_u64 all;
            kiln_draw_u64 seen = kiln_draw_scan(mine, &all, sh);
            if (seen < need && seen + mine >= need) {
                for (int j = begin; j < end; ++j) {
                    unsigned key;
                    kiln_draw_u64 m;
                    if (kiln_draw_view(view, row[j], j, &key, &m) && key == prefix) {
                        seen += 1;
                        if (seen == need) {
                            sh.found = 1;
                            sh.id = j;
                            break;
                        }
                    }
                }
            }
            __syncthreads();
            if (sh.found) {
                cut.active = 1;
                cut.key = prefix;
                cut.id = sh.id;
                cut.through = above + need * each;
                cut.count = above_count + (unsigned)need;
            }
            __syncthreads();
            return cut;
        }
        // A histogram of the next digit over the candidates of the range.
        const int width = min(bits, KILN_DRAW_DIGIT);
        const int shift = bits - width;
        const int bins = 1 << width;
        for (int b = threadIdx.x; b < bins; b += blockDim.x) sh.hist[b] = 0;
        __syncthreads();
        kiln_draw_each<false>(row, vocab, [&](float x, int j) {
            unsigned key;
            kiln_draw_u64 m;
            if (kiln_draw_view(view, x, j, &key, &m) && (key & range_mask) == prefix) {
                const unsigned b = (key >> shift) & (unsigned)(bins - 1);
                // A 64-bit shared atomic add is a compare-and-swap loop; two native 32-bit
                // adds, the low word's carry going into the high word, sum the same.
                const kiln_draw_u64 add = (1ull << KILN_DRAW_COUNT_SHIFT) | m;
                unsigned* word = reinterpret_cast<unsigned*>(&sh.hist[b]);  // little-endian
                const unsigned lo = (unsigned)add;
                const unsigned old = atomicAdd(word, lo);
                atomicAdd(word + 1, (unsigned)(add >> 32) + (old + lo < old ? 1u : 0u));
            }
            return x;
        });
        __syncthreads();
        // Thread t scans positions [t * per, (t + 1) * per) of the bins, high key first.
        const int per = (bins + blockDim.x - 1) / blockDim.x;
        const int p_begin = min(bins, (int)threadIdx.x * per);
        const int p_end = min(bins, p_begin + per);
        kiln_draw_u64 mine = 0;
        for (int p = p_begin; p < p_end; ++p) mine += sh.hist[bins - 1 - p];
        if (threadIdx.x == 0) sh.found = 0;
        kiln_draw_u64 all;
        const kiln_draw_u64 packed_before = kiln_draw_scan(mine, &all, sh);
        kiln_draw_u64 before = above + (packed_before & KILN_DRAW_MASS_MASK);
        unsigned count_before = above_count + (unsigned)(packed_before >> KILN_DRAW_COUNT_SHIFT);
        for (int p = p_begin; p < p_end; ++p) {
            const int b = bins - 1 - p;
            const kiln_draw_u64 h = sh.hist[b];
            const kiln_draw_u64 through = before + (h & KILN_DRAW_MASS_MASK);
            const unsigned n = (unsigned)(h >> KILN_DRAW_COUNT_SHIFT);
            if (kiln_draw_crosses(before, through, target, strict)) {
                sh.found = 1;
                sh.bin = (unsigned)b;
                sh.before = before;
                sh.count_before = count_before;
                sh.bin_count = n;
            }
            before = through;
            count_before += n;
        }
        __syncthreads();
        if (!sh.found) {
            __syncthreads();
            return cut;
        }
        prefix |= sh.bin << shift;
        bits = shift;
        above = sh.before;
        above_count = sh.count_before;
        count = sh.bin_count;
        __syncthreads();  // everyone read sh before the next step writes it
    }
}

template <typename T>
struct alignas(4 * sizeof(T)) KilnDrawLogitQuad {
    T v[4];
};

// The pass over the edited logits (`logits` itself, or scratch after the edits): their
// argmax (first index of the largest, NaN ignored), the range and count of the finite ones,
// and with `keep_tempered` scratch = the tempered logit (NaN: no candidate).
template <typename D, bool FromLogits>
__device__ __forceinline__ void kiln_draw_load(float* row, const typename D::T* logits, int vocab,
                                               float div, bool keep_tempered, float* amax,
                                               int* aidx, float* cmax, float* cmin,
                                               float* finite) {
    float best = KILN_NEG_INF, hi = KILN_NEG_INF, lo = -KILN_NEG_INF, n = 0.0f;
    int first = vocab;
    auto visit = [&](float l, int j) {
        if (l == l && (first == vocab || l > best)) {
            best = l;
            first = j;
        }
        float c = __int_as_float(0x7fc00000);  // NaN: no candidate
        if (l - l == 0.0f) {                    // finite
            c = l / div;
            hi = fmaxf(hi, c);
            lo = fminf(lo, c);
            n += 1.0f;
        }
        return c;
    };
    if (FromLogits && (vocab & 3) == 0 && ((unsigned long long)row & 15ull) == 0 &&
        ((unsigned long long)logits & (4 * sizeof(typename D::T) - 1)) == 0) {
        const KilnDrawLogitQuad<typename D::T>* quads =
            reinterpret_cast<const KilnDrawLogitQuad<typename D::T>*>(logits);
        KilnDrawQuad* out = reinterpret_cast<KilnDrawQuad*>(row);
        for (int q = threadIdx.x; q < (vocab >> 2); q += blockDim.x) {
            const KilnDrawLogitQuad<typename D::T> v = quads[q];
            const int j = q << 2;
            KilnDrawQuad c;
            c.x = visit(D::load(v.v[0]), j);
            c.y = visit(D::load(v.v[1]), j + 1);
            c.z = visit(D::load(v.v[2]), j + 2);
            c.w = visit(D::load(v.v[3]), j + 3);
            if (keep_tempered) out[q] = c;
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float c = visit(FromLogits ? D::load(logits[j]) : row[j], j);
            if (keep_tempered) row[j] = c;
        }
    }
    *amax = best;
    *aidx = first;
    *cmax = hi;
    *cmin = lo;
    *finite = n;
}

template <typename D>
__device__ __forceinline__ void sampling_draw_impl(unsigned int* out, const typename D::T* logits,
                                                   int vocab, const float* row_f,
                                                   const int* row_i, const int* edit_token,
                                                   const float* edit_value, float* scratch) {
    __shared__ KilnDrawShared sh;
    __shared__ float red[32];
    const long long base = (long long)blockIdx.x * vocab;
    float* row = scratch + base;
    const float temperature = row_f[blockIdx.x * 4 + 0];
    const float top_p = row_f[blockIdx.x * 4 + 1];
    const float min_p = row_f[blockIdx.x * 4 + 2];
    float u = row_f[blockIdx.x * 4 + 3];
    const int top_k = row_i[blockIdx.x * 3 + 0];
    const int edits_begin = row_i[blockIdx.x * 3 + 1];
    const int edits_end = row_i[blockIdx.x * 3 + 2];
    const float pos_inf = __int_as_float(0x7f800000);
    const bool greedy = temperature == 0.0f || top_k == 1;
    const float div = greedy ? 1.0f : temperature;

    // Pass 1 (2 with edits): the edited logits, their argmax (first index of the largest,
    // NaN ignored), and the tempered logits of the finite ones into scratch.
    float amax, cmax, cmin, finite;
    int aidx;
    if (edits_begin < edits_end) {
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
        kiln_draw_load<D, false>(row, logits + base, vocab, div, !greedy, &amax, &aidx, &cmax,
                                 &cmin, &finite);
    } else {
        kiln_draw_load<D, true>(row, logits + base, vocab, div, !greedy, &amax, &aidx, &cmax,
                                &cmin, &finite);
    }
    const float best = kiln_block_max(amax, red);
    const float first = -kiln_block_max(aidx < vocab && amax == best ? -(float)aidx : -(float)vocab, red);
    const unsigned argmax = first < (float)vocab ? (unsigned)first : 0u;
    const float max_c = kiln_block_max(cmax, red);
    const float min_c = -kiln_block_max(-cmin, red);
    const float n_finite = kiln_block_sum(finite, red);
    if (greedy || n_finite == 0.0f) {
        if (threadIdx.x == 0) out[blockIdx.x] = argmax;
        return;
    }
    __syncthreads();  // scratch holds the tempered logits

    // Top-k: a cut in the order of the tempered logits, as the host's select_nth.
    KilnDrawView view;
    view.on_logits = 1;
    view.min_w = 0.0f;
    view.cut_active = 0;
    view.cut_key = 0;
    view.cut_id = 0;
    KilnDrawCut top = {0, 0, 0, 0, 0};
    if (top_k > 0 && (float)top_k < n_finite) {
        top = kiln_draw_select(row, vocab, view, (kiln_draw_u64)top_k, false,
                               kiln_draw_order_key(min_c), kiln_draw_order_key(max_c),
                               (unsigned)n_finite, sh);
    }
    // min_p keeps p_i >= min_p * p_max, i.e. w_i >= min_p. Above 1 the host keeps just the
    // first candidate: the weights of 1 kept, and u = 0 picks the first of them.
    float min_w = min_p > 0.0f ? min_p : 0.0f;
    if (min_w > 1.0f) {
        min_w = 1.0f;
        u = 0.0f;
    }
    // Pass: weights relative to the most likely candidate (weight 1), -1 for no candidate;
    // the mass of the top-k candidates, and the mass, count and smallest weight of those
    // min_p keeps.
    kiln_draw_u64 total = 0, kept = 0, kept_n = 0;
    float lowest = 2.0f;
    kiln_draw_each<true>(row, vocab, [&](float c, int j) {
        float w = -1.0f;
        if (c == c) {
            const unsigned key = kiln_draw_order_key(c);
            if (!top.active || key > top.key || (key == top.key && j <= top.id)) {
                w = expf(c - max_c);
                const kiln_draw_u64 m = kiln_draw_mass(w);
                total += m;
                if (w >= min_w) {
                    kept += m;
                    kept_n += 1;
                    lowest = fminf(lowest, w);
                }
            }
        }
        return w;
    });
    kiln_draw_u64 sum;
    kiln_draw_scan(total, &sum, sh);
    total = sum;
    kiln_draw_scan(kept, &sum, sh);
    kept = sum;
    kiln_draw_scan(kept_n, &sum, sh);
    kept_n = sum;
    lowest = -kiln_block_max(-lowest, red);
    __syncthreads();  // scratch holds the weights

    view.on_logits = 0;
    view.min_w = min_w;
    unsigned lo = __float_as_uint(lowest);
    unsigned kept_count = (unsigned)kept_n;
    if (top_p < 1.0f) {
        // The shortest prefix holding top_p of the (top-k) mass, within the min_p cut.
        const kiln_draw_u64 target = (kiln_draw_u64)((double)total * (double)top_p);
        const KilnDrawCut cut = kiln_draw_select(row, vocab, view, target, false, lo,
                                                 KILN_DRAW_WEIGHT_ONE, kept_count, sh);
        if (cut.active) {
            view.cut_active = 1;
            view.cut_key = cut.key;
            view.cut_id = cut.id;
            kept = cut.through;
            kept_count = cut.count;
            lo = cut.key;
        }
    }
    // The draw: the first candidate at which the running mass exceeds u * kept mass.
    kiln_draw_u64 target = (kiln_draw_u64)((double)kept * (double)u);
    if (target >= kept) target = kept == 0 ? 0 : kept - 1;
    const KilnDrawCut pick = kiln_draw_select(row, vocab, view, target, true, lo,
                                              KILN_DRAW_WEIGHT_ONE, kept_count, sh);
    if (threadIdx.x == 0) out[blockIdx.x] = pick.active ? (unsigned)pick.id : argmax;
}

#define KILN_SAMPLING_DRAW(S, D)                                                             \
    extern "C" __global__ void __launch_bounds__(1024) sampling_draw_##S(                    \
        unsigned int* out, const D::T* logits, int vocab, const float* row_f,                \
        const int* row_i, const int* edit_token, const float* edit_value, float* scratch) { \
        sampling_draw_impl<D>(out, logits, vocab, row_f, row_i, edit_token, edit_value,     \
                              scratch);                                                      \
    }
KILN_FOR_EACH_DTYPE(KILN_SAMPLING_DRAW)
