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

// Learned position embeddings (GPT-2, OPT): x[i, :] += table[positions[i] + offset, :], the
// sum rounded to the dtype once. A row past the table is left as it is (bad input must not
// read outside the table; the host checks positions against the table first).
template <typename D>
__device__ __forceinline__ void add_position_embedding_impl(typename D::T* x,
                                                            const typename D::T* table,
                                                            const int* positions, int hidden,
                                                            int offset, int table_rows) {
    const long long row = blockIdx.x;
    const long long at = (long long)positions[row] + offset;
    if (at < 0 || at >= table_rows) return;
    typename D::T* dst = x + row * hidden;
    const typename D::T* src = table + at * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x)
        dst[j] = D::store(D::load(dst[j]) + D::load(src[j]));
}

#define KILN_ADD_POSITION_EMBEDDING(S, D)                                                 \
    extern "C" __global__ void add_position_embedding_##S(D::T* x, const D::T* table,     \
                                                          const int* positions,           \
                                                          int hidden, int offset,         \
                                                          int table_rows) {               \
        add_position_embedding_impl<D>(x, table, positions, hidden, offset, table_rows);  \
    }
KILN_FOR_EACH_DTYPE(KILN_ADD_POSITION_EMBEDDING)
