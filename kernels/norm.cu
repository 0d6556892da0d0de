// RMS norm over the last dimension, one block per row; statistics in f32.
//   rms_norm:           y = x * rsqrt(mean(x^2) + eps) * w
//   fused_add_rms_norm: residual <- residual + x (rounded to the dtype), x <- rms_norm(residual)
// The per-head q/k norm of Qwen3 is the same kernel with rows = tokens * heads.

template <typename D>
__device__ __forceinline__ void rms_norm_impl(typename D::T* y, const typename D::T* x,
                                              const typename D::T* w, float eps, int d) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    float sum_sq = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = D::load(x[base + j]);
        sum_sq += v * v;
    }
    const float inv_rms = rsqrtf(kiln_block_sum(sum_sq, scratch) / (float)d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        y[base + j] = D::store(D::load(x[base + j]) * inv_rms * D::load(w[j]));
    }
}

template <typename D>
__device__ __forceinline__ void fused_add_rms_norm_impl(typename D::T* x, typename D::T* residual,
                                                        const typename D::T* w, float eps, int d) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    float sum_sq = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        // Round the sum to the model dtype first, as the reference model adds in that dtype.
        const typename D::T r = D::store(D::load(x[base + j]) + D::load(residual[base + j]));
        residual[base + j] = r;
        const float v = D::load(r);
        sum_sq += v * v;
    }
    const float inv_rms = rsqrtf(kiln_block_sum(sum_sq, scratch) / (float)d + eps);
    // Each thread re-reads only the residual elements it wrote itself: no barrier needed.
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
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
