// Runs the gated delta rule mixer (Qwen3-Next's linear attention) on the CPU through
// cuda_emu.h, with the launches of src/backend/cuda/ops_gated_delta.rs: the q / k / v
// convolution and window of kernels/mamba.cu (column offset 0, no bias), then
// kernels/gated_delta.cu's recurrence per (sequence, value head) and its gated norm, against
// a double-precision reference with the same rounding points. Decode rows at positions 0 to
// 3 and deep in a sequence, prefill chunks resuming a state (one shorter than the window),
// fresh prompts, a padding token and a padding sequence (its slot past the pool); the
// slots start random and the sequences hold shuffled slots of a larger pool, so a read of
// the wrong slot, head or row, or a state stored in the wrong place, shows.
//
//   gated_delta_check      exit status 1 if any case is off
#include <bit>

#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "mamba.cu"
#include "gated_delta.cu"
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

std::mt19937 rng(23);
int failures = 0;

std::vector<float> random(DType d, size_t n, float range) {
    return kiln_emu_tensor::random_values(n, range, d, rng);
}

void report(const std::string& name, DType d, const std::vector<float>& got,
            const std::vector<double>& want, double rel) {
    failures += kiln_emu_tensor::report_relative(name, d, got, want, rel) ? 0 : 1;
}

// 16-bit outputs round once or twice after f32 computations the reference does in double.
double tolerance(DType d) { return d == DType::F32 ? 1e-4 : (d == DType::F16 ? 0x1p-7 : 0x1p-4); }

struct Shape {
    int k_heads, v_heads, k_dim, v_dim, taps;
};

double silu(double v) { return v / (1.0 + std::exp(-v)); }
double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }
double rd(DType d, double v) { return round_to(d, static_cast<float>(v)); }

using ConvFn = void (*)(void*, float*, const void*, const void*, const void*, int, const int*,
                        const int*, int, const int*, const int*, int, int, int, int, int,
                        long long, long long);
using WindowFn = void (*)(float*, const void*, const int*, const int*, int, const int*,
                          const int*, int, int, int, int, long long, long long);
using ScanFn = void (*)(float*, float*, const void*, const void*, const float*, const float*,
                        const int*, const int*, int, const int*, const int*, int, int, int, int,
                        int, long long);
using NormFn = void (*)(void*, const float*, const void*, const void*, const int*, int, int,
                        int, int, float);

// Sequences as (context after the step, new tokens), then a one-token padding sequence and
// a trailing padding token.
void check_gated_delta(DType d, const Shape& sh, const std::vector<std::pair<int, int>>& given,
                       Order order) {
    const kiln_emu_slots::SlotStep step(given, rng);
    const int key_dim = sh.k_heads * sh.k_dim, value_dim = sh.v_heads * sh.v_dim;
    const int conv_dim = 2 * key_dim + value_dim;
    const int width = conv_dim + value_dim + 2 * sh.v_heads;
    const int window = sh.taps - 1;
    const long long state_values = static_cast<long long>(sh.v_heads) * sh.k_dim * sh.v_dim;
    const long long values = state_values + static_cast<long long>(window) * conv_dim;
    const std::vector<float> proj = random(d, static_cast<size_t>(step.tokens) * width, 1.5f);
    const std::vector<float> weight = random(d, static_cast<size_t>(conv_dim) * sh.taps, 0.8f);
    const std::vector<float> norm_w = random(d, sh.v_dim, 1.0f);
    const std::vector<float> dt_bias = random(DType::F32, sh.v_heads, 1.0f);
    std::vector<float> a = random(DType::F32, sh.v_heads, 1.0f);
    for (float& v : a) v = -std::exp(v);
    // Old states of the size a normalised-key recurrence keeps.
    const std::vector<float> old_states = step.old_states(d, values, state_values, 0.5f, rng);
    Buffer in(d, proj), w(d, weight), nw(d, norm_w);
    Buffer qkv = Buffer::unwritten(d, static_cast<size_t>(step.tokens) * conv_dim);
    Buffer out = Buffer::unwritten(d, static_cast<size_t>(step.tokens) * value_dim);
    std::vector<float> states = old_states;
    std::vector<float> o(static_cast<size_t>(step.tokens) * value_dim, __builtin_nanf(""));

    auto conv = KILN_PICK(ConvFn, mamba_conv, d);
    auto slide = KILN_PICK(WindowFn, mamba_conv_window, d);
    auto scan = KILN_PICK(ScanFn, gated_delta_scan, d);
    auto norm = KILN_PICK(NormFn, gated_delta_norm, d);
    const unsigned tiles = static_cast<unsigned>((conv_dim + 255) / 256);
    kiln_emu::launch({static_cast<unsigned>(step.tokens), tiles, 1}, {256, 1, 1}, order, 1, [&] {
        conv(qkv.data(), states.data(), in.data(), w.data(), w.data(), 0, step.slots.data(),
             step.state_slots.data(), step.num_state_slots, step.query_start.data(), step.context_lens.data(),
             step.num_seqs, width, 0, conv_dim, sh.taps, values, state_values);
    });
    kiln_emu::launch({static_cast<unsigned>(step.num_seqs), tiles, 1}, {256, 1, 1}, order, 1, [&] {
        slide(states.data(), in.data(), step.slots.data(), step.state_slots.data(), step.num_state_slots,
              step.query_start.data(), step.context_lens.data(), width, 0, conv_dim, sh.taps, values,
              state_values);
    });
    kiln_emu::launch({static_cast<unsigned>(step.num_seqs), static_cast<unsigned>(sh.v_heads), 1},
                     {256, 1, 1}, order, 1, [&] {
                         scan(o.data(), states.data(), qkv.data(), in.data(), dt_bias.data(),
                              a.data(), step.slots.data(), step.state_slots.data(), step.num_state_slots,
                              step.query_start.data(), step.context_lens.data(), sh.k_heads, sh.v_heads,
                              sh.k_dim, sh.v_dim, width, values);
                     });
    const unsigned norm_threads =
        std::min(1024u, std::max(32u, std::bit_ceil(unsigned(sh.v_dim))));
    kiln_emu::launch({static_cast<unsigned>(step.tokens), static_cast<unsigned>(sh.v_heads), 1},
                     {norm_threads, 1, 1}, order, 1, [&] {
                         norm(out.data(), o.data(), in.data(), nw.data(), step.slots.data(), width,
                              conv_dim, value_dim, sh.v_dim, 1e-6f);
                     });

    // The reference, sequence by sequence.
    std::vector<double> want_qkv(static_cast<size_t>(step.tokens) * conv_dim, 0.0);
    std::vector<double> want_states(old_states.begin(), old_states.end());
    std::vector<double> want_out(static_cast<size_t>(step.tokens) * value_dim, 0.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(sh.k_dim));
    for (int s = 0; s < step.real_seqs; ++s) {
        const int start = step.query_start[s], len = step.query_start[s + 1] - start;
        const int first = step.positions[start];
        const long long slot = step.state_slots[s];
        auto row = [&](int q, int c) -> double {
            if (q >= 0) return proj[static_cast<size_t>(start + q) * width + c];
            if (first == 0) return 0.0;
            return old_states[slot * values + state_values + static_cast<long long>(window + q) * conv_dim + c];
        };
        for (int t = 0; t < len; ++t) {
            for (int c = 0; c < conv_dim; ++c) {
                double acc = 0.0;
                for (int j = 0; j < sh.taps; ++j) acc += static_cast<double>(weight[c * sh.taps + j]) * row(t - window + j, c);
                want_qkv[static_cast<size_t>(start + t) * conv_dim + c] = rd(d, silu(rd(d, acc)));
            }
        }
        for (int j = 0; j < window; ++j) {
            for (int c = 0; c < conv_dim; ++c) {
                want_states[slot * values + state_values + static_cast<long long>(j) * conv_dim + c] = row(len - window + j, c);
            }
        }
        std::vector<double> S(state_values, 0.0);
        if (first > 0) {
            for (long long i = 0; i < state_values; ++i) S[i] = old_states[slot * values + i];
        }
        for (int t = start; t < start + len; ++t) {
            const double* r = &want_qkv[static_cast<size_t>(t) * conv_dim];
            const float* p = &proj[static_cast<size_t>(t) * width];
            for (int h = 0; h < sh.v_heads; ++h) {
                const int kh = h / (sh.v_heads / sh.k_heads);
                // transformers' eager l2norm: each step rounded to the dtype.
                double qq = 0.0, kk = 0.0;
                for (int i = 0; i < sh.k_dim; ++i) {
                    qq += rd(d, r[kh * sh.k_dim + i] * r[kh * sh.k_dim + i]);
                    kk += rd(d, r[key_dim + kh * sh.k_dim + i] * r[key_dim + kh * sh.k_dim + i]);
                }
                const double q_inv = rd(d, 1.0 / std::sqrt(rd(d, rd(d, qq) + 1e-6)));
                const double k_inv = rd(d, 1.0 / std::sqrt(rd(d, rd(d, kk) + 1e-6)));
                std::vector<double> q(sh.k_dim), k(sh.k_dim);
                for (int i = 0; i < sh.k_dim; ++i) {
                    q[i] = rd(d, r[kh * sh.k_dim + i] * q_inv) * scale;
                    k[i] = rd(d, r[key_dim + kh * sh.k_dim + i] * k_inv);
                }
                const double beta = rd(d, 1.0 / (1.0 + std::exp(-static_cast<double>(p[conv_dim + value_dim + h]))));
                const double decay = std::exp(a[h] * softplus(p[conv_dim + value_dim + sh.v_heads + h] + static_cast<double>(dt_bias[h])));
                double* Sh = &S[static_cast<size_t>(h) * sh.k_dim * sh.v_dim];
                std::vector<double> x(sh.v_dim);
                for (int j = 0; j < sh.v_dim; ++j) {
                    double recalled = 0.0;
                    for (int i = 0; i < sh.k_dim; ++i) {
                        Sh[i * sh.v_dim + j] *= decay;
                        recalled += Sh[i * sh.v_dim + j] * k[i];
                    }
                    const double delta = (r[2 * key_dim + h * sh.v_dim + j] - recalled) * beta;
                    double acc = 0.0;
                    for (int i = 0; i < sh.k_dim; ++i) {
                        Sh[i * sh.v_dim + j] += k[i] * delta;
                        acc += Sh[i * sh.v_dim + j] * q[i];
                    }
                    x[j] = rd(d, acc);
                }
                double sum = 0.0;
                for (int j = 0; j < sh.v_dim; ++j) sum += x[j] * x[j];
                const double inv = 1.0 / std::sqrt(sum / sh.v_dim + 1e-6);
                for (int j = 0; j < sh.v_dim; ++j) {
                    const double scaled = rd(d, norm_w[j] * rd(d, x[j] * inv));
                    const double z = p[conv_dim + h * sh.v_dim + j];
                    want_out[static_cast<size_t>(t) * value_dim + h * sh.v_dim + j] = rd(d, scaled * silu(z));
                }
            }
        }
        for (long long i = 0; i < state_values; ++i) want_states[slot * values + i] = S[i];
    }
    char name[160];
    std::snprintf(name, sizeof name, "%d seqs, %d tok, %d k heads x %d, %d v heads x %d, %d taps",
                  step.num_seqs, step.tokens, sh.k_heads, sh.k_dim, sh.v_heads, sh.v_dim, sh.taps);
    report(std::string("gdn conv     ") + name, d, qkv.values(), want_qkv, tolerance(d));
    std::vector<float> got_states(states.begin(), states.end());
    report(std::string("gdn states   ") + name, d, got_states, want_states, tolerance(d));
    report(std::string("gdn output   ") + name, d, out.values(), want_out, tolerance(d));
}

}  // namespace

int main() {
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
        std::printf("== %s\n", dtype_name(d));
        // The qwen3_next fixture's mixer: two value heads per key head, head sizes off the
        // warp width; decode at positions 0-3 and deep, a chunk resuming, a fresh prompt.
        check_gated_delta(d, Shape{2, 4, 16, 24, 4},
                          {{1, 1}, {2, 1}, {3, 1}, {4, 1}, {40, 1}, {37, 9}, {12, 12}},
                          Order::Random);
        // Qwen3-Next-80B's head (128 x 128: every register of the scan), fewer heads; a
        // chunk of 2 after a prefix (shorter than the window).
        check_gated_delta(d, Shape{1, 2, 128, 128, 4}, {{30, 1}, {9, 9}, {21, 2}},
                          Order::Reverse);
        // One value head per key head, 3 taps, odd head sizes.
        check_gated_delta(d, Shape{3, 3, 40, 20, 3}, {{7, 7}, {30, 2}, {2, 1}}, Order::Forward);
    }
    std::printf("%s\n", failures == 0 ? "the gated delta rule mixer matches the reference"
                                      : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
