// Rotary position embedding, in place on q [n, hq, hd] and k [n, hk, hd] (rows may be
// strided, e.g. inside a fused QKV buffer). One block per (token, head): grid (n, hq + hk),
// heads [0, hq) of q then [0, hk) of k; threads stride over the head's hd/2 pairs.
//   neox (HF rotate_half): pairs (i, i + hd/2);  interleaved (GPT-J): pairs (2i, 2i + 1).
// The angle is pos * inv_freq[i] in f32 with accurate cosf/sinf, as HF computes it.

template <typename D>
__device__ __forceinline__ void rope_rotate(typename D::T* head, int a, int b, float c, float s) {
    const float xa = D::load(head[a]);
    const float xb = D::load(head[b]);
    head[a] = D::store(xa * c - xb * s);
    head[b] = D::store(xb * c + xa * s);
}

template <typename D>
__device__ __forceinline__ void rope_impl(typename D::T* q, typename D::T* k, const int* positions,
                                          const float* inv_freq, int hq, int hk, int hd,
                                          int q_stride, int k_stride, int neox) {
    const long long token = blockIdx.x;
    const int head = blockIdx.y;
    if (head >= hq + hk) return;
    const float pos = (float)positions[token];
    const int half_dim = hd / 2;
    typename D::T* base = head < hq ? q + token * q_stride + (long long)head * hd
                                    : k + token * k_stride + (long long)(head - hq) * hd;
    for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
        const float angle = pos * inv_freq[i];
        const float c = cosf(angle);
        const float s = sinf(angle);
        if (neox) {
            rope_rotate<D>(base, i, i + half_dim, c, s);
        } else {
            rope_rotate<D>(base, 2 * i, 2 * i + 1, c, s);
        }
    }
}

#define KILN_ROPE(S, D)                                                                   \
    extern "C" __global__ void rope_##S(D::T* q, D::T* k, const int* positions,           \
                                        const float* inv_freq, int hq, int hk, int hd,    \
                                        int q_stride, int k_stride, int neox) {           \
        rope_impl<D>(q, k, positions, inv_freq, hq, hk, hd, q_stride, k_stride, neox);    \
    }
KILN_FOR_EACH_DTYPE(KILN_ROPE)
