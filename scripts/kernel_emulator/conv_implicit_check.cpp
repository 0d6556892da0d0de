// Runs kernels/conv_implicit.cu (the implicit-GEMM conv2d on tensor cores, mma.sync through
// cuda_emu.h's warp-collective model) on the CPU with the host's launch
// (src/backend/cuda/image_conv_implicit.rs: 256 threads, grid pixel tiles x channel tiles x
// images) and compares it with a double-precision direct convolution on small odd shapes:
// 3x3 padding 1, the stride-2 downsampler, 1x1, a non-square kernel without padding, c_in
// of 3 and 4 (the VAE's conv_in), c_out and pixel counts off the 128-wide tiles, K off the
// 32-wide k tile, weights and output off 16-byte boundaries, f16 and bf16, with and
// without bias, forward / reverse / random warps; where c_in is a multiple of 32, also
// tap-major (conv_weight_taps + conv_implicit_taps, as the host runs them).
//
//   conv_implicit_check        exit status 1 if any case is off
//
// Bound per output element: u |want| (the output's one rounding, u = 2^-11 f16, 2^-8 bf16)
// + (K / 16 + 2) 2^-24 sum |x w| (one f32 rounding per mma and per bias add; inputs are
// rounded before the reference sees them) + 1e-6.
#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "conv_implicit.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "emu_tensor.h"

namespace {

using kiln_emu::Order;
using kiln_emu_tensor::Buffer;
using kiln_emu_tensor::DType;
using kiln_emu_tensor::dtype_name;
using kiln_emu_tensor::round_to;

struct Case {
    int n, c_in, h, w, c_out, kh, kw, stride, pad;
    DType dtype;
    bool bias;
    Order order;
    // Weights and output one element past a 16-byte boundary: the kernel's scalar paths.
    bool misaligned = false;
};

using ConvFn = void (*)(void*, const void*, const void*, const void*, int, int, int, int, int,
                        int, int, int, int, int, int);
using TapsFn = void (*)(void*, const void*, long long, int, int);

std::vector<float> random(DType d, size_t n, std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = round_to(d, u(rng));
    return v;
}

// Worst error / bound over the output (> 1 fails; infinite for NaN, i.e. unwritten), on
// conv_implicit or (`taps`) conv_implicit_taps, after conv_weight_taps unless 1x1.
double run(const Case& c, unsigned seed, bool taps) {
    std::mt19937 rng(seed);
    const int oh = (c.h + 2 * c.pad - c.kh) / c.stride + 1;
    const int ow = (c.w + 2 * c.pad - c.kw) / c.stride + 1;
    const int pixels = oh * ow;
    const int k = c.c_in * c.kh * c.kw;
    const auto x = random(c.dtype, size_t(c.n) * c.c_in * c.h * c.w, rng);
    const auto w = random(c.dtype, size_t(c.c_out) * k, rng);
    const auto b = random(c.dtype, c.c_out, rng);
    const size_t skip = c.misaligned ? 1 : 0;
    std::vector<float> w_stored(skip, 0.0f);
    w_stored.insert(w_stored.end(), w.begin(), w.end());
    Buffer xb(c.dtype, x), wb(c.dtype, w_stored), bb(c.dtype, b);
    if (taps && c.kh * c.kw > 1) {  // as the host does: the weights reordered by the kernel
        Buffer permuted = Buffer::unwritten(c.dtype, w_stored.size());
        const long long total = static_cast<long long>(w.size());
        const TapsFn permute = KILN_PICK(TapsFn, conv_weight_taps, c.dtype);
        kiln_emu::launch({3, 1, 1}, {64, 1, 1}, Order::Forward, seed, [&] {
            permute(static_cast<std::uint16_t*>(permuted.data()) + skip,
                    static_cast<const std::uint16_t*>(wb.data()) + skip, total, c.c_in,
                    c.kh * c.kw);
        });
        wb = permuted;
    }
    Buffer out = Buffer::unwritten(c.dtype, skip + size_t(c.n) * c.c_out * pixels);
    auto* out_at = static_cast<std::uint16_t*>(out.data()) + skip;
    const auto* w_at = static_cast<const std::uint16_t*>(wb.data()) + skip;
    const ConvFn f = taps ? KILN_PICK(ConvFn, conv_implicit_taps, c.dtype)
                          : KILN_PICK(ConvFn, conv_implicit, c.dtype);
    const kiln_emu::Dim3 grid{unsigned((pixels + 127) / 128), unsigned((c.c_out + 127) / 128),
                              unsigned(c.n)};
    kiln_emu::launch(grid, {256, 1, 1}, c.order, seed, [&] {
        f(out_at, xb.data(), w_at, bb.data(), c.c_in, c.h, c.w, c.c_out, c.kh, c.kw,
          c.stride, c.pad, oh, ow, c.bias ? 1 : 0);
    });
    const double u = c.dtype == DType::F16 ? 0x1p-11 : 0x1p-8;
    double worst = 0.0;
    for (int img = 0; img < c.n; ++img) {
        for (int o = 0; o < c.c_out; ++o) {
            for (int p = 0; p < pixels; ++p) {
                const int oy = p / ow, ox = p % ow;
                double want = c.bias ? b[o] : 0.0;
                double magnitude = std::fabs(want);
                for (int ci = 0; ci < c.c_in; ++ci) {
                    for (int ky = 0; ky < c.kh; ++ky) {
                        for (int kx = 0; kx < c.kw; ++kx) {
                            const int iy = oy * c.stride - c.pad + ky;
                            const int ix = ox * c.stride - c.pad + kx;
                            if (iy < 0 || iy >= c.h || ix < 0 || ix >= c.w) continue;
                            const double term =
                                double(x[((size_t(img) * c.c_in + ci) * c.h + iy) * c.w + ix]) *
                                w[(size_t(o) * c.c_in + ci) * c.kh * c.kw + ky * c.kw + kx];
                            want += term;
                            magnitude += std::fabs(term);
                        }
                    }
                }
                const double got = out.at(skip + (size_t(img) * c.c_out + o) * pixels + p);
                const double bound =
                    u * std::fabs(want) + (k / 16 + 2) * 0x1p-24 * magnitude + 1e-6;
                const double err = std::fabs(got - want);
                if (std::isnan(err)) return INFINITY;
                worst = std::max(worst, err / bound);
            }
        }
    }
    return worst;
}

std::vector<Case> cases() {
    const DType f16 = DType::F16, bf16 = DType::BF16;
    const Order fwd = Order::Forward, rev = Order::Reverse, rnd = Order::Random;
    return {
        // 3x3 padding 1: 165 pixels (two pixel tiles, the second 37 wide), K = 45.
        {2, 5, 11, 15, 7, 3, 3, 1, 1, f16, true, fwd},
        // c_out 136: a second channel tile of 8; K = 180 (six k tiles, the last 20).
        {1, 20, 13, 12, 136, 3, 3, 1, 1, bf16, false, rnd},
        // The downsampler: stride 2, padding 1, odd input; K = 144 (vector weight rows).
        {2, 16, 17, 20, 24, 3, 3, 2, 1, f16, true, rev},
        {1, 16, 16, 16, 40, 3, 3, 2, 1, bf16, true, rnd},
        // 1x1: K = 24, 144 pixels (16-byte output stores).
        {2, 24, 9, 16, 40, 1, 1, 1, 0, bf16, true, fwd},
        {1, 13, 7, 5, 9, 1, 1, 1, 0, f16, false, rnd},
        // c_in 4 (the VAE's conv_in, K = 36) and 3; 256 pixels = two whole tiles.
        {1, 4, 16, 16, 32, 3, 3, 1, 1, f16, true, rnd},
        {1, 3, 10, 9, 5, 3, 3, 1, 1, bf16, false, rev},
        // Whole tiles everywhere: 128 channels, K = 288, 256 pixels.
        {1, 32, 16, 16, 128, 3, 3, 1, 1, bf16, true, rnd},
        {1, 32, 16, 16, 128, 3, 3, 1, 1, f16, false, fwd},
        // c_in multiples of 32 (also run tap-major): 3x3, stride 2, 1x1, two channel tiles.
        {2, 64, 9, 11, 136, 3, 3, 1, 1, bf16, true, rnd},
        {1, 32, 15, 13, 40, 3, 3, 2, 1, f16, false, rev},
        {2, 64, 7, 9, 24, 1, 1, 1, 0, f16, true, rnd},
        // A 3x2 kernel without padding.
        {1, 6, 7, 9, 9, 3, 2, 1, 0, f16, true, rnd},
        // Two images by two channel tiles, the bias's second tile.
        {2, 8, 9, 10, 130, 3, 3, 1, 1, f16, true, rnd},
        // K and pixels multiples of 8, but weights and output off 16-byte boundaries.
        {1, 16, 8, 8, 24, 3, 3, 1, 1, bf16, true, rnd, true},
        {1, 16, 8, 8, 24, 1, 1, 1, 0, f16, false, fwd, true},
    };
}

}  // namespace

int main() {
    int failures = 0;
    unsigned seed = 1;
    for (const Case& c : cases()) {
        char name[128];
        std::snprintf(name, sizeof name, "[%d,%d,%d,%d] * [%d,%d,%d,%d] s%d p%d%s%s", c.n,
                      c.c_in, c.h, c.w, c.c_out, c.c_in, c.kh, c.kw, c.stride, c.pad,
                      c.bias ? " +bias" : "", c.misaligned ? " unaligned" : "");
        // K in the weights' order always; tap-major too where the host would take it.
        for (bool taps : {false, true}) {
            if (taps && c.c_in % 32 != 0) continue;
            double ratio;
            try {
                ratio = run(c, seed++, taps);
            } catch (const std::exception& e) {
                std::printf("FAIL  %-48s %-4s %s  %s\n", name, dtype_name(c.dtype),
                            taps ? "taps" : "    ", e.what());
                ++failures;
                continue;
            }
            const bool ok = ratio <= 1.0;
            failures += ok ? 0 : 1;
            std::printf("%s  %-48s %-4s %s  %.2f of the bound\n", ok ? "ok  " : "FAIL", name,
                        dtype_name(c.dtype), taps ? "taps" : "    ", ratio);
            std::fflush(stdout);
        }
    }
    std::printf("%s\n", failures == 0 ? "all implicit-GEMM conv cases match the reference"
                                      : "SOME IMPLICIT-GEMM CONV CASES FAILED");
    return failures == 0 ? 0 : 1;
}
