// Dummy weights (`--load-format dummy`) generated on the GPU: the same values, bit for bit,
// as the host's DummyWeights (src/model/weights.rs), so a benchmark model loads in
// milliseconds instead of generating gigabytes on the CPU and copying them over.
//
// Element i of a part is dummy_value(stream, full_index(i)), where the part is `outer` runs
// of `run` elements, run o starting at full-tensor element o * stride + first (a tensor-
// parallel slice; the whole tensor is one run). dummy_value: a SplitMix64 finaliser of a
// Weyl sequence, the top 24 bits as a fraction, mapped to [-0.02, 0.02). The part is written
// at out[offset ..], so stacked weights (QKV, gate/up) are filled part by part.

__device__ __forceinline__ unsigned long long kiln_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float kiln_dummy_value(unsigned long long stream,
                                                  unsigned long long index) {
    const unsigned long long bits = kiln_mix64(stream + index * 0x9e3779b97f4a7c15ULL);
    const float unit = (float)(bits >> 40) / 16777216.0f;  // exact: 24 bits over 2^24
    return (unit * 2.0f - 1.0f) * 0.02f;  // unit * 2 - 1 is exact, so one rounding as on the host
}

template <typename D>
__device__ __forceinline__ void dummy_fill_impl(typename D::T* out, long long offset,
                                                long long n, unsigned long long stream,
                                                long long run, long long stride,
                                                long long first) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const long long full = (i / run) * stride + first + i % run;
        out[offset + i] = D::store(kiln_dummy_value(stream, (unsigned long long)full));
    }
}

#define KILN_DUMMY(S, D)                                                                   \
    extern "C" __global__ void dummy_fill_##S(D::T* out, long long offset, long long n,    \
                                              unsigned long long stream, long long run,    \
                                              long long stride, long long first) {         \
        dummy_fill_impl<D>(out, offset, n, stream, run, stride, first);                    \
    }
KILN_FOR_EACH_DTYPE(KILN_DUMMY)
