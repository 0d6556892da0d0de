// The gated delta rule mixer (Qwen3-Next's linear attention) over the sequences' state
// slots (src/backend/gated_delta.rs has the layout and the math). Its causal convolution
// is mamba.cu's (mamba_conv and mamba_conv_window at column offset 0, no bias); a slot
// holds, in f32, the state [v_heads, k_dim, v_dim] and then the window. These two kernels
// follow them, on one stream.
//
// gated_delta_scan: grid (num_seqs, v_heads), GDN_THREADS threads: the recurrence of one
//   value head of one sequence, token by token. Lane l owns the state's rows
//   i = l, l + 32, .. (at most GDN_ROWS), warp w its columns j = w, w + GDN_WARPS, ..
//   (at most GDN_COLS), in registers. Per token: q and k of the head's key head are
//   L2-normed (block sums; each square, the sum, the sum plus epsilon, its inverse root
//   and the normed values rounded to the dtype, as transformers' eager l2norm), q scaled by
//   k_dim^-0.5; beta = sigmoid(b) rounded, g = A * softplus(a + dt_bias); then per column
//   S *= exp(g), recalled = S^T k (a warp sum), S += k (beta (v - recalled)),
//   o = S^T q (a warp sum: deterministic), in f32. The state after the step's last token
//   is stored back.
// gated_delta_norm: grid (tokens, v_heads): x = o rounded; out = silu(z) * (weight *
//   (x / sqrt(mean(x^2) + eps)) rounded), each step rounded as transformers' eager norm;
//   padding tokens get zeros.

#define GDN_THREADS 256
#define GDN_WARPS (GDN_THREADS / 32)
#define GDN_ROWS 4
#define GDN_COLS 16
#define GDN_L2_EPS 1e-6f

// 1 / sqrt(sum + eps) from a sum of rounded squares, each step rounded to the dtype.
template <typename D>
__device__ __forceinline__ float gated_delta_inv_norm(float sum) {
    const float padded = D::load(D::store(D::load(D::store(sum)) + GDN_L2_EPS));
    return D::load(D::store(1.0f / sqrtf(padded)));
}

template <typename D>
__device__ __forceinline__ void gated_delta_scan_impl(
    float* o, float* states, const typename D::T* qkv, const typename D::T* qkvzba,
    const float* dt_bias, const float* a, const int* slot_mapping, const int* state_slots,
    int num_state_slots, const int* query_start, const int* context_lens, int k_heads,
    int v_heads, int k_dim, int v_dim, int width, long long slot_values) {
    __shared__ float q_s[GDN_ROWS * 32];
    __shared__ float k_s[GDN_ROWS * 32];
    __shared__ float scratch[32];
    const int seq = blockIdx.x;
    const int head = blockIdx.y;
    const KilnSlotStep st = kiln_slot_step(seq, states, slot_mapping, state_slots,
                                           num_state_slots, query_start, context_lens,
                                           slot_values);
    if (st.slot == nullptr) return;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int key_dim = k_heads * k_dim;
    const int value_dim = v_heads * v_dim;
    const int conv_dim = 2 * key_dim + value_dim;
    const int key_head = head / (v_heads / k_heads);
    float* head_state = st.slot + (long long)head * k_dim * v_dim;
    float s[GDN_ROWS][GDN_COLS];
#pragma unroll
    for (int r = 0; r < GDN_ROWS; ++r) {
#pragma unroll
        for (int c = 0; c < GDN_COLS; ++c) {
            const int i = lane + 32 * r;
            const int j = warp + GDN_WARPS * c;
            s[r][c] = (st.first > 0 && i < k_dim && j < v_dim)
                          ? head_state[(long long)i * v_dim + j]
                          : 0.0f;
        }
    }
    const float scale = rsqrtf((float)k_dim);
    const float a_h = a[head];
    const float bias_h = dt_bias[head];
    for (int t = st.start; t < st.end; ++t) {
        const typename D::T* row = qkv + (long long)t * conv_dim;
        float qq = 0.0f;
        float kk = 0.0f;
        for (int i = threadIdx.x; i < k_dim; i += blockDim.x) {
            const float q = D::load(row[key_head * k_dim + i]);
            const float k = D::load(row[key_dim + key_head * k_dim + i]);
            q_s[i] = q;
            k_s[i] = k;
            qq += D::load(D::store(q * q));
            kk += D::load(D::store(k * k));
        }
        // The block sums synchronise, so q_s and k_s are complete after them.
        const float q_inv = gated_delta_inv_norm<D>(kiln_block_sum(qq, scratch));
        const float k_inv = gated_delta_inv_norm<D>(kiln_block_sum(kk, scratch));
        const typename D::T* ba = qkvzba + (long long)t * width + conv_dim + value_dim;
        const float beta = D::load(D::store(1.0f / (1.0f + expf(-D::load(ba[head])))));
        const float decay = expf(a_h * kiln_softplus(D::load(ba[v_heads + head]) + bias_h));
        float qn[GDN_ROWS];
        float kn[GDN_ROWS];
#pragma unroll
        for (int r = 0; r < GDN_ROWS; ++r) {
            const int i = lane + 32 * r;
            qn[r] = i < k_dim ? D::load(D::store(q_s[i] * q_inv)) * scale : 0.0f;
            kn[r] = i < k_dim ? D::load(D::store(k_s[i] * k_inv)) : 0.0f;
        }
#pragma unroll
        for (int c = 0; c < GDN_COLS; ++c) {
            const int j = warp + GDN_WARPS * c;
            if (j >= v_dim) break;  // uniform across the warp
            float recalled = 0.0f;
#pragma unroll
            for (int r = 0; r < GDN_ROWS; ++r) {
                s[r][c] *= decay;
                recalled += s[r][c] * kn[r];
            }
            recalled = kiln_warp_sum(recalled);
            const float v = D::load(row[2 * key_dim + head * v_dim + j]);
            const float delta = (v - recalled) * beta;
            float out = 0.0f;
#pragma unroll
            for (int r = 0; r < GDN_ROWS; ++r) {
                s[r][c] += kn[r] * delta;
                out += s[r][c] * qn[r];
            }
            out = kiln_warp_sum(out);
            if (lane == 0) o[(long long)t * value_dim + head * v_dim + j] = out;
        }
        __syncthreads();  // the next token overwrites q_s and k_s
    }
#pragma unroll
    for (int r = 0; r < GDN_ROWS; ++r) {
#pragma unroll
        for (int c = 0; c < GDN_COLS; ++c) {
            const int i = lane + 32 * r;
            const int j = warp + GDN_WARPS * c;
            if (i < k_dim && j < v_dim) head_state[(long long)i * v_dim + j] = s[r][c];
        }
    }
}

template <typename D>
__device__ __forceinline__ void gated_delta_norm_impl(typename D::T* out, const float* o,
                                                      const typename D::T* qkvzba,
                                                      const typename D::T* weight,
                                                      const int* slot_mapping, int width,
                                                      int conv_dim, int value_dim, int v_dim,
                                                      float eps) {
    __shared__ float scratch[32];
    const long long token = blockIdx.x;
    const int base = blockIdx.y * v_dim;
    typename D::T* dst = out + token * value_dim + base;
    if (slot_mapping[token] < 0) {
        for (int j = threadIdx.x; j < v_dim; j += blockDim.x) dst[j] = D::store(0.0f);
        return;
    }
    const float* o_row = o + token * value_dim + base;
    const typename D::T* z_row = qkvzba + token * width + conv_dim + base;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < v_dim; j += blockDim.x) {
        const float x = D::load(D::store(o_row[j]));
        sum += x * x;
    }
    const float inv = rsqrtf(kiln_block_sum(sum, scratch) / v_dim + eps);
    for (int j = threadIdx.x; j < v_dim; j += blockDim.x) {
        const float x = D::load(D::store(o_row[j]));
        const float scaled = D::load(D::store(D::load(weight[j]) * D::load(D::store(x * inv))));
        dst[j] = D::store(scaled * kiln_silu(D::load(z_row[j])));
    }
}

#define KILN_GATED_DELTA(S, D)                                                                  \
    extern "C" __global__ void __launch_bounds__(GDN_THREADS) gated_delta_scan_##S(             \
        float* o, float* states, const D::T* qkv, const D::T* qkvzba, const float* dt_bias,     \
        const float* a, const int* slot_mapping, const int* state_slots, int num_state_slots,   \
        const int* query_start, const int* context_lens, int k_heads, int v_heads, int k_dim,   \
        int v_dim, int width, long long slot_values) {                                          \
        gated_delta_scan_impl<D>(o, states, qkv, qkvzba, dt_bias, a, slot_mapping, state_slots, \
                                 num_state_slots, query_start, context_lens, k_heads, v_heads,  \
                                 k_dim, v_dim, width, slot_values);                             \
    }                                                                                           \
    extern "C" __global__ void gated_delta_norm_##S(                                            \
        D::T* out, const float* o, const D::T* qkvzba, const D::T* weight,                      \
        const int* slot_mapping, int width, int conv_dim, int value_dim, int v_dim, float eps) { \
        gated_delta_norm_impl<D>(out, o, qkvzba, weight, slot_mapping, width, conv_dim,         \
                                 value_dim, v_dim, eps);                                        \
    }
KILN_FOR_EACH_DTYPE(KILN_GATED_DELTA)
