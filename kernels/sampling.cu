// Row-wise reductions over logits [rows, vocab], one block per row, results in f32/u32:
//   argmax:      index of the largest value (lowest index on ties, NaN ignored)
//   softmax:     exp(x - max) / sum
//   log_softmax: x - max - log(sum)

__device__ __forceinline__ bool argmax_better(float v, unsigned int i, float best,
                                              unsigned int best_i) {
    return v > best || (v == best && i < best_i);
}

// 16 bytes of logits: 8 16-bit values or 4 f32.
struct alignas(16) ArgmaxVec {
    unsigned int w[4];
};

template <typename D>
__device__ __forceinline__ void argmax_take(float v, unsigned int j, float& best,
                                            unsigned int& best_i) {
    if (argmax_better(v, j, best, best_i)) {
        best = v;
        best_i = j;
    }
}

// One block per row. The row is read with 16-byte loads, ARGMAX_UNROLL per thread in flight
// (a 128256-entry bf16 row is 16 such rounds of 1024 threads: a few memory round trips
// instead of 125 dependent scalar loads); a scalar head up to the first 16-byte boundary and
// a scalar tail cover any vocab. The tie rule compares indices, so the visiting order does
// not change the answer.
#define ARGMAX_UNROLL 4

template <typename D>
__device__ __forceinline__ void argmax_impl(unsigned int* out, const typename D::T* logits,
                                            int vocab) {
    __shared__ float warp_best[32];
    __shared__ unsigned int warp_best_i[32];
    constexpr int PER = 16 / (int)sizeof(typename D::T);
    const typename D::T* row = logits + (long long)blockIdx.x * vocab;
    float best = KILN_NEG_INF;
    unsigned int best_i = 0xffffffffu;
    // Elements before the first 16-byte boundary of the row (rows are element-aligned).
    const int misalign = (int)((reinterpret_cast<unsigned long long>(row) & 15ull) /
                               sizeof(typename D::T));
    const int head = min(vocab, misalign == 0 ? 0 : PER - misalign);
    const int nvec = (vocab - head) / PER;
    const int tail = head + nvec * PER;
    for (int j = threadIdx.x; j < head; j += blockDim.x) {
        argmax_take<D>(D::load(row[j]), j, best, best_i);
    }
    const ArgmaxVec* vecs = reinterpret_cast<const ArgmaxVec*>(row + head);
    for (int v0 = threadIdx.x; v0 < nvec; v0 += ARGMAX_UNROLL * blockDim.x) {
        ArgmaxVec c[ARGMAX_UNROLL];
#pragma unroll
        for (int u = 0; u < ARGMAX_UNROLL; ++u) {
            const int v = v0 + u * blockDim.x;
            c[u] = v < nvec ? vecs[v] : ArgmaxVec{{0u, 0u, 0u, 0u}};
        }
#pragma unroll
        for (int u = 0; u < ARGMAX_UNROLL; ++u) {
            const int v = v0 + u * blockDim.x;
            if (v < nvec) {
                const unsigned int j0 = (unsigned int)(head + v * PER);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    if constexpr (sizeof(typename D::T) == 4) {
                        argmax_take<D>(__uint_as_float(c[u].w[e]), j0 + e, best, best_i);
                    } else {
                        argmax_take<D>(D::load((kiln_u16)(c[u].w[e] & 0xffffu)), j0 + 2 * e,
                                       best, best_i);
                        argmax_take<D>(D::load((kiln_u16)(c[u].w[e] >> 16)), j0 + 2 * e + 1,
                                       best, best_i);
                    }
                }
            }
        }
    }
    for (int j = tail + threadIdx.x; j < vocab; j += blockDim.x) {
        argmax_take<D>(D::load(row[j]), j, best, best_i);
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(KILN_FULL_MASK, best, offset);
        const unsigned int other_i = __shfl_xor_sync(KILN_FULL_MASK, best_i, offset);
        if (argmax_better(other, other_i, best, best_i)) {
            best = other;
            best_i = other_i;
        }
    }
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    if (lane == 0) {
        warp_best[warp] = best;
        warp_best_i[warp] = best_i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {
            if (argmax_better(warp_best[w], warp_best_i[w], best, best_i)) {
                best = warp_best[w];
                best_i = warp_best_i[w];
            }
        }
        out[blockIdx.x] = best_i == 0xffffffffu ? 0u : best_i;  // all -inf or NaN: token 0
    }
}

template <typename D>
__device__ __forceinline__ void softmax_impl(float* out, const typename D::T* logits, int vocab,
                                             int log_space) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * vocab;
    float local_max = KILN_NEG_INF;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        local_max = fmaxf(local_max, D::load(logits[base + j]));
    }
    const float row_max = kiln_block_max(local_max, scratch);
    float local_sum = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        local_sum += expf(D::load(logits[base + j]) - row_max);
    }
    const float row_sum = kiln_block_sum(local_sum, scratch);
    const float log_sum = logf(row_sum);
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float shifted = D::load(logits[base + j]) - row_max;
        out[base + j] = log_space ? shifted - log_sum : expf(shifted) / row_sum;
    }
}

#define KILN_SAMPLING(S, D)                                                                   \
    extern "C" __global__ void argmax_##S(unsigned int* out, const D::T* logits, int vocab) { \
        argmax_impl<D>(out, logits, vocab);                                                   \
    }                                                                                         \
    extern "C" __global__ void softmax_##S(float* out, const D::T* logits, int vocab,         \
                                           int log_space) {                                   \
        softmax_impl<D>(out, logits, vocab, log_space);                                       \
    }
KILN_FOR_EACH_DTYPE(KILN_SAMPLING)
