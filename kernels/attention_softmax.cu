// The softmax of dense attention (src/backend/cuda/image_attention.rs): cuBLAS writes the
// scaled scores q k^T / sqrt(d) of a chunk of queries in f32, scores[heads, queries, keys];
// this turns each row into probabilities in the tensor dtype, the operand of the second
// GEMM (probabilities times v). One block per row; max and sum in f32.
//   causal: query q_offset + (row % queries) sees keys 0 ..= its own index, the rest get 0.

template <typename D>
__device__ __forceinline__ void attention_softmax_impl(typename D::T* probs, const float* scores,
                                                       int keys, int queries, int q_offset,
                                                       int causal) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * keys;
    const int query = q_offset + (int)(blockIdx.x % queries);
    const int visible = causal ? min(query + 1, keys) : keys;
    float local_max = KILN_NEG_INF;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) {
        local_max = fmaxf(local_max, scores[base + j]);
    }
    const float row_max = kiln_block_max(local_max, scratch);
    float local_sum = 0.0f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) {
        local_sum += expf(scores[base + j] - row_max);
    }
    const float inv_sum = 1.0f / kiln_block_sum(local_sum, scratch);
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {
        const float p = j < visible ? expf(scores[base + j] - row_max) * inv_sum : 0.0f;
        probs[base + j] = D::store(p);
    }
}

#define KILN_ATTENTION_SOFTMAX(S, D)                                                          \
    extern "C" __global__ void attention_softmax_##S(D::T* probs, const float* scores,        \
                                                     int keys, int queries, int q_offset,     \
                                                     int causal) {                            \
        attention_softmax_impl<D>(probs, scores, keys, queries, q_offset, causal);            \
    }
KILN_FOR_EACH_DTYPE(KILN_ATTENTION_SOFTMAX)
