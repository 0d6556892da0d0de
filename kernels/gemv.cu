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
// GEMV_SMEM_BYTES (whole K when it fits: 8192 bf16 values per row for M = 1) and read once
// per vector for all rows of the warp. Lanes reduce with shuffles; lane r * MT + m writes
// y[m, row0 + r]. Blocks are small (4 warps, 8 output columns) so even N = 4096 gives 512
// blocks, several per SM.
//
// gemv<MT>_silu: the MLP's down projection fused with the SwiGLU before it. x is then the
// gate_up row [m, 2K] = [g | u], and the staging writes silu(g) * u, rounded to the dtype
// exactly as silu_mul (activation.cu) would store it, into shared memory: the same result
// as silu_mul then gemv<MT>, without the launch and the [m, K] round trip.

#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)
#define GEMV_ROWS_PER_WARP 2
#define GEMV_UNROLL 4
#define GEMV_SMEM_BYTES 16384

// 16 bytes of a weight or activation row: 8 16-bit values or 4 f32.
typedef KilnVec16 GemvVec;

// silu(g) * u of the values of two vectors, each rounded to D::T as silu_mul stores it.
template <typename D>
__device__ __forceinline__ GemvVec gemv_silu_mul_vec(const GemvVec& gv, const GemvVec& uv) {
    constexpr int PER = 16 / (int)sizeof(typename D::T);
    float g[PER], u[PER];
    kiln_unpack16<D>(gv, g);
    kiln_unpack16<D>(uv, u);
    GemvVec out;
    if constexpr (PER == 4) {
#pragma unroll
        for (int i = 0; i < 4; ++i) out.w[i] = __float_as_uint(g[i] / (1.0f + expf(-g[i])) * u[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float lo = g[2 * i] / (1.0f + expf(-g[2 * i])) * u[2 * i];
            const float hi = g[2 * i + 1] / (1.0f + expf(-g[2 * i + 1])) * u[2 * i + 1];
            out.w[i] = (unsigned int)D::store(lo) | ((unsigned int)D::store(hi) << 16);
        }
    }
    return out;
}

template <typename D, int MT, bool GATED>
__device__ __forceinline__ void gemv_impl(typename D::T* __restrict__ y,
                                          const typename D::T* __restrict__ x,
                                          const typename D::T* __restrict__ w,
                                          const typename D::T* __restrict__ bias, int m_rows,
                                          int n, int k, int has_bias) {
    constexpr int PER = 16 / (int)sizeof(typename D::T);  // values per vector
    constexpr int R = GEMV_ROWS_PER_WARP;
    constexpr int CHUNK_VECS = GEMV_SMEM_BYTES / 16 / MT;  // vectors of one x row per chunk
    __shared__ GemvVec xs[MT * CHUNK_VECS];

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int row0 = ((int)blockIdx.x * GEMV_WARPS + warp) * R;
    const int kvecs = k / PER;

    // Rows past N (the last block) read row N - 1 and write nothing: every thread must
    // stay for the block barriers.
    const GemvVec* wrow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = min(row0 + r, n - 1);
        wrow[r] = reinterpret_cast<const GemvVec*>(w + (long long)row * k);
    }
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;
    }

    for (int c0 = 0; c0 < kvecs; c0 += CHUNK_VECS) {
        const int cvecs = min(CHUNK_VECS, kvecs - c0);
        __syncthreads();  // the previous chunk's readers are done with xs
        for (int i = threadIdx.x; i < MT * cvecs; i += GEMV_THREADS) {
            const int m = i / cvecs;
            const int v = i - m * cvecs;
            GemvVec val = {{0u, 0u, 0u, 0u}};
            if (m < m_rows) {
                if constexpr (GATED) {
                    const GemvVec* row = reinterpret_cast<const GemvVec*>(x + (long long)m * 2 * k);
                    val = gemv_silu_mul_vec<D>(row[c0 + v], row[kvecs + c0 + v]);
                } else {
                    val = reinterpret_cast<const GemvVec*>(x + (long long)m * k)[c0 + v];
                }
            }
            xs[m * CHUNK_VECS + v] = val;
        }
        __syncthreads();

        for (int v0 = lane; v0 < cvecs; v0 += 32 * GEMV_UNROLL) {
            // All loads first, so GEMV_UNROLL * R vectors per lane are in flight.
            GemvVec wv[GEMV_UNROLL][R];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) {
                const int v = v0 + 32 * u;
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    wv[u][r] = v < cvecs ? wrow[r][c0 + v] : GemvVec{{0u, 0u, 0u, 0u}};
                }
            }
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
        }
    }

#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = kiln_warp_sum(acc[r][m]);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            const int row = row0 + r;
            if (lane == r * MT + m && row < n && m < m_rows) {
                float v = acc[r][m];
                if (has_bias) v += D::load(bias[row]);
                y[(long long)m * n + row] = D::store(v);
            }
        }
    }
}

#define KILN_GEMV_PARAMS(D) \
    D::T *y, const D::T *x, const D::T *w, const D::T *bias, int m_rows, int n, int k, int has_bias
#define KILN_GEMV(S, D)                                                                               \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv1_##S(KILN_GEMV_PARAMS(D)) {       \
        gemv_impl<D, 1, false>(y, x, w, bias, m_rows, n, k, has_bias);                                \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv2_##S(KILN_GEMV_PARAMS(D)) {       \
        gemv_impl<D, 2, false>(y, x, w, bias, m_rows, n, k, has_bias);                                \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv4_##S(KILN_GEMV_PARAMS(D)) {       \
        gemv_impl<D, 4, false>(y, x, w, bias, m_rows, n, k, has_bias);                                \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv8_##S(KILN_GEMV_PARAMS(D)) {       \
        gemv_impl<D, 8, false>(y, x, w, bias, m_rows, n, k, has_bias);                                \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv1_silu_##S(KILN_GEMV_PARAMS(D)) {  \
        gemv_impl<D, 1, true>(y, x, w, bias, m_rows, n, k, has_bias);                                 \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv2_silu_##S(KILN_GEMV_PARAMS(D)) {  \
        gemv_impl<D, 2, true>(y, x, w, bias, m_rows, n, k, has_bias);                                 \
    }
KILN_FOR_EACH_DTYPE(KILN_GEMV)
