// Tiled paged attention for prefill and chunked prefill on tensor cores (bf16 / f16, sm_80+).
//
// Same semantics as attention.cu: sequence s owns query rows query_start[s] ..
// query_start[s+1]; its token j sits at position context_lens[s] - q_len + j and attends to
// cache positions kiln_first_key(pos, window) ..= pos (a sliding window or a chunk) of the
// paged cache [num_blocks,
// block_size, hk, hd] (its own K/V were written before this kernel runs).
//
// Why: the one-query-per-CTA kernels read every K/V row once per query token; here a CTA
// takes a tile of PF_BQ = 64 query rows of one sequence and one q head, stages PF_BK = 32
// keys of K and V at a time in shared memory (16-byte loads through the block table, rows
// past the range zeroed), and reuses them for all 64 queries. Each of the 4 warps owns 16
// query rows and runs FlashAttention-2 style with an online softmax: S = Q K^T and O += P V
// are mma.sync.m16n8k16 (16-bit inputs, f32 accumulators), Q stays in registers as A
// fragments for the whole loop, and P goes from the S accumulators straight into A
// fragments (the C layout of two n8 tiles is the A layout of one k16 step).
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4; a 32-bit register holds
// two 16-bit values, the lower column in the low half):
//   A 16x16: a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
//   B 16x8:  b0 = (k 2t..2t+1, n g)  b1 = (k 2t+8..2t+9, n g)
//   C 16x8:  c0, c1 = (g, 2t..2t+1)  c2, c3 = (g+8, 2t..2t+1)
//
// sinks and ALiBi slopes (f32 [hq], or null) as in attention.cu, both in the scores' base-2
// units: the ALiBi term alibi[head] * (key - pos) * log2(e) joins each scaled (and capped)
// score; masked keys stay -inf (padding rows sit at position -1 and mask every key).
//
// Not causal (causal == 0, the image models' attention: sliding_window must be 0): every
// row of sequence s sees all context_lens[s] keys, as a token at the last position would.
// An image batch entry's K/V [nk, heads, hd] is then a cache of one nk-token block.
//
// Head dims that are a multiple of 8 but not of 16 (40) run the last k16 step of Q K^T
// with its upper 8 columns zero in the Q and K fragments (never read from memory).
//
// Grid: x = query tiles (a CTA finds its sequence by walking query_start; surplus CTAs
// return at once), y = q heads. The f32 instantiation and builds for GPUs before sm_80
// contain only a trap: the host never launches them (it uses attention_decode.cu there).

#define PF_THREADS 128
#define PF_BQ 64
#define PF_BK 32
#define PF_PAD 8  // elements per shared-memory row beyond hd: spreads rows over the banks

struct alignas(16) PfChunk {
    unsigned int w[4];
};

template <typename D>
__device__ __forceinline__ unsigned int pf_pack(float lo, float hi) {
    return (unsigned int)D::store(lo) | ((unsigned int)D::store(hi) << 16);
}

__device__ __forceinline__ unsigned int pf_load_pair(const kiln_u16* p) {
    return *reinterpret_cast<const unsigned int*>(p);
}

template <typename D, int HD>
__device__ __forceinline__ void attention_prefill_tiles(
    typename D::T* out, const typename D::T* q, const typename D::T* k_cache,
    const typename D::T* v_cache, const int* block_tables, const int* query_start,
    const int* context_lens, int num_seqs, int max_blocks_per_seq, int block_size, int hq,
    int hk, int q_stride, int sliding_window, float scale, float softcap, int causal,
    const float* sinks, const float* alibi) {
    constexpr int KSTEPS = (HD + 15) / 16;  // k16 steps of Q K^T over the head dim
    constexpr int DTILES = HD / 8;   // n8 tiles of O over the head dim
    constexpr int NTILES = PF_BK / 8;
    constexpr int STRIDE = HD + PF_PAD;
    constexpr int CHUNKS = HD / 8;  // 16-byte chunks per K/V row
    static_assert(HD % 8 == 0, "head dim must be a multiple of 8");
    alignas(16) __shared__ kiln_u16 k_tile[PF_BK * STRIDE];
    alignas(16) __shared__ kiln_u16 v_tile[PF_BK * STRIDE];

    // Which sequence and which 64-row tile of it: tiles are numbered sequence by sequence.
    int tile = blockIdx.x;
    int seq = -1;
    for (int s = 0; s < num_seqs; ++s) {
        const int tiles = (query_start[s + 1] - query_start[s] + PF_BQ - 1) / PF_BQ;
        if (tile < tiles) {
            seq = s;
            break;
        }
        tile -= tiles;
    }
    if (seq < 0) return;  // a surplus CTA: the whole block leaves before any barrier

    const int head = blockIdx.y;
    const int kv_head = head / (hq / hk);
    const int q_len = query_start[seq + 1] - query_start[seq];
    const int q0 = tile * PF_BQ;
    const int rows = min(PF_BQ, q_len - q0);
    const int first_row = query_start[seq] + q0;    // token index of tile row 0
    const int pos0 = context_lens[seq] - q_len + q0;  // its position
    const int last_key = causal ? pos0 + rows - 1 : context_lens[seq] - 1;
    const int max_key = min(last_key, max_blocks_per_seq * block_size - 1);
    // A window's or chunk's first key never decreases with the position: row 0's is the
    // tile's least.
    const int min_key = kiln_first_key(pos0, sliding_window);

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int r_lo = warp * 16 + g;  // this lane's two tile rows
    const int r_hi = r_lo + 8;
    // Padding rows (past the sequence's tokens) get position -1: every key is masked.
    // Without the causal mask every row sits at the last key.
    const int pos_lo = r_lo < rows ? (causal ? pos0 + r_lo : max_key) : -1;
    const int pos_hi = r_hi < rows ? (causal ? pos0 + r_hi : max_key) : -1;
    const int first_lo = kiln_first_key(pos_lo, sliding_window);
    const int first_hi = kiln_first_key(pos_hi, sliding_window);

    // Q as A fragments, unscaled (the scale is applied to S in f32).
    unsigned int qa[KSTEPS][4];
    {
        const kiln_u16* q_lo = q + (long long)(first_row + r_lo) * q_stride + (long long)head * HD;
        const kiln_u16* q_hi = q + (long long)(first_row + r_hi) * q_stride + (long long)head * HD;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            const int col = ks * 16 + 2 * t;
            const bool upper = ks * 16 + 8 < HD;  // false only in the padded step
            qa[ks][0] = r_lo < rows ? pf_load_pair(q_lo + col) : 0u;
            qa[ks][1] = r_hi < rows ? pf_load_pair(q_hi + col) : 0u;
            qa[ks][2] = upper && r_lo < rows ? pf_load_pair(q_lo + col + 8) : 0u;
            qa[ks][3] = upper && r_hi < rows ? pf_load_pair(q_hi + col + 8) : 0u;
        }
    }

    float o[DTILES][4];
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt) {
        o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    }
    float m_lo = KILN_NEG_INF;  // running max, log2 units
    float m_hi = KILN_NEG_INF;
    float l_lo = 0.0f;  // this lane's part of the running sum (the 4 lanes of a row add up)
    float l_hi = 0.0f;
    const float log2_scale = scale * 1.4426950408889634f;
    // ALiBi's slope in base-2 units; 0 without it (the image models never pass one).
    const float log2_slope = alibi != nullptr ? alibi[head] * 1.4426950408889634f : 0.0f;

    const int* table = block_tables + (long long)seq * max_blocks_per_seq;
    const long long kv_row = (long long)hk * HD;
    const long long kv_col = (long long)kv_head * HD;

    for (int k0 = min_key; k0 <= max_key; k0 += PF_BK) {
        __syncthreads();  // every warp is done reading the previous tile
        for (int i = threadIdx.x; i < PF_BK * CHUNKS; i += PF_THREADS) {
            const int r = i / CHUNKS;
            const int c = i % CHUNKS;
            const int p = k0 + r;
            PfChunk kc = {{0u, 0u, 0u, 0u}};
            PfChunk vc = {{0u, 0u, 0u, 0u}};
            if (p <= max_key) {
                const long long block = table[p / block_size];
                const long long off =
                    (block * block_size + p % block_size) * kv_row + kv_col + c * 8;
                kc = *reinterpret_cast<const PfChunk*>(k_cache + off);
                vc = *reinterpret_cast<const PfChunk*>(v_cache + off);
            }
            *reinterpret_cast<PfChunk*>(k_tile + r * STRIDE + c * 8) = kc;
            *reinterpret_cast<PfChunk*>(v_tile + r * STRIDE + c * 8) = vc;
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows and the tile's 32 keys.
        float s[NTILES][4];
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const kiln_u16* k_row = k_tile + (nt * 8 + g) * STRIDE + 2 * t;
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks) {
                // The padded step's upper columns are not staged: B is 0 there as Q is.
                const bool upper = ks * 16 + 8 < HD;
                KilnMma<D>::run(s[nt], qa[ks], pf_load_pair(k_row + ks * 16),
                              upper ? pf_load_pair(k_row + ks * 16 + 8) : 0u);
            }
        }

        // Mask (causal, window, range), scale to log2 units, row maxima.
        float tile_max_lo = KILN_NEG_INF;
        float tile_max_hi = KILN_NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int key = k0 + nt * 8 + 2 * t + (i & 1);
                const int pos = i < 2 ? pos_lo : pos_hi;
                const int first = i < 2 ? first_lo : first_hi;
                const bool valid = key <= pos && key >= first && key <= max_key;
                // Soft-capped (Gemma 2) in the scores' own units, before the log2 scaling.
                const float scaled = softcap > 0.0f
                                         ? kiln_softcap(s[nt][i] * scale, softcap) * 1.4426950408889634f
                                         : s[nt][i] * log2_scale;
                const float biased = scaled + log2_slope * (float)(key - pos);
                s[nt][i] = valid ? biased : KILN_NEG_INF;
            }
            tile_max_lo = fmaxf(tile_max_lo, fmaxf(s[nt][0], s[nt][1]));
            tile_max_hi = fmaxf(tile_max_hi, fmaxf(s[nt][2], s[nt][3]));
        }
#pragma unroll
        for (int offset = 1; offset < 4; offset <<= 1) {  // the 4 lanes sharing a row
            tile_max_lo = fmaxf(tile_max_lo, __shfl_xor_sync(KILN_FULL_MASK, tile_max_lo, offset));
            tile_max_hi = fmaxf(tile_max_hi, __shfl_xor_sync(KILN_FULL_MASK, tile_max_hi, offset));
        }
        const float new_lo = fmaxf(m_lo, tile_max_lo);
        const float new_hi = fmaxf(m_hi, tile_max_hi);
        // A row that has seen no key yet keeps max -inf; subtract 0 then so every
        // exponent is exp2(-inf) = 0 instead of NaN.
        const float base_lo = new_lo == KILN_NEG_INF ? 0.0f : new_lo;
        const float base_hi = new_hi == KILN_NEG_INF ? 0.0f : new_hi;
        const float alpha_lo = exp2f(m_lo - base_lo);
        const float alpha_hi = exp2f(m_hi - base_hi);
        m_lo = new_lo;
        m_hi = new_hi;
        l_lo *= alpha_lo;
        l_hi *= alpha_hi;
#pragma unroll
        for (int dt = 0; dt < DTILES; ++dt) {
            o[dt][0] *= alpha_lo;
            o[dt][1] *= alpha_lo;
            o[dt][2] *= alpha_hi;
            o[dt][3] *= alpha_hi;
        }
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - base_lo);
            s[nt][1] = exp2f(s[nt][1] - base_lo);
            s[nt][2] = exp2f(s[nt][2] - base_hi);
            s[nt][3] = exp2f(s[nt][3] - base_hi);
            l_lo += s[nt][0] + s[nt][1];
            l_hi += s[nt][2] + s[nt][3];
        }

        // O += P V: P's accumulators become A fragments, V comes from shared memory.
#pragma unroll
        for (int kk = 0; kk < PF_BK / 16; ++kk) {
            const unsigned int pa[4] = {
                pf_pack<D>(s[2 * kk][0], s[2 * kk][1]), pf_pack<D>(s[2 * kk][2], s[2 * kk][3]),
                pf_pack<D>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                pf_pack<D>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const kiln_u16* v_rows = v_tile + (kk * 16 + 2 * t) * STRIDE + g;
#pragma unroll
            for (int dt = 0; dt < DTILES; ++dt) {
                const kiln_u16* v = v_rows + dt * 8;
                const unsigned int b0 = (unsigned int)v[0] | ((unsigned int)v[STRIDE] << 16);
                const unsigned int b1 =
                    (unsigned int)v[8 * STRIDE] | ((unsigned int)v[9 * STRIDE] << 16);
                KilnMma<D>::run(o[dt], pa, b0, b1);
            }
        }
    }

#pragma unroll
    for (int offset = 1; offset < 4; offset <<= 1) {
        l_lo += __shfl_xor_sync(KILN_FULL_MASK, l_lo, offset);
        l_hi += __shfl_xor_sync(KILN_FULL_MASK, l_hi, offset);
    }
    // m and l are in base-2 units here, so is the sink (gpt-oss) that joins the softmax.
    const int has_sink = sinks != nullptr;
    const float sink = has_sink ? sinks[head] * 1.4426950408889634f : 0.0f;
    const float inv_lo = kiln_softmax_norm(m_lo, l_lo, has_sink, sink, KilnExp2());
    const float inv_hi = kiln_softmax_norm(m_hi, l_hi, has_sink, sink, KilnExp2());
    kiln_u16* out_lo = out + ((long long)(first_row + r_lo) * hq + head) * HD + 2 * t;
    kiln_u16* out_hi = out + ((long long)(first_row + r_hi) * hq + head) * HD + 2 * t;
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt) {
        if (r_lo < rows) {
            *reinterpret_cast<unsigned int*>(out_lo + dt * 8) =
                pf_pack<D>(o[dt][0] * inv_lo, o[dt][1] * inv_lo);
        }
        if (r_hi < rows) {
            *reinterpret_cast<unsigned int*>(out_hi + dt * 8) =
                pf_pack<D>(o[dt][2] * inv_hi, o[dt][3] * inv_hi);
        }
    }
}

template <typename D, int HD>
__device__ __forceinline__ void attention_prefill_impl(
    typename D::T* out, const typename D::T* q, const typename D::T* k_cache,
    const typename D::T* v_cache, const int* block_tables, const int* query_start,
    const int* context_lens, int num_seqs, int max_blocks_per_seq, int block_size, int hq,
    int hk, int q_stride, int sliding_window, float scale, float softcap, int causal,
    const float* sinks, const float* alibi) {
#if __CUDA_ARCH__ >= 800 || defined(KILN_EMU_MMA)
    if constexpr (sizeof(typename D::T) == 2) {
        attention_prefill_tiles<D, HD>(out, q, k_cache, v_cache, block_tables, query_start,
                                       context_lens, num_seqs, max_blocks_per_seq, block_size,
                                       hq, hk, q_stride, sliding_window, scale, softcap, causal,
                                       sinks, alibi);
    } else {
        asm volatile("trap;");  // f32: the host launches attention_decode instead
    }
#else
    asm volatile("trap;");  // no m16n8k16 before sm_80: the host launches attention_decode
#endif
}

#define PF_PARAMS(D)                                                                         \
    D::T *out, const D::T *q, const D::T *k_cache, const D::T *v_cache,                      \
        const int *block_tables, const int *query_start, const int *context_lens,            \
        int num_seqs, int max_blocks_per_seq, int block_size, int hq, int hk, int q_stride,  \
        int sliding_window, float scale, float softcap, int causal, const float *sinks,      \
        const float *alibi
#define PF_ARGS                                                                              \
    out, q, k_cache, v_cache, block_tables, query_start, context_lens, num_seqs,             \
        max_blocks_per_seq, block_size, hq, hk, q_stride, sliding_window, scale, softcap, causal, \
        sinks, alibi

// 40 and 160: Stable Diffusion 1.5's UNet attention (the LLM path uses 64 .. 256; 192 is
// DeepSeek's decompressed latent attention).
#define KILN_ATTENTION_PREFILL(S, D)                                                         \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                 \
        attention_prefill_hd40_##S(PF_PARAMS(D)) {                                           \
        attention_prefill_impl<D, 40>(PF_ARGS);                                              \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                 \
        attention_prefill_hd64_##S(PF_PARAMS(D)) {                                           \
        attention_prefill_impl<D, 64>(PF_ARGS);                                              \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                 \
        attention_prefill_hd80_##S(PF_PARAMS(D)) {                                           \
        attention_prefill_impl<D, 80>(PF_ARGS);                                              \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                 \
        attention_prefill_hd96_##S(PF_PARAMS(D)) {                                           \
        attention_prefill_impl<D, 96>(PF_ARGS);                                              \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                 \
        attention_prefill_hd128_##S(PF_PARAMS(D)) {                                          \
        attention_prefill_impl<D, 128>(PF_ARGS);                                             \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                 \
        attention_prefill_hd160_##S(PF_PARAMS(D)) {                                          \
        attention_prefill_impl<D, 160>(PF_ARGS);                                             \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                 \
        attention_prefill_hd192_##S(PF_PARAMS(D)) {                                          \
        attention_prefill_impl<D, 192>(PF_ARGS);                                             \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(PF_THREADS)                                 \
        attention_prefill_hd256_##S(PF_PARAMS(D)) {                                          \
        attention_prefill_impl<D, 256>(PF_ARGS);                                             \
    }
KILN_FOR_EACH_DTYPE(KILN_ATTENTION_PREFILL)
