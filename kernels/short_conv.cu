// LFM2's gated short convolution over a paged cache of per-token rows. A convolution
// layer's cache is [num_blocks, block_size, width]: slot (= block * block_size + offset)
// holds the row of the token at that position, written by short_conv_write, so a later step
// (decode, the next prefill chunk) finds its sequence's earlier rows through the block
// table, as attention finds keys. Prefix caching and chunked prefill need nothing more.
//
// The input bcx [n, 3 * width] holds each token's gates B and C and its input x.
// short_conv_write: one block per token: row B * x (rounded to the dtype) into
//   slot_mapping[t] (slot < 0 is padding, slots past the cache are bad input: both store
//   nothing).
// short_conv: grid (tokens, ceil(width / blockDim.x)), a thread per (token, channel):
//   conv = sum_j weight[c, j] * row(pos - (taps - 1) + j)[c] (positions before 0 add
//   nothing), rounded to the dtype; out[t, c] = C[t, c] * conv, rounded. Token t of sequence
//   s sits at position context_lens[s] - q_len + (t - query_start[s]), as in attention.cu;
//   padding tokens (slot < 0) get zeros. It runs after short_conv_write on the same stream,
//   so a token reads the rows of the tokens before it in the same step.

// The causal depthwise convolution of channel c for flattened row `token` over a paged cache
// of per-token rows ([num_blocks, block_size, width]): sum_j weight[c, j] *
// row(pos - (taps - 1) + j)[c], positions before 0 adding nothing, in f32. Token t of
// sequence s sits at position context_lens[s] - q_len + (t - query_start[s]).
template <typename D>
__device__ __forceinline__ float kiln_paged_causal_conv(
    const typename D::T* cache, const typename D::T* weight, const int* block_tables,
    const int* query_start, const int* context_lens, int num_seqs, int max_blocks_per_seq,
    int block_size, int width, int taps, int token, int c) {
    const int seq = kiln_find_sequence(query_start, num_seqs, token);
    const int q_len = query_start[seq + 1] - query_start[seq];
    const int pos = context_lens[seq] - q_len + (token - query_start[seq]);
    const int* table = block_tables + (long long)seq * max_blocks_per_seq;
    float acc = 0.0f;
    for (int j = 0; j < taps; ++j) {
        const int p = pos - (taps - 1) + j;
        if (p < 0 || p / block_size >= max_blocks_per_seq) continue;
        const long long slot = (long long)table[p / block_size] * block_size + p % block_size;
        acc += D::load(weight[c * taps + j]) * D::load(cache[slot * width + c]);
    }
    return acc;
}

template <typename D>
__device__ __forceinline__ void short_conv_write_impl(typename D::T* cache,
                                                      const typename D::T* bcx,
                                                      const int* slot_mapping, int width,
                                                      long long num_slots) {
    const long long token = blockIdx.x;
    const long long slot = slot_mapping[token];
    if (slot < 0 || slot >= num_slots) return;
    const typename D::T* row = bcx + token * 3 * width;
    typename D::T* dst = cache + slot * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        dst[j] = D::store(D::load(row[j]) * D::load(row[2 * width + j]));
    }
}

template <typename D>
__device__ __forceinline__ void short_conv_impl(
    typename D::T* out, const typename D::T* cache, const typename D::T* bcx,
    const typename D::T* weight, const int* slot_mapping, const int* block_tables,
    const int* query_start, const int* context_lens, int num_seqs, int max_blocks_per_seq,
    int block_size, int width, int taps) {
    const int token = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= width) return;
    typename D::T* dst = out + (long long)token * width + c;
    if (slot_mapping[token] < 0) {
        *dst = D::store(0.0f);
        return;
    }
    const float acc =
        kiln_paged_causal_conv<D>(cache, weight, block_tables, query_start, context_lens,
                                  num_seqs, max_blocks_per_seq, block_size, width, taps, token, c);
    const float conv = D::load(D::store(acc));
    const float gate = D::load(bcx[(long long)token * 3 * width + width + c]);
    *dst = D::store(gate * conv);
}

#define KILN_SHORT_CONV(S, D)                                                                \
    extern "C" __global__ void short_conv_write_##S(D::T* cache, const D::T* bcx,           \
                                                    const int* slot_mapping, int width,      \
                                                    long long num_slots) {                   \
        short_conv_write_impl<D>(cache, bcx, slot_mapping, width, num_slots);                \
    }                                                                                        \
    extern "C" __global__ void short_conv_##S(                                               \
        D::T* out, const D::T* cache, const D::T* bcx, const D::T* weight,                   \
        const int* slot_mapping, const int* block_tables, const int* query_start,            \
        const int* context_lens, int num_seqs, int max_blocks_per_seq, int block_size,       \
        int width, int taps) {                                                               \
        short_conv_impl<D>(out, cache, bcx, weight, slot_mapping, block_tables, query_start, \
                           context_lens, num_seqs, max_blocks_per_seq, block_size, width,    \
                           taps);                                                            \
    }
KILN_FOR_EACH_DTYPE(KILN_SHORT_CONV)
