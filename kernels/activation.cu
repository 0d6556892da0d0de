// SwiGLU: out[n, I] = silu(g) * u where gate_up[n, 2I] holds g in its first I columns and
// u in its last I. silu(g) = g / (1 + exp(-g)), all in f32.

template <typename D>
__device__ __forceinline__ void silu_mul_impl(typename D::T* out, const typename D::T* gate_up,
                                              long long total, int inter) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long row = idx / inter;
        const long long col = idx - row * inter;
        const float g = D::load(gate_up[row * 2 * inter + col]);
        const float u = D::load(gate_up[row * 2 * inter + inter + col]);
        out[idx] = D::store(g / (1.0f + expf(-g)) * u);
    }
}

#define KILN_SILU_MUL(S, D)                                                               \
    extern "C" __global__ void silu_mul_##S(D::T* out, const D::T* gate_up,               \
                                            long long total, int inter) {                 \
        silu_mul_impl<D>(out, gate_up, total, inter);                                     \
    }
KILN_FOR_EACH_DTYPE(KILN_SILU_MUL)
