// The summing half of kiln's own all-reduce (src/parallel/device_group.rs): every rank of a
// tensor-parallel group reads all ranks' partial tensors directly (ranks on one GPU share its
// memory; ranks on different GPUs read through peer-to-peer access) and writes the sum into
// its own output. The sum runs in f32 in rank order, rounded once, so every rank computes the
// same bits. Unused pointer slots (rank >= world) are never read.
//
// Pointers travel as separate arguments (at most 8 ranks) so no device-side pointer table
// has to be uploaded per call.

#define KILN_MAX_RANKS 8

template <typename D>
__device__ __forceinline__ void sum_peers_impl(typename D::T* out, const typename D::T* p0,
                                               const typename D::T* p1, const typename D::T* p2,
                                               const typename D::T* p3, const typename D::T* p4,
                                               const typename D::T* p5, const typename D::T* p6,
                                               const typename D::T* p7, int world,
                                               long long total) {
    const typename D::T* peers[KILN_MAX_RANKS] = {p0, p1, p2, p3, p4, p5, p6, p7};
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        float sum = 0.0f;
        for (int r = 0; r < world; ++r) sum += D::load(peers[r][i]);
        out[i] = D::store(sum);
    }
}

#define KILN_SUM_PEERS(S, D)                                                                  \
    extern "C" __global__ void sum_peers_##S(D::T* out, const D::T* p0, const D::T* p1,       \
                                             const D::T* p2, const D::T* p3, const D::T* p4,  \
                                             const D::T* p5, const D::T* p6, const D::T* p7,  \
                                             int world, long long total) {                    \
        sum_peers_impl<D>(out, p0, p1, p2, p3, p4, p5, p6, p7, world, total);                 \
    }
KILN_FOR_EACH_DTYPE(KILN_SUM_PEERS)
