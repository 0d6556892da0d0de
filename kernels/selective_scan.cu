// Mamba-1's selective scan (MambaForCausalLM, FalconMambaForCausalLM) over the sequences'
// state slots (src/backend/selective_scan.rs has the math). The causal convolution before
// it is mamba.cu's; a slot holds, in f32, the state [inner, state] and then the window.
//
// selective_scan: grid (num_seqs, ceil(inner / blockDim.x)), a thread per (sequence,
//   channel) keeping the channel's state (at most SCAN_MAX_STATE values) in registers,
//   token by token: dt = softplus(dt_raw) rounded; h = exp(A dt) h + dt B x (f32);
//   y = sum h (rounded) C, rounded; y + D x (rounded), rounded; times silu(z) (rounded),
//   rounded: each rounding transformers' eager scan makes in the model dtype. The state
//   after the step's last token is stored back. A sequence without a slot (padding) is
//   skipped; the op zeroes the output first, so its rows, and rows no sequence covers,
//   read zeros.

#define SCAN_MAX_STATE 32

template <typename D>
__device__ __forceinline__ void selective_scan_impl(
    typename D::T* out, float* states, const typename D::T* x, const typename D::T* dt,
    const typename D::T* b, const typename D::T* c, const typename D::T* xz, const float* a,
    const float* d, const int* slot_mapping, const int* state_slots, int num_state_slots,
    const int* query_start, const int* context_lens, int inner, int state,
    long long slot_values) {
    const int seq = blockIdx.x;
    const int ch = blockIdx.y * blockDim.x + threadIdx.x;
    if (ch >= inner) return;
    const KilnSlotStep st = kiln_slot_step(seq, states, slot_mapping, state_slots,
                                           num_state_slots, query_start, context_lens,
                                           slot_values);
    if (st.slot == nullptr) return;
    float* hs = st.slot + (long long)ch * state;
    float h[SCAN_MAX_STATE];
#pragma unroll
    for (int s = 0; s < SCAN_MAX_STATE; ++s) h[s] = (s < state && st.first > 0) ? hs[s] : 0.0f;
    const float d_c = d[ch];
    for (int t = st.start; t < st.end; ++t) {
        const long long row = (long long)t * inner + ch;
        const float step = D::load(D::store(kiln_softplus(D::load(dt[row]))));
        const float xv = D::load(x[row]);
        const typename D::T* b_row = b + (long long)t * state;
        const typename D::T* c_row = c + (long long)t * state;
        float y = 0.0f;
#pragma unroll
        for (int s = 0; s < SCAN_MAX_STATE; ++s) {
            if (s < state) {
                h[s] = expf(a[(long long)ch * state + s] * step) * h[s] +
                       step * D::load(b_row[s]) * xv;
                y += D::load(D::store(h[s])) * D::load(c_row[s]);
            }
        }
        const float skip = D::load(D::store(xv * d_c));
        const float sum = D::load(D::store(D::load(D::store(y)) + skip));
        const float z = D::load(xz[(long long)t * 2 * inner + inner + ch]);
        out[row] = D::store(sum * D::load(D::store(kiln_silu(z))));
    }
#pragma unroll
    for (int s = 0; s < SCAN_MAX_STATE; ++s) {
        if (s < state) hs[s] = h[s];
    }
}

#define KILN_SELECTIVE_SCAN(S, D)                                                             \
    extern "C" __global__ void selective_scan_##S(                                            \
        D::T* out, float* states, const D::T* x, const D::T* dt, const D::T* b, const D::T* c, \
        const D::T* xz, const float* a, const float* d, const int* slot_mapping,             \
        const int* state_slots, int num_state_slots, const int* query_start,                 \
        const int* context_lens, int inner, int state, long long slot_values) {              \
        selective_scan_impl<D>(out, states, x, dt, b, c, xz, a, d, slot_mapping, state_slots, \
                               num_state_slots, query_start, context_lens, inner, state,     \
                               slot_values);                                                 \
    }
KILN_FOR_EACH_DTYPE(KILN_SELECTIVE_SCAN)
