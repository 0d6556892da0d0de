// Paged KV cache write. Caches are [num_blocks, block_size, hk, hd] per layer, so a slot
// (= block * block_size + offset) addresses hk * hd contiguous elements. One block per
// token; slot < 0 means "skip" (padding), slots past the cache are ignored (bad input).

template <typename D>
__device__ __forceinline__ void kv_write_impl(typename D::T* k_cache, typename D::T* v_cache,
                                              const typename D::T* k, const typename D::T* v,
                                              const int* slot_mapping, int kv_width,
                                              int k_stride, int v_stride, long long num_slots) {
    const long long token = blockIdx.x;
    const long long slot = slot_mapping[token];
    if (slot < 0 || slot >= num_slots) return;
    const typename D::T* k_src = k + token * k_stride;
    const typename D::T* v_src = v + token * v_stride;
    typename D::T* k_dst = k_cache + slot * kv_width;
    typename D::T* v_dst = v_cache + slot * kv_width;
    for (int j = threadIdx.x; j < kv_width; j += blockDim.x) {
        k_dst[j] = k_src[j];
        v_dst[j] = v_src[j];
    }
}

#define KILN_KV_WRITE(S, D)                                                               \
    extern "C" __global__ void kv_write_##S(D::T* k_cache, D::T* v_cache, const D::T* k,  \
                                            const D::T* v, const int* slot_mapping,       \
                                            int kv_width, int k_stride, int v_stride,     \
                                            long long num_slots) {                        \
        kv_write_impl<D>(k_cache, v_cache, k, v, slot_mapping, kv_width, k_stride,        \
                         v_stride, num_slots);                                            \
    }
KILN_FOR_EACH_DTYPE(KILN_KV_WRITE)
