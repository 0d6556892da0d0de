// GEMV for a few rows of activations: y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]), the
// linear layer of a decode step, where cuBLAS's GEMM tiles leave weight bandwidth unused.
// f32 accumulation, one rounding to the dtype at the end.
//
// Layout: w [N, K] row-major (HF), x [M, K], y [M, N]; K % 8 == 0 and x, w 16-byte aligned
// (the host checks both and falls back to cuBLAS otherwise). The kernel `gemv<MT>` serves
// 1 <= M <= MT rows of x (the host picks MT in 1, 2, 4, 8).
//
// Each warp owns GEMV_ROWS_PER_WARP output columns n (rows of w): lane l streams the 16-byte
// vectors l, l + 32, ... of those weight rows, GEMV_UNROLL vectors per row in flight, and
// multiplies them with the matching vectors of x. x is staged in shared memory in chunks of
// GEMV_SMEM_BYTES (whole K when it fits: 16384 bf16 values per row for M = 1, so the 8B's
// down projection, K = 14336, stages once) and read once per vector for all rows of the
// warp. Each chunk's first weight loads are issued before its staging (they do not depend
// on x), and every step loads the next step's weights before multiplying its own, so the
// staging's latency and the multiplies hide behind weight traffic. Lanes reduce with shuffles; lane r * MT + m writes
// y[m, row0 + r]. Blocks are small (4 warps, 8 output columns) so even N = 4096 gives 512
// blocks, several per SM.
//
// gemv<MT>_add_norm: a projection fused with the residual add + RMS norm before it. Every
// block first finds each row's rms of x + residual (a few KB, from L2), then stages
// rms_norm(x + residual) * norm_w into shared memory; block 0 also stores x + residual (the
// new residual stream, rounded as fused_add_rms_norm rounds it) into res_out, which must
// not alias res_in: the other blocks are still reading it.
//
// gemv<MT>_add_norm_swiglu: the same for the MLP's gate_up projection (w [2I, K] = [gate |
// up] rows), with the SwiGLU as its epilogue: each warp takes gate row c and up row c + I
// instead of two neighbouring rows, and writes y[m, c] = silu(g) * u ([m, I]), g and u
// rounded to the dtype first, so the result is the plain kernel's [m, 2I] followed by
// silu_mul (activation.cu) bit for bit, without that launch and the round trip.
//
// gemv<MT>_swiglu: the same epilogue on plain rows of x, for shapes where the norm in every
// block costs more than the norm launch it saves (the 8B's k = 4096 on an H200: the fused
// norm took 1.11x the time of fused_add_rms_norm + gemv).
//
// gemv_expert / gemv_expert_swiglu: the experts of a mixture-of-experts layer routed on the
// device (src/backend/cuda/moe.rs). kernels/moe.cu's routing groups the step's routed pairs
// (token p / top_k, its slot p % top_k) by expert into work items of at most
// GEMV_EXPERT_ROWS pairs; block (x, i) serves item i with its expert's weights, found through
// `table` (one device address per expert, every expert [n, k]), as the plain GEMV of
// GEMV_EXPERT_ROWS rows whose row m is the item's pair p: x row p / x_div (the token's
// hidden row for gate_up, x_div = top_k; the pair's own activation row for down, x_div = 1),
// y row p. So an expert's weights are read once per item, not once per pair, and each
// pair's result equals gemv1's on its one row with that expert's weights (the per-row
// arithmetic does not depend on the other rows). Items past the step's count have no rows
// and return at once (the grid is sized for the most items a step can have). gpt-oss's
// experts add a bias per expert (`bias` stacked [experts, n], has_bias) and use the clamped
// SwiGLU (`act_mode` GEMV_ACT_CLAMPED, with `limit` and `alpha`), as the host path's linear
// and clamped_swiglu compute them. Nemotron 3's ungated experts run their up projection
// through the plain gemv_expert with `act_mode` GEMV_ACT_RELU2: each value rounded to the
// dtype as the linear layer stores it, then relu(v)^2 (the host path's activation).

#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)
#define GEMV_ROWS_PER_WARP 2
#define GEMV_UNROLL 4
#define GEMV_SMEM_BYTES 32768
// Pairs per work item of the expert GEMVs (a gemv4: ALU-bound beyond, see gemv.rs).
#define GEMV_EXPERT_ROWS 4

// 16 bytes of a weight or activation row: 8 16-bit values or 4 f32.
typedef KilnVec16 GemvVec;

// How the staging turns the input rows into the x the GEMV multiplies.
#define GEMV_PLAIN 0     // x as it is
#define GEMV_ADD_NORM 2  // x = rms_norm(x + residual) * norm_w; the sum is also stored

// The extra operands of GEMV_ADD_NORM (unused otherwise).
template <typename D>
struct GemvNorm {
    typename D::T* res_out;        // x + residual, rounded to the dtype (block 0 writes it)
    const typename D::T* res_in;   // the residual stream before this layer
    const typename D::T* norm_w;   // [K]
    float eps;
};

// x + residual per value, rounded to D::T as fused_add_rms_norm rounds the residual stream.
template <typename D>
__device__ __forceinline__ void gemv_add_round(const GemvVec& xv, const GemvVec& rv,
                                               typename D::T* sum) {
    constexpr int PER = 16 / (int)sizeof(typename D::T);
    float x[PER], r[PER];
    kiln_unpack16<D>(xv, x);
    kiln_unpack16<D>(rv, r);
#pragma unroll
    for (int j = 0; j < PER; ++j) sum[j] = D::store(x[j] + r[j]);
}

// 1 / rms of row m of x + residual over k values, in every thread of the block (all call
// it with the same m).
template <typename D>
__device__ __forceinline__ float gemv_inv_rms(const typename D::T* x, const GemvNorm<D>& nm,
                                              int m, int k, float* scratch) {
    constexpr int PER = 16 / (int)sizeof(typename D::T);
    const GemvVec* xr = reinterpret_cast<const GemvVec*>(x + (long long)m * k);
    const GemvVec* rr = reinterpret_cast<const GemvVec*>(nm.res_in + (long long)m * k);
    float sum_sq = 0.0f;
    for (int v = threadIdx.x; v < k / PER; v += GEMV_THREADS) {
        typename D::T s[PER];
        gemv_add_round<D>(xr[v], rr[v], s);
#pragma unroll
        for (int j = 0; j < PER; ++j) sum_sq += D::load(s[j]) * D::load(s[j]);
    }
    return rsqrtf(kiln_block_sum(sum_sq, scratch) / (float)k + nm.eps);
}

// Vector v of row m of the normalised x, rms_norm's formula (value * inv_rms * weight); block
// 0 also stores the row's rounded sum into res_out.
template <typename D>
__device__ __forceinline__ GemvVec gemv_add_norm_vec(const typename D::T* x, const GemvNorm<D>& nm,
                                                     int m, int k, int v, float inv_rms) {
    constexpr int PER = 16 / (int)sizeof(typename D::T);
    const long long row = (long long)m * k;
    typename D::T s[PER];
    gemv_add_round<D>(reinterpret_cast<const GemvVec*>(x + row)[v],
                      reinterpret_cast<const GemvVec*>(nm.res_in + row)[v], s);
    if (blockIdx.x == 0) reinterpret_cast<GemvVec*>(nm.res_out + row)[v] = kiln_pack16(s);
    float w[PER];
    kiln_unpack16<D>(reinterpret_cast<const GemvVec*>(nm.norm_w)[v], w);
    typename D::T out[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) out[j] = D::store(D::load(s[j]) * inv_rms * w[j]);
    return kiln_pack16(out);
}

// One step's weight vectors: vectors c0 + v0 + 32 u (u < GEMV_UNROLL) of each of the warp's
// R rows, zero past the chunk's cvecs vectors (never read).
template <int R>
__device__ __forceinline__ void gemv_load_step(GemvVec (&wv)[GEMV_UNROLL][R],
                                               const GemvVec* const (&wrow)[R], int c0, int v0,
                                               int cvecs) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) {
        const int v = v0 + 32 * u;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            wv[u][r] = v < cvecs ? wrow[r][c0 + v] : GemvVec{{0u, 0u, 0u, 0u}};
        }
    }
}

// GATHER (the expert GEMVs): row m of the block's rows is routed pair pairs[m]: its x row
// is pairs[m] / x_div, its y row pairs[m].
struct GemvGather {
    const int* pairs;
    int x_div;
};

// The epilogue's activation (GemvAct::mode). With SWIGLU: silu(g) * u (GEMV_ACT_NONE), or
// gpt-oss's clamped form. Without: the value as it is, or relu(v)^2.
#define GEMV_ACT_NONE 0
#define GEMV_ACT_CLAMPED 1
#define GEMV_ACT_RELU2 2
struct GemvAct {
    int mode;
    float limit, alpha;
};

template <typename D, int MT, int MODE, bool SWIGLU, bool GATHER = false>
__device__ __forceinline__ void gemv_impl(typename D::T* __restrict__ y,
                                          const typename D::T* __restrict__ x,
                                          const typename D::T* __restrict__ w,
                                          const typename D::T* __restrict__ bias, int m_rows,
                                          int n, int k, int has_bias, const GemvNorm<D>& nm,
                                          const GemvGather& gather = GemvGather{nullptr, 1},
                                          const GemvAct& act = GemvAct{0, 0.0f, 0.0f}) {
    static_assert(!GATHER || MODE == GEMV_PLAIN, "gathered rows are not normed");
    constexpr int PER = 16 / (int)sizeof(typename D::T);  // values per vector
    constexpr int R = GEMV_ROWS_PER_WARP;
    constexpr int CHUNK_VECS = GEMV_SMEM_BYTES / 16 / MT;  // vectors of one x row per chunk
    __shared__ GemvVec xs[MT * CHUNK_VECS];

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int row0 = ((int)blockIdx.x * GEMV_WARPS + warp) * R;
    const int kvecs = k / PER;
    // SWIGLU: output column c of [m, I] (I = n / 2) from gate row c and up row c + I.
    const int half = n / 2;
    const int col = (int)blockIdx.x * GEMV_WARPS + warp;
    static_assert(!SWIGLU || R == 2, "the SwiGLU epilogue pairs a gate row with an up row");

    // Rows past N (the last block) read row N - 1 and write nothing: every thread must
    // stay for the block barriers.
    const GemvVec* wrow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = SWIGLU ? min(col, half - 1) + r * half : min(row0 + r, n - 1);
        wrow[r] = reinterpret_cast<const GemvVec*>(w + (long long)row * k);
    }
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;
    }

    // The first chunk's first weight vectors, in flight during the rms pass and staging.
    GemvVec wv[GEMV_UNROLL][R];
    gemv_load_step<R>(wv, wrow, 0, lane, min(CHUNK_VECS, kvecs));

    // GEMV_ADD_NORM: each block finds the rows' rms itself (x and the residual are a few KB,
    // read from L2), so no separate norm launch is needed.
    float inv_rms[MT];
    if constexpr (MODE == GEMV_ADD_NORM) {
        __shared__ float norm_scratch[32];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            inv_rms[m] = m < m_rows ? gemv_inv_rms<D>(x, nm, m, k, norm_scratch) : 0.0f;
        }
    }

    for (int c0 = 0; c0 < kvecs; c0 += CHUNK_VECS) {
        const int cvecs = min(CHUNK_VECS, kvecs - c0);
        if (c0 > 0) gemv_load_step<R>(wv, wrow, c0, lane, cvecs);
        __syncthreads();  // the previous chunk's readers are done with xs
        for (int i = threadIdx.x; i < MT * cvecs; i += GEMV_THREADS) {
            const int m = i / cvecs;
            const int v = i - m * cvecs;
            GemvVec val = {{0u, 0u, 0u, 0u}};
            if (m < m_rows) {
                if constexpr (MODE == GEMV_ADD_NORM) {
                    // MT is 1 or 2 here: no dynamically indexed register array.
                    const float inv = (MT == 1 || m == 0) ? inv_rms[0] : inv_rms[MT - 1];
                    val = gemv_add_norm_vec<D>(x, nm, m, k, c0 + v, inv);
                } else {
                    const long long xrow = GATHER ? gather.pairs[m] / gather.x_div : m;
                    val = reinterpret_cast<const GemvVec*>(x + xrow * k)[c0 + v];
                }
            }
            xs[m * CHUNK_VECS + v] = val;
        }
        __syncthreads();

        for (int v0 = lane; v0 < cvecs; v0 += 32 * GEMV_UNROLL) {
            // The next step's weights go out before this step's multiplies (past the chunk
            // nothing is read: every vector is bounds-checked).
            GemvVec next[GEMV_UNROLL][R];
            gemv_load_step<R>(next, wrow, c0, v0 + 32 * GEMV_UNROLL, cvecs);
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) {
                const int v = v0 + 32 * u;
                if (v < cvecs) {
                    float wf[R][PER];
#pragma unroll
                    for (int r = 0; r < R; ++r) kiln_unpack16<D>(wv[u][r], wf[r]);
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        float xf[PER];
                        kiln_unpack16<D>(xs[m * CHUNK_VECS + v], xf);
#pragma unroll
                        for (int r = 0; r < R; ++r) {
#pragma unroll
                            for (int j = 0; j < PER; ++j) acc[r][m] += wf[r][j] * xf[j];
                        }
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) {
#pragma unroll
                for (int r = 0; r < R; ++r) wv[u][r] = next[u][r];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = kiln_warp_sum(acc[r][m]);
    }
    if constexpr (SWIGLU) {
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (lane == m && col < half && m < m_rows) {
                float g = acc[0][m];
                float u = acc[1][m];
                if (has_bias) {
                    g += D::load(bias[col]);
                    u += D::load(bias[col + half]);
                }
                // Rounded as the plain kernel stores them, then silu_mul's formula.
                g = D::load(D::store(g));
                u = D::load(D::store(u));
                const long long yrow = GATHER ? gather.pairs[m] : m;
                y[yrow * half + col] =
                    D::store(act.mode == GEMV_ACT_CLAMPED
                                 ? kiln_clamped_swiglu(g, u, act.limit, act.alpha)
                                 : g / (1.0f + expf(-g)) * u);
            }
        }
    } else {
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                const int row = row0 + r;
                if (lane == r * MT + m && row < n && m < m_rows) {
                    float v = acc[r][m];
                    if (has_bias) v += D::load(bias[row]);
                    if (act.mode == GEMV_ACT_RELU2) {
                        const float stored = fmaxf(D::load(D::store(v)), 0.0f);
                        v = stored * stored;
                    }
                    const long long yrow = GATHER ? gather.pairs[m] : m;
                    y[yrow * n + row] = D::store(v);
                }
            }
        }
    }
}

#define KILN_GEMV_PARAMS(D) \
    D::T *y, const D::T *x, const D::T *w, const D::T *bias, int m_rows, int n, int k, int has_bias
#define KILN_GEMV_ARGS y, x, w, bias, m_rows, n, k, has_bias
#define KILN_GEMV_NORM_PARAMS(D) \
    KILN_GEMV_PARAMS(D), D::T *res_out, const D::T *res_in, const D::T *norm_w, float eps
#define KILN_GEMV(S, D)                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv1_##S(KILN_GEMV_PARAMS(D)) {      \
        gemv_impl<D, 1, GEMV_PLAIN, false>(KILN_GEMV_ARGS, GemvNorm<D>{});                           \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv2_##S(KILN_GEMV_PARAMS(D)) {      \
        gemv_impl<D, 2, GEMV_PLAIN, false>(KILN_GEMV_ARGS, GemvNorm<D>{});                           \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv4_##S(KILN_GEMV_PARAMS(D)) {      \
        gemv_impl<D, 4, GEMV_PLAIN, false>(KILN_GEMV_ARGS, GemvNorm<D>{});                           \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv8_##S(KILN_GEMV_PARAMS(D)) {      \
        gemv_impl<D, 8, GEMV_PLAIN, false>(KILN_GEMV_ARGS, GemvNorm<D>{});                           \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                       \
        gemv1_add_norm_##S(KILN_GEMV_NORM_PARAMS(D)) {                                               \
        gemv_impl<D, 1, GEMV_ADD_NORM, false>(KILN_GEMV_ARGS,                                        \
                                              GemvNorm<D>{res_out, res_in, norm_w, eps});            \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                       \
        gemv2_add_norm_##S(KILN_GEMV_NORM_PARAMS(D)) {                                               \
        gemv_impl<D, 2, GEMV_ADD_NORM, false>(KILN_GEMV_ARGS,                                        \
                                              GemvNorm<D>{res_out, res_in, norm_w, eps});            \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv1_swiglu_##S(KILN_GEMV_PARAMS(D)) { \
        gemv_impl<D, 1, GEMV_PLAIN, true>(KILN_GEMV_ARGS, GemvNorm<D>{});                            \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv2_swiglu_##S(KILN_GEMV_PARAMS(D)) { \
        gemv_impl<D, 2, GEMV_PLAIN, true>(KILN_GEMV_ARGS, GemvNorm<D>{});                            \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                       \
        gemv1_add_norm_swiglu_##S(KILN_GEMV_NORM_PARAMS(D)) {                                        \
        gemv_impl<D, 1, GEMV_ADD_NORM, true>(KILN_GEMV_ARGS,                                         \
                                             GemvNorm<D>{res_out, res_in, norm_w, eps});             \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                       \
        gemv2_add_norm_swiglu_##S(KILN_GEMV_NORM_PARAMS(D)) {                                        \
        gemv_impl<D, 2, GEMV_ADD_NORM, true>(KILN_GEMV_ARGS,                                         \
                                             GemvNorm<D>{res_out, res_in, norm_w, eps});             \
    }
KILN_FOR_EACH_DTYPE(KILN_GEMV)

template <typename D, bool SWIGLU>
__device__ __forceinline__ void gemv_expert(typename D::T* y, const typename D::T* x,
                                            const unsigned long long* table,
                                            const int* item_expert, const int* item_rows,
                                            const int* item_pairs, int x_div, int n, int k,
                                            const typename D::T* bias, int has_bias,
                                            int act_mode, float limit, float alpha) {
    const int item = (int)blockIdx.y;
    const int rows = item_rows[item];
    if (rows == 0) return;  // past the step's items: the whole block leaves together
    const int expert = item_expert[item];
    const typename D::T* w = reinterpret_cast<const typename D::T*>(table[expert]);
    // gpt-oss: the experts' biases, stacked [experts, n].
    const typename D::T* b = has_bias ? bias + (long long)expert * n : nullptr;
    gemv_impl<D, GEMV_EXPERT_ROWS, GEMV_PLAIN, SWIGLU, true>(
        y, x, w, b, rows, n, k, has_bias, GemvNorm<D>{},
        GemvGather{item_pairs + (long long)item * GEMV_EXPERT_ROWS, x_div},
        GemvAct{act_mode, limit, alpha});
}

#define KILN_GEMV_EXPERT_PARAMS(D)                                                         \
    D::T *y, const D::T *x, const unsigned long long *table, const int *item_expert,       \
        const int *item_rows, const int *item_pairs, int x_div, int n, int k, const D::T *bias,  \
        int has_bias, int act_mode, float limit, float alpha
#define KILN_GEMV_EXPERT_ARGS \
    y, x, table, item_expert, item_rows, item_pairs, x_div, n, k, bias, has_bias, act_mode, limit, alpha
#define KILN_GEMV_EXPERT(S, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                   \
        gemv_expert_##S(KILN_GEMV_EXPERT_PARAMS(D)) {                                            \
        gemv_expert<D, false>(KILN_GEMV_EXPERT_ARGS);                                            \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                   \
        gemv_expert_swiglu_##S(KILN_GEMV_EXPERT_PARAMS(D)) {                                     \
        gemv_expert<D, true>(KILN_GEMV_EXPERT_ARGS);                                             \
    }
KILN_FOR_EACH_DTYPE(KILN_GEMV_EXPERT)
