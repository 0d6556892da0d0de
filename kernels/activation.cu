// Gated MLP activations: out[n, I] = act(g) * u where gate_up[n, 2I] holds g in its first I
// columns and u in its last I, all in f32, rounded once.
//   silu_mul:      act = silu(g) = g / (1 + exp(-g))            (SwiGLU: Llama, Qwen, ...)
//   gelu_tanh_mul: act = PyTorch's gelu(approximate="tanh")     (GeGLU: Gemma)
//   clamped_swiglu (gpt-oss): g = min(g, limit), u = clamp(u, -limit, limit),
//                  out = (u + 1) * g * sigmoid(alpha * g)

// Each activation maps (g, u) to the output value, in f32.
struct KilnSiluMul {
    __device__ __forceinline__ float operator()(float g, float u) const {
        return g / (1.0f + expf(-g)) * u;
    }
};

struct KilnGeluTanhMul {
    // 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))) u
    __device__ __forceinline__ float operator()(float g, float u) const {
        return 0.5f * g * (1.0f + tanhf(0.79788456080286536f * g * (1.0f + 0.044715f * g * g))) *
               u;
    }
};

struct KilnClampedSwiGlu {
    float limit, alpha;
    __device__ __forceinline__ float operator()(float g, float u) const {
        return kiln_clamped_swiglu(g, u, limit, alpha);
    }
};

template <typename D, typename Act>
__device__ __forceinline__ void gated_mul_impl(typename D::T* out, const typename D::T* gate_up,
                                               long long total, int inter, Act act) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long row = idx / inter;
        const long long col = idx - row * inter;
        const float g = D::load(gate_up[row * 2 * inter + col]);
        const float u = D::load(gate_up[row * 2 * inter + inter + col]);
        out[idx] = D::store(act(g, u));
    }
}

#define KILN_SILU_MUL(S, D)                                                               \
    extern "C" __global__ void silu_mul_##S(D::T* out, const D::T* gate_up,               \
                                            long long total, int inter) {                 \
        gated_mul_impl<D>(out, gate_up, total, inter, KilnSiluMul{});                       \
    }                                                                                     \
    extern "C" __global__ void gelu_tanh_mul_##S(D::T* out, const D::T* gate_up,          \
                                                 long long total, int inter) {            \
        gated_mul_impl<D>(out, gate_up, total, inter, KilnGeluTanhMul{});                      \
    }                                                                                     \
    extern "C" __global__ void clamped_swiglu_##S(D::T* out, const D::T* gate_up,         \
                                                  long long total, int inter, float limit, \
                                                  float alpha) {                          \
        gated_mul_impl<D>(out, gate_up, total, inter, KilnClampedSwiGlu{limit, alpha});                 \
    }
KILN_FOR_EACH_DTYPE(KILN_SILU_MUL)
