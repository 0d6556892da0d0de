// Paged causal attention for prefill, chunked prefill and decode in one kernel: the generic
// fallback. The host (src/backend/cuda/attention_plan.rs) runs attention_decode.cu (split-K,
// GQA groups per CTA) or attention_prefill.cu (tensor-core tiles) where they apply (head
// dims 64/80/96/128/256, 16-byte aligned caches) and this kernel for everything else.
//
// The new tokens of all sequences are concatenated in q [n, hq, hd] (rows may be strided).
// Sequence s owns rows query_start[s] .. query_start[s+1]; its token j sits at position
// context_lens[s] - q_len + j and attends to cache positions 0..=that position (its own K/V
// were written to the cache before this kernel runs). GQA: q head h reads kv head
// h / (hq / hk). The cache is [num_blocks, block_size, hk, hd], addressed through
// block_tables[s, position / block_size].
//
// Sliding window (Mistral): with sliding_window = w > 0, the token at position pos attends
// only to positions pos + 1 - w ..= pos (when pos >= w; otherwise to 0..=pos), the last w
// keys. sliding_window = -c < 0 (Llama 4's chunked layers) keeps it inside its chunk of c
// positions: (pos / c) * c ..= pos (kiln_first_key). sliding_window = 0 means no window. softcap > 0 (Gemma 2) caps each scaled score s
// at softcap * tanh(s / softcap) before the softmax; 0 leaves it. sinks (gpt-oss, f32
// [hq], or null): head h's softmax has one more logit sinks[h] with no value. alibi (f32
// [hq], or null): head h's score for the key at position p gains alibi[h] * (p - pos),
// after the scale and the cap; relative to pos (not alibi[h] * p, as models write it) so
// the term stays small at long positions, and a softmax row does not see the difference.
//
// One block of ATTN_WARPS warps per (token, q head). Each warp walks every ATTN_WARPS-th key
// with an online softmax (running max m, running sum l, f32 accumulator); lane L owns the
// head-dim elements L, L + 32, ... so key/value loads are coalesced. The warps' partial
// results are merged through shared memory at the end.

#define ATTN_WARPS 4
#define ATTN_MAX_HEAD_DIM 256
#define ATTN_MAX_PER_LANE (ATTN_MAX_HEAD_DIM / 32)

template <typename D>
__device__ __forceinline__ void attention_impl(
    typename D::T* out, const typename D::T* q, const typename D::T* k_cache,
    const typename D::T* v_cache, const int* block_tables, const int* query_start,
    const int* context_lens, int num_seqs, int max_blocks_per_seq, int block_size, int hq,
    int hk, int hd, int q_stride, int sliding_window, float scale, float softcap,
    const float* sinks, const float* alibi) {
    __shared__ float part_max[ATTN_WARPS];
    __shared__ float part_sum[ATTN_WARPS];
    __shared__ float part_acc[ATTN_WARPS][ATTN_MAX_HEAD_DIM];

    const int token = blockIdx.x;
    const int head = blockIdx.y;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;

    const int seq = kiln_find_sequence(query_start, num_seqs, token);
    const int q_len = query_start[seq + 1] - query_start[seq];
    const int pos = context_lens[seq] - q_len + (token - query_start[seq]);
    const int last_key = min(pos, max_blocks_per_seq * block_size - 1);
    const int first_key = kiln_first_key(pos, sliding_window);
    const int kv_head = head / (hq / hk);
    const int* table = block_tables + (long long)seq * max_blocks_per_seq;
    const long long kv_row = (long long)hk * hd;
    const float slope = alibi != nullptr ? alibi[head] : 0.0f;  // 0: no ALiBi term

    float q_reg[ATTN_MAX_PER_LANE];
    float acc[ATTN_MAX_PER_LANE];
    const typename D::T* q_head = q + (long long)token * q_stride + (long long)head * hd;
#pragma unroll
    for (int e = 0; e < ATTN_MAX_PER_LANE; ++e) {
        const int d = e * 32 + lane;
        q_reg[e] = d < hd ? D::load(q_head[d]) * scale : 0.0f;
        acc[e] = 0.0f;
    }

    float run_max = KILN_NEG_INF;
    float run_sum = 0.0f;
    for (int p = first_key + warp; p <= last_key; p += ATTN_WARPS) {
        const long long block = table[p / block_size];
        const long long base = (block * block_size + p % block_size) * kv_row + (long long)kv_head * hd;
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < ATTN_MAX_PER_LANE; ++e) {
            const int d = e * 32 + lane;
            if (d < hd) dot += q_reg[e] * D::load(k_cache[base + d]);
        }
        const float score =
            kiln_softcap(kiln_warp_sum(dot), softcap) + slope * (float)(p - pos);
        const float new_max = fmaxf(run_max, score);
        const float rescale = expf(run_max - new_max);  // 0 on the first key (run_max = -inf)
        const float weight = expf(score - new_max);
        run_sum = run_sum * rescale + weight;
#pragma unroll
        for (int e = 0; e < ATTN_MAX_PER_LANE; ++e) {
            const int d = e * 32 + lane;
            if (d < hd) acc[e] = acc[e] * rescale + weight * D::load(v_cache[base + d]);
        }
        run_max = new_max;
    }

    if (lane == 0) {
        part_max[warp] = run_max;
        part_sum[warp] = run_sum;
    }
#pragma unroll
    for (int e = 0; e < ATTN_MAX_PER_LANE; ++e) {
        const int d = e * 32 + lane;
        if (d < hd) part_acc[warp][d] = acc[e];
    }
    __syncthreads();

    float global_max = KILN_NEG_INF;
    for (int w = 0; w < ATTN_WARPS; ++w) global_max = fmaxf(global_max, part_max[w]);
    const int has_sink = sinks != nullptr;
    const float sink = has_sink ? sinks[head] : 0.0f;
    typename D::T* out_head = out + ((long long)token * hq + head) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float numerator = 0.0f;
        float denominator = 0.0f;
        for (int w = 0; w < ATTN_WARPS; ++w) {
            // A warp that saw no key has max -inf and contributes nothing.
            const float f = part_max[w] == KILN_NEG_INF ? 0.0f : expf(part_max[w] - global_max);
            numerator += f * part_acc[w][d];
            denominator += f * part_sum[w];
        }
        const float norm = kiln_softmax_norm(global_max, denominator, has_sink, sink, KilnExpE());
        out_head[d] = D::store(numerator * norm);
    }
}

#define KILN_ATTENTION(S, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_##S(               \
        D::T* out, const D::T* q, const D::T* k_cache, const D::T* v_cache,                    \
        const int* block_tables, const int* query_start, const int* context_lens,              \
        int num_seqs, int max_blocks_per_seq, int block_size, int hq, int hk, int hd,          \
        int q_stride, int sliding_window, float scale, float softcap, const float* sinks,      \
        const float* alibi) {                                                                  \
        attention_impl<D>(out, q, k_cache, v_cache, block_tables, query_start, context_lens,   \
                          num_seqs, max_blocks_per_seq, block_size, hq, hk, hd, q_stride,      \
                          sliding_window, scale, softcap, sinks, alibi);                       \
    }
KILN_FOR_EACH_DTYPE(KILN_ATTENTION)
