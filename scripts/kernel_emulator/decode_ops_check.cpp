// Runs the decode step's small ops (kernels/norm.cu, rope.cu with the fused qkv_rope_cache, the
// argmax of sampling.cu, DeepSeek's key assembly join_heads of elementwise.cu, and LFM2's
// gated short convolution of short_conv.cu over a paged cache of rows)
// on the CPU through cuda_emu.h, with the launch shapes of src/backend/cuda/ops.rs and
// ops_sampling.rs, against double-precision references: norms of rows wider than the
// registers hold (the strided tail), rope over (token, head) blocks with q and k inside a
// wider fused row, argmax over odd vocabularies (rows starting off a 16-byte boundary),
// ties, NaN and all -inf rows.
//
//   decode_ops_check      exit status 1 if any case is off
#include "cuda_emu.h"
inline unsigned __shfl_xor_sync(unsigned mask, unsigned v, int lane_mask, int width = 32) {
    return kiln_emu::shfl_xor(mask, v, lane_mask, width);
}
// clang-format off
#include "common.cuh"
#include "elementwise.cu"
#include "embedding.cu"
#include "norm.cu"
#include "rope.cu"
#include "sampling.cu"
#include "short_conv.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "emu_tensor.h"

namespace {

using kiln_emu::Order;
using kiln_emu_tensor::Buffer;
using kiln_emu_tensor::DType;
using kiln_emu_tensor::dtype_name;
using kiln_emu_tensor::round_to;

std::mt19937 rng(5);
int failures = 0;

std::vector<float> random(DType d, size_t n, float range) {
    return kiln_emu_tensor::random_values(n, range, d, rng);
}

// Max abs error relative to max |ref| against the selftest's tolerances.
void report(const std::string& name, DType d, const std::vector<float>& got,
            const std::vector<double>& want, double rel) {
    failures += kiln_emu_tensor::report_relative(name, d, got, want, rel) ? 0 : 1;
}

double reduction_tol(DType d) { return d == DType::F32 ? 2e-5 : (d == DType::F16 ? 0x1p-9 : 0x1p-6); }
double elementwise_tol(DType d) { return d == DType::F32 ? 1e-5 : (d == DType::F16 ? 0x1p-10 : 0x1p-7); }

// launch::row_threads
unsigned row_threads(int d) {
    unsigned p = 1;
    while (p < static_cast<unsigned>((d + 3) / 4)) p <<= 1;
    return std::min(1024u, std::max(32u, p));
}

using NormFn = void (*)(void*, const void*, const void*, float, int);

void check_norm(DType d, int rows, int width, unsigned threads, bool fused, Order order) {
    const std::vector<float> x = random(d, static_cast<size_t>(rows) * width, 2.0f);
    const std::vector<float> r = random(d, x.size(), 2.0f);
    const std::vector<float> w = random(d, width, 1.5f);
    const float eps = 1e-5f;
    Buffer xb(d, x), rb(d, r), wb(d, w), y = Buffer::unwritten(d, x.size());
    if (fused) {
        auto k = KILN_PICK(NormFn, fused_add_rms_norm, d);
        kiln_emu::launch({static_cast<unsigned>(rows), 1, 1}, {threads, 1, 1}, order, 2,
                         [&] { k(xb.data(), rb.data(), wb.data(), eps, width); });
    } else {
        auto k = KILN_PICK(NormFn, rms_norm, d);
        kiln_emu::launch({static_cast<unsigned>(rows), 1, 1}, {threads, 1, 1}, order, 2,
                         [&] { k(y.data(), xb.data(), wb.data(), eps, width); });
    }
    std::vector<double> want(x.size()), want_res(x.size());
    for (int i = 0; i < rows; ++i) {
        double ss = 0.0;
        for (int j = 0; j < width; ++j) {
            const size_t at = static_cast<size_t>(i) * width + j;
            const double v = fused ? round_to(d, x[at] + r[at]) : x[at];
            want_res[at] = v;
            ss += v * v;
        }
        const double inv = 1.0 / std::sqrt(ss / width + eps);
        for (int j = 0; j < width; ++j) {
            const size_t at = static_cast<size_t>(i) * width + j;
            want[at] = want_res[at] * inv * w[j];
        }
    }
    char name[128];
    std::snprintf(name, sizeof name, "%s [%d, %d], %u threads", fused ? "fused_add_rms_norm" : "rms_norm",
                  rows, width, threads);
    report(name, d, fused ? xb.values() : y.values(), want, reduction_tol(d));
    if (fused) report(std::string(name) + " (residual)", d, rb.values(), want_res, 0.0);
}

using RopeFn = void (*)(void*, void*, const int*, const float*, int, int, int, int, int, int, int,
                        float, float, float);

// Llama 4's layers without rotary: an all-zero frequency table, and each query times its
// temperature log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1 (floor_scale 0: none).
struct Temperature {
    float floor_scale = 0.0f, attn_scale = 0.0f;
    bool on() const { return floor_scale > 0.0f; }
    float factor(int pos) const {
        return on() ? std::log1p(std::floor((pos + 1.0f) / floor_scale)) * attn_scale + 1.0f : 1.0f;
    }
};
const Temperature kLlama4Temperature{8192.0f, 0.1f};

// q and k live in one fused row [q | k | v] of width (hq + 2 hk) * hd, as after the QKV GEMM.
// rot < hd: partial rotary (GLM-4), only the first rot values of each head rotate. scale:
// YaRN's / LongRoPE's attention factor on cos and sin (the pass-through values keep theirs).
// temp: Llama 4's query temperature, with its all-zero table.
void check_rope(DType d, int n, int hq, int hk, int hd, bool neox, Order order, int rot = 0,
                float scale = 1.0f, Temperature temp = {}) {
    if (rot == 0) rot = hd;
    const int row = (hq + 2 * hk) * hd;
    const std::vector<float> qkv = random(d, static_cast<size_t>(n) * row, 1.0f);
    std::vector<int> pos(n);
    for (int& p : pos) p = static_cast<int>(rng() % (temp.on() ? 40000 : 8192));
    std::vector<float> inv(rot / 2);
    for (int i = 0; i < rot / 2; ++i)
        inv[i] = temp.on() ? 0.0f : 1.0f / std::pow(500000.0f, 2.0f * i / rot);
    Buffer b(d, qkv);
    auto k = KILN_PICK(RopeFn, rope, d);
    const size_t elt = d == DType::F32 ? 4 : 2;
    char* base = static_cast<char*>(b.data());
    unsigned threads = 32;
    while (threads < static_cast<unsigned>(hd / 2)) threads <<= 1;
    kiln_emu::launch({static_cast<unsigned>(n), static_cast<unsigned>(hq + hk), 1}, {threads, 1, 1},
                     order, 4, [&] {
                         k(base, base + hq * hd * elt, pos.data(), inv.data(), hq, hk, hd, rot,
                           row, row, neox ? 1 : 0, scale, temp.floor_scale, temp.attn_scale);
                     });
    std::vector<double> want(qkv.begin(), qkv.end());
    for (int t = 0; t < n; ++t) {
        for (int h = 0; h < hq + hk; ++h) {
            const size_t head = static_cast<size_t>(t) * row + static_cast<size_t>(h) * hd;
            for (int i = 0; i < rot / 2; ++i) {
                const float angle = static_cast<float>(pos[t]) * inv[i];
                const double c = std::cos(angle) * scale, s = std::sin(angle) * scale;
                const size_t a = head + (neox ? i : 2 * i), bb = head + (neox ? i + rot / 2 : 2 * i + 1);
                want[a] = qkv[a] * c - qkv[bb] * s;
                want[bb] = qkv[bb] * c + qkv[a] * s;
            }
            // Queries only: the whole head, rotated and passed-through values alike.
            if (h < hq) {
                for (int j = 0; j < hd; ++j) want[head + j] *= temp.factor(pos[t]);
            }
        }
    }
    char name[160];
    std::snprintf(name, sizeof name, "rope(%s) n=%d q %dx%d k %d rot %d scale %g%s, in a fused row",
                  neox ? "neox" : "interleaved", n, hq, hd, hk, rot, scale,
                  temp.on() ? ", no rotary, query temperature" : "");
    report(name, d, b.values(), want, elementwise_tol(d));
}

using JoinHeadsFn = void (*)(void*, const void*, const void*, long long, int, int, int);

// DeepSeek's keys: per row and head, the shared rope part then the head's own part, with the
// grid-stride launch of launch::elementwise (256 threads, blocks capped): every element
// written once, none left NaN.
void check_join_heads(DType d, int n, int heads, int shared_width, int own_width, Order order,
                      unsigned max_blocks = 65536) {
    const std::vector<float> shared = random(d, static_cast<size_t>(n) * shared_width, 2.0f);
    const std::vector<float> own = random(d, static_cast<size_t>(n) * heads * own_width, 2.0f);
    const long long total = static_cast<long long>(n) * heads * (shared_width + own_width);
    Buffer sb(d, shared), ob(d, own);
    Buffer out = Buffer::unwritten(d, static_cast<size_t>(total));
    auto k = KILN_PICK(JoinHeadsFn, join_heads, d);
    const unsigned blocks =
        std::min(max_blocks, std::max(1u, static_cast<unsigned>((total + 255) / 256)));
    kiln_emu::launch({blocks, 1, 1}, {256, 1, 1}, order, 1, [&] {
        k(out.data(), sb.data(), ob.data(), total, heads, shared_width, own_width);
    });
    std::vector<double> want;
    for (int r = 0; r < n; ++r) {
        for (int h = 0; h < heads; ++h) {
            for (int i = 0; i < shared_width; ++i) want.push_back(shared[r * shared_width + i]);
            for (int i = 0; i < own_width; ++i)
                want.push_back(own[(static_cast<size_t>(r) * heads + h) * own_width + i]);
        }
    }
    char name[128];
    std::snprintf(name, sizeof name, "join_heads n=%d %d heads of %d + %d, %u blocks max", n,
                  heads, shared_width, own_width, max_blocks);
    report(name, d, out.values(), want, 0.0);
}

using AddPositionFn = void (*)(void*, const void*, const int*, int, int, int);

// GPT-2's / OPT's learned positions: x[i] += table[positions[i] + offset], the sum rounded
// once; a position past the table leaves its row alone.
void check_add_position_embedding(DType d, int n, int hidden, int offset, Order order) {
    const int rows = n + offset;
    const std::vector<float> x = random(d, static_cast<size_t>(n) * hidden, 3.0f);
    const std::vector<float> table = random(d, static_cast<size_t>(rows) * hidden, 3.0f);
    std::vector<int> positions(n);
    for (int i = 0; i < n; ++i) positions[i] = (i * 7) % rows;
    positions[n - 1] = rows;  // past the table
    Buffer xb(d, x), tb(d, table);
    auto k = KILN_PICK(AddPositionFn, add_position_embedding, d);
    const unsigned threads = static_cast<unsigned>(std::min(256, hidden));
    kiln_emu::launch({static_cast<unsigned>(n), 1, 1}, {threads, 1, 1}, order, 1, [&] {
        k(xb.data(), tb.data(), positions.data(), hidden, offset, rows);
    });
    std::vector<double> want;
    for (int i = 0; i < n; ++i) {
        const int at = positions[i] + offset;
        for (int j = 0; j < hidden; ++j) {
            const double v = x[static_cast<size_t>(i) * hidden + j];
            want.push_back(at < rows ? round_to(d, v + table[static_cast<size_t>(at) * hidden + j])
                                     : v);
        }
    }
    char name[128];
    std::snprintf(name, sizeof name, "add_position_embedding n=%d hidden=%d offset=%d", n,
                  hidden, offset);
    report(name, d, xb.values(), want, 0.0);
}

using QkvRopeCacheFn = void (*)(void*, void*, void*, const void*, const int*, const float*,
                               const int*, int, int, int, int, int, long long, const void*,
                               const void*, float, int, float, float, float);

// The fused entry step (qkv_rope_cache) against the unfused path it replaces, run in the
// emulator too: rope in place on the fused rows, then the rotated k and the v copied to
// their slots. The two must agree exactly (the same float operations), slot -1 (padding)
// and a slot past the cache must store nothing, and every other cache entry must keep its
// old value. With `norm_mode` 1 (Qwen3's per-head q/k RMS norms) the reference rotates heads
// normalised on the host in double and rounded to the dtype; with 2 (HunYuan's, after the
// rotation) it normalises the rotated heads the same way. The kernel's f32 sum of squares
// may round a value the other way, so those cases compare within the elementwise tolerance
// instead of exactly.
void norm_heads(DType d, std::vector<float>& rows, int n, int row, int hq, int hk, int hd,
                const std::vector<float>& q_norm, const std::vector<float>& k_norm,
                float eps) {
    for (int t = 0; t < n; ++t) {
        for (int h = 0; h < hq + hk; ++h) {
            float* head = rows.data() + static_cast<size_t>(t) * row + static_cast<size_t>(h) * hd;
            const std::vector<float>& w = h < hq ? q_norm : k_norm;
            double ss = 0.0;
            for (int j = 0; j < hd; ++j) ss += static_cast<double>(head[j]) * head[j];
            const double inv_rms = 1.0 / std::sqrt(ss / hd + eps);
            for (int j = 0; j < hd; ++j) head[j] = round_to(d, static_cast<float>(head[j] * inv_rms * w[j]));
        }
    }
}

void check_qkv_rope_cache(DType d, int n, int hq, int hk, int hd, bool neox, Order order,
                          int norm_mode = 0, int rot = 0, float scale = 1.0f,
                          Temperature temp = {}) {
    const bool norm = norm_mode != 0;
    if (rot == 0) rot = hd;
    const int row = (hq + 2 * hk) * hd, kv = hk * hd;
    const int num_slots = 4 * n + 3;
    const std::vector<float> qkv = random(d, static_cast<size_t>(n) * row, 1.0f);
    // 8 slots more than the kernel is told of: a write past num_slots lands there and fails.
    const std::vector<float> old_cache = random(d, static_cast<size_t>(num_slots + 8) * kv, 1.0f);
    std::vector<int> pos(n), slots(n);
    for (int& p : pos) p = static_cast<int>(rng() % (temp.on() ? 40000 : 8192));
    std::vector<int> free_slots(num_slots);
    for (int i = 0; i < num_slots; ++i) free_slots[i] = i;
    std::shuffle(free_slots.begin(), free_slots.end(), rng);
    for (int t = 0; t < n; ++t) slots[t] = free_slots[t];
    if (n > 1) slots[1] = -1;             // a padding token of a recorded decode step
    if (n > 2) slots[2] = num_slots + 7;  // bad input: past the cache
    std::vector<float> inv(rot / 2);
    for (int i = 0; i < rot / 2; ++i)
        inv[i] = temp.on() ? 0.0f : 1.0f / std::pow(500000.0f, 2.0f * i / rot);
    unsigned threads = 32;
    while (threads < static_cast<unsigned>(hd / 2)) threads <<= 1;

    const std::vector<float> q_norm = random(d, hd, 1.5f), k_norm = random(d, hd, 1.5f);
    const float eps = 1e-6f;
    Buffer in(d, qkv), q = Buffer::unwritten(d, static_cast<size_t>(n) * hq * hd);
    Buffer kc(d, old_cache), vc(d, old_cache), qn(d, q_norm), kn(d, k_norm);
    auto fused = KILN_PICK(QkvRopeCacheFn, qkv_rope_cache, d);
    kiln_emu::launch({static_cast<unsigned>(n), static_cast<unsigned>(hq + hk), 1}, {threads, 1, 1},
                     order, 4, [&] {
                         fused(q.data(), kc.data(), vc.data(), in.data(), pos.data(), inv.data(),
                               slots.data(), hq, hk, hd, rot, neox ? 1 : 0, num_slots, qn.data(),
                               kn.data(), eps, norm_mode, scale, temp.floor_scale,
                               temp.attn_scale);
                     });

    // The unfused path: (the norms,) rope in place on the fused rows, then the copies.
    std::vector<float> pre = qkv;
    if (norm_mode == 1) norm_heads(d, pre, n, row, hq, hk, hd, q_norm, k_norm, eps);
    Buffer rotated(d, pre);
    auto rope_k = KILN_PICK(RopeFn, rope, d);
    const size_t elt = d == DType::F32 ? 4 : 2;
    char* base = static_cast<char*>(rotated.data());
    kiln_emu::launch({static_cast<unsigned>(n), static_cast<unsigned>(hq + hk), 1}, {threads, 1, 1},
                     Order::Forward, 4, [&] {
                         rope_k(base, base + hq * hd * elt, pos.data(), inv.data(), hq, hk, hd, rot,
                                row, row, neox ? 1 : 0, scale, temp.floor_scale, temp.attn_scale);
                     });
    std::vector<float> r = rotated.values();
    if (norm_mode == 2) norm_heads(d, r, n, row, hq, hk, hd, q_norm, k_norm, eps);
    std::vector<double> want_q(static_cast<size_t>(n) * hq * hd);
    std::vector<double> want_k(old_cache.begin(), old_cache.end()), want_v = want_k;
    for (int t = 0; t < n; ++t) {
        const size_t src = static_cast<size_t>(t) * row;
        for (int j = 0; j < hq * hd; ++j) want_q[static_cast<size_t>(t) * hq * hd + j] = r[src + j];
        if (slots[t] < 0 || slots[t] >= num_slots) continue;
        for (int j = 0; j < kv; ++j) {
            want_k[static_cast<size_t>(slots[t]) * kv + j] = r[src + hq * hd + j];
            want_v[static_cast<size_t>(slots[t]) * kv + j] = r[src + hq * hd + kv + j];
        }
    }
    char name[128];
    std::snprintf(name, sizeof name, "qkv_rope_cache(%s%s) n=%d q %dx%d k %d rot %d scale %g",
                  neox ? "neox" : "interleaved",
                  norm_mode == 2 ? ", q/k norm after rope"
                                 : (norm ? ", q/k norm" : (temp.on() ? ", query temperature" : "")),
                  n, hq, hd, hk, rot, scale);
    const double tol = norm ? elementwise_tol(d) : 0.0;
    report(std::string(name) + " q", d, q.values(), want_q, tol);
    report(std::string(name) + " k cache", d, kc.values(), want_k, tol);
    report(std::string(name) + " v cache", d, vc.values(), want_v, 0.0);
}

using ArgmaxFn = void (*)(unsigned*, const void*, int);

void check_argmax(DType d, int rows, int vocab, Order order, bool specials) {
    std::vector<float> logits = random(d, static_cast<size_t>(rows) * vocab, 8.0f);
    if (specials) {
        // Row 0: a tie between two maxima (the lower index wins) and NaNs; row 1 (if any): all -inf.
        logits[vocab - 1] = 100.0f;
        logits[vocab / 2] = 100.0f;
        logits[0] = __builtin_nanf("");
        if (rows > 1) std::fill(logits.begin() + vocab, logits.begin() + 2 * vocab, -INFINITY);
    } else {
        // A unique maximum at the row's last, first or second element: the scalar tail and
        // head around the 16-byte vectors.
        for (int i = 0; i < rows; ++i) {
            const int at = i % 3 == 0 ? vocab - 1 : (i % 3 == 1 ? 0 : std::min(1, vocab - 1));
            logits[static_cast<size_t>(i) * vocab + at] = 50.0f;
        }
    }
    Buffer b(d, logits);
    std::vector<unsigned> out(rows, 0xdeadbeefu);
    auto k = KILN_PICK(ArgmaxFn, argmax, d);
    kiln_emu::launch({static_cast<unsigned>(rows), 1, 1}, {1024, 1, 1}, order, 6,
                     [&] { k(out.data(), b.data(), vocab); });
    int wrong = 0;
    for (int i = 0; i < rows; ++i) {
        float best = -INFINITY;
        unsigned best_i = 0xffffffffu;
        for (int j = 0; j < vocab; ++j) {
            const float v = b.at(static_cast<size_t>(i) * vocab + j);
            if (v > best) {
                best = v;
                best_i = j;
            }
        }
        if (best_i == 0xffffffffu) best_i = 0;
        wrong += out[i] != best_i;
    }
    char name[128];
    std::snprintf(name, sizeof name, "argmax [%d, %d]%s (error = wrong rows)", rows, vocab,
                  specials ? " ties/NaN/-inf" : "");
    report(name, d, {static_cast<float>(wrong)}, {0.0}, 0.0);
}

}  // namespace

using ScaleRowsFn = void (*)(void*, const float*, long long, int);

// Llama 4's expert inputs: each gathered row times its router weight, rounded once, with the
// grid-stride launch of launch::elementwise (blocks capped so the loop runs).
void check_scale_rows(DType d, int rows, int width, unsigned max_blocks, Order order) {
    const std::vector<float> x = random(d, static_cast<size_t>(rows) * width, 2.0f);
    std::vector<float> scales(rows);
    for (int r = 0; r < rows; ++r) scales[r] = static_cast<float>(round_to(d, 0.1 + 0.9 * (r % 7) / 7.0));
    Buffer xb(d, x);
    auto k = KILN_PICK(ScaleRowsFn, scale_rows, d);
    const long long total = static_cast<long long>(rows) * width;
    const unsigned blocks =
        std::min(max_blocks, std::max(1u, static_cast<unsigned>((total + 255) / 256)));
    kiln_emu::launch({blocks, 1, 1}, {256, 1, 1}, order, 1,
                     [&] { k(xb.data(), scales.data(), total, width); });
    std::vector<double> want(x.size());
    for (int r = 0; r < rows; ++r) {
        for (int j = 0; j < width; ++j) {
            const size_t i = static_cast<size_t>(r) * width + j;
            want[i] = round_to(d, static_cast<double>(x[i]) * scales[r]);
        }
    }
    char name[96];
    std::snprintf(name, sizeof name, "scale_rows [%d, %d], %u blocks max", rows, width, max_blocks);
    report(name, d, xb.values(), want, 0.0);
}

using ShortConvWriteFn = void (*)(void*, const void*, const int*, int, long long);
using ShortConvFn = void (*)(void*, const void*, const void*, const void*, const int*, const int*,
                             const int*, const int*, int, int, int, int, int);

// LFM2's gated short convolution (the launches of src/backend/cuda/ops_short_conv.rs):
// sequences given as (context after the step, new tokens), so a decode row and a prefill
// chunk read rows earlier steps left in shuffled cache blocks (random values stand for
// them) beside the step's own; the last token is padding (slot -1: zeros, nothing
// written). The reference rounds B * x, the convolution and the gated output to the
// dtype, as the kernels and transformers do.
void check_short_conv(DType d, const std::vector<std::pair<int, int>>& seqs, int width,
                      int taps, int block_size, Order order) {
    int tokens = 0, max_blocks = 0;
    for (auto [ctx, q_len] : seqs) {
        tokens += q_len;
        max_blocks = std::max(max_blocks, (ctx + block_size - 1) / block_size);
    }
    ++tokens;  // the padding token
    const int num_seqs = static_cast<int>(seqs.size());
    const int num_blocks = num_seqs * max_blocks + 3;
    std::vector<int> free_blocks(num_blocks);
    for (int i = 0; i < num_blocks; ++i) free_blocks[i] = i;
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
    std::vector<int> tables(static_cast<size_t>(num_seqs) * max_blocks, 0);
    std::vector<int> query_start{0}, context_lens, slots, positions;
    for (int s = 0; s < num_seqs; ++s) {
        for (int b = 0; b < max_blocks; ++b) tables[s * max_blocks + b] = free_blocks[s * max_blocks + b];
        auto [ctx, q_len] = seqs[s];
        for (int p = ctx - q_len; p < ctx; ++p) {
            slots.push_back(tables[s * max_blocks + p / block_size] * block_size + p % block_size);
            positions.push_back(p);
        }
        query_start.push_back(query_start.back() + q_len);
        context_lens.push_back(ctx);
    }
    slots.push_back(-1);
    positions.push_back(0);
    const long long num_slots = static_cast<long long>(num_blocks) * block_size;
    const std::vector<float> bcx = random(d, static_cast<size_t>(tokens) * 3 * width, 1.5f);
    const std::vector<float> weight = random(d, static_cast<size_t>(width) * taps, 1.0f);
    const std::vector<float> old_rows = random(d, static_cast<size_t>(num_slots) * width, 1.0f);
    Buffer cache(d, old_rows), in(d, bcx), w(d, weight);
    Buffer out = Buffer::unwritten(d, static_cast<size_t>(tokens) * width);
    auto write = KILN_PICK(ShortConvWriteFn, short_conv_write, d);
    auto conv = KILN_PICK(ShortConvFn, short_conv, d);
    const unsigned threads = std::min(1024u, std::max(32u, row_threads(width)));
    kiln_emu::launch({static_cast<unsigned>(tokens), 1, 1}, {threads, 1, 1}, order, 1, [&] {
        write(cache.data(), in.data(), slots.data(), width, num_slots);
    });
    const unsigned tiles = static_cast<unsigned>((width + 255) / 256);
    kiln_emu::launch({static_cast<unsigned>(tokens), tiles, 1}, {256, 1, 1}, order, 1, [&] {
        conv(out.data(), cache.data(), in.data(), w.data(), slots.data(), tables.data(),
             query_start.data(), context_lens.data(), num_seqs, max_blocks, block_size, width,
             taps);
    });
    // The cache after the step: earlier rows as they were, the step's rows B * x.
    std::vector<double> rows(old_rows.begin(), old_rows.end());
    for (int t = 0; t + 1 < tokens; ++t) {
        for (int c = 0; c < width; ++c) {
            const size_t at = static_cast<size_t>(t) * 3 * width;
            rows[static_cast<size_t>(slots[t]) * width + c] =
                round_to(d, static_cast<double>(bcx[at + c]) * bcx[at + 2 * width + c]);
        }
    }
    std::vector<double> want(static_cast<size_t>(tokens) * width, 0.0);
    for (int s = 0; s < num_seqs; ++s) {
        for (int t = query_start[s]; t < query_start[s + 1]; ++t) {
            for (int c = 0; c < width; ++c) {
                double acc = 0.0;
                for (int j = 0; j < taps; ++j) {
                    const int p = positions[t] - (taps - 1) + j;
                    if (p < 0) continue;
                    const int slot = tables[s * max_blocks + p / block_size] * block_size + p % block_size;
                    acc += static_cast<double>(weight[c * taps + j]) * rows[static_cast<size_t>(slot) * width + c];
                }
                const double gate = bcx[static_cast<size_t>(t) * 3 * width + width + c];
                want[static_cast<size_t>(t) * width + c] = round_to(d, gate * round_to(d, acc));
            }
        }
    }
    std::vector<float> got = out.values();
    std::vector<float> cached = cache.values();
    got.insert(got.end(), cached.begin(), cached.end());
    want.insert(want.end(), rows.begin(), rows.end());
    char name[128];
    std::snprintf(name, sizeof name, "gated_short_conv %d seqs, %d tok, width %d, %d taps, bs %d",
                  num_seqs, tokens, width, taps, block_size);
    report(name, d, got, want, reduction_tol(d));
}

int main() {
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
        std::printf("== %s\n", dtype_name(d));
        for (bool fused : {false, true}) {
            check_norm(d, 1, 4096, row_threads(4096), fused, Order::Random);  // decode
            check_norm(d, 3, 4096, 32, fused, Order::Forward);   // 128 per thread: tail loop
            check_norm(d, 5, 1000, row_threads(1000), fused, Order::Reverse);
            check_norm(d, 4, 128, row_threads(128), fused, Order::Random);  // per-head norm
            check_norm(d, 2, 33, 32, fused, Order::Forward);
        }
        for (bool neox : {true, false}) {
            check_rope(d, 1, 32, 8, 128, neox, Order::Random);  // Llama decode
            check_rope(d, 3, 5, 2, 16, neox, Order::Forward);
            check_rope(d, 2, 3, 1, 80, neox, Order::Reverse);  // hd/2 = 40: partial warp
            check_qkv_rope_cache(d, 1, 32, 8, 128, neox, Order::Random);  // Llama decode
            check_qkv_rope_cache(d, 5, 14, 2, 64, neox, Order::Reverse);  // Qwen2.5-0.5B
            check_qkv_rope_cache(d, 3, 3, 1, 80, neox, Order::Forward);
            check_qkv_rope_cache(d, 3, 32, 8, 128, neox, Order::Random, 1);  // Qwen3-8B
            check_qkv_rope_cache(d, 2, 4, 2, 64, neox, Order::Reverse, 1);
            check_qkv_rope_cache(d, 3, 32, 8, 128, neox, Order::Random, 2);  // Hunyuan-7B
            check_qkv_rope_cache(d, 2, 4, 2, 64, neox, Order::Reverse, 2);
            // Partial rotary (GLM-4: half of a 128 head; Phi-4-mini: 3/4 of 128).
            check_rope(d, 3, 4, 2, 128, neox, Order::Random, 64);
            check_rope(d, 2, 3, 1, 128, neox, Order::Forward, 96);
            check_qkv_rope_cache(d, 3, 4, 2, 128, neox, Order::Reverse, 0, 64);
            check_qkv_rope_cache(d, 2, 4, 2, 128, neox, Order::Random, 1, 96);
            check_qkv_rope_cache(d, 2, 4, 2, 128, neox, Order::Forward, 2, 96);
            // The attention factor of YaRN (whole head, Qwen3) and LongRoPE (3/4, Phi-4-mini).
            check_rope(d, 3, 4, 2, 128, neox, Order::Reverse, 128, 1.19f);
            check_rope(d, 2, 3, 1, 128, neox, Order::Random, 96, 1.19f);
            check_qkv_rope_cache(d, 3, 4, 2, 128, neox, Order::Forward, 1, 128, 1.139f);
            check_qkv_rope_cache(d, 2, 4, 2, 128, neox, Order::Reverse, 0, 96, 1.19f);
            // Llama 4's layers without rotary (Scout: 40 q heads, 8 kv heads of 128).
            check_rope(d, 3, 40, 8, 128, neox, Order::Random, 128, 1.0f, kLlama4Temperature);
            check_qkv_rope_cache(d, 5, 40, 8, 128, neox, Order::Reverse, 0, 128, 1.0f,
                                 kLlama4Temperature);
        }
        // DeepSeek: 64 rotary values of a 192 head (de-interleaved at load: rotate-half).
        check_rope(d, 3, 16, 16, 192, true, Order::Random, 64, 1.0f);
        // LFM2: decode rows at positions 0, 1, 2 (taps reaching before the sequence) and
        // deep in a sequence; a prefill chunk after a cached prefix; a fresh prompt; LFM2's
        // width 2048 over 8 tiles of channels.
        check_short_conv(d, {{1, 1}, {2, 1}, {3, 1}, {40, 1}, {37, 9}, {12, 12}}, 64, 3, 16,
                         Order::Random);
        check_short_conv(d, {{100, 1}, {17, 17}}, 2048, 3, 16, Order::Reverse);
        check_short_conv(d, {{33, 5}, {5, 5}}, 40, 4, 4, Order::Forward);  // 4 taps, blocks of 4
        check_scale_rows(d, 6, 2048, 65536, Order::Random);  // Llama 4's gathered rows
        check_scale_rows(d, 7, 37, 1, Order::Reverse);       // one block looping over odd rows
        check_add_position_embedding(d, 5, 768, 0, Order::Random);  // GPT-2
        check_add_position_embedding(d, 3, 300, 2, Order::Reverse);  // OPT's offset, tail loop
        check_join_heads(d, 1, 16, 64, 128, Order::Random);  // V2-Lite decode
        check_join_heads(d, 5, 3, 8, 16, Order::Reverse);    // the fixture's shape
        check_join_heads(d, 7, 4, 6, 10, Order::Forward, 2);  // grid-stride: 2 blocks loop
        check_argmax(d, 1, 128256, Order::Random, false);  // Llama-3 vocab, decode
        check_argmax(d, 3, 4099, Order::Forward, true);     // rows 1, 2 off 16-byte boundaries
        check_argmax(d, 2, 7, Order::Reverse, true);
        check_argmax(d, 4, 1, Order::Forward, false);
        check_argmax(d, 2, 1003, Order::Random, false);
        check_argmax(d, 3, 4101, Order::Forward, false);
    }
    std::printf("%s\n", failures == 0 ? "the decode ops match the reference" : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
