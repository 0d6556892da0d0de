// Norms of the image models, statistics in f32 or better, torch's biased variance.
//
// group_norm: x[n, c, spatial] in `groups` groups of c / groups channels; row r = (n, g) is
// the contiguous c / groups * spatial elements of group g of image n. One block per row
// would leave most of a GPU idle (32 blocks at batch 1, each reading ~1M elements at a
// VAE's 512x512x128), so it takes three launches:
//   group_norm_stats:    grid (chunks, rows); block (k, r) reduces chunk k of row r to its
//                        (count, mean, M2) (Welford per 16-byte vector, Chan's merge across
//                        threads), written to partials[r, k, 3] in f32;
//   group_norm_finalize: one thread per row merges its chunks' partials in f64 (Chan) into
//                        stats[r] = (mean, 1 / sqrt(M2 / count + eps));
//   group_norm_apply:    grid (tiles, planes): each block normalises part of one channel
//                        plane with 16-byte loads and stores, then the per-channel affine,
//                        then SiLU when `silu` is set.
// layer_norm: one block per row of width d: (x - mean) / sqrt(var + eps) * w + b, two passes
// (mean, then the mean of squared deviations).
// head_layer_norm (Command R+'s and StableLM 2 12B's q / k norms): layer_norm of each head
// of hd values, rows [n * heads, hd], with a weight per head ([heads, hd]) and no bias.

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

// (count, mean, sum of squared deviations) of a set of values; merging two is Chan et al.'s
// parallel update, exact in the count and stable where sums of squares cancel.
struct KilnMoments {
    float n, mean, m2;
};

__device__ __forceinline__ KilnMoments kiln_moments_merge(KilnMoments a, KilnMoments b) {
    if (b.n == 0.0f) return a;
    const float n = a.n + b.n;
    const float delta = b.mean - a.mean;
    const float f = b.n / n;
    return KilnMoments{n, a.mean + delta * f, a.m2 + b.m2 + delta * delta * a.n * f};
}

// Merges every thread's moments; thread 0 gets the block's. `scratch` holds 3 * 32 floats.
__device__ __forceinline__ KilnMoments kiln_block_moments(KilnMoments m, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const KilnMoments other{__shfl_xor_sync(KILN_FULL_MASK, m.n, offset),
                                __shfl_xor_sync(KILN_FULL_MASK, m.mean, offset),
                                __shfl_xor_sync(KILN_FULL_MASK, m.m2, offset)};
        m = kiln_moments_merge(m, other);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        scratch[3 * warp] = m.n;
        scratch[3 * warp + 1] = m.mean;
        scratch[3 * warp + 2] = m.m2;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < (int)(blockDim.x >> 5); ++k) {
            m = kiln_moments_merge(m, KilnMoments{scratch[3 * k], scratch[3 * k + 1],
                                                  scratch[3 * k + 2]});
        }
    }
    return m;
}

// One value into a thread's moments.
__device__ __forceinline__ KilnMoments kiln_moments_add(KilnMoments m, float v) {
    return kiln_moments_merge(m, KilnMoments{1.0f, v, 0.0f});
}

template <typename D>
__device__ __forceinline__ void group_norm_stats_impl(float* partials,
                                                      const typename D::T* x,
                                                      long long count, int chunks) {
    __shared__ float scratch[3 * 32];
    constexpr int PER = 16 / (int)sizeof(typename D::T);
    const int chunk = blockIdx.x;
    const typename D::T* row = x + (long long)blockIdx.y * count;
    // Scalar head up to the first 16-byte boundary and tail after the last whole vector,
    // both read by chunk 0; the vectors are split evenly between the chunks.
    long long head = kiln_head_to_16(row);
    if (head > count) head = count;
    const long long nvec = (count - head) / PER;
    const long long tail = head + nvec * PER;
    const long long v0 = nvec * chunk / chunks, v1 = nvec * (chunk + 1) / chunks;
    KilnMoments m{0.0f, 0.0f, 0.0f};
    if (chunk == 0) {
        for (long long j = threadIdx.x; j < head; j += blockDim.x) {
            m = kiln_moments_add(m, D::load(row[j]));
        }
        for (long long j = tail + threadIdx.x; j < count; j += blockDim.x) {
            m = kiln_moments_add(m, D::load(row[j]));
        }
    }
    const KilnVec16* vecs = reinterpret_cast<const KilnVec16*>(row + head);
    for (long long v = v0 + threadIdx.x; v < v1; v += blockDim.x) {
        const KilnVec16 packed = vecs[v];  // one 16-byte load (a reference would load words)
        float f[PER];
        kiln_unpack16<D>(packed, f);
        // The vector's own moments exactly (two passes over registers), then one merge.
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < PER; ++i) sum += f[i];
        const float mean = sum * (1.0f / PER);
        float m2 = 0.0f;
#pragma unroll
        for (int i = 0; i < PER; ++i) m2 += (f[i] - mean) * (f[i] - mean);
        m = kiln_moments_merge(m, KilnMoments{(float)PER, mean, m2});
    }
    m = kiln_block_moments(m, scratch);
    if (threadIdx.x == 0) {
        float* out = partials + 3 * ((long long)blockIdx.y * chunks + chunk);
        out[0] = m.n;
        out[1] = m.mean;
        out[2] = m.m2;
    }
}

// Dtype-independent; instantiated per dtype only so the host looks every kernel up alike.
__device__ __forceinline__ void group_norm_finalize_impl(float* stats, const float* partials,
                                                         int rows, int chunks, float eps) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    double n = 0.0, mean = 0.0, m2 = 0.0;
    for (int k = 0; k < chunks; ++k) {
        const float* p = partials + 3 * ((long long)r * chunks + k);
        const double bn = p[0];
        if (bn == 0.0) continue;
        const double total = n + bn, delta = (double)p[1] - mean, f = bn / total;
        mean += delta * f;
        m2 += (double)p[2] + delta * delta * n * f;
        n = total;
    }
    stats[2 * r] = (float)mean;
    stats[2 * r + 1] = (float)(1.0 / sqrt(m2 / n + (double)eps));
}

template <typename D>
__device__ __forceinline__ void group_norm_apply_impl(typename D::T* y, const typename D::T* x,
                                                      const float* stats,
                                                      const typename D::T* w,
                                                      const typename D::T* b, int channels,
                                                      int per_group, long long spatial,
                                                      int planes, int silu) {
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int c = plane % channels;
        const int r = plane / per_group;  // n * groups + c / per_group
        const float mean = stats[2 * r];
        const float scale = stats[2 * r + 1] * D::load(w[c]);
        const float shift = D::load(b[c]);
        const long long at = (long long)plane * spatial;
        kiln_map_row<D>(y + at, x + at, spatial, [=](float v) {
            v = (v - mean) * scale + shift;
            return silu ? v / (1.0f + expf(-v)) : v;
        });
    }
}

// Row blockIdx.x of width d normed; its weight is row (blockIdx.x % w_rows) of w ([w_rows,
// d]: 1 for one weight, the head count for per-head weights), its bias b (null: none).
template <typename D>
__device__ __forceinline__ void layer_norm_impl(typename D::T* y, const typename D::T* x,
                                                const typename D::T* w, const typename D::T* b,
                                                int d, float eps, int w_rows = 1) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    const typename D::T* w_row = w + (long long)(blockIdx.x % w_rows) * d;
    float mean, inv_std;
    kiln_mean_inv_std<D>(x + base, d, eps, scratch, &mean, &inv_std);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float shift = b != nullptr ? D::load(b[j]) : 0.0f;
        y[base + j] = D::store((D::load(x[base + j]) - mean) * inv_std * D::load(w_row[j]) + shift);
    }
}

#define KILN_IMAGE_NORM(S, D)                                                                   \
    extern "C" __global__ void group_norm_stats_##S(float* partials, const D::T* x,             \
                                                    long long count, int chunks) {              \
        group_norm_stats_impl<D>(partials, x, count, chunks);                                   \
    }                                                                                           \
    extern "C" __global__ void group_norm_finalize_##S(float* stats, const float* partials,     \
                                                       int rows, int chunks, float eps) {       \
        group_norm_finalize_impl(stats, partials, rows, chunks, eps);                           \
    }                                                                                           \
    extern "C" __global__ void group_norm_apply_##S(                                            \
        D::T* y, const D::T* x, const float* stats, const D::T* w, const D::T* b, int channels, \
        int per_group, long long spatial, int planes, int silu) {                               \
        group_norm_apply_impl<D>(y, x, stats, w, b, channels, per_group, spatial, planes,       \
                                 silu);                                                         \
    }                                                                                           \
    extern "C" __global__ void layer_norm_##S(D::T* y, const D::T* x, const D::T* w,            \
                                              const D::T* b, int d, float eps) {                \
        layer_norm_impl<D>(y, x, w, b, d, eps);                                                 \
    }                                                                                           \
    extern "C" __global__ void head_layer_norm_##S(D::T* y, const D::T* x, const D::T* w, int d, \
                                                   int heads, float eps) {                      \
        layer_norm_impl<D>(y, x, w, nullptr, d, eps, heads);                                    \
    }
KILN_FOR_EACH_DTYPE(KILN_IMAGE_NORM)
