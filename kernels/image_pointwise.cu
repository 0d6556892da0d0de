// Element-wise ops of the image models, grid-stride loops, f32 arithmetic rounded once:
//   activation:       out = act(x), act one of the KILN_ACT_* codes below; p0..p3 are the
//                     parameters of a parametric one (xIELU: alpha_p, alpha_n, beta, eps)
//   geglu:            x[r, 2h] = [hidden | gate] -> out[r, h] = hidden * gelu_erf(gate)
//   lincomb:          out = alpha * a + beta * b (b unused when has_b is 0: a plain scale, so
//                     an infinite value of a scales to infinity, not NaN)
//   add_channel_bias: x[n, c, spatial] + bias[n * bias_batch_stride + c] (a resnet's time
//                     embedding with stride c; a conv bias with stride 0), grid (tiles, planes)
//   add_row:          x[r, w] + row[w]

// Codes of `activation`'s act argument (src/backend/cuda/ops_image.rs passes them).
#define KILN_ACT_SILU 0
#define KILN_ACT_GELU_ERF 1
#define KILN_ACT_GELU_TANH 2
#define KILN_ACT_QUICK_GELU 3
#define KILN_ACT_RELU 4
#define KILN_ACT_RELU2 5
#define KILN_ACT_XIELU 6

// Parameters of a parametric activation (unused by the others).
struct KilnActParams {
    float p0, p1, p2, p3;
};

__device__ __forceinline__ float kiln_gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float kiln_activate(float x, int act, KilnActParams p) {
    switch (act) {
        case KILN_ACT_SILU:
            return x / (1.0f + expf(-x));
        case KILN_ACT_GELU_ERF:
            return kiln_gelu_erf(x);
        case KILN_ACT_GELU_TANH:
            // sqrt(2 / pi) * (x + 0.044715 x^3), as PyTorch's approximate="tanh".
            return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * x * (1.0f + 0.044715f * x * x)));
        case KILN_ACT_RELU:
            return fmaxf(x, 0.0f);
        case KILN_ACT_RELU2: {
            float r = fmaxf(x, 0.0f);
            return r * r;
        }
        case KILN_ACT_XIELU:
            // Apertus: alpha_p x^2 + beta x above 0, alpha_n (expm1(min(x, eps)) - x) + beta x
            // below (expm1 keeps the small negative x's precision).
            return x > 0.0f ? p.p0 * x * x + p.p2 * x
                            : (expm1f(fminf(x, p.p3)) - x) * p.p1 + p.p2 * x;
        default:  // KILN_ACT_QUICK_GELU: x * sigmoid(1.702 x)
            return x / (1.0f + expf(-1.702f * x));
    }
}

template <typename D>
__device__ __forceinline__ void activation_impl(typename D::T* out, const typename D::T* x,
                                                long long total, int act, KilnActParams p) {
    KILN_GRID_STRIDE(i, total) { out[i] = D::store(kiln_activate(D::load(x[i]), act, p)); }
}

template <typename D>
__device__ __forceinline__ void geglu_impl(typename D::T* out, const typename D::T* x,
                                           long long total, int half) {
    KILN_GRID_STRIDE(i, total) {
        const long long row = i / half;
        const long long col = i - row * half;
        const float hidden = D::load(x[row * 2 * half + col]);
        const float gate = D::load(x[row * 2 * half + half + col]);
        out[i] = D::store(hidden * kiln_gelu_erf(gate));
    }
}

template <typename D>
__device__ __forceinline__ void lincomb_impl(typename D::T* out, const typename D::T* a,
                                             const typename D::T* b, long long total, float alpha,
                                             float beta, int has_b) {
    KILN_GRID_STRIDE(i, total) {
        const float scaled = alpha * D::load(a[i]);
        out[i] = D::store(has_b ? scaled + beta * D::load(b[i]) : scaled);
    }
}

// Grid (tiles, planes) like group_norm_apply: one bias per plane, no per-element division.
template <typename D>
__device__ __forceinline__ void add_channel_bias_impl(typename D::T* out, const typename D::T* x,
                                                      const typename D::T* bias, int planes,
                                                      int channels, long long spatial,
                                                      int bias_batch_stride) {
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int n = plane / channels;
        const float add = D::load(bias[n * bias_batch_stride + (plane - n * channels)]);
        const long long at = (long long)plane * spatial;
        kiln_map_row<D>(out + at, x + at, spatial, [=](float v) { return v + add; });
    }
}

template <typename D>
__device__ __forceinline__ void add_row_impl(typename D::T* out, const typename D::T* x,
                                             const typename D::T* row, long long total,
                                             int width) {
    KILN_GRID_STRIDE(i, total) { out[i] = D::store(D::load(x[i]) + D::load(row[i % width])); }
}

#define KILN_IMAGE_POINTWISE(S, D)                                                             \
    extern "C" __global__ void activation_##S(D::T* out, const D::T* x, long long total,       \
                                              int act, float p0, float p1, float p2,           \
                                              float p3) {                                      \
        activation_impl<D>(out, x, total, act, KilnActParams{p0, p1, p2, p3});                 \
    }                                                                                          \
    extern "C" __global__ void geglu_##S(D::T* out, const D::T* x, long long total, int half) { \
        geglu_impl<D>(out, x, total, half);                                                    \
    }                                                                                          \
    extern "C" __global__ void lincomb_##S(D::T* out, const D::T* a, const D::T* b,            \
                                           long long total, float alpha, float beta,           \
                                           int has_b) {                                        \
        lincomb_impl<D>(out, a, b, total, alpha, beta, has_b);                                 \
    }                                                                                          \
    extern "C" __global__ void add_channel_bias_##S(D::T* out, const D::T* x,                  \
                                                    const D::T* bias, int planes,              \
                                                    int channels, long long spatial,           \
                                                    int bias_batch_stride) {                   \
        add_channel_bias_impl<D>(out, x, bias, planes, channels, spatial, bias_batch_stride);  \
    }                                                                                          \
    extern "C" __global__ void add_row_##S(D::T* out, const D::T* x, const D::T* row,          \
                                           long long total, int width) {                       \
        add_row_impl<D>(out, x, row, total, width);                                            \
    }
KILN_FOR_EACH_DTYPE(KILN_IMAGE_POINTWISE)
