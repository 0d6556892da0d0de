// The Mamba-2 mixer (Bamba, Granite 4.0, Mamba-Codestral) over the paged cache of rows and
// the sequences' state slots, in four steps (src/backend/mamba.rs has the layout and math):
//
// mamba_conv_write: one block per token: the token's x / B / C row (columns
//   [inner, inner + conv_dim) of zxbcdt [n, width]) into its slot of the layer's rows
//   [num_blocks, block_size, conv_dim] (slot < 0 is padding, slots past the cache are bad
//   input: both store nothing).
// mamba_conv: grid (tokens, ceil(conv_dim / blockDim.x)), a thread per (token, channel):
//   the causal depthwise convolution over the sequence's rows at pos - (taps - 1) ..= pos
//   (before 0: nothing) plus the bias, rounded to the dtype, then SiLU, rounded: xbc [n,
//   conv_dim]. Padding tokens get zeros.
// mamba_scan: grid (num_seqs, heads), MAMBA_SCAN_THREADS threads: the recurrence of one
//   head of one sequence, token by token. Warp w owns the head's rows p = w, w + warps, ..;
//   lane l its state columns n = l, l + 32, ..; each thread keeps its part of the f32 state
//   [head_dim, state] in registers (at most MAMBA_SCAN_MAX_PER_THREAD values). Per token:
//   dt = clamp(softplus(raw + dt_bias)), h = exp(dt * A) * h + dt * x[p] * B[n], and
//   y[p] = sum_n h[p, n] * C[n] (a warp reduction: deterministic) + D * x[p], in f32. The
//   state starts from the sequence's slot state_slots[s] (zeros at position 0) and is
//   stored back there after the step's last token: states [num_state_slots, heads *
//   head_dim * state] f32 (a slot past the pool is bad input: the head does nothing).
// mamba_gated_norm: grid (tokens, inner / group): g = y * silu(z), out = weight * g /
//   sqrt(mean(g^2) + eps) over the group, rounded to the dtype; padding tokens (whose y no
//   scan wrote) get zeros.
//
// Token t of sequence s sits at position context_lens[s] - q_len + (t - query_start[s]), as
// in attention.cu. The kernels run in this order on one stream.

#define MAMBA_SCAN_THREADS 256
#define MAMBA_SCAN_WARPS (MAMBA_SCAN_THREADS / 32)
#define MAMBA_SCAN_MAX_PER_THREAD 64

__device__ __forceinline__ float mamba_silu(float v) { return v / (1.0f + expf(-v)); }

// PyTorch's softplus: linear above 20.
__device__ __forceinline__ float mamba_softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

template <typename D>
__device__ __forceinline__ void mamba_conv_write_impl(typename D::T* cache,
                                                      const typename D::T* zxbcdt,
                                                      const int* slot_mapping, int width,
                                                      int inner, int conv_dim,
                                                      long long num_slots) {
    const long long token = blockIdx.x;
    const long long slot = slot_mapping[token];
    if (slot < 0 || slot >= num_slots) return;
    const typename D::T* row = zxbcdt + token * width + inner;
    typename D::T* dst = cache + slot * conv_dim;
    for (int j = threadIdx.x; j < conv_dim; j += blockDim.x) dst[j] = row[j];
}

template <typename D>
__device__ __forceinline__ void mamba_conv_impl(
    typename D::T* out, const typename D::T* cache, const typename D::T* weight,
    const typename D::T* bias, int has_bias, const int* slot_mapping, const int* block_tables,
    const int* query_start, const int* context_lens, int num_seqs, int max_blocks_per_seq,
    int block_size, int conv_dim, int taps) {
    const int token = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= conv_dim) return;
    typename D::T* dst = out + (long long)token * conv_dim + c;
    if (slot_mapping[token] < 0) {
        *dst = D::store(0.0f);
        return;
    }
    const float acc =
        kiln_paged_causal_conv<D>(cache, weight, block_tables, query_start, context_lens,
                                  num_seqs, max_blocks_per_seq, block_size, conv_dim, taps,
                                  token, c) +
        (has_bias ? D::load(bias[c]) : 0.0f);
    const float conv = D::load(D::store(acc));
    *dst = D::store(mamba_silu(conv));
}

template <typename D>
__device__ __forceinline__ void mamba_scan_impl(
    float* y, float* states, const typename D::T* xbc, const typename D::T* zxbcdt,
    const float* dt_bias, const float* a, const float* d, const int* slot_mapping,
    const int* state_slots, int num_state_slots, const int* query_start,
    const int* context_lens, int head_dim, int state, int groups, int heads, int width,
    float dt_min, float dt_max) {
    const int seq = blockIdx.x;
    const int head = blockIdx.y;
    const int start = query_start[seq];
    const int end = query_start[seq + 1];
    const int slot = state_slots[seq];
    if (start == end || slot_mapping[start] < 0 || slot < 0 || slot >= num_state_slots) return;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int inner = heads * head_dim;
    const int conv_dim = inner + 2 * groups * state;
    const long long values = (long long)inner * state;
    const int group = head / (heads / groups);
    const int first = context_lens[seq] - (end - start);
    float* head_state = states + (long long)slot * values + (long long)head * head_dim * state;
    // This thread's state values: rows p = warp + i * WARPS, columns n = lane + k * 32.
    const int rows = (head_dim - warp + MAMBA_SCAN_WARPS - 1) / MAMBA_SCAN_WARPS;
    const int cols = (state - lane + 31) / 32;
    float h[MAMBA_SCAN_MAX_PER_THREAD];
    for (int i = 0; i < rows; ++i) {
        for (int k = 0; k < cols; ++k) {
            const int p = warp + i * MAMBA_SCAN_WARPS;
            const int n = lane + k * 32;
            h[i * cols + k] = first == 0 ? 0.0f : head_state[(long long)p * state + n];
        }
    }
    const float a_h = a[head];
    const float d_h = d[head];
    for (int t = start; t < end; ++t) {
        const typename D::T* row = xbc + (long long)t * conv_dim;
        const typename D::T* b_row = row + inner + group * state;
        const typename D::T* c_row = row + inner + groups * state + group * state;
        const float raw = D::load(zxbcdt[(long long)t * width + inner + conv_dim + head]);
        const float dt = fminf(fmaxf(mamba_softplus(raw + dt_bias[head]), dt_min), dt_max);
        const float decay = expf(dt * a_h);
        for (int i = 0; i < rows; ++i) {
            const int p = warp + i * MAMBA_SCAN_WARPS;
            const float x = D::load(row[head * head_dim + p]);
            float acc = 0.0f;
            for (int k = 0; k < cols; ++k) {
                const int n = lane + k * 32;
                float& v = h[i * cols + k];
                v = decay * v + dt * x * D::load(b_row[n]);
                acc += v * D::load(c_row[n]);
            }
            acc = kiln_warp_sum(acc);
            if (lane == 0) y[(long long)t * inner + head * head_dim + p] = acc + d_h * x;
        }
    }
    for (int i = 0; i < rows; ++i) {
        for (int k = 0; k < cols; ++k) {
            const int p = warp + i * MAMBA_SCAN_WARPS;
            const int n = lane + k * 32;
            head_state[(long long)p * state + n] = h[i * cols + k];
        }
    }
}

template <typename D>
__device__ __forceinline__ void mamba_gated_norm_impl(typename D::T* out, const float* y,
                                                      const typename D::T* zxbcdt,
                                                      const typename D::T* weight,
                                                      const int* slot_mapping, int width,
                                                      int inner, int group, float eps) {
    __shared__ float scratch[32];
    const long long token = blockIdx.x;
    const int base = blockIdx.y * group;
    if (slot_mapping[token] < 0) {
        for (int j = threadIdx.x; j < group; j += blockDim.x) {
            out[token * inner + base + j] = D::store(0.0f);
        }
        return;
    }
    const float* y_row = y + token * inner + base;
    const typename D::T* z_row = zxbcdt + token * width + base;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < group; j += blockDim.x) {
        const float g = y_row[j] * mamba_silu(D::load(z_row[j]));
        sum += g * g;
    }
    const float inv = rsqrtf(kiln_block_sum(sum, scratch) / group + eps);
    for (int j = threadIdx.x; j < group; j += blockDim.x) {
        const float g = y_row[j] * mamba_silu(D::load(z_row[j]));
        out[token * inner + base + j] = D::store(D::load(weight[base + j]) * g * inv);
    }
}

#define KILN_MAMBA(S, D)                                                                        \
    extern "C" __global__ void mamba_conv_write_##S(D::T* cache, const D::T* zxbcdt,           \
                                                    const int* slot_mapping, int width,         \
                                                    int inner, int conv_dim,                    \
                                                    long long num_slots) {                      \
        mamba_conv_write_impl<D>(cache, zxbcdt, slot_mapping, width, inner, conv_dim,           \
                                 num_slots);                                                    \
    }                                                                                           \
    extern "C" __global__ void mamba_conv_##S(                                                  \
        D::T* out, const D::T* cache, const D::T* weight, const D::T* bias, int has_bias,       \
        const int* slot_mapping, const int* block_tables, const int* query_start,               \
        const int* context_lens, int num_seqs, int max_blocks_per_seq, int block_size,          \
        int conv_dim, int taps) {                                                               \
        mamba_conv_impl<D>(out, cache, weight, bias, has_bias, slot_mapping, block_tables,      \
                           query_start, context_lens, num_seqs, max_blocks_per_seq,             \
                           block_size, conv_dim, taps);                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MAMBA_SCAN_THREADS) mamba_scan_##S(            \
        float* y, float* states, const D::T* xbc, const D::T* zxbcdt, const float* dt_bias,     \
        const float* a, const float* d, const int* slot_mapping, const int* state_slots,        \
        int num_state_slots, const int* query_start, const int* context_lens, int head_dim,     \
        int state, int groups, int heads, int width, float dt_min, float dt_max) {              \
        mamba_scan_impl<D>(y, states, xbc, zxbcdt, dt_bias, a, d, slot_mapping, state_slots,   \
                           num_state_slots, query_start, context_lens, head_dim, state, groups, \
                           heads, width, dt_min, dt_max);                                       \
    }                                                                                           \
    extern "C" __global__ void mamba_gated_norm_##S(                                            \
        D::T* out, const float* y, const D::T* zxbcdt, const D::T* weight,                      \
        const int* slot_mapping, int width, int inner, int group, float eps) {                  \
        mamba_gated_norm_impl<D>(out, y, zxbcdt, weight, slot_mapping, width, inner, group,     \
                                 eps);                                                          \
    }
KILN_FOR_EACH_DTYPE(KILN_MAMBA)
