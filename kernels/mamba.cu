// The Mamba-2 mixer (Bamba, Granite 4.0, Mamba-Codestral) over the sequences' state slots,
// in four steps (src/backend/mamba.rs has the layout and the math). A slot holds, in f32,
// the state-space state [heads, head_dim, state] (state_values) and then the convolution's
// window, the x / B / C rows of the sequence's last taps - 1 tokens ([taps - 1, conv_dim]):
// slot_values in all, states [num_state_slots, slot_values]. A sequence whose step starts
// at position 0 reads zeros for both. A padding token (slot_mapping < 0) or sequence (its
// first token's), and a state slot past the pool (bad input), read and store nothing.
//
// mamba_conv: grid (tokens, ceil(conv_dim / blockDim.x)), a thread per (token, channel):
//   the causal depthwise convolution over the rows at pos - (taps - 1) ..= pos (the step's
//   own x / B / C columns of zxbcdt [n, width], conv_dim from column `offset` on, before
//   them the window) plus the bias, rounded to the dtype, then SiLU, rounded:
//   xbc [n, conv_dim]; padding tokens get zeros. gated_delta.cu's q / k / v convolution
//   (offset 0, no bias) runs through this kernel and the next.
// mamba_conv_window: grid (num_seqs, ceil(conv_dim / blockDim.x)): the window after the
//   step (its last taps - 1 rows, from the step or the old window), after mamba_conv read
//   the old one.
// mamba_scan: grid (num_seqs, heads), MAMBA_SCAN_THREADS threads: the recurrence of one
//   head of one sequence, token by token. Warp w owns the head's rows p = w, w + warps, ..;
//   lane l its state columns n = l, l + 32, ..; each thread keeps its part of the f32 state
//   [head_dim, state] in registers (at most MAMBA_SCAN_MAX_PER_THREAD values). Per token:
//   dt = clamp(softplus(raw + dt_bias)), h = exp(dt * A) * h + dt * x[p] * B[n], and
//   y[p] = sum_n h[p, n] * C[n] (a warp reduction: deterministic) + D * x[p], in f32; the
//   state after the step's last token is stored back.
// mamba_gated_norm: grid (tokens, inner / group): g = y * silu(z), out = weight * g /
//   sqrt(mean(g^2) + eps) over the group, rounded to the dtype; padding tokens (whose y no
//   scan wrote) get zeros.
// mamba_gate: grid (tokens, ceil(inner / blockDim.x)): out = y * silu(z), the SiLU rounded to
//   the dtype first (Falcon-H1's mixers without the norm); zeros for padding tokens.
//
// Token t of sequence s sits at position context_lens[s] - q_len + (t - query_start[s]), as
// in attention.cu. The kernels run in this order on one stream.

#define MAMBA_SCAN_THREADS 256
#define MAMBA_SCAN_WARPS (MAMBA_SCAN_THREADS / 32)
#define MAMBA_SCAN_MAX_PER_THREAD 64
#define MAMBA_MAX_TAPS 8

// Channel c of the sequence's row q, counted from its step's first token (q < 0: the
// window's, zeros when the step starts the sequence).
template <typename D>
__device__ __forceinline__ float mamba_row(const KilnSlotStep& st, const typename D::T* zxbcdt,
                                           int width, int offset, int conv_dim, int taps,
                                           long long state_values, int q, int c) {
    if (q >= 0) return D::load(zxbcdt[(long long)(st.start + q) * width + offset + c]);
    if (st.first == 0) return 0.0f;
    return st.slot[state_values + (long long)(taps - 1 + q) * conv_dim + c];
}

template <typename D>
__device__ __forceinline__ void mamba_conv_impl(
    typename D::T* out, float* states, const typename D::T* zxbcdt,
    const typename D::T* weight, const typename D::T* bias, int has_bias,
    const int* slot_mapping, const int* state_slots, int num_state_slots,
    const int* query_start, const int* context_lens, int num_seqs, int width, int offset,
    int conv_dim, int taps, long long slot_values, long long state_values) {
    const int token = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= conv_dim) return;
    typename D::T* dst = out + (long long)token * conv_dim + c;
    const int seq = kiln_find_sequence(query_start, num_seqs, token);
    const KilnSlotStep st = kiln_slot_step(seq, states, slot_mapping, state_slots, num_state_slots,
                                    query_start, context_lens, slot_values);
    if (slot_mapping[token] < 0 || st.slot == nullptr) {
        *dst = D::store(0.0f);
        return;
    }
    const int t = token - st.start;
    float acc = 0.0f;
    for (int j = 0; j < taps; ++j) {
        acc += D::load(weight[c * taps + j]) *
               mamba_row<D>(st, zxbcdt, width, offset, conv_dim, taps, state_values,
                            t - (taps - 1) + j, c);
    }
    acc += has_bias ? D::load(bias[c]) : 0.0f;
    const float conv = D::load(D::store(acc));
    *dst = D::store(kiln_silu(conv));
}

template <typename D>
__device__ __forceinline__ void mamba_conv_window_impl(
    float* states, const typename D::T* zxbcdt, const int* slot_mapping,
    const int* state_slots, int num_state_slots, const int* query_start,
    const int* context_lens, int width, int offset, int conv_dim, int taps,
    long long slot_values, long long state_values) {
    const int seq = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= conv_dim) return;
    const KilnSlotStep st = kiln_slot_step(seq, states, slot_mapping, state_slots, num_state_slots,
                                    query_start, context_lens, slot_values);
    if (st.slot == nullptr) return;
    const int len = st.end - st.start;
    float window[MAMBA_MAX_TAPS];
    for (int j = 0; j < taps - 1; ++j) {
        window[j] = mamba_row<D>(st, zxbcdt, width, offset, conv_dim, taps, state_values,
                                 len - (taps - 1) + j, c);
    }
    for (int j = 0; j < taps - 1; ++j) {
        st.slot[state_values + (long long)j * conv_dim + c] = window[j];
    }
}

template <typename D>
__device__ __forceinline__ void mamba_scan_impl(
    float* y, float* states, const typename D::T* xbc, const typename D::T* zxbcdt,
    const float* dt_bias, const float* a, const float* d, const int* slot_mapping,
    const int* state_slots, int num_state_slots, const int* query_start,
    const int* context_lens, int head_dim, int state, int groups, int heads, int width,
    long long slot_values, float dt_min, float dt_max) {
    const int seq = blockIdx.x;
    const int head = blockIdx.y;
    const KilnSlotStep st = kiln_slot_step(seq, states, slot_mapping, state_slots, num_state_slots,
                                    query_start, context_lens, slot_values);
    if (st.slot == nullptr) return;
    const int start = st.start;
    const int end = st.end;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int inner = heads * head_dim;
    const int conv_dim = inner + 2 * groups * state;
    const int group = head / (heads / groups);
    const int first = st.first;
    float* head_state = st.slot + (long long)head * head_dim * state;
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
        const float dt = fminf(fmaxf(kiln_softplus(raw + dt_bias[head]), dt_min), dt_max);
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
        const float g = y_row[j] * kiln_silu(D::load(z_row[j]));
        sum += g * g;
    }
    const float inv = rsqrtf(kiln_block_sum(sum, scratch) / group + eps);
    for (int j = threadIdx.x; j < group; j += blockDim.x) {
        const float g = y_row[j] * kiln_silu(D::load(z_row[j]));
        out[token * inner + base + j] = D::store(D::load(weight[base + j]) * g * inv);
    }
}

template <typename D>
__device__ __forceinline__ void mamba_gate_impl(typename D::T* out, const float* y,
                                                const typename D::T* zxbcdt,
                                                const int* slot_mapping, int width, int inner) {
    const long long token = blockIdx.x;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= inner) {
        return;
    }
    if (slot_mapping[token] < 0) {
        out[token * inner + i] = D::store(0.0f);
        return;
    }
    const float gate = D::load(D::store(kiln_silu(D::load(zxbcdt[token * width + i]))));
    out[token * inner + i] = D::store(y[token * inner + i] * gate);
}

#define KILN_MAMBA(S, D)                                                                        \
    extern "C" __global__ void mamba_conv_##S(                                                  \
        D::T* out, float* states, const D::T* zxbcdt, const D::T* weight, const D::T* bias,     \
        int has_bias, const int* slot_mapping, const int* state_slots, int num_state_slots,     \
        const int* query_start, const int* context_lens, int num_seqs, int width, int offset,    \
        int conv_dim, int taps, long long slot_values, long long state_values) {                \
        mamba_conv_impl<D>(out, states, zxbcdt, weight, bias, has_bias, slot_mapping,           \
                           state_slots, num_state_slots, query_start, context_lens, num_seqs,   \
                           width, offset, conv_dim, taps, slot_values, state_values);           \
    }                                                                                           \
    extern "C" __global__ void mamba_conv_window_##S(                                           \
        float* states, const D::T* zxbcdt, const int* slot_mapping, const int* state_slots,     \
        int num_state_slots, const int* query_start, const int* context_lens, int width,        \
        int offset, int conv_dim, int taps, long long slot_values, long long state_values) {    \
        mamba_conv_window_impl<D>(states, zxbcdt, slot_mapping, state_slots, num_state_slots,   \
                                  query_start, context_lens, width, offset, conv_dim, taps,     \
                                  slot_values, state_values);                                   \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MAMBA_SCAN_THREADS) mamba_scan_##S(            \
        float* y, float* states, const D::T* xbc, const D::T* zxbcdt, const float* dt_bias,     \
        const float* a, const float* d, const int* slot_mapping, const int* state_slots,        \
        int num_state_slots, const int* query_start, const int* context_lens, int head_dim,     \
        int state, int groups, int heads, int width, long long slot_values, float dt_min,       \
        float dt_max) {                                                                         \
        mamba_scan_impl<D>(y, states, xbc, zxbcdt, dt_bias, a, d, slot_mapping, state_slots,   \
                           num_state_slots, query_start, context_lens, head_dim, state, groups, \
                           heads, width, slot_values, dt_min, dt_max);                          \
    }                                                                                           \
    extern "C" __global__ void mamba_gated_norm_##S(                                            \
        D::T* out, const float* y, const D::T* zxbcdt, const D::T* weight,                      \
        const int* slot_mapping, int width, int inner, int group, float eps) {                  \
        mamba_gated_norm_impl<D>(out, y, zxbcdt, weight, slot_mapping, width, inner, group,     \
                                 eps);                                                          \
    }                                                                                           \
    extern "C" __global__ void mamba_gate_##S(D::T* out, const float* y, const D::T* zxbcdt,    \
                                              const int* slot_mapping, int width, int inner) {  \
        mamba_gate_impl<D>(out, y, zxbcdt, slot_mapping, width, inner);                         \
    }
KILN_FOR_EACH_DTYPE(KILN_MAMBA)
