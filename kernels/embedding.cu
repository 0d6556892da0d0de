// Token embedding lookup: out[i, :] = table[ids[i], :]. Out-of-range ids give a zero row
// (bad input must not read outside the table).

template <typename D>
__device__ __forceinline__ void embedding_impl(typename D::T* out, const typename D::T* table,
                                               const unsigned int* ids, int hidden, int vocab) {
    const long long row = blockIdx.x;
    const unsigned int id = ids[row];
    typename D::T* dst = out + row * hidden;
    if (id >= (unsigned int)vocab) {
        for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = D::store(0.0f);
        return;
    }
    const typename D::T* src = table + (long long)id * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = src[j];
}

#define KILN_EMBEDDING(S, D)                                                              \
    extern "C" __global__ void embedding_##S(D::T* out, const D::T* table,                \
                                             const unsigned int* ids, int hidden,         \
                                             int vocab) {                                 \
        embedding_impl<D>(out, table, ids, hidden, vocab);                                \
    }
KILN_FOR_EACH_DTYPE(KILN_EMBEDDING)
