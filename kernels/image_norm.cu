// Norms of the image models, statistics in f32 (two passes: mean, then the mean of squared
// deviations, as torch's biased variance), one block per normalised group:
//   group_norm: x[n, c, spatial] in `groups` groups of c / groups channels; block (n, g)
//               normalises the contiguous c / groups * spatial elements of group g, then
//               applies the per-channel affine, then SiLU when `silu` is set.
//   layer_norm: one block per row of width d: (x - mean) / sqrt(var + eps) * w + b.

// Mean and inverse standard deviation of the `count` elements at `x`, in every thread.
template <typename D>
__device__ __forceinline__ void kiln_mean_inv_std(const typename D::T* x, long long count,
                                                  float eps, float* scratch, float* mean,
                                                  float* inv_std) {
    float sum = 0.0f;
    for (long long j = threadIdx.x; j < count; j += blockDim.x) {
        sum += D::load(x[j]);
    }
    const float m = kiln_block_sum(sum, scratch) / (float)count;
    float sum_sq = 0.0f;
    for (long long j = threadIdx.x; j < count; j += blockDim.x) {
        const float dev = D::load(x[j]) - m;
        sum_sq += dev * dev;
    }
    const float var = kiln_block_sum(sum_sq, scratch) / (float)count;
    *mean = m;
    *inv_std = rsqrtf(var + eps);
}

template <typename D>
__device__ __forceinline__ void group_norm_impl(typename D::T* y, const typename D::T* x,
                                                const typename D::T* w, const typename D::T* b,
                                                int channels, int groups, long long spatial,
                                                float eps, int silu) {
    __shared__ float scratch[32];
    const int group = blockIdx.x % groups;
    const int per_group = channels / groups;
    const long long count = (long long)per_group * spatial;
    // Block (n, g) starts at channel n * channels + g * per_group.
    const long long base = ((long long)blockIdx.x * per_group) * spatial;
    float mean, inv_std;
    kiln_mean_inv_std<D>(x + base, count, eps, scratch, &mean, &inv_std);
    const int first_channel = group * per_group;
    for (long long j = threadIdx.x; j < count; j += blockDim.x) {
        const int c = first_channel + (int)(j / spatial);
        float v = (D::load(x[base + j]) - mean) * inv_std * D::load(w[c]) + D::load(b[c]);
        if (silu) v = v / (1.0f + expf(-v));
        y[base + j] = D::store(v);
    }
}

template <typename D>
__device__ __forceinline__ void layer_norm_impl(typename D::T* y, const typename D::T* x,
                                                const typename D::T* w, const typename D::T* b,
                                                int d, float eps) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    float mean, inv_std;
    kiln_mean_inv_std<D>(x + base, d, eps, scratch, &mean, &inv_std);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        y[base + j] = D::store((D::load(x[base + j]) - mean) * inv_std * D::load(w[j]) +
                               D::load(b[j]));
    }
}

#define KILN_IMAGE_NORM(S, D)                                                                   \
    extern "C" __global__ void group_norm_##S(D::T* y, const D::T* x, const D::T* w,            \
                                              const D::T* b, int channels, int groups,          \
                                              long long spatial, float eps, int silu) {         \
        group_norm_impl<D>(y, x, w, b, channels, groups, spatial, eps, silu);                   \
    }                                                                                           \
    extern "C" __global__ void layer_norm_##S(D::T* y, const D::T* x, const D::T* w,            \
                                              const D::T* b, int d, float eps) {                \
        layer_norm_impl<D>(y, x, w, b, d, eps);                                                 \
    }
KILN_FOR_EACH_DTYPE(KILN_IMAGE_NORM)
