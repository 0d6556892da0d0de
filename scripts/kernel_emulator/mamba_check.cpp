// Runs the Mamba-2 mixer of kernels/mamba.cu (the causal convolution with SiLU over the
// step's rows and the sequence's window, the new window, the recurrence per (sequence,
// head) from and into the sequence's state slot, the gated RMS norm) on the CPU through
// cuda_emu.h, with the launches of src/backend/cuda/ops_mamba.rs, against a
// double-precision reference: decode rows at positions 0 to 3 (taps before the sequence,
// a state from zeros) and deep in a sequence (its slot's window and state), prefill chunks
// resuming them (one shorter than the window), fresh prompts, a padding token and a
// padding sequence (its slot past the pool). The slots start random and the sequences hold
// shuffled slots of a larger pool, so a read of the wrong slot or row, or a state or
// window stored in the wrong place, shows.
//
//   mamba_check      exit status 1 if any case is off
#include <bit>

#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "mamba.cu"
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

std::mt19937 rng(11);
int failures = 0;

std::vector<float> random(DType d, size_t n, float range) {
    return kiln_emu_tensor::random_values(n, range, d, rng);
}

void report(const std::string& name, DType d, const std::vector<float>& got,
            const std::vector<double>& want, double rel) {
    failures += kiln_emu_tensor::report_relative(name, d, got, want, rel) ? 0 : 1;
}

// A 16-bit output rounds once after an f32 computation the reference does in double; the
// conv output is rounded twice (before and after SiLU), as the kernel and transformers do.
double tolerance(DType d) { return d == DType::F32 ? 1e-4 : (d == DType::F16 ? 0x1p-8 : 0x1p-5); }

struct Shape {
    int heads, head_dim, state, groups, taps;
    // Falcon-H1 without mamba_rms_norm: y * silu(z) (the SiLU rounded first), no norm.
    bool normed = true;
};

double silu(double v) { return v / (1.0 + std::exp(-v)); }
double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

using ConvFn = void (*)(void*, float*, const void*, const void*, const void*, int, const int*,
                        const int*, int, const int*, const int*, int, int, int, int, int,
                        long long, long long);
using WindowFn = void (*)(float*, const void*, const int*, const int*, int, const int*,
                          const int*, int, int, int, int, long long, long long);
using ScanFn = void (*)(float*, float*, const void*, const void*, const float*, const float*,
                        const float*, const int*, const int*, int, const int*, const int*, int,
                        int, int, int, int, long long, float, float);
using NormFn = void (*)(void*, const float*, const void*, const void*, const int*, int, int, int,
                        float);
using GateFn = void (*)(void*, const float*, const void*, const int*, int, int);

// Sequences as (context after the step, new tokens), then a one-token padding sequence (a
// recorded graph's spare row, its slot past the pool) and a trailing padding token.
void check_mamba(DType d, const Shape& sh, const std::vector<std::pair<int, int>>& given,
                 bool bias, Order order) {
    const kiln_emu_slots::SlotStep step(given, rng);
    const int inner = sh.heads * sh.head_dim;
    const int conv_dim = inner + 2 * sh.groups * sh.state;
    const int width = inner + conv_dim + sh.heads;
    const int window = sh.taps - 1;
    const long long ssm_values = static_cast<long long>(inner) * sh.state;
    const long long values = ssm_values + static_cast<long long>(window) * conv_dim;
    const std::vector<float> zxbcdt = random(d, static_cast<size_t>(step.tokens) * width, 1.5f);
    const std::vector<float> weight = random(d, static_cast<size_t>(conv_dim) * sh.taps, 0.8f);
    const std::vector<float> conv_bias = random(d, conv_dim, 0.3f);
    const std::vector<float> norm_w = random(d, inner, 1.0f);
    const std::vector<float> dt_bias = random(DType::F32, sh.heads, 1.0f);
    std::vector<float> a = random(DType::F32, sh.heads, 1.0f), dd = random(DType::F32, sh.heads, 1.0f);
    for (float& v : a) v = -std::exp(v);
    const std::vector<float> old_states = step.old_states(d, values, ssm_values, 1.0f, rng);
    Buffer in(d, zxbcdt), w(d, weight), b(d, conv_bias), nw(d, norm_w);
    Buffer xbc = Buffer::unwritten(d, static_cast<size_t>(step.tokens) * conv_dim);
    Buffer out = Buffer::unwritten(d, static_cast<size_t>(step.tokens) * inner);
    std::vector<float> states = old_states;
    // Unwritten scratch, as a pooled buffer would be.
    std::vector<float> y(static_cast<size_t>(step.tokens) * inner, __builtin_nanf(""));

    auto conv = KILN_PICK(ConvFn, mamba_conv, d);
    auto slide = KILN_PICK(WindowFn, mamba_conv_window, d);
    auto scan = KILN_PICK(ScanFn, mamba_scan, d);
    auto norm = KILN_PICK(NormFn, mamba_gated_norm, d);
    auto gate = KILN_PICK(GateFn, mamba_gate, d);
    const unsigned tiles = static_cast<unsigned>((conv_dim + 255) / 256);
    kiln_emu::launch({static_cast<unsigned>(step.tokens), tiles, 1}, {256, 1, 1}, order, 1, [&] {
        conv(xbc.data(), states.data(), in.data(), w.data(), bias ? b.data() : w.data(),
             bias ? 1 : 0, step.slots.data(), step.state_slots.data(), step.num_state_slots, step.query_start.data(),
             step.context_lens.data(), step.num_seqs, width, inner, conv_dim, sh.taps, values, ssm_values);
    });
    kiln_emu::launch({static_cast<unsigned>(step.num_seqs), tiles, 1}, {256, 1, 1}, order, 1, [&] {
        slide(states.data(), in.data(), step.slots.data(), step.state_slots.data(), step.num_state_slots,
              step.query_start.data(), step.context_lens.data(), width, inner, conv_dim, sh.taps, values,
              ssm_values);
    });
    kiln_emu::launch({static_cast<unsigned>(step.num_seqs), static_cast<unsigned>(sh.heads), 1},
                     {256, 1, 1}, order, 1, [&] {
                         scan(y.data(), states.data(), xbc.data(), in.data(), dt_bias.data(),
                              a.data(), dd.data(), step.slots.data(), step.state_slots.data(),
                              step.num_state_slots, step.query_start.data(), step.context_lens.data(),
                              sh.head_dim, sh.state, sh.groups, sh.heads, width, values, 0.0f,
                              INFINITY);
                     });
    if (sh.normed) {
        const unsigned norm_threads = std::min(1024u, std::max(32u, std::bit_ceil(unsigned(inner))));
        kiln_emu::launch({static_cast<unsigned>(step.tokens), 1, 1}, {norm_threads, 1, 1}, order, 1, [&] {
            norm(out.data(), y.data(), in.data(), nw.data(), step.slots.data(), width, inner, inner, 1e-5f);
        });
    } else {
        const unsigned gate_tiles = static_cast<unsigned>((inner + 255) / 256);
        kiln_emu::launch({static_cast<unsigned>(step.tokens), gate_tiles, 1}, {256, 1, 1}, order, 1, [&] {
            gate(out.data(), y.data(), in.data(), step.slots.data(), width, inner);
        });
    }

    // The reference, sequence by sequence.
    std::vector<double> want_xbc(static_cast<size_t>(step.tokens) * conv_dim, 0.0);
    std::vector<double> want_states(old_states.begin(), old_states.end());
    std::vector<double> want_out(static_cast<size_t>(step.tokens) * inner, 0.0);
    for (int s = 0; s < step.real_seqs; ++s) {
        const int start = step.query_start[s], len = step.query_start[s + 1] - start;
        const int first = step.positions[start];
        const long long slot = step.state_slots[s];
        // Row q of the step (q < 0: the old window, zeros at position 0).
        auto row = [&](int q, int c) -> double {
            if (q >= 0) return zxbcdt[static_cast<size_t>(start + q) * width + inner + c];
            if (first == 0) return 0.0;
            return old_states[slot * values + ssm_values + static_cast<long long>(window + q) * conv_dim + c];
        };
        for (int t = 0; t < len; ++t) {
            for (int c = 0; c < conv_dim; ++c) {
                double acc = bias ? conv_bias[c] : 0.0;
                for (int j = 0; j < sh.taps; ++j) acc += static_cast<double>(weight[c * sh.taps + j]) * row(t - window + j, c);
                want_xbc[static_cast<size_t>(start + t) * conv_dim + c] = round_to(d, silu(round_to(d, acc)));
            }
        }
        for (int j = 0; j < window; ++j) {
            for (int c = 0; c < conv_dim; ++c) {
                want_states[slot * values + ssm_values + static_cast<long long>(j) * conv_dim + c] = row(len - window + j, c);
            }
        }
        std::vector<double> h(ssm_values, 0.0);
        if (first > 0) {
            for (long long i = 0; i < ssm_values; ++i) h[i] = old_states[slot * values + i];
        }
        for (int t = start; t < start + len; ++t) {
            const double* r = &want_xbc[static_cast<size_t>(t) * conv_dim];
            std::vector<double> yt(inner);
            for (int head = 0; head < sh.heads; ++head) {
                const int g = head / (sh.heads / sh.groups);
                const double raw = zxbcdt[static_cast<size_t>(t) * width + inner + conv_dim + head];
                const double dt = std::max(0.0, softplus(raw + dt_bias[head]));
                const double decay = std::exp(dt * a[head]);
                for (int p = 0; p < sh.head_dim; ++p) {
                    const int i = head * sh.head_dim + p;
                    double acc = 0.0;
                    for (int n = 0; n < sh.state; ++n) {
                        double& v = h[static_cast<size_t>(i) * sh.state + n];
                        v = decay * v + dt * r[i] * r[inner + g * sh.state + n];
                        acc += v * r[inner + sh.groups * sh.state + g * sh.state + n];
                    }
                    yt[i] = acc + dd[head] * r[i];
                }
            }
            if (!sh.normed) {
                for (int i = 0; i < inner; ++i) {
                    const double g = round_to(d, silu(zxbcdt[static_cast<size_t>(t) * width + i]));
                    want_out[static_cast<size_t>(t) * inner + i] = round_to(d, yt[i] * g);
                }
                continue;
            }
            double sum = 0.0;
            for (int i = 0; i < inner; ++i) {
                yt[i] *= silu(zxbcdt[static_cast<size_t>(t) * width + i]);
                sum += yt[i] * yt[i];
            }
            const double inv = 1.0 / std::sqrt(sum / inner + 1e-5);
            for (int i = 0; i < inner; ++i) want_out[static_cast<size_t>(t) * inner + i] = round_to(d, norm_w[i] * yt[i] * inv);
        }
        for (long long i = 0; i < ssm_values; ++i) want_states[slot * values + i] = h[i];
    }
    char name[160];
    std::snprintf(name, sizeof name, "%d seqs, %d tok, %d heads x %d, state %d, %d groups, %d taps%s%s",
                  step.num_seqs, step.tokens, sh.heads, sh.head_dim, sh.state, sh.groups, sh.taps,
                  bias ? ", bias" : "", sh.normed ? "" : ", no norm");
    report(std::string("mamba conv     ") + name, d, xbc.values(), want_xbc, tolerance(d));
    std::vector<float> got_states(states.begin(), states.end());
    report(std::string("mamba states   ") + name, d, got_states, want_states, tolerance(d));
    report(std::string("mamba output   ") + name, d, out.values(), want_out, tolerance(d));
}

}  // namespace

int main() {
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
        std::printf("== %s\n", dtype_name(d));
        // The bamba fixture's mixer: decode at positions 0-3 (taps and window before the
        // sequence) and deep, a prefill chunk resuming a state, a fresh prompt.
        const Shape bamba{8, 16, 16, 2, 4};
        check_mamba(d, bamba, {{1, 1}, {2, 1}, {3, 1}, {4, 1}, {40, 1}, {37, 9}, {12, 12}}, true,
                    Order::Random);
        // Granite 4.0's head (64 x 128 state: four columns per lane), one group, no bias;
        // a chunk of 2 after a prefix (shorter than the window: part old, part new).
        const Shape granite{4, 64, 128, 1, 4};
        check_mamba(d, granite, {{100, 1}, {19, 19}, {35, 2}}, false, Order::Reverse);
        // The largest head the scan holds (64 x 256: 64 values per thread).
        check_mamba(d, Shape{2, 64, 256, 2, 4}, {{9, 9}, {17, 1}}, true, Order::Forward);
        // Odd shapes: 3 taps, 3 groups, a state of 40.
        check_mamba(d, Shape{3, 12, 40, 3, 3}, {{7, 7}, {30, 2}, {2, 1}}, true, Order::Random);
        // Falcon-H1's gate without the norm (the falcon_h1 fixture's mixer: 6 heads of 16, 2
        // groups; an inner width past one 256-thread tile).
        check_mamba(d, Shape{6, 16, 16, 2, 4, false}, {{1, 1}, {40, 1}, {37, 9}}, true, Order::Random);
        check_mamba(d, Shape{20, 16, 16, 1, 4, false}, {{5, 5}, {30, 1}}, false, Order::Reverse);
    }
    std::printf("%s\n", failures == 0 ? "the Mamba mixer matches the reference" : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
