// Runs kernels/attention_decode.cu (split-K kernel + merge) on the CPU through cuda_emu.h
// and compares it with a double-precision paged causal attention, over decode and prefill
// batches shaped like the GPU selftest's (src/backend/cuda/selftest/attention_scenarios.rs);
// then the generic kernel (kernels/attention.cu) on the same cases.
//
//   attention_decode_check [quick|full]     exit status 1 if any case is off
//   attention_decode_check gpu KERNELS.cubin [full]
//       the same cases on a real GPU (a cubin of common.cuh + attention.cu +
//       attention_decode.cu, see run.sh), plus the generic kernel as a control
#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "attention.cu"
#include "attention_decode.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "cuda_driver.h"
#include "attention_reference.h"
#include "emu_tensor.h"

#include <fstream>
#include <memory>
#include <iterator>

namespace {

using namespace kiln_emu_tensor;
using kiln_attention_ref::Batch;
using kiln_attention_ref::make_batch;
using kiln_attention_ref::reference;
using DeviceBuffer = Buffer;

struct Case {
    std::string name;
    std::vector<std::pair<int, int>> seqs;  // (context after this step, new tokens)
    int hq, hk, hd;
    int window = 0;  // 0 = none; < 0: Llama 4's chunks of -window positions
    DType dtype = DType::F32;
    int forced_splits = 0;  // > 0: this many splits of forced_keys keys instead of the plan
    int forced_keys = 0;
    kiln_emu::Order order = kiln_emu::Order::Forward;
    float softcap = 0.0f;  // Gemma 2's score soft-cap; 0 = none
    bool sinks = false;    // gpt-oss's per-head attention sinks
    bool alibi = false;    // ALiBi slopes
};

struct Plan {
    int heads_per_cta, num_splits, keys_per_split;
};

// DecodePlan::new of src/backend/cuda/attention_plan.rs on a 132-SM GPU (an H200).
Plan decode_plan(int tokens, int hq, int hk, int max_keys) {
    const int group = hq / hk;
    int hpc = 1;
    for (int d = std::min(8, group); d >= 1; --d) {
        if (group % d == 0) {
            hpc = d;
            break;
        }
    }
    auto div_ceil = [](long a, long b) { return (a + b - 1) / b; };
    const long ctas = std::max(1L, static_cast<long>(tokens) * (hq / hpc));
    const long span = std::max(1, max_keys);
    const long wanted = div_ceil(4 * 132, ctas);
    const long useful = div_ceil(span, 64);
    const long needed = div_ceil(span, 512);
    const long splits = std::max({std::min(wanted, useful), needed, 1L});
    const long keys = div_ceil(div_ceil(span, splits), 32) * 32;
    return Plan{hpc, static_cast<int>(div_ceil(span, keys)), static_cast<int>(keys)};
}

using DecodeKernel = void (*)(float*, void*, const void*, const void*, const void*, const int*,
                              const int*, const int*, int, int, int, int, int, int, int, float,
                              float, int, int, const float*, const float*);
using MergeKernel = void (*)(void*, const float*, int, int, int, const float*);
using GenericKernel = void (*)(void*, const void*, const void*, const void*, const int*,
                               const int*, const int*, int, int, int, int, int, int, int, int,
                               float, float, const float*, const float*);

DecodeKernel decode_kernel(DType d, int hd) {
    struct Entry {
        DType dtype;
        int hd;
        DecodeKernel f;
    };
    const Entry table[] = {
        {DType::F32, 64, reinterpret_cast<DecodeKernel>(attention_decode_hd64_f32)},
        {DType::F32, 80, reinterpret_cast<DecodeKernel>(attention_decode_hd80_f32)},
        {DType::F32, 96, reinterpret_cast<DecodeKernel>(attention_decode_hd96_f32)},
        {DType::F32, 128, reinterpret_cast<DecodeKernel>(attention_decode_hd128_f32)},
        {DType::F32, 192, reinterpret_cast<DecodeKernel>(attention_decode_hd192_f32)},
        {DType::F32, 256, reinterpret_cast<DecodeKernel>(attention_decode_hd256_f32)},
        {DType::F16, 64, reinterpret_cast<DecodeKernel>(attention_decode_hd64_f16)},
        {DType::F16, 80, reinterpret_cast<DecodeKernel>(attention_decode_hd80_f16)},
        {DType::F16, 96, reinterpret_cast<DecodeKernel>(attention_decode_hd96_f16)},
        {DType::F16, 128, reinterpret_cast<DecodeKernel>(attention_decode_hd128_f16)},
        {DType::F16, 192, reinterpret_cast<DecodeKernel>(attention_decode_hd192_f16)},
        {DType::F16, 256, reinterpret_cast<DecodeKernel>(attention_decode_hd256_f16)},
        {DType::BF16, 64, reinterpret_cast<DecodeKernel>(attention_decode_hd64_bf16)},
        {DType::BF16, 80, reinterpret_cast<DecodeKernel>(attention_decode_hd80_bf16)},
        {DType::BF16, 96, reinterpret_cast<DecodeKernel>(attention_decode_hd96_bf16)},
        {DType::BF16, 128, reinterpret_cast<DecodeKernel>(attention_decode_hd128_bf16)},
        {DType::BF16, 192, reinterpret_cast<DecodeKernel>(attention_decode_hd192_bf16)},
        {DType::BF16, 256, reinterpret_cast<DecodeKernel>(attention_decode_hd256_bf16)},
    };
    for (const Entry& e : table) {
        if (e.dtype == d && e.hd == hd) return e.f;
    }
    kiln_emu::fail("no decode kernel for head dim " + std::to_string(hd));
}

MergeKernel merge_kernel(DType d) {
    switch (d) {
        case DType::F32:
            return reinterpret_cast<MergeKernel>(attention_decode_merge_f32);
        case DType::F16:
            return reinterpret_cast<MergeKernel>(attention_decode_merge_f16);
        default:
            return reinterpret_cast<MergeKernel>(attention_decode_merge_bf16);
    }
}

GenericKernel generic_kernel(DType d) {
    switch (d) {
        case DType::F32:
            return reinterpret_cast<GenericKernel>(attention_f32);
        case DType::F16:
            return reinterpret_cast<GenericKernel>(attention_f16);
        default:
            return reinterpret_cast<GenericKernel>(attention_bf16);
    }
}

// Max abs error of the emulated kernels against the reference.
double tolerance(DType d) { return d == DType::F32 ? 1e-4 : (d == DType::F16 ? 4e-3 : 2e-2); }

enum class Mode { Emulate, EmulateGeneric, GpuDecode, GpuGeneric };

double run_case(const Case& c, unsigned seed, Plan* used, Mode mode, const kiln_gpu::Driver* gpu) {
    std::mt19937 rng(seed);
    Batch b = make_batch(c, rng);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
    const int capacity = b.max_blocks * b.block_size;
    Plan plan = decode_plan(b.tokens, c.hq, c.hk, c.window != 0 ? std::min(std::abs(c.window), capacity) : capacity);
    if (c.forced_splits > 0) {
        plan.num_splits = c.forced_splits;
        plan.keys_per_split = c.forced_keys;
    }
    *used = plan;

    DeviceBuffer q(c.dtype, b.q), k(c.dtype, b.k_cache), v(c.dtype, b.v_cache);
    DeviceBuffer out(c.dtype, std::vector<float>(b.q.size(), std::nanf("")));
    std::vector<float> partials(
        plan.num_splits == 1 ? 1
                             : static_cast<size_t>(b.tokens) * c.hq * plan.num_splits * (c.hd + 2),
        std::nanf(""));
    int num_seqs = static_cast<int>(c.seqs.size());
    int q_stride = c.hq * c.hd;
    int hq = c.hq, hk = c.hk, hd = c.hd, window = c.window, block_size = b.block_size;
    int max_blocks = b.max_blocks, hpc = plan.heads_per_cta, kps = plan.keys_per_split;
    int splits = plan.num_splits;
    float scale_arg = scale;
    float softcap = c.softcap;
    const float* sinks = b.sinks.empty() ? nullptr : b.sinks.data();
    const float* alibi = b.alibi.empty() ? nullptr : b.alibi.data();
    if (mode == Mode::EmulateGeneric) {
        const GenericKernel kernel = generic_kernel(c.dtype);
        kiln_emu::launch({static_cast<unsigned>(b.tokens), static_cast<unsigned>(hq), 1},
                         {128, 1, 1}, c.order, seed, [&] {
                             kernel(out.data(), q.data(), k.data(), v.data(),
                                    b.block_tables.data(), b.query_start.data(),
                                    b.context_lens.data(), num_seqs, max_blocks, block_size, hq,
                                    hk, hd, q_stride, window, scale, softcap, sinks, alibi);
                         });
    } else if (mode == Mode::Emulate) {
        const DecodeKernel kernel = decode_kernel(c.dtype, c.hd);
        kiln_emu::launch({static_cast<unsigned>(b.tokens), static_cast<unsigned>(hq / hpc),
                          static_cast<unsigned>(splits)},
                         {128, 1, 1}, c.order, seed, [&] {
                             kernel(partials.data(), out.data(), q.data(), k.data(), v.data(),
                                    b.block_tables.data(), b.query_start.data(),
                                    b.context_lens.data(), num_seqs, max_blocks, block_size, hq,
                                    hk, q_stride, window, scale, softcap, hpc, kps, sinks,
                                    alibi);
                         });
        if (splits > 1) {
            const MergeKernel merge = merge_kernel(c.dtype);
            kiln_emu::launch({static_cast<unsigned>(b.tokens), static_cast<unsigned>(hq), 1},
                             {128, 1, 1}, c.order, seed,
                             [&] { merge(out.data(), partials.data(), hq, hd, splits, sinks); });
        }
    } else {
        const size_t elem = c.dtype == DType::F32 ? 4 : 2;
        using kiln_gpu::DevPtr;
        DevPtr d_q = gpu->upload(q.data(), b.q.size() * elem);
        DevPtr d_k = gpu->upload(k.data(), b.k_cache.size() * elem);
        DevPtr d_v = gpu->upload(v.data(), b.v_cache.size() * elem);
        DevPtr d_out = gpu->upload(out.data(), b.q.size() * elem);
        DevPtr d_part = gpu->upload(partials.data(), partials.size() * 4);
        DevPtr d_tables = gpu->upload(b.block_tables.data(), b.block_tables.size() * 4);
        DevPtr d_starts = gpu->upload(b.query_start.data(), b.query_start.size() * 4);
        DevPtr d_lens = gpu->upload(b.context_lens.data(), b.context_lens.size() * 4);
        // The kernels read a null pointer as "no sinks" or "no ALiBi".
        DevPtr d_sinks = b.sinks.empty() ? 0 : gpu->upload(b.sinks.data(), b.sinks.size() * 4);
        DevPtr d_alibi = b.alibi.empty() ? 0 : gpu->upload(b.alibi.data(), b.alibi.size() * 4);
        const std::string suffix = std::string("_") + dtype_name(c.dtype);
        if (mode == Mode::GpuGeneric) {
            void* f = gpu->function("attention" + suffix);
            gpu->launch(f, b.tokens, hq, 1, 128,
                        {&d_out, &d_q, &d_k, &d_v, &d_tables, &d_starts, &d_lens, &num_seqs,
                         &max_blocks, &block_size, &hq, &hk, &hd, &q_stride, &window,
                         &scale_arg, &softcap, &d_sinks, &d_alibi});
        } else {
            void* f = gpu->function("attention_decode_hd" + std::to_string(hd) + suffix);
            gpu->launch(f, b.tokens, hq / hpc, splits, 128,
                        {&d_part, &d_out, &d_q, &d_k, &d_v, &d_tables, &d_starts, &d_lens,
                         &num_seqs, &max_blocks, &block_size, &hq, &hk, &q_stride, &window,
                         &scale_arg, &softcap, &hpc, &kps, &d_sinks, &d_alibi});
            if (splits > 1) {
                void* m = gpu->function("attention_decode_merge" + suffix);
                gpu->launch(m, b.tokens, hq, 1, 128,
                            {&d_out, &d_part, &hq, &hd, &splits, &d_sinks});
            }
        }
        gpu->download(out.data(), d_out, b.q.size() * elem);
        for (DevPtr p : {d_q, d_k, d_v, d_out, d_part, d_tables, d_starts, d_lens}) {
            gpu->cuMemFree_v2(p);
        }
        for (DevPtr p : {d_sinks, d_alibi}) {
            if (p != 0) gpu->cuMemFree_v2(p);
        }
    }
    const std::vector<double> expected = reference(c, b, scale);
    double worst = 0.0;
    for (size_t i = 0; i < expected.size(); ++i) {
        const double err = std::fabs(out.at(i) - expected[i]);
        worst = std::isnan(err) ? INFINITY : std::max(worst, err);
    }
    if (worst > tolerance(c.dtype)) {  // show where: the first values of the first heads
        for (int head = 0; head < std::min(hq, 3); ++head) {
            std::printf("      token 0 head %d: got", head);
            for (int d = 0; d < 4; ++d) std::printf(" %+.4f", out.at(head * hd + d));
            std::printf("  want");
            for (int d = 0; d < 4; ++d) std::printf(" %+.4f", expected[head * hd + d]);
            std::printf("\n");
        }
    }
    return worst;
}


std::vector<Case> cases(bool full) {
    using O = kiln_emu::Order;
    std::vector<Case> v;
    auto add = [&](Case c) { v.push_back(std::move(c)); };
    // Few keys, one split: the core kernel without the merge.
    for (int ctx : {1, 2, 5, 16, 17, 33, 64}) {
        add({"decode ctx " + std::to_string(ctx), {{ctx, 1}}, 32, 8, 128});
    }
    add({"prefill 24 tokens", {{24, 24}}, 32, 8, 128});
    add({"decode x3", {{1, 1}, {40, 1}, {100, 1}}, 32, 8, 128});
    add({"decode x3 reverse order", {{1, 1}, {40, 1}, {100, 1}}, 32, 8, 128, 0, DType::F32, 0, 0, O::Reverse});
    add({"decode x3 random order", {{1, 1}, {40, 1}, {100, 1}}, 32, 8, 128, 0, DType::F32, 0, 0, O::Random});
    // Splits and the merge.
    add({"decode ctx 300, 5 splits x 64", {{300, 1}}, 32, 8, 128, 0, DType::F32, 5, 64});
    add({"decode x3 ctx <=300, 5x64", {{1, 1}, {150, 1}, {300, 1}}, 32, 8, 128, 0, DType::F32, 5, 64});
    for (DType d : {DType::F16, DType::BF16}) {
        add({"decode x3 5x64", {{7, 1}, {150, 1}, {300, 1}}, 32, 8, 128, 0, d, 5, 64});
        add({"prefill 20 tokens", {{20, 20}}, 32, 8, 128, 0, d});
    }
    // Head geometries of the selftest.
    add({"mha hd64", {{1, 1}, {70, 1}, {200, 1}}, 16, 16, 64, 0, DType::F32, 4, 64});
    add({"gqa8 hd256", {{1, 1}, {70, 1}, {200, 1}}, 16, 2, 256, 0, DType::F32, 4, 64});
    add({"gqa5 hd80", {{3, 1}, {90, 1}}, 20, 4, 80, 0, DType::F32, 2, 64});
    add({"gqa7 hd96 bf16", {{3, 1}, {90, 1}}, 28, 4, 96, 0, DType::BF16, 2, 64});
    // DeepSeek's decompressed latent attention: as many KV heads as q heads, head dim 192.
    add({"mha hd192 bf16", {{3, 1}, {150, 1}, {300, 1}}, 16, 16, 192, 0, DType::BF16, 5, 64});
    add({"mha hd192 f32", {{1, 1}, {70, 1}}, 8, 8, 192, 0, DType::F32, 2, 64});
    add({"mha hd64 f16", {{3, 1}, {90, 1}}, 8, 8, 64, 0, DType::F16, 2, 64});
    add({"window 37", {{100, 1}, {20, 1}, {64, 3}}, 32, 8, 128, 37, DType::F32, 2, 32});
    // Llama 4's chunks (window -c): a chunk starting inside a block (37), a token on a
    // chunk's first position (64 = 2 x 32, 74 = 2 x 37), splits over a chunk of 300, and a
    // prefill through this kernel.
    add({"chunk 37", {{100, 1}, {20, 1}, {75, 1}, {64, 3}}, 32, 8, 128, -37, DType::F32, 2, 32});
    add({"chunk 32 bf16", {{65, 1}, {100, 1}, {33, 1}}, 16, 2, 64, -32, DType::BF16, 1, 512});
    add({"chunk 300 3x128 f16", {{1000, 1}, {601, 1}, {350, 1}}, 8, 2, 128, -300, DType::F16, 3, 128});
    add({"chunk 37 prefill 90 tokens", {{90, 90}}, 8, 2, 64, -37, DType::BF16});
    // Gemma 2's soft-capped scores (a cap small enough to change every softmax), split and
    // not, with a window, at its head dim 256.
    add({"softcap 1.5", {{1, 1}, {40, 1}, {100, 1}}, 32, 8, 128, 0, DType::F32, 0, 0, O::Forward, 1.5f});
    add({"softcap 1.5 5x64 bf16", {{7, 1}, {150, 1}, {300, 1}}, 32, 8, 128, 0, DType::BF16, 5, 64, O::Random, 1.5f});
    add({"softcap 50 window 37 hd256", {{100, 1}, {20, 1}, {64, 3}}, 8, 4, 256, 37, DType::F16, 2, 32, O::Forward, 50.0f});
    // gpt-oss's sinks: in the kernel's own normalisation (one split) and in the merge,
    // with its sliding window and head dim 64.
    Case sunk1{"sinks 1 split", {{1, 1}, {40, 1}, {100, 1}}, 32, 8, 128, 0, DType::F32, 1, 512};
    sunk1.sinks = true;
    add(sunk1);
    Case sunk5{"sinks 5x64 bf16", {{7, 1}, {150, 1}, {300, 1}}, 64, 8, 64, 0, DType::BF16, 5, 64, O::Random};
    sunk5.sinks = true;
    add(sunk5);
    Case sunkw{"sinks window 37 f16", {{100, 1}, {20, 1}, {64, 3}}, 64, 8, 64, 37, DType::F16, 2, 32};
    sunkw.sinks = true;
    add(sunkw);
    // ALiBi slopes (one per head: the slope of the wrong head, or the key's distance
    // taken from the split instead of the token, shows): unsplit, split (each split's
    // partial max carries the term into the merge), with sinks and a cap beside them, in a
    // window, a chunk of 3 and a prefill through this kernel.
    Case sloped1{"alibi 1 split", {{1, 1}, {40, 1}, {100, 1}}, 32, 8, 128, 0, DType::F32, 1, 512};
    sloped1.alibi = true;
    add(sloped1);
    Case sloped5{"alibi 5x64 bf16", {{7, 1}, {150, 1}, {300, 1}}, 32, 8, 128, 0, DType::BF16, 5, 64, O::Random};
    sloped5.alibi = true;
    add(sloped5);
    Case sloped_sunk{"alibi sinks softcap 4x64 f16", {{3, 1}, {90, 1}, {250, 1}}, 16, 2, 64, 0, DType::F16, 4, 64, O::Forward, 1.5f, true};
    sloped_sunk.alibi = true;
    add(sloped_sunk);
    Case slopedw{"alibi window 37 f32", {{100, 1}, {20, 1}, {64, 3}}, 64, 8, 64, 37, DType::F32, 2, 32};
    slopedw.alibi = true;
    add(slopedw);
    Case sloped_prefill{"alibi prefill 24 tokens", {{24, 24}}, 32, 8, 128, 0, DType::F16};
    sloped_prefill.alibi = true;
    add(sloped_prefill);
    Case sloped_long{"alibi decode x2 2 splits x 512", {{1000, 1}, {512, 1}}, 8, 2, 64, 0, DType::F32, 2, 512};
    sloped_long.alibi = true;
    add(sloped_long);
    // Splits of the most keys a CTA takes (512): every softmax slot of every lane in use,
    // and a last split only partly filled (1000 = 512 + 488).
    add({"decode x2 2 splits x 512", {{1000, 1}, {512, 1}}, 8, 2, 64, 0, DType::F32, 2, 512});
    if (full) {
        // The failing selftest shapes at their planned splits.
        add({"decode x1 ctx 1500 (plan)", {{1500, 1}}, 32, 8, 128});
        add({"decode x1 ctx 4097 (plan)", {{4097, 1}}, 32, 8, 128});
        add({"decode x8 (plan)", {{1, 1}, {700, 1}, {1999, 1}, {40, 1}, {1200, 1}, {333, 1}, {901, 1}, {2000, 1}}, 32, 8, 128});
        add({"prefill 128 tok, one split", {{128, 128}}, 32, 8, 128});
        add({"decode x8 bf16 (plan)", {{1, 1}, {700, 1}, {1999, 1}, {40, 1}, {1200, 1}, {333, 1}, {901, 1}, {2000, 1}}, 32, 8, 128, 0, DType::BF16});
        Case sloped_plan{"alibi decode x1 ctx 4097 (plan)", {{4097, 1}}, 32, 8, 128};
        sloped_plan.alibi = true;
        add(sloped_plan);
    }
    return v;
}

}  // namespace

std::vector<char> read_file(const char* path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(std::string("cannot read ") + path);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    const bool on_gpu = !args.empty() && args[0] == "gpu";
    const bool full = std::find(args.begin(), args.end(), "full") != args.end();
    std::unique_ptr<kiln_gpu::Driver> gpu;
    if (on_gpu) {
        if (args.size() < 2) {
            std::fprintf(stderr, "usage: attention_decode_check gpu KERNELS.cubin [full]\n");
            return 2;
        }
        gpu = std::make_unique<kiln_gpu::Driver>(read_file(args[1].c_str()));
    }
    std::vector<Mode> modes = {Mode::Emulate, Mode::EmulateGeneric};
    if (on_gpu) modes = {Mode::GpuGeneric, Mode::GpuDecode};
    int failures = 0;
    for (Mode mode : modes) {
        const char* what = mode == Mode::Emulate          ? "emulated split-K"
                           : mode == Mode::EmulateGeneric ? "emulated generic kernel"
                           : mode == Mode::GpuDecode      ? "GPU split-K"
                                                          : "GPU generic kernel (control)";
        std::printf("== %s\n", what);
        unsigned seed = 1;
        for (const Case& c : cases(full)) {
            Plan plan{};
            double err;
            try {
                err = run_case(c, seed++, &plan, mode, gpu.get());
            } catch (const std::exception& e) {
                std::printf("FAIL  %-36s %-4s  %s\n", c.name.c_str(), dtype_name(c.dtype), e.what());
                ++failures;
                continue;
            }
            const bool ok = err <= tolerance(c.dtype);
            failures += ok ? 0 : 1;
            char shape[64];
            if (mode == Mode::Emulate || mode == Mode::GpuDecode) {
                std::snprintf(shape, sizeof shape, "%d heads/CTA, %d x %d keys",
                              plan.heads_per_cta, plan.num_splits, plan.keys_per_split);
            } else {
                std::snprintf(shape, sizeof shape, "a CTA per (token, head)");
            }
            std::printf("%s  %-36s %-4s  %-26s max abs err %.3g\n", ok ? "ok  " : "FAIL",
                        c.name.c_str(), dtype_name(c.dtype), shape, err);
            std::fflush(stdout);
        }
    }
    std::printf("%s\n", failures == 0 ? "all cases match the reference" : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
