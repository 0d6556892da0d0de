// Row-wise reductions over logits [rows, vocab], one block per row, results in f32/u32:
//   argmax:      index of the largest value (lowest index on ties, NaN ignored)
//   softmax:     exp(x - max) / sum
//   log_softmax: x - max - log(sum)

__device__ __forceinline__ bool argmax_better(float v, unsigned int i, float best,
                                              unsigned int best_i) {
    return v > best || (v == best && i < best_i);
}

template <typename D>
__device__ __forceinline__ void argmax_impl(unsigned int* out, const typename D::T* logits,
                                            int vocab) {
    __shared__ float warp_best[32];
    __shared__ unsigned int warp_best_i[32];
    const typename D::T* row = logits + (long long)blockIdx.x * vocab;
    float best = KILN_NEG_INF;
    unsigned int best_i = 0xffffffffu;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float v = D::load(row[j]);
        if (argmax_better(v, j, best, best_i)) {
            best = v;
            best_i = j;
        }
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
