// Rotary position embedding, in place on q [n, hq, hd] and k [n, hk, hd] (rows may be
// strided, e.g. inside a fused QKV buffer). One block per (token, head): grid (n, hq + hk),
// heads [0, hq) of q then [0, hk) of k; threads stride over the head's rot/2 pairs.
// Only the first rot of the hd values rotate (rot < hd: partial rotary, GLM-4; the table
// inv_freq has rot / 2 entries); the rest pass through.
//   neox (HF rotate_half): pairs (i, i + rot/2);  interleaved (GPT-J): pairs (2i, 2i + 1).
// The angle is pos * inv_freq[i] in f32 with accurate cosf/sinf, as HF computes it. cos and
// sin are multiplied by `scale`: YaRN's and LongRoPE's attention factor (1 otherwise), which
// HF folds into the rotation, so it scales only the rotated values of q and k.
// temp_floor > 0 (Llama 4's layers without rotary, whose table is all zero frequencies):
// each q head (not k) is then multiplied by kiln_query_temperature at its position, all of
// its values, after the rotation and before the one rounding.

// Llama 4's attention temperature at position pos: log1p(floor((pos + 1) / floor_scale)) *
// attn_scale + 1, in f32 as transformers computes it; floor_scale 0 means none (1).
__device__ __forceinline__ float kiln_query_temperature(float pos, float floor_scale,
                                                        float attn_scale) {
    if (floor_scale <= 0.0f) return 1.0f;
    return log1pf(floorf((pos + 1.0f) / floor_scale)) * attn_scale + 1.0f;
}

// Rotates one head of hd values from src into dst (the same pointer for in place) and
// multiplies it by `factor` (a query's temperature, else 1): each thread takes pairs i,
// i + blockDim.x, ... of the rot / 2; the values past rot are copied (out of place) or
// scaled.
template <typename D>
__device__ __forceinline__ void rope_head(typename D::T* dst, const typename D::T* src, float pos,
                                          const float* inv_freq, int hd, int rot, int neox,
                                          float scale, float factor = 1.0f) {
    const int half_dim = rot / 2;
    if (dst != src || factor != 1.0f) {
        for (int j = rot + threadIdx.x; j < hd; j += blockDim.x) {
            dst[j] = factor != 1.0f ? D::store(D::load(src[j]) * factor) : src[j];
        }
    }
    for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
        const float angle = pos * inv_freq[i];
        const float c = cosf(angle) * scale;
        const float s = sinf(angle) * scale;
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + half_dim : 2 * i + 1;
        const float xa = D::load(src[a]);
        const float xb = D::load(src[b]);
        dst[a] = D::store((xa * c - xb * s) * factor);
        dst[b] = D::store((xb * c + xa * s) * factor);
    }
}

template <typename D>
__device__ __forceinline__ void rope_impl(typename D::T* q, typename D::T* k, const int* positions,
                                          const float* inv_freq, int hq, int hk, int hd,
                                          int rot, int q_stride, int k_stride, int neox,
                                          float scale, float temp_floor, float temp_scale) {
    const long long token = blockIdx.x;
    const int head = blockIdx.y;
    if (head >= hq + hk) return;
    typename D::T* base = head < hq ? q + token * q_stride + (long long)head * hd
                                    : k + token * k_stride + (long long)(head - hq) * hd;
    const float pos = (float)positions[token];
    const float factor = head < hq ? kiln_query_temperature(pos, temp_floor, temp_scale) : 1.0f;
    rope_head<D>(base, base, pos, inv_freq, hd, rot, neox, scale, factor);
}

// Most head dims qkv_rope_cache normalises per head (the head is staged in shared memory).
#define QKV_NORM_MAX_HEAD_DIM 512

// qkv_rope_cache's norm_mode: no per-head norm, Qwen3's before the rotation, HunYuan's after.
#define QKV_NORM_NONE 0
#define QKV_NORM_BEFORE_ROPE 1
#define QKV_NORM_AFTER_ROPE 2

// A per-head RMS norm of one head of hd values from src into dst, rounded to D::T as rms_norm
// stores it (value * inv_rms * weight); every thread of the block takes part. Each thread
// reads back only the elements it summed, so src may be dst.
template <typename D>
__device__ __forceinline__ void qkv_head_norm_into(typename D::T* dst, const typename D::T* src,
                                                   const typename D::T* w, float eps, int hd,
                                                   float* scratch) {
    float sum_sq = 0.0f;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        const float x = D::load(src[j]);
        sum_sq += x * x;
    }
    const float inv_rms = rsqrtf(kiln_block_sum(sum_sq, scratch) / (float)hd + eps);
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        dst[j] = D::store(D::load(src[j]) * inv_rms * D::load(w[j]));
    }
}

// Qwen3's per-head norm before the rotation: into `tile`, which rope_head then reads.
template <typename D>
__device__ __forceinline__ const typename D::T* qkv_head_norm(const typename D::T* src,
                                                              const typename D::T* w, float eps,
                                                              int hd, typename D::T* tile,
                                                              float* scratch) {
    qkv_head_norm_into<D>(tile, src, w, eps, hd, scratch);
    __syncthreads();  // rope_head reads pairs other threads wrote
    return tile;
}

// One head's rotation and norm into dst in the order norm_mode says: the norm (Qwen3) into
// the tile and the rotation from there, or (HunYuan) the rotation into the tile and the norm
// from there.
template <typename D>
__device__ __forceinline__ void qkv_head_rope_norm(typename D::T* dst, const typename D::T* src,
                                                   float pos, const float* inv_freq, int hd,
                                                   int rot, int neox, float scale,
                                                   const typename D::T* w, float eps,
                                                   int norm_mode, typename D::T* tile,
                                                   float* scratch, float factor) {
    if (norm_mode == QKV_NORM_AFTER_ROPE) {
        rope_head<D>(tile, src, pos, inv_freq, hd, rot, neox, scale, factor);
        __syncthreads();  // the norm sums values other threads rotated
        qkv_head_norm_into<D>(dst, tile, w, eps, hd, scratch);
        return;
    }
    if (norm_mode == QKV_NORM_BEFORE_ROPE) src = qkv_head_norm<D>(src, w, eps, hd, tile, scratch);
    rope_head<D>(dst, src, pos, inv_freq, hd, rot, neox, scale, factor);
}

// The attention block's entry in one launch instead of three column copies, rope and the
// cache write: token t's fused row qkv[t] = [q (hq * hd) | k (hk * hd) | v (hk * hd)] gives
// the rotated q in q_out[t] ([n, hq * hd]), and the rotated k and the v in cache slot
// slot_mapping[t] (caches [num_blocks, block_size, hk, hd]; slot < 0 is padding and slots
// past the cache are bad input: both store nothing). With norm_mode QKV_NORM_BEFORE_ROPE
// (Qwen3) each q and k head is RMS-normalised by q_norm / k_norm ([hd]) before its rotation,
// with QKV_NORM_AFTER_ROPE (HunYuan) after it. A query temperature (temp_floor > 0) scales
// each q head with its rotation, as in rope. Grid (n, hq + hk): block
// (t, h) rotates q head h for h < hq, else rotates k head h - hq and copies v head h - hq.
template <typename D>
__device__ __forceinline__ void qkv_rope_cache_impl(typename D::T* q_out, typename D::T* k_cache,
                                                    typename D::T* v_cache,
                                                    const typename D::T* qkv,
                                                    const int* positions, const float* inv_freq,
                                                    const int* slot_mapping, int hq, int hk,
                                                    int hd, int rot, int neox, long long num_slots,
                                                    const typename D::T* q_norm,
                                                    const typename D::T* k_norm, float eps,
                                                    int norm_mode, float scale,
                                                    float temp_floor, float temp_scale) {
    __shared__ typename D::T tile[QKV_NORM_MAX_HEAD_DIM];
    __shared__ float scratch[32];
    const long long token = blockIdx.x;
    const int head = blockIdx.y;
    if (head >= hq + hk) return;
    const typename D::T* row = qkv + token * (long long)(hq + 2 * hk) * hd;
    const float pos = (float)positions[token];
    if (head < hq) {
        qkv_head_rope_norm<D>(q_out + (token * hq + head) * hd, row + (long long)head * hd, pos,
                              inv_freq, hd, rot, neox, scale, q_norm, eps, norm_mode, tile,
                              scratch, kiln_query_temperature(pos, temp_floor, temp_scale));
        return;
    }
    // The whole block leaves together (one token, one slot), before any barrier.
    const long long slot = slot_mapping[token];
    if (slot < 0 || slot >= num_slots) return;
    const int kv_head = head - hq;
    const long long dst = (slot * hk + kv_head) * hd;
    const typename D::T* v_src = row + (long long)(hq + hk + kv_head) * hd;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) v_cache[dst + j] = v_src[j];
    qkv_head_rope_norm<D>(k_cache + dst, row + (long long)(hq + kv_head) * hd, pos, inv_freq, hd,
                          rot, neox, scale, k_norm, eps, norm_mode, tile, scratch, 1.0f);
}

#define KILN_ROPE(S, D)                                                                    \
    extern "C" __global__ void rope_##S(D::T* q, D::T* k, const int* positions,            \
                                        const float* inv_freq, int hq, int hk, int hd,     \
                                        int rot, int q_stride, int k_stride, int neox,     \
                                        float scale, float temp_floor, float temp_scale) { \
        rope_impl<D>(q, k, positions, inv_freq, hq, hk, hd, rot, q_stride, k_stride, neox, \
                     scale, temp_floor, temp_scale);                                       \
    }
KILN_FOR_EACH_DTYPE(KILN_ROPE)

#define KILN_QKV_ROPE_CACHE(S, D)                                                              \
    extern "C" __global__ void qkv_rope_cache_##S(                                             \
        D::T* q_out, D::T* k_cache, D::T* v_cache, const D::T* qkv, const int* positions,      \
        const float* inv_freq, const int* slot_mapping, int hq, int hk, int hd, int rot,       \
        int neox, long long num_slots, const D::T* q_norm, const D::T* k_norm, float eps,      \
        int norm_mode, float scale, float temp_floor, float temp_scale) {                      \
        qkv_rope_cache_impl<D>(q_out, k_cache, v_cache, qkv, positions, inv_freq, slot_mapping, \
                               hq, hk, hd, rot, neox, num_slots, q_norm, k_norm, eps, norm_mode, \
                               scale, temp_floor, temp_scale);                                 \
    }
KILN_FOR_EACH_DTYPE(KILN_QKV_ROPE_CACHE)
