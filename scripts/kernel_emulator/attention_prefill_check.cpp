// Runs kernels/attention_prefill.cu (the tensor-core tiled prefill, mma.sync through
// cuda_emu.h's warp-collective model) on the CPU and compares it with a double-precision
// paged causal attention on chunked-prefill batches: several sequences, query lengths
// that are not multiples of the 64-row tile, cached prefixes (the first new token at
// position > 0), GQA, sliding windows, shuffled block tables, f16 and bf16. Then the
// image models' attention through the same kernel (src/backend/cuda/image_attention.rs):
// q [b, nq, heads * d], k/v [b, nk, heads * d] as a cache of one nk-token block per batch
// entry, without the causal mask (self- and cross-attention) and with it (CLIP). Mixed
// serving steps run as ops_attention.rs splits them: the leading decode rows on the split-K
// kernel (kernels/attention_decode.cu), the prefill chunks on the tiles, over views of the
// same metadata.
//
//   attention_prefill_check        exit status 1 if any case is off
//
// Bound per output element: u (|want| + sum_j p_j |v_j|) + 1e-5, u the dtype's unit
// roundoff (2^-11 f16, 2^-8 bf16): the output's own rounding plus the probabilities'
// rounding to 16 bits before P V (relative u each); Q and K are rounded before the
// reference sees them, and f32 accumulation adds ~1e-6.
#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "attention_prefill.cu"
#include "attention_decode.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "attention_reference.h"
#include "emu_tensor.h"

namespace {

using namespace kiln_emu_tensor;
using kiln_attention_ref::Batch;

struct Case {
    std::string name;
    std::vector<std::pair<int, int>> seqs;  // (context after this step, new tokens)
    int hq, hk, hd;
    int window = 0;  // 0 = none; < 0: Llama 4's chunks of -window positions
    DType dtype = DType::BF16;
    kiln_emu::Order order = kiln_emu::Order::Forward;
    float softcap = 0.0f;  // Gemma 2's score soft-cap; 0 = none
    bool sinks = false;    // gpt-oss's per-head attention sinks
    bool alibi = false;    // ALiBi slopes
    int decode_prefix = 0;  // > 0: that many leading one-token sequences run on split-K
};

using PrefillKernel = void (*)(void*, const void*, const void*, const void*, const int*,
                               const int*, const int*, int, int, int, int, int, int, int, float,
                               float, int, const float*, const float*);
using DecodeKernel = void (*)(float*, void*, const void*, const void*, const void*, const int*,
                              const int*, const int*, int, int, int, int, int, int, int, float,
                              float, int, int, const float*, const float*);
using MergeKernel = void (*)(void*, const float*, int, int, int, const float*);

PrefillKernel prefill_kernel(DType d, int hd) {
    struct Entry {
        int hd;
        PrefillKernel f16, bf16;
    };
#define KILN_PF_ENTRY(HD)                                                   \
    Entry {                                                                 \
        HD, reinterpret_cast<PrefillKernel>(attention_prefill_hd##HD##_f16), \
            reinterpret_cast<PrefillKernel>(attention_prefill_hd##HD##_bf16) \
    }
    const Entry table[] = {KILN_PF_ENTRY(40),  KILN_PF_ENTRY(64),  KILN_PF_ENTRY(80),
                           KILN_PF_ENTRY(96),  KILN_PF_ENTRY(128), KILN_PF_ENTRY(160),
                           KILN_PF_ENTRY(192), KILN_PF_ENTRY(256)};
#undef KILN_PF_ENTRY
    for (const Entry& e : table) {
        if (e.hd == hd) return d == DType::F16 ? e.f16 : e.bf16;
    }
    kiln_emu::fail("no prefill kernel for head dim " + std::to_string(hd));
}

DecodeKernel decode_kernel(DType d, int hd) {
    struct Entry {
        int hd;
        DecodeKernel f16, bf16;
    };
#define KILN_DEC_ENTRY(HD)                                                 \
    Entry {                                                                \
        HD, reinterpret_cast<DecodeKernel>(attention_decode_hd##HD##_f16), \
            reinterpret_cast<DecodeKernel>(attention_decode_hd##HD##_bf16) \
    }
    const Entry table[] = {KILN_DEC_ENTRY(64),  KILN_DEC_ENTRY(80),  KILN_DEC_ENTRY(96),
                           KILN_DEC_ENTRY(128), KILN_DEC_ENTRY(192), KILN_DEC_ENTRY(256)};
#undef KILN_DEC_ENTRY
    for (const Entry& e : table) {
        if (e.hd == hd) return d == DType::F16 ? e.f16 : e.bf16;
    }
    kiln_emu::fail("no decode kernel for head dim " + std::to_string(hd));
}

// The dtype's unit roundoff: half an ulp relative to the value.
double unit_roundoff(DType d) { return d == DType::F16 ? 0x1p-11 : 0x1p-8; }

struct Result {
    double max_err = 0.0;
    double worst_ratio = 0.0;  // max of error / bound: > 1 fails
};

// Error of `got` against the reference, element by element against the bound above.
Result compare(const Buffer& got, const std::vector<double>& want,
               const std::vector<double>& magnitude, DType d) {
    Result r;
    for (size_t i = 0; i < want.size(); ++i) {
        const double err = std::fabs(got.at(i) - want[i]);
        const double bound = unit_roundoff(d) * (std::fabs(want[i]) + magnitude[i]) + 1e-5;
        if (std::isnan(err)) return Result{INFINITY, INFINITY};
        r.max_err = std::max(r.max_err, err);
        r.worst_ratio = std::max(r.worst_ratio, err / bound);
    }
    return r;
}

// The prefill grid of attention_plan::prefill_launch: every 64-row tile of every sequence
// (plus surplus CTAs, which must return at once) by q heads.
kiln_emu::Dim3 prefill_grid(int tokens, int num_seqs, int hq) {
    return {static_cast<unsigned>((tokens + 63) / 64 + num_seqs), static_cast<unsigned>(hq), 1};
}

// A paged batch on the device: the inputs and the output every kernel of a case shares.
struct PagedBuffers {
    Buffer q, k, v, out;
};

const float* or_null(const std::vector<float>& terms) {
    return terms.empty() ? nullptr : terms.data();
}

// The decode rows of a mixed batch (its first `rows` sequences, one token each) on the
// split-K kernel, as ops_attention.rs hands them over: the whole metadata, a grid of just
// those rows, splits of 64 keys over the block table's capacity (several, some empty, so
// the merge runs), the heads of a GQA group per CTA as attention_plan.rs packs them.
void run_decode_rows(const Case& c, const Batch& b, int rows, float scale, PagedBuffers& d,
                     unsigned seed) {
    const int group = c.hq / c.hk;
    int hpc = 1;
    for (int n = std::min(8, group); n >= 1; --n) {
        if (group % n == 0) {
            hpc = n;
            break;
        }
    }
    const int keys = 64;
    const int splits = (b.max_blocks * b.block_size + keys - 1) / keys;
    std::vector<float> partials(static_cast<size_t>(rows) * c.hq * splits * (c.hd + 2),
                                std::nanf(""));
    const DecodeKernel kernel = decode_kernel(c.dtype, c.hd);
    const kiln_emu::Dim3 grid{static_cast<unsigned>(rows), static_cast<unsigned>(c.hq / hpc),
                              static_cast<unsigned>(splits)};
    kiln_emu::launch(grid, {128, 1, 1}, c.order, seed, [&] {
        kernel(partials.data(), d.out.data(), d.q.data(), d.k.data(), d.v.data(),
               b.block_tables.data(), b.query_start.data(), b.context_lens.data(), rows,
               b.max_blocks, b.block_size, c.hq, c.hk, c.hq * c.hd, c.window, scale, c.softcap,
               hpc, keys, or_null(b.sinks), or_null(b.alibi));
    });
    if (splits > 1) {
        const MergeKernel merge = reinterpret_cast<MergeKernel>(
            c.dtype == DType::F16 ? attention_decode_merge_f16 : attention_decode_merge_bf16);
        kiln_emu::launch({static_cast<unsigned>(rows), static_cast<unsigned>(c.hq), 1},
                         {128, 1, 1}, c.order, seed, [&] {
                             merge(d.out.data(), partials.data(), c.hq, c.hd, splits,
                                   or_null(b.sinks));
                         });
    }
}

Result run_paged(const Case& c, unsigned seed) {
    std::mt19937 rng(seed);
    const Batch b = kiln_attention_ref::make_batch(c, rng);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
    PagedBuffers d{Buffer(c.dtype, b.q), Buffer(c.dtype, b.k_cache), Buffer(c.dtype, b.v_cache),
                   Buffer::unwritten(c.dtype, b.q.size())};
    // Sequences (and tokens: one each) before `first` ran on split-K; the tiles take the
    // rest through views that start there, token indices staying absolute.
    const int first = c.decode_prefix;
    if (first > 0) run_decode_rows(c, b, first, scale, d, seed);
    const int num_seqs = static_cast<int>(c.seqs.size()) - first;
    const PrefillKernel kernel = prefill_kernel(c.dtype, c.hd);
    const kiln_emu::Dim3 grid = prefill_grid(b.tokens - first, num_seqs, c.hq);
    kiln_emu::launch(grid, {128, 1, 1}, c.order, seed, [&] {
        kernel(d.out.data(), d.q.data(), d.k.data(), d.v.data(),
               b.block_tables.data() + first * b.max_blocks, b.query_start.data() + first,
               b.context_lens.data() + first, num_seqs, b.max_blocks, b.block_size, c.hq, c.hk,
               c.hq * c.hd, c.window, scale, c.softcap, 1, or_null(b.sinks), or_null(b.alibi));
    });
    const Buffer& out = d.out;
    std::vector<double> magnitude;
    const std::vector<double> want = kiln_attention_ref::reference(c, b, scale, &magnitude);
    return compare(out, want, magnitude, c.dtype);
}

struct ImageCase {
    std::string name;
    int batch, nq, nk, heads, hd;
    DType dtype;
    bool causal = false;
};

// The launch image_attention.rs makes: batch entry e is sequence e, its queries rows
// e * nq .., its K/V block e of nk tokens (block table [e], max one block per sequence).
Result run_image(const ImageCase& c, unsigned seed) {
    std::mt19937 rng(seed);
    const int width = c.heads * c.hd;
    using kiln_attention_ref::random_values;
    const std::vector<float> qv = random_values(size_t(c.batch) * c.nq * width, 2.0f, c.dtype, rng);
    const std::vector<float> kv = random_values(size_t(c.batch) * c.nk * width, 2.0f, c.dtype, rng);
    const std::vector<float> vv = random_values(size_t(c.batch) * c.nk * width, 1.0f, c.dtype, rng);
    std::vector<int> tables(c.batch), starts(c.batch + 1), lens(c.batch, c.nk);
    std::iota(tables.begin(), tables.end(), 0);
    for (int e = 0; e <= c.batch; ++e) starts[e] = e * c.nq;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
    Buffer q(c.dtype, qv), k(c.dtype, kv), v(c.dtype, vv);
    Buffer out = Buffer::unwritten(c.dtype, qv.size());
    const PrefillKernel kernel = prefill_kernel(c.dtype, c.hd);
    kiln_emu::launch(prefill_grid(c.batch * c.nq, c.batch, c.heads), {128, 1, 1},
                     kiln_emu::Order::Random, seed, [&] {
                         kernel(out.data(), q.data(), k.data(), v.data(), tables.data(),
                                starts.data(), lens.data(), c.batch, 1, c.nk, c.heads,
                                c.heads, width, 0, scale, 0.0f, c.causal ? 1 : 0, nullptr,
                                nullptr);
                     });
    std::vector<double> want(qv.size()), magnitude(qv.size());
    for (int e = 0; e < c.batch; ++e) {
        for (int i = 0; i < c.nq; ++i) {
            for (int h = 0; h < c.heads; ++h) {
                std::vector<const float*> keys, values;
                for (int j = 0; j < (c.causal ? i + 1 : c.nk); ++j) {
                    const size_t row = (size_t(e) * c.nk + j) * width + h * c.hd;
                    keys.push_back(&kv[row]);
                    values.push_back(&vv[row]);
                }
                const size_t at = (size_t(e) * c.nq + i) * width + h * c.hd;
                kiln_attention_ref::attend(&qv[at], scale, keys, values, c.hd, &want[at],
                                           &magnitude[at]);
            }
        }
    }
    return compare(out, want, magnitude, c.dtype);
}

std::vector<ImageCase> image_cases() {
    const DType f16 = DType::F16, bf16 = DType::BF16;
    return {
        // Self-attention over 300 latent positions (not a multiple of 64 or 32).
        {"image self 300 8x40", 2, 300, 300, 8, 40, f16},
        {"image self 300 8x40", 2, 300, 300, 8, 40, bf16},
        {"image self 300 5x64", 2, 300, 300, 5, 64, bf16},
        {"image self 300 8x80", 2, 300, 300, 8, 80, f16},
        {"image self 300 5x160", 2, 300, 300, 5, 160, bf16},
        // Cross-attention to 77 text tokens.
        {"image cross 300/77 8x40", 2, 300, 77, 8, 40, bf16},
        {"image cross 300/77 5x64", 2, 300, 77, 5, 64, f16},
        {"image cross 300/77 8x80", 2, 300, 77, 8, 80, bf16},
        {"image cross 300/77 5x160", 2, 300, 77, 5, 160, f16},
        // CLIP's causal self-attention.
        {"image causal 77 4x64", 2, 77, 77, 4, 64, f16, true},
    };
}

std::vector<Case> cases() {
    using O = kiln_emu::Order;
    std::vector<Case> v;
    for (DType d : {DType::BF16, DType::F16}) {
        // Chunked prefill: a cached prefix of 130, a fresh 100-token prompt, a short chunk.
        v.push_back({"chunked x3 gqa 32/8 hd128", {{200, 70}, {100, 100}, {37, 5}}, 32, 8, 128, 0, d});
        v.push_back({"gqa 4/1 hd64 window 37", {{150, 90}, {60, 13}}, 4, 1, 64, 37, d});
    }
    v.push_back({"gqa 32/8 hd64 window 50", {{190, 130}, {17, 17}}, 32, 8, 64, 50, DType::BF16});
    v.push_back({"mha 4/4 hd80", {{97, 65}, {40, 3}}, 4, 4, 80, 0, DType::F16});
    v.push_back({"gqa 6/2 hd96", {{81, 81}}, 6, 2, 96, 0, DType::BF16});
    v.push_back({"gqa 4/2 hd256", {{120, 66}}, 4, 2, 256, 0, DType::F16});
    v.push_back({"mha 4/4 hd192 chunked", {{120, 66}, {40, 40}}, 4, 4, 192, 0, DType::BF16});
    v.push_back({"reverse warps", {{100, 70}, {33, 1}}, 4, 1, 64, 0, DType::BF16, O::Reverse});
    v.push_back({"random warps", {{100, 70}, {33, 1}}, 4, 1, 128, 20, DType::F16, O::Random});
    v.push_back({"gqa 4/2 hd40 window 45", {{120, 66}, {20, 20}}, 4, 2, 40, 45, DType::BF16});
    v.push_back({"gqa 4/1 hd160", {{90, 70}}, 4, 1, 160, 0, DType::F16});
    // Gemma 2's soft-capped scores: a small cap (every softmax changes), and its own 50 with
    // a window at head dim 256.
    v.push_back({"softcap 1.5 chunked gqa 4/1 hd128", {{130, 70}, {40, 40}}, 4, 1, 128, 0, DType::BF16, O::Forward, 1.5f});
    v.push_back({"softcap 50 window 45 gqa 8/4 hd256", {{120, 66}, {20, 20}}, 8, 4, 256, 45, DType::F16, O::Random, 50.0f});
    // gpt-oss's attention sinks (base-2 units inside the kernel), chunked, with its window.
    v.push_back({"sinks chunked gqa 8/1 hd64", {{130, 70}, {40, 40}}, 8, 1, 64, 0, DType::BF16, O::Forward, 0.0f, true});
    v.push_back({"sinks window 45 gqa 8/2 hd64", {{120, 66}, {20, 20}}, 8, 2, 64, 45, DType::F16, O::Random, 0.0f, true});
    // ALiBi (base-2 units inside the kernel, relative to each row's own position): chunked
    // with cached prefixes, prompts past one 64-row tile, a window, beside a cap and sinks.
    v.push_back({"alibi chunked x3 gqa 32/8 hd128", {{200, 70}, {100, 100}, {37, 5}}, 32, 8, 128, 0, DType::BF16, O::Forward, 0.0f, false, true});
    v.push_back({"alibi mha 4/4 hd64", {{150, 90}, {60, 13}}, 4, 4, 64, 0, DType::F16, O::Reverse, 0.0f, false, true});
    v.push_back({"alibi window 45 gqa 8/2 hd64", {{120, 66}, {20, 20}}, 8, 2, 64, 45, DType::F16, O::Random, 0.0f, false, true});
    v.push_back({"alibi softcap 1.5 sinks gqa 4/1 hd128", {{130, 70}, {40, 40}}, 4, 1, 128, 0, DType::BF16, O::Forward, 1.5f, true, true});
    // Serving steps: decode rows first (split-K), then prefill chunks (tiles).
    const std::vector<std::pair<int, int>> mixed = {{7, 1}, {300, 1}, {150, 1}, {130, 70}, {40, 40}};
    v.push_back({"mixed decode x3 + prefill hd128", mixed, 32, 8, 128, 0, DType::BF16, O::Forward, 0.0f, false, false, 3});
    v.push_back({"alibi mixed decode x3 + prefill hd128", mixed, 32, 8, 128, 0, DType::F16, O::Random, 0.0f, false, true, 3});
    v.push_back({"alibi mixed window 37 gqa 8/1 hd64", {{100, 1}, {20, 1}, {190, 130}, {17, 17}}, 8, 1, 64, 37, DType::BF16, O::Forward, 0.0f, false, true, 2});
    // Llama 4's chunks (window -c): chunks inside one 64-row tile and across tiles, a chunk
    // boundary inside a block (37) and on one (64), cached prefixes, a serving step.
    v.push_back({"chunk 37 gqa 4/1 hd64", {{150, 90}, {60, 13}, {74, 74}}, 4, 1, 64, -37, DType::BF16});
    v.push_back({"chunk 64 gqa 32/8 hd128", {{200, 130}, {129, 129}}, 32, 8, 128, -64, DType::F16, O::Random});
    v.push_back({"chunk 5 gqa 8/2 hd64", {{90, 70}, {11, 11}}, 8, 2, 64, -5, DType::BF16, O::Reverse});
    v.push_back({"chunk 37 mixed gqa 8/1 hd64", {{100, 1}, {38, 1}, {190, 130}, {17, 17}}, 8, 1, 64, -37, DType::F16, O::Forward, 0.0f, false, false, 2});
    return v;
}

}  // namespace

// Runs one case and prints its line; false if it failed.
template <typename C, typename Run>
bool report(const C& c, Run run) {
    Result r;
    try {
        r = run();
    } catch (const std::exception& e) {
        std::printf("FAIL  %-34s %-4s  %s\n", c.name.c_str(), dtype_name(c.dtype), e.what());
        return false;
    }
    const bool ok = r.worst_ratio <= 1.0;
    std::printf("%s  %-34s %-4s  max abs err %.3g (%.2f of the bound)\n", ok ? "ok  " : "FAIL",
                c.name.c_str(), dtype_name(c.dtype), r.max_err, r.worst_ratio);
    std::fflush(stdout);
    return ok;
}

int main() {
    int failures = 0;
    unsigned seed = 1;
    for (const Case& c : cases()) {
        failures += report(c, [&] { return run_paged(c, seed++); }) ? 0 : 1;
    }
    for (const ImageCase& c : image_cases()) {
        failures += report(c, [&] { return run_image(c, seed++); }) ? 0 : 1;
    }
    std::printf("%s\n", failures == 0 ? "all prefill cases match the reference"
                                      : "SOME PREFILL CASES FAILED");
    return failures == 0 ? 0 : 1;
}
