// Runs Mamba-1's mixer steps on the CPU through cuda_emu.h, with the launches of
// src/backend/cuda/ops_mamba.rs (the convolution at column offset 0, with or without a
// bias) and ops_selective_scan.rs (the scan, into a zeroed output), against a
// double-precision reference with transformers' rounding points. Decode rows at positions
// 0 to 3 and deep in a sequence, prefill chunks resuming a state (one shorter than the
// window), fresh prompts, a padding token and a padding sequence (its slot past the pool);
// the slots start random and the sequences hold shuffled slots of a larger pool.
//
//   selective_scan_check      exit status 1 if any case is off
#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "mamba.cu"
#include "selective_scan.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "emu_tensor.h"
#include "slot_step.h"

namespace {

using kiln_emu::Order;
using kiln_emu_tensor::Buffer;
using kiln_emu_tensor::DType;
using kiln_emu_tensor::dtype_name;
using kiln_emu_tensor::round_to;

std::mt19937 rng(31);
int failures = 0;

std::vector<float> random(DType d, size_t n, float range) {
    return kiln_emu_tensor::random_values(n, range, d, rng);
}

void report(const std::string& name, DType d, const std::vector<float>& got,
            const std::vector<double>& want, double rel) {
    failures += kiln_emu_tensor::report_relative(name, d, got, want, rel) ? 0 : 1;
}

double tolerance(DType d) { return d == DType::F32 ? 1e-4 : (d == DType::F16 ? 0x1p-7 : 0x1p-4); }

double silu(double v) { return v / (1.0 + std::exp(-v)); }
double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }
double rd(DType d, double v) { return round_to(d, static_cast<float>(v)); }

using ConvFn = void (*)(void*, float*, const void*, const void*, const void*, int, const int*,
                        const int*, int, const int*, const int*, int, int, int, int, int,
                        long long, long long);
using WindowFn = void (*)(float*, const void*, const int*, const int*, int, const int*,
                          const int*, int, int, int, int, long long, long long);
using ScanFn = void (*)(void*, float*, const void*, const void*, const void*, const void*,
                        const void*, const float*, const float*, const int*, const int*, int,
                        const int*, const int*, int, int, long long);

// Sequences as (context after the step, new tokens), then a one-token padding sequence and
// a trailing padding token.
void check_scan(DType d, int inner, int state, int taps, bool bias,
                const std::vector<std::pair<int, int>>& given, Order order) {
    const kiln_emu_slots::SlotStep step(given, rng);
    const int window = taps - 1;
    const long long state_values = static_cast<long long>(inner) * state;
    const long long values = state_values + static_cast<long long>(window) * inner;
    const std::vector<float> xz = random(d, static_cast<size_t>(step.tokens) * 2 * inner, 1.5f);
    const std::vector<float> dt = random(d, static_cast<size_t>(step.tokens) * inner, 2.0f);
    const std::vector<float> b = random(d, static_cast<size_t>(step.tokens) * state, 1.0f);
    const std::vector<float> c = random(d, static_cast<size_t>(step.tokens) * state, 1.0f);
    const std::vector<float> weight = random(d, static_cast<size_t>(inner) * taps, 0.8f);
    const std::vector<float> conv_bias = random(d, inner, 0.3f);
    std::vector<float> a = random(DType::F32, static_cast<size_t>(inner) * state, 1.0f);
    for (float& v : a) v = -std::exp(v);
    const std::vector<float> dd = random(d, inner, 1.0f);
    const std::vector<float> old_states = step.old_states(d, values, state_values, 1.0f, rng);
    Buffer in(d, xz), dtb(d, dt), bb(d, b), cb(d, c), w(d, weight), cbias(d, conv_bias);
    Buffer x = Buffer::unwritten(d, static_cast<size_t>(step.tokens) * inner);
    // The op zeroes the output: rows no sequence with a slot covers stay zero.
    Buffer out(d, std::vector<float>(static_cast<size_t>(step.tokens) * inner, 0.0f));
    std::vector<float> states = old_states;

    auto conv = KILN_PICK(ConvFn, mamba_conv, d);
    auto slide = KILN_PICK(WindowFn, mamba_conv_window, d);
    auto scan = KILN_PICK(ScanFn, selective_scan, d);
    const unsigned tiles = static_cast<unsigned>((inner + 255) / 256);
    const int width = 2 * inner;
    kiln_emu::launch({static_cast<unsigned>(step.tokens), tiles, 1}, {256, 1, 1}, order, 1, [&] {
        conv(x.data(), states.data(), in.data(), w.data(), bias ? cbias.data() : w.data(),
             bias ? 1 : 0, step.slots.data(), step.state_slots.data(), step.num_state_slots,
             step.query_start.data(), step.context_lens.data(), step.num_seqs, width, 0, inner, taps, values,
             state_values);
    });
    kiln_emu::launch({static_cast<unsigned>(step.num_seqs), tiles, 1}, {256, 1, 1}, order, 1, [&] {
        slide(states.data(), in.data(), step.slots.data(), step.state_slots.data(), step.num_state_slots,
              step.query_start.data(), step.context_lens.data(), width, 0, inner, taps, values,
              state_values);
    });
    kiln_emu::launch({static_cast<unsigned>(step.num_seqs), tiles, 1}, {256, 1, 1}, order, 1, [&] {
        scan(out.data(), states.data(), x.data(), dtb.data(), bb.data(), cb.data(), in.data(),
             a.data(), dd.data(), step.slots.data(), step.state_slots.data(), step.num_state_slots,
             step.query_start.data(), step.context_lens.data(), inner, state, values);
    });

    std::vector<double> want_x(static_cast<size_t>(step.tokens) * inner, 0.0);
    std::vector<double> want_states(old_states.begin(), old_states.end());
    std::vector<double> want_out(static_cast<size_t>(step.tokens) * inner, 0.0);
    for (int s = 0; s < step.real_seqs; ++s) {
        const int start = step.query_start[s], len = step.query_start[s + 1] - start;
        const int first = step.positions[start];
        const long long slot = step.state_slots[s];
        auto row = [&](int q, int ch) -> double {
            if (q >= 0) return xz[static_cast<size_t>(start + q) * width + ch];
            if (first == 0) return 0.0;
            return old_states[slot * values + state_values + static_cast<long long>(window + q) * inner + ch];
        };
        for (int t = 0; t < len; ++t) {
            for (int ch = 0; ch < inner; ++ch) {
                double acc = bias ? conv_bias[ch] : 0.0;
                for (int j = 0; j < taps; ++j) acc += static_cast<double>(weight[ch * taps + j]) * row(t - window + j, ch);
                want_x[static_cast<size_t>(start + t) * inner + ch] = rd(d, silu(rd(d, acc)));
            }
        }
        for (int j = 0; j < window; ++j) {
            for (int ch = 0; ch < inner; ++ch) {
                want_states[slot * values + state_values + static_cast<long long>(j) * inner + ch] = row(len - window + j, ch);
            }
        }
        for (int ch = 0; ch < inner; ++ch) {
            std::vector<double> h(state, 0.0);
            if (first > 0) {
                for (int k = 0; k < state; ++k) h[k] = old_states[slot * values + static_cast<long long>(ch) * state + k];
            }
            for (int t = start; t < start + len; ++t) {
                const double step = rd(d, softplus(dt[static_cast<size_t>(t) * inner + ch]));
                const double xv = want_x[static_cast<size_t>(t) * inner + ch];
                double y = 0.0;
                for (int k = 0; k < state; ++k) {
                    h[k] = std::exp(a[static_cast<size_t>(ch) * state + k] * step) * h[k] + step * b[static_cast<size_t>(t) * state + k] * xv;
                    y += rd(d, h[k]) * c[static_cast<size_t>(t) * state + k];
                }
                const double sum = rd(d, rd(d, y) + rd(d, xv * dd[ch]));
                const double z = xz[static_cast<size_t>(t) * width + inner + ch];
                want_out[static_cast<size_t>(t) * inner + ch] = rd(d, sum * rd(d, silu(z)));
            }
            for (int k = 0; k < state; ++k) want_states[slot * values + static_cast<long long>(ch) * state + k] = h[k];
        }
    }
    char name[160];
    std::snprintf(name, sizeof name, "%d seqs, %d tok, %d channels, state %d, %d taps%s", step.num_seqs,
                  step.tokens, inner, state, taps, bias ? ", bias" : "");
    std::vector<float> got_x = x.values();
    // Padding rows of x are the convolution's zeros; compare the sequences' rows only.
    report(std::string("conv     ") + name, d, got_x, want_x, tolerance(d));
    std::vector<float> got_states(states.begin(), states.end());
    report(std::string("states   ") + name, d, got_states, want_states, tolerance(d));
    report(std::string("output   ") + name, d, out.values(), want_out, tolerance(d));
}

}  // namespace

int main() {
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
        std::printf("== %s\n", dtype_name(d));
        // The mamba fixture's mixer: decode at positions 0-3 and deep, a chunk resuming, a
        // fresh prompt.
        check_scan(d, 128, 16, 4, true, {{1, 1}, {2, 1}, {3, 1}, {4, 1}, {40, 1}, {37, 9}, {12, 12}},
                   Order::Random);
        // Falcon-Mamba's odd case: a state of 12, no bias, channels past one block; a chunk
        // of 2 after a prefix (shorter than the window).
        check_scan(d, 300, 12, 4, false, {{30, 1}, {9, 9}, {21, 2}}, Order::Reverse);
        // The largest state the kernel holds, 3 taps.
        check_scan(d, 64, 32, 3, true, {{7, 7}, {30, 2}, {2, 1}}, Order::Forward);
    }
    std::printf("%s\n", failures == 0 ? "the selective scan matches the reference" : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
