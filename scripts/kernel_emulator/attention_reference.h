// Host side of the attention checks: random paged batches (chunked prefill and decode) and
// the double-precision attention they are compared with. Shared by
// attention_decode_check.cpp and attention_prefill_check.cpp.
//
// A case type C has the fields `seqs` ((context after this step, new tokens) per
// sequence), `hq`, `hk`, `hd`, `window` (0 = none), `softcap` (0 = none), `sinks` (false:
// none; true: gpt-oss's per-head sink logits, drawn into the batch), `alibi` (false: none;
// true: the standard ALiBi slopes, put into the batch) and `dtype`.
#pragma once

#include "emu_tensor.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace kiln_attention_ref {

using kiln_emu_tensor::DType;

struct Batch {
    int block_size = 16, max_blocks = 1, num_blocks = 0, tokens = 0;
    std::vector<int> block_tables, query_start, context_lens;
    std::vector<float> q, k_cache, v_cache;  // already rounded to the dtype
    std::vector<float> sinks;                // [hq] f32, or empty: no sinks
    std::vector<float> alibi;                // [hq] f32, or empty: no ALiBi
};

// The standard ALiBi slopes of hq heads, 2^(-8 (h + 1) / hq): from nearly 1 (a head that
// sees the last few keys) to 1/256 (one that sees hundreds). Not drawn from the generator,
// so a case with them keeps the values of the same case without.
inline std::vector<float> alibi_slopes(int hq) {
    std::vector<float> slopes(hq);
    for (int h = 0; h < hq; ++h) slopes[h] = std::exp2(-8.0f * (h + 1) / hq);
    return slopes;
}

using kiln_emu_tensor::random_values;

// Sequences in a paged cache of 16-token blocks, handed out in shuffled order (with three
// spare blocks), q of every new token, K/V of every cached position.
template <typename C>
Batch make_batch(const C& c, std::mt19937& rng) {
    Batch b;
    const int bs = b.block_size;
    std::vector<int> blocks_per_seq;
    for (auto [ctx, q_len] : c.seqs) blocks_per_seq.push_back((ctx + bs - 1) / bs);
    b.max_blocks = std::max(1, *std::max_element(blocks_per_seq.begin(), blocks_per_seq.end()));
    b.num_blocks = std::accumulate(blocks_per_seq.begin(), blocks_per_seq.end(), 0) + 3;
    std::vector<int> pool(b.num_blocks);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    const int seqs = static_cast<int>(c.seqs.size());
    b.block_tables.assign(seqs * b.max_blocks, 0);
    int next = 0;
    for (int s = 0; s < seqs; ++s) {
        for (int i = 0; i < blocks_per_seq[s]; ++i) b.block_tables[s * b.max_blocks + i] = pool[next++];
    }
    b.query_start.push_back(0);
    for (auto [ctx, q_len] : c.seqs) {
        b.query_start.push_back(b.query_start.back() + q_len);
        b.context_lens.push_back(ctx);
    }
    b.tokens = b.query_start.back();
    const size_t cache = static_cast<size_t>(b.num_blocks) * bs * c.hk * c.hd;
    b.k_cache = random_values(cache, 1.0f, c.dtype, rng);
    b.v_cache = random_values(cache, 1.0f, c.dtype, rng);
    b.q = random_values(static_cast<size_t>(b.tokens) * c.hq * c.hd, 2.0f, c.dtype, rng);
    // Sinks of the scores' own size, so each takes a real share of its softmax.
    if (c.sinks) b.sinks = random_values(c.hq, 3.0f, DType::F32, rng);
    if (c.alibi) b.alibi = alibi_slopes(c.hq);
    return b;
}

// One query row against the key rows `k[i]`, `v[i]` (hd values each): writes softmax(scale
// q k^T) v to `out` (each scaled score s soft-capped to softcap tanh(s / softcap) first when
// softcap > 0: Gemma 2) and, if `magnitude` is given, sum_i p_i |v_i| (what a relative error
// in the probabilities scales with) to it. A `sink` (gpt-oss) is one more logit in the
// softmax, whose value is dropped. An ALiBi `slope` takes the keys for the query's last
// positions in order, the last its own: key j of n gains slope * (j + 1 - n) after the cap.
inline void attend(const float* q, double scale, const std::vector<const float*>& k,
                   const std::vector<const float*>& v, int hd, double* out,
                   double* magnitude, double softcap = 0.0, const float* sink = nullptr,
                   double slope = 0.0) {
    const size_t n = k.size();
    std::vector<double> scores(n);
    for (size_t j = 0; j < n; ++j) {
        double dot = 0.0;
        for (int d = 0; d < hd; ++d) dot += static_cast<double>(q[d]) * scale * k[j][d];
        const double capped = softcap > 0.0 ? softcap * std::tanh(dot / softcap) : dot;
        scores[j] = capped + slope * (static_cast<double>(j) + 1.0 - static_cast<double>(n));
    }
    double m = *std::max_element(scores.begin(), scores.end());
    if (sink != nullptr) m = std::max(m, static_cast<double>(*sink));
    double sum = sink != nullptr ? std::exp(*sink - m) : 0.0;
    for (double& s : scores) sum += (s = std::exp(s - m));
    for (int d = 0; d < hd; ++d) {
        out[d] = 0.0;
        if (magnitude != nullptr) magnitude[d] = 0.0;
    }
    for (size_t j = 0; j < k.size(); ++j) {
        const double p = scores[j] / sum;
        for (int d = 0; d < hd; ++d) {
            out[d] += p * v[j][d];
            if (magnitude != nullptr) magnitude[d] += p * std::fabs(v[j][d]);
        }
    }
}

// Paged causal attention of every token of `b` (with the sliding window and the batch's
// per-head terms), [tokens, hq, hd].
template <typename C>
std::vector<double> reference(const C& c, const Batch& b, float scale,
                              std::vector<double>* magnitude = nullptr) {
    const int hq = c.hq, hk = c.hk, hd = c.hd, bs = b.block_size;
    const size_t n = static_cast<size_t>(b.tokens) * hq * hd;
    std::vector<double> out(n, 0.0);
    if (magnitude != nullptr) magnitude->assign(n, 0.0);
    for (int token = 0; token < b.tokens; ++token) {
        int seq = 0;
        while (seq + 1 < static_cast<int>(c.seqs.size()) && b.query_start[seq + 1] <= token) ++seq;
        const int q_len = b.query_start[seq + 1] - b.query_start[seq];
        const int pos = b.context_lens[seq] - q_len + (token - b.query_start[seq]);
        // A sliding window of c.window > 0 keys, or (c.window < 0, Llama 4) the query's own
        // chunk of -c.window positions.
        const int first = c.window > 0   ? (pos >= c.window ? pos + 1 - c.window : 0)
                          : c.window < 0 ? (pos / -c.window) * -c.window
                                         : 0;
        for (int head = 0; head < hq; ++head) {
            const int kv_head = head / (hq / hk);
            std::vector<const float*> k, v;
            for (int p = first; p <= pos; ++p) {
                const int block = b.block_tables[seq * b.max_blocks + p / bs];
                const size_t row = ((static_cast<size_t>(block) * bs + p % bs) * hk + kv_head) * hd;
                k.push_back(&b.k_cache[row]);
                v.push_back(&b.v_cache[row]);
            }
            const size_t at = (static_cast<size_t>(token) * hq + head) * hd;
            attend(&b.q[at], scale, k, v, hd, &out[at],
                   magnitude != nullptr ? &(*magnitude)[at] : nullptr, c.softcap,
                   b.sinks.empty() ? nullptr : &b.sinks[head],
                   b.alibi.empty() ? 0.0 : b.alibi[head]);
        }
    }
    return out;
}

}  // namespace kiln_attention_ref
