// Element-wise arithmetic in f32, rounded once to the dtype.
//   add:      out = a + b               (out may alias a or b)
//   add_bias: x[r, j] = x[r, j] + b[j]  (in place, bias broadcast over rows)
//   copy_columns: out[r, j] = x[r, offset + j]  (one column block of x, e.g. q of a fused QKV)
//   join_heads: out[r, h, :] = [shared[r, :], own[r, h, :]]  (DeepSeek's keys: the rotated part
//             all heads share, then each head's own part)
//   softcap:  x = cap * tanh(x / cap)   (in place; Gemma 2's final logits)
//   scale_rows: x[r, j] = x[r, j] * scales[r]  (in place, f32 scales; Llama 4's experts'
//             inputs scaled by their router weights)
//   sigmoid_gate: out = x * sigmoid(gate), the sigmoid rounded first (Qwen3-Next's gated
//             attention output; out may alias x)
//   widen:    out = x as f32 (exact: the input of an f32 GEMM with f32 weights, as the
//             routers transformers keeps in f32 multiply)

template <typename D>
__device__ __forceinline__ void add_impl(typename D::T* out, const typename D::T* a,
                                         const typename D::T* b, long long total) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        out[i] = D::store(D::load(a[i]) + D::load(b[i]));
    }
}

template <typename D>
__device__ __forceinline__ void add_bias_impl(typename D::T* x, const typename D::T* bias,
                                              long long total, int d) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        x[i] = D::store(D::load(x[i]) + D::load(bias[i % d]));
    }
}

template <typename D>
__device__ __forceinline__ void scale_rows_impl(typename D::T* x, const float* scales,
                                                long long total, int d) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        x[i] = D::store(D::load(x[i]) * scales[i / d]);
    }
}

template <typename D>
__device__ __forceinline__ void sigmoid_gate_impl(typename D::T* out, const typename D::T* x,
                                                  const typename D::T* gate, long long total) {
    KILN_GRID_STRIDE(i, total) {
        const float g = D::load(D::store(1.0f / (1.0f + expf(-D::load(gate[i])))));
        out[i] = D::store(D::load(x[i]) * g);
    }
}

template <typename D>
__device__ __forceinline__ void copy_columns_impl(typename D::T* out, const typename D::T* x,
                                                  long long total, int out_width, int in_width,
                                                  int offset) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const long long row = i / out_width;
        const int col = (int)(i - row * out_width);
        out[i] = x[row * in_width + offset + col];
    }
}

template <typename D>
__device__ __forceinline__ void join_heads_impl(typename D::T* out, const typename D::T* shared,
                                                const typename D::T* own, long long total,
                                                int heads, int shared_width, int own_width) {
    const int head_width = shared_width + own_width;
    const long long row_width = (long long)heads * head_width;
    KILN_GRID_STRIDE(i, total) {
        const long long row = i / row_width;
        const int in_row = (int)(i - row * row_width);
        const int head = in_row / head_width;
        const int col = in_row - head * head_width;
        out[i] = col < shared_width
                     ? shared[row * shared_width + col]
                     : own[(row * heads + head) * own_width + (col - shared_width)];
    }
}

template <typename D>
__device__ __forceinline__ void widen_impl(float* out, const typename D::T* x, long long total) {
    KILN_GRID_STRIDE(i, total) { out[i] = D::load(x[i]); }
}

template <typename D>
__device__ __forceinline__ void softcap_impl(typename D::T* x, long long total, float cap) {
    KILN_GRID_STRIDE(i, total) { x[i] = D::store(kiln_softcap(D::load(x[i]), cap)); }
}

#define KILN_ELEMENTWISE(S, D)                                                            \
    extern "C" __global__ void add_##S(D::T* out, const D::T* a, const D::T* b,           \
                                       long long total) {                                 \
        add_impl<D>(out, a, b, total);                                                    \
    }                                                                                     \
    extern "C" __global__ void add_bias_##S(D::T* x, const D::T* bias, long long total,   \
                                            int d) {                                      \
        add_bias_impl<D>(x, bias, total, d);                                              \
    }                                                                                     \
    extern "C" __global__ void copy_columns_##S(D::T* out, const D::T* x, long long total, \
                                                int out_width, int in_width, int offset) { \
        copy_columns_impl<D>(out, x, total, out_width, in_width, offset);                 \
    }                                                                                     \
    extern "C" __global__ void join_heads_##S(D::T* out, const D::T* shared, const D::T* own, \
                                              long long total, int heads, int shared_width,  \
                                              int own_width) {                               \
        join_heads_impl<D>(out, shared, own, total, heads, shared_width, own_width);        \
    }                                                                                     \
    extern "C" __global__ void softcap_##S(D::T* x, long long total, float cap) {         \
        softcap_impl<D>(x, total, cap);                                                   \
    }                                                                                     \
    extern "C" __global__ void widen_##S(float* out, const D::T* x, long long total) {    \
        widen_impl<D>(out, x, total);                                                     \
    }                                                                                     \
    extern "C" __global__ void scale_rows_##S(D::T* x, const float* scales,               \
                                              long long total, int d) {                   \
        scale_rows_impl<D>(x, scales, total, d);                                          \
    }                                                                                     \
    extern "C" __global__ void sigmoid_gate_##S(D::T* out, const D::T* x, const D::T* gate, \
                                                long long total) {                        \
        sigmoid_gate_impl<D>(out, x, gate, total);                                        \
    }
KILN_FOR_EACH_DTYPE(KILN_ELEMENTWISE)
