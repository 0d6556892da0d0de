// RMS norm over the last dimension, one block per row; statistics in f32.
//   rms_norm:           y = x * rsqrt(mean(x^2) + eps) * w
//   fused_add_rms_norm: residual <- residual + x (rounded to the dtype), x <- rms_norm(residual)
// The per-head q/k norm of Qwen3 is the same kernel with rows = tokens * heads.

// Each thread owns elements threadIdx.x + i * blockDim.x. The first NORM_ITEMS of them are
// loaded into registers before anything is stored or reduced, so a row of 4096 (1024
// threads, 4 each) costs one memory round trip per pass instead of one per element (the
// stores of fused_add_rms_norm to `residual` would otherwise keep the compiler from
// hoisting the next loads). Wider rows go on through the plain loop. Summation order is the
// same as a plain strided loop: ascending j per thread, then kiln_block_sum.
#define NORM_ITEMS 8

template <typename D>
__device__ __forceinline__ void rms_norm_impl(typename D::T* y, const typename D::T* x,
                                              const typename D::T* w, float eps, int d) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    const int stride = blockDim.x;
    float v[NORM_ITEMS];
    typename D::T wv[NORM_ITEMS];
#pragma unroll
    for (int i = 0; i < NORM_ITEMS; ++i) {
        const int j = threadIdx.x + i * stride;
        v[i] = j < d ? D::load(x[base + j]) : 0.0f;
        wv[i] = j < d ? w[j] : D::store(0.0f);
    }
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < NORM_ITEMS; ++i) {
        const int j = threadIdx.x + i * stride;
        if (j < d) sum_sq += v[i] * v[i];
    }
    for (int j = threadIdx.x + NORM_ITEMS * stride; j < d; j += stride) {
        const float xv = D::load(x[base + j]);
        sum_sq += xv * xv;
    }
    const float inv_rms = rsqrtf(kiln_block_sum(sum_sq, scratch) / (float)d + eps);
#pragma unroll
    for (int i = 0; i < NORM_ITEMS; ++i) {
        const int j = threadIdx.x + i * stride;
        if (j < d) y[base + j] = D::store(v[i] * inv_rms * D::load(wv[i]));
    }
    for (int j = threadIdx.x + NORM_ITEMS * stride; j < d; j += stride) {
        y[base + j] = D::store(D::load(x[base + j]) * inv_rms * D::load(w[j]));
    }
}

template <typename D>
__device__ __forceinline__ void fused_add_rms_norm_impl(typename D::T* x, typename D::T* residual,
                                                        const typename D::T* w, float eps, int d) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    const int stride = blockDim.x;
    typename D::T xv[NORM_ITEMS], rv[NORM_ITEMS], wv[NORM_ITEMS];
#pragma unroll
    for (int i = 0; i < NORM_ITEMS; ++i) {
        const int j = threadIdx.x + i * stride;
        xv[i] = j < d ? x[base + j] : D::store(0.0f);
        rv[i] = j < d ? residual[base + j] : D::store(0.0f);
        wv[i] = j < d ? w[j] : D::store(0.0f);
    }
    float v[NORM_ITEMS];
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < NORM_ITEMS; ++i) {
        const int j = threadIdx.x + i * stride;
        // Round the sum to the model dtype first, as the reference model adds in that dtype.
        const typename D::T r = D::store(D::load(xv[i]) + D::load(rv[i]));
        v[i] = D::load(r);
        if (j < d) {
            residual[base + j] = r;
            sum_sq += v[i] * v[i];
        }
    }
    for (int j = threadIdx.x + NORM_ITEMS * stride; j < d; j += stride) {
        const typename D::T r = D::store(D::load(x[base + j]) + D::load(residual[base + j]));
        residual[base + j] = r;
        const float rv_f = D::load(r);
        sum_sq += rv_f * rv_f;
    }
    const float inv_rms = rsqrtf(kiln_block_sum(sum_sq, scratch) / (float)d + eps);
#pragma unroll
    for (int i = 0; i < NORM_ITEMS; ++i) {
        const int j = threadIdx.x + i * stride;
        if (j < d) x[base + j] = D::store(v[i] * inv_rms * D::load(wv[i]));
    }
    // Each thread re-reads only the residual elements it wrote itself: no barrier needed.
    for (int j = threadIdx.x + NORM_ITEMS * stride; j < d; j += stride) {
        x[base + j] = D::store(D::load(residual[base + j]) * inv_rms * D::load(w[j]));
    }
}

#define KILN_NORM(S, D)                                                                   \
    extern "C" __global__ void rms_norm_##S(D::T* y, const D::T* x, const D::T* w,        \
                                            float eps, int d) {                           \
        rms_norm_impl<D>(y, x, w, eps, d);                                                \
    }                                                                                     \
    extern "C" __global__ void fused_add_rms_norm_##S(D::T* x, D::T* residual,            \
                                                      const D::T* w, float eps, int d) {  \
        fused_add_rms_norm_impl<D>(x, residual, w, eps, d);                               \
    }
KILN_FOR_EACH_DTYPE(KILN_NORM)
