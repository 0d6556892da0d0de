// Split-K ("flash-decoding") paged attention: one query token per CTA row of the grid.
//
// Used for decode (every sequence has one new token), and for prefill where the tensor-core
// kernel (attention_prefill.cu) does not apply (f32, GPUs before sm_80). Same semantics as
// attention.cu: sequence s owns query rows query_start[s] .. query_start[s+1]; its token j
// sits at position context_lens[s] - q_len + j and attends to cache positions
// kiln_first_key(pos, window) ..= pos (a sliding window or a chunk) through block_tables; caches are
// [num_blocks, block_size, hk, hd]. The per-head terms are attention.cu's too: sinks join
// where the softmax is normalised (the one-split output or the merge), ALiBi's
// alibi[h] * (p - pos) joins each score. The term is relative to the query's position, so
// every split of a token scores on the same scale and the merge needs nothing more.
//
// Why this shape: at decode there is one query per sequence, so the naive kernel (one CTA
// per (token, q head), one key per warp step) reads every K/V row once per q head and
// spends a 5-shuffle reduction per key. Here:
//   * a CTA handles `heads_per_cta` q heads of one GQA group (all of them when the group
//     has at most 8), so each K/V row is read once per group, not once per q head;
//   * the token's key range is cut into `gridDim.z` splits of `keys_per_split` keys (chosen
//     on the host from the context length and the SM count) so a small batch still fills
//     the GPU; each CTA writes an unnormalised partial (max, sum, acc[hd]) per head, and
//     attention_decode_merge combines the splits. With one split the CTA writes the
//     output directly and no merge runs;
//   * K rows are read with 16-byte loads by groups of KEYS_LANES lanes (one key per group,
//     several groups per warp, UNROLL keys per group in flight), the dot products reduced
//     within the group; all scores of the split go to shared memory, the softmax is taken
//     once over them (no running rescale), then V rows are read with 16-byte loads by
//     threads that each own one 16-byte chunk of the head dim for a subset of the keys.
//
// `partials` is [tokens, hq, splits, hd] accumulators followed by [tokens, hq, splits, 2]
// (max, sum) pairs, f32; unused (may be any pointer) when gridDim.z == 1.

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_MAX_HEADS 8
#define DEC_MAX_SPLIT_KEYS 512
#define DEC_UNROLL 4
#define DEC_SOFTMAX_SLOTS (DEC_MAX_SPLIT_KEYS / 32)  // keys per lane in the softmax

// 16 bytes of K or V; copied as one vector load (rows and chunks are 16-byte aligned: the
// host checks the cache pointers, and hd * sizeof(T) is a multiple of 16).
typedef KilnVec16 DecChunk;

// Lanes per key in the score phase: the 16-byte chunks of a row, rounded up to a power of
// two (shuffle groups must be aligned), at most a warp.
template <int CHUNKS>
struct DecKeyLanes {
    static constexpr int value = CHUNKS > 16 ? 32 : (CHUNKS > 8 ? 16 : (CHUNKS > 4 ? 8 : 4));
};

template <typename D, int HD>
__device__ __forceinline__ void attention_decode_impl(
    float* partials, typename D::T* out, const typename D::T* q,
    const typename D::T* k_cache, const typename D::T* v_cache, const int* block_tables,
    const int* query_start, const int* context_lens, int num_seqs, int max_blocks_per_seq,
    int block_size, int hq, int hk, int q_stride, int sliding_window, float scale,
    float softcap, int heads_per_cta, int keys_per_split, const float* sinks,
    const float* alibi) {
    typedef typename D::T T;
    constexpr int VEC = 16 / (int)sizeof(T);        // elements per 16-byte chunk
    constexpr int CHUNKS = HD / VEC;                // chunks per K/V row
    constexpr int KEY_LANES = DecKeyLanes<CHUNKS>::value;
    constexpr int CPL = (CHUNKS + KEY_LANES - 1) / KEY_LANES;  // chunks per lane
    constexpr int KEY_GROUPS = DEC_THREADS / KEY_LANES;         // keys scored at once
    constexpr int PV_ROWS = DEC_THREADS / CHUNKS;               // keys summed at once
    static_assert(HD % VEC == 0, "head dim must be a whole number of 16-byte chunks");
    static_assert(PV_ROWS >= 1, "a V row must fit the block");

    __shared__ float probs[DEC_MAX_HEADS][DEC_MAX_SPLIT_KEYS];
    __shared__ float reduce_buf[PV_ROWS][HD];
    __shared__ float head_max[DEC_MAX_HEADS];
    __shared__ float head_sum[DEC_MAX_HEADS];

    // The host sizes these (attention_plan.rs); past them shared memory would overflow.
    if (keys_per_split > DEC_MAX_SPLIT_KEYS || heads_per_cta > DEC_MAX_HEADS) {
        asm volatile("trap;");
    }
    const int token = blockIdx.x;
    const int head0 = blockIdx.y * heads_per_cta;
    const int split = blockIdx.z;
    const int num_splits = gridDim.z;
    const int heads = heads_per_cta;
    const int kv_head = head0 / (hq / hk);  // heads_per_cta divides the group size

    const int seq = kiln_find_sequence(query_start, num_seqs, token);
    const int q_len = query_start[seq + 1] - query_start[seq];
    const int pos = context_lens[seq] - q_len + (token - query_start[seq]);
    const int last_key = min(pos, max_blocks_per_seq * block_size - 1);
    const int first_key = kiln_first_key(pos, sliding_window);
    const int split_first = first_key + split * keys_per_split;
    const int split_last = min(last_key, split_first + keys_per_split - 1);
    const int num_keys = split_last - split_first + 1;  // <= keys_per_split <= MAX

    const long long part_row = ((long long)token * hq + head0) * num_splits + split;
    const long long ml_base = (long long)gridDim.x * hq * num_splits * HD;

    if (num_keys <= 0) {  // the whole CTA leaves together: nothing below synchronises
        for (int i = threadIdx.x; i < heads * HD; i += DEC_THREADS) {
            const int g = i / HD;
            const int d = i % HD;
            if (num_splits == 1) {
                out[((long long)token * hq + head0 + g) * HD + d] = D::store(0.0f);
            } else {
                const long long row = part_row + (long long)g * num_splits;
                partials[row * HD + d] = 0.0f;
                if (d == 0) {
                    partials[ml_base + row * 2] = KILN_NEG_INF;
                    partials[ml_base + row * 2 + 1] = 0.0f;
                }
            }
        }
        return;
    }

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int* table = block_tables + (long long)seq * max_blocks_per_seq;
    const long long kv_row = (long long)hk * HD;
    const long long kv_col = (long long)kv_head * HD;

    // ---- scores: KEY_LANES lanes per key, q of every head of the CTA in registers ----
    const int sub = lane % KEY_LANES;
    const int key_group = warp * (32 / KEY_LANES) + lane / KEY_LANES;
    float qf[DEC_MAX_HEADS][CPL * VEC];
    float slope[DEC_MAX_HEADS];  // ALiBi; 0 without it
#pragma unroll
    for (int g = 0; g < DEC_MAX_HEADS; ++g) {
        slope[g] = (alibi != nullptr && g < heads) ? alibi[head0 + g] : 0.0f;
        const T* q_head = q + (long long)token * q_stride + (long long)(head0 + g) * HD;
#pragma unroll
        for (int c = 0; c < CPL; ++c) {
            const int chunk = sub + c * KEY_LANES;
#pragma unroll
            for (int v = 0; v < VEC; ++v) {
                qf[g][c * VEC + v] =
                    (g < heads && chunk < CHUNKS) ? D::load(q_head[chunk * VEC + v]) * scale
                                                  : 0.0f;
            }
        }
    }

    for (int base = 0; base < num_keys; base += KEY_GROUPS * DEC_UNROLL) {
        DecChunk kraw[DEC_UNROLL][CPL];
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; ++u) {
            const int j = base + u * KEY_GROUPS + key_group;
            const int p = split_first + j;
            const T* row = k_cache;
            if (j < num_keys) {
                const long long block = table[p / block_size];
                row = k_cache + (block * block_size + p % block_size) * kv_row + kv_col;
            }
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                const int chunk = sub + c * KEY_LANES;
                if (j < num_keys && chunk < CHUNKS) {
                    kraw[u][c] = *reinterpret_cast<const DecChunk*>(row + chunk * VEC);
                } else {
                    kraw[u][c] = DecChunk{{0u, 0u, 0u, 0u}};
                }
            }
        }
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; ++u) {
            float dot[DEC_MAX_HEADS];
#pragma unroll
            for (int g = 0; g < DEC_MAX_HEADS; ++g) dot[g] = 0.0f;
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                float kf[VEC];
                kiln_unpack16<D>(kraw[u][c], kf);
#pragma unroll
                for (int g = 0; g < DEC_MAX_HEADS; ++g) {
                    if (g < heads) {
#pragma unroll
                        for (int v = 0; v < VEC; ++v) dot[g] += qf[g][c * VEC + v] * kf[v];
                    }
                }
            }
            // Every lane of the warp takes part (out-of-range keys have dot 0).
#pragma unroll
            for (int g = 0; g < DEC_MAX_HEADS; ++g) {
                if (g < heads) {
#pragma unroll
                    for (int offset = KEY_LANES / 2; offset > 0; offset >>= 1) {
                        dot[g] += __shfl_xor_sync(KILN_FULL_MASK, dot[g], offset);
                    }
                }
            }
            const int j = base + u * KEY_GROUPS + key_group;
            if (sub == 0 && j < num_keys) {
                const float distance = (float)(split_first + j - pos);  // <= 0, for ALiBi
#pragma unroll
                for (int g = 0; g < DEC_MAX_HEADS; ++g) {
                    if (g < heads) {
                        probs[g][j] = kiln_softcap(dot[g], softcap) + slope[g] * distance;
                    }
                }
            }
        }
    }
    __syncthreads();

    // ---- softmax over the split, one warp per head ----
    // Lane l owns keys l, l + 32, ...: at most DEC_SOFTMAX_SLOTS of them, one register each,
    // in fully unrolled slots with a guard per slot (and a warp-uniform exit once the slots
    // pass num_keys). No loop here has a trip count derived from num_keys: with the former
    // `for (j = lane; j < num_keys; j += 32)` loops NVVM runtime-unrolled them by 4 and
    // computed the remainder from the min() chain behind num_keys, and ptxas for sm_90 (CUDA
    // 13) dropped a negation in that expression (-(max_blocks_per_seq * block_size) became
    // +...), so lanes read and summed scores past num_keys (stale shared memory) into
    // head_sum: every output scaled down by a per-head, run-to-run varying factor.
    for (int g = warp; g < heads; g += DEC_WARPS) {
        float e[DEC_SOFTMAX_SLOTS];
        float m = KILN_NEG_INF;
#pragma unroll
        for (int i = 0; i < DEC_SOFTMAX_SLOTS; ++i) {
            const int j = lane + 32 * i;
            e[i] = (32 * i < num_keys && j < num_keys) ? probs[g][j] : KILN_NEG_INF;
            m = fmaxf(m, e[i]);
        }
        m = kiln_warp_max(m);
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < DEC_SOFTMAX_SLOTS; ++i) {
            const int j = lane + 32 * i;
            if (32 * i < num_keys && j < num_keys) {
                e[i] = expf(e[i] - m);
                probs[g][j] = e[i];
                s += e[i];
            }
        }
        s = kiln_warp_sum(s);
        if (lane == 0) {
            head_max[g] = m;
            head_sum[g] = s;
        }
    }
    __syncthreads();

    // ---- P V: thread owns one 16-byte chunk of the head dim for every PV_ROWS-th key ----
    const int chunk = threadIdx.x % CHUNKS;
    const int key_lane = threadIdx.x / CHUNKS;
    float acc[DEC_MAX_HEADS][VEC];
#pragma unroll
    for (int g = 0; g < DEC_MAX_HEADS; ++g) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[g][v] = 0.0f;
    }
    if (key_lane < PV_ROWS) {
        for (int base = key_lane; base < num_keys; base += PV_ROWS * DEC_UNROLL) {
            DecChunk vraw[DEC_UNROLL];
#pragma unroll
            for (int u = 0; u < DEC_UNROLL; ++u) {
                const int j = base + u * PV_ROWS;
                if (j < num_keys) {
                    const int p = split_first + j;
                    const long long block = table[p / block_size];
                    const T* row =
                        v_cache + (block * block_size + p % block_size) * kv_row + kv_col;
                    vraw[u] = *reinterpret_cast<const DecChunk*>(row + chunk * VEC);
                } else {
                    vraw[u] = DecChunk{{0u, 0u, 0u, 0u}};
                }
            }
#pragma unroll
            for (int u = 0; u < DEC_UNROLL; ++u) {
                const int j = base + u * PV_ROWS;
                if (j < num_keys) {
                    float vf[VEC];
                    kiln_unpack16<D>(vraw[u], vf);
#pragma unroll
                    for (int g = 0; g < DEC_MAX_HEADS; ++g) {
                        if (g < heads) {
                            const float p = probs[g][j];
#pragma unroll
                            for (int v = 0; v < VEC; ++v) acc[g][v] += p * vf[v];
                        }
                    }
                }
            }
        }
    }

    // ---- sum the key lanes (fixed order: deterministic), one head at a time ----
#pragma unroll
    for (int g = 0; g < DEC_MAX_HEADS; ++g) {
        if (g < heads) {  // the same for the whole CTA: the barriers below are safe
            if (key_lane < PV_ROWS) {
#pragma unroll
                for (int v = 0; v < VEC; ++v) reduce_buf[key_lane][chunk * VEC + v] = acc[g][v];
            }
            __syncthreads();
            for (int d = threadIdx.x; d < HD; d += DEC_THREADS) {
                float total = 0.0f;
                for (int r = 0; r < PV_ROWS; ++r) total += reduce_buf[r][d];
                if (num_splits == 1) {
                    // The sink (gpt-oss) joins here; split, it joins in the merge.
                    const float norm = kiln_softmax_norm(
                        head_max[g], head_sum[g], sinks != nullptr,
                        sinks != nullptr ? sinks[head0 + g] : 0.0f, KilnExpE());
                    out[((long long)token * hq + head0 + g) * HD + d] = D::store(total * norm);
                } else {
                    const long long row = part_row + (long long)g * num_splits;
                    partials[row * HD + d] = total;
                    if (d == 0) {
                        partials[ml_base + row * 2] = head_max[g];
                        partials[ml_base + row * 2 + 1] = head_sum[g];
                    }
                }
            }
            __syncthreads();
        }
    }
}

// Combines the splits of one (token, q head): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M)
// l_s with M the largest split max; empty splits (max -inf) contribute nothing.
template <typename D>
__device__ __forceinline__ void attention_decode_merge_impl(typename D::T* out,
                                                            const float* partials, int hq,
                                                            int hd, int num_splits,
                                                            const float* sinks) {
    const int token = blockIdx.x;
    const int head = blockIdx.y;
    const long long row = ((long long)token * hq + head) * num_splits;
    const float* acc = partials + row * hd;
    const float* ml = partials + (long long)gridDim.x * hq * num_splits * hd + row * 2;
    float global_max = KILN_NEG_INF;
    for (int s = 0; s < num_splits; ++s) global_max = fmaxf(global_max, ml[2 * s]);
    const int has_sink = sinks != nullptr;
    const float sink = has_sink ? sinks[head] : 0.0f;
    typename D::T* out_head = out + ((long long)token * hq + head) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float numerator = 0.0f;
        float denominator = 0.0f;
        for (int s = 0; s < num_splits; ++s) {
            const float m = ml[2 * s];
            if (m == KILN_NEG_INF) continue;
            const float f = expf(m - global_max);
            numerator += f * acc[(long long)s * hd + d];
            denominator += f * ml[2 * s + 1];
        }
        const float norm = kiln_softmax_norm(global_max, denominator, has_sink, sink, KilnExpE());
        out_head[d] = D::store(numerator * norm);
    }
}

#define DEC_PARAMS(D)                                                                        \
    float *partials, D::T *out, const D::T *q, const D::T *k_cache, const D::T *v_cache,     \
        const int *block_tables, const int *query_start, const int *context_lens,            \
        int num_seqs, int max_blocks_per_seq, int block_size, int hq, int hk, int q_stride,  \
        int sliding_window, float scale, float softcap, int heads_per_cta, int keys_per_split, \
        const float *sinks, const float *alibi
#define DEC_ARGS                                                                             \
    partials, out, q, k_cache, v_cache, block_tables, query_start, context_lens, num_seqs,   \
        max_blocks_per_seq, block_size, hq, hk, q_stride, sliding_window, scale, softcap,             \
        heads_per_cta, keys_per_split, sinks, alibi

#define KILN_ATTENTION_DECODE(S, D)                                                          \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                                \
        attention_decode_hd64_##S(DEC_PARAMS(D)) {                                           \
        attention_decode_impl<D, 64>(DEC_ARGS);                                              \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                                \
        attention_decode_hd80_##S(DEC_PARAMS(D)) {                                           \
        attention_decode_impl<D, 80>(DEC_ARGS);                                              \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                                \
        attention_decode_hd96_##S(DEC_PARAMS(D)) {                                           \
        attention_decode_impl<D, 96>(DEC_ARGS);                                              \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                                \
        attention_decode_hd128_##S(DEC_PARAMS(D)) {                                          \
        attention_decode_impl<D, 128>(DEC_ARGS);                                             \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                                \
        attention_decode_hd192_##S(DEC_PARAMS(D)) {                                          \
        attention_decode_impl<D, 192>(DEC_ARGS);                                             \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                                \
        attention_decode_hd256_##S(DEC_PARAMS(D)) {                                          \
        attention_decode_impl<D, 256>(DEC_ARGS);                                             \
    }                                                                                        \
    extern "C" __global__ void attention_decode_merge_##S(D::T* out, const float* partials,  \
                                                          int hq, int hd, int num_splits,    \
                                                          const float* sinks) {              \
        attention_decode_merge_impl<D>(out, partials, hq, hd, num_splits, sinks);            \
    }
KILN_FOR_EACH_DTYPE(KILN_ATTENTION_DECODE)
