// Runs the image-model kernels (kernels/image_norm.cu, image_pointwise.cu, image_layout.cu,
// attention_softmax.cu) on the CPU through cuda_emu.h and compares them with plain C++
// double-precision references on small odd shapes, in f32, f16 and bf16. Conv2d and dense
// attention run as the CUDA backend runs them (src/backend/cuda/image_conv.rs,
// image_attention.rs): the GEMMs cuBLAS would do are host loops here, the kernels are real.
//
//   image_ops_check      exit status 1 if any case is off
#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "image_norm.cu"
#include "image_pointwise.cu"
#include "image_layout.cu"
#include "attention_softmax.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "emu_tensor.h"

namespace {

using kiln_emu::Order;
using kiln_emu_tensor::Buffer;
using kiln_emu_tensor::DType;
using kiln_emu_tensor::dtype_name;
using kiln_emu_tensor::round_to;

std::mt19937 rng(7);

// `n` values uniform in [-range, range) + shift, rounded to the dtype.
std::vector<float> random(DType d, size_t n, float range, float shift = 0.0f) {
    std::uniform_real_distribution<float> u(-range, range);
    std::vector<float> v(n);
    for (float& x : v) x = round_to(d, u(rng) + shift);
    return v;
}

// Allowed max abs error relative to the largest reference magnitude (at least 1): the
// selftest's reduction tolerances (src/backend/cuda/selftest/compare.rs); 0 for copies.
double tolerance(DType d, bool exact) {
    if (exact) return 0.0;
    return d == DType::F32 ? 2e-5 : (d == DType::F16 ? 1.0 / 512 : 1.0 / 64);
}

int failures = 0;

void report(const std::string& name, DType d, const std::vector<float>& got,
            const std::vector<double>& want, bool exact = false) {
    double worst = got.size() == want.size() ? 0.0 : INFINITY;
    double largest = 1.0;
    size_t at = 0;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
        largest = std::max(largest, std::fabs(want[i]));
        const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
        if (std::isnan(err) || err > worst) {
            worst = std::isnan(err) ? INFINITY : err;
            at = i;
        }
    }
    const bool ok = worst <= tolerance(d, exact) * largest;
    failures += ok ? 0 : 1;
    std::printf("%s  %-52s %-4s  max abs err %.3g (max |ref| %.3g)", ok ? "ok  " : "FAIL",
                name.c_str(), dtype_name(d), worst, largest);
    if (!ok && at < got.size()) std::printf("  at %zu: got %g want %g", at, got[at], want[at]);
    std::printf("\n");
}

// A grid-stride kernel launched on a small grid, so the stride loop runs more than once.
const kiln_emu::Dim3 kStrideGrid{3, 1, 1};
const kiln_emu::Dim3 kStrideBlock{64, 1, 1};

// ---- norms ------------------------------------------------------------------------------

using GroupNormStatsFn = void (*)(float*, const void*, long long, int);
using GroupNormFinalizeFn = void (*)(float*, const float*, int, int, float);
using GroupNormApplyFn = void (*)(void*, const void*, const float*, const void*, const void*, int,
                                  int, long long, int, int);
using LayerNormFn = void (*)(void*, const void*, const void*, const void*, int, float);

// A group norm's three launches (src/backend/cuda/image_launch.rs GroupNormLaunch): the
// statistics over `chunks` blocks per group, the f64 merge, the apply over a
// (tiles, grid_y) grid of `apply_threads` (grid_y < planes makes the kernel loop over
// planes). x and y start `x_shift` / `y_shift` elements into their buffers, so rows sit off
// 16-byte boundaries (equal shifts: vectors with a scalar head; unequal: all scalar).
struct GroupNormGrid {
    int chunks, apply_threads, tiles, grid_y;
    int x_shift = 0, y_shift = 0;
};

void check_group_norm(DType d, int n, int c, int h, int w, int groups, bool silu,
                      GroupNormGrid g, Order order, float shift = 2.0f) {
    const long long spatial = static_cast<long long>(h) * w;
    const size_t total = static_cast<size_t>(n) * c * spatial;
    const std::vector<float> x = random(d, total, 3.0f, shift);
    const std::vector<float> wt = random(d, c, 1.5f), b = random(d, c, 1.0f);
    const float eps = 1e-5f;
    std::vector<float> x_padded(g.x_shift, 0.0f);
    x_padded.insert(x_padded.end(), x.begin(), x.end());
    Buffer xb(d, x_padded), wb(d, wt), bb(d, b), y = Buffer::unwritten(d, total + g.y_shift);
    const size_t elem = d == DType::F32 ? 4 : 2;
    const void* x_at = static_cast<const char*>(xb.data()) + g.x_shift * elem;
    void* y_at = static_cast<char*>(y.data()) + g.y_shift * elem;
    const int rows = n * groups, per = c / groups;
    std::vector<float> partials(static_cast<size_t>(rows) * g.chunks * 3, NAN);
    std::vector<float> stats(2 * rows, NAN);
    auto stats_kernel = KILN_PICK(GroupNormStatsFn, group_norm_stats, d);
    auto finalize = KILN_PICK(GroupNormFinalizeFn, group_norm_finalize, d);
    auto apply = KILN_PICK(GroupNormApplyFn, group_norm_apply, d);
    const long long count = per * spatial;
    kiln_emu::launch({static_cast<unsigned>(g.chunks), static_cast<unsigned>(rows), 1}, {256, 1, 1},
                     order, 1, [&] { stats_kernel(partials.data(), x_at, count, g.chunks); });
    kiln_emu::launch({static_cast<unsigned>((rows + 127) / 128), 1, 1}, {128, 1, 1}, order, 1,
                     [&] { finalize(stats.data(), partials.data(), rows, g.chunks, eps); });
    const int planes = n * c;
    kiln_emu::launch({static_cast<unsigned>(g.tiles), static_cast<unsigned>(g.grid_y), 1},
                     {static_cast<unsigned>(g.apply_threads), 1, 1}, order, 1, [&] {
                         apply(y_at, x_at, stats.data(), wb.data(), bb.data(), c, per, spatial,
                               planes, silu ? 1 : 0);
                     });
    std::vector<double> want(total);
    for (int s = 0; s < n; ++s) {
        for (int grp = 0; grp < groups; ++grp) {
            const size_t base = (static_cast<size_t>(s) * c + grp * per) * spatial;
            const size_t cnt = per * spatial;
            double mean = 0.0, var = 0.0;
            for (size_t j = 0; j < cnt; ++j) mean += x[base + j];
            mean /= cnt;
            for (size_t j = 0; j < cnt; ++j) var += (x[base + j] - mean) * (x[base + j] - mean);
            var /= cnt;
            for (size_t j = 0; j < cnt; ++j) {
                const int ch = grp * per + static_cast<int>(j / spatial);
                double v = (x[base + j] - mean) / std::sqrt(var + eps) * wt[ch] + b[ch];
                if (silu) v = v / (1.0 + std::exp(-v));
                want[base + j] = v;
            }
        }
    }
    std::vector<float> got = y.values();
    got.erase(got.begin(), got.begin() + g.y_shift);
    char name[120];
    std::snprintf(name, sizeof name,
                  "group_norm%s [%d,%d,%d,%d]/%d, %d chunks, %dx%d of %d, +%d/+%d%s%s",
                  silu ? "+silu" : "", n, c, h, w, groups, g.chunks, g.tiles, g.grid_y,
                  g.apply_threads, g.x_shift, g.y_shift, order == Order::Random ? " random" : "",
                  shift != 2.0f ? " offset" : "");
    report(name, d, got, want);
}

// The host's per-plane map (image_launch.rs plane_map): (tiles, min(planes, max_y)) blocks
// of `threads`.
struct PlaneGrid {
    int threads, tiles, grid_y;
};

PlaneGrid plane_grid(DType d, int planes, long long spatial, int max_y = 65535) {
    const int per_vec = d == DType::F32 ? 4 : 8;
    const long long vectors = (spatial + per_vec - 1) / per_vec;
    int threads = 32;
    while (threads < vectors && threads < 256) threads *= 2;
    return PlaneGrid{threads, static_cast<int>((vectors + threads - 1) / threads),
                     std::min(planes, max_y)};
}

// The host's geometry (GroupNormLaunch::new) for the shape, in small: chunks as given.
GroupNormGrid host_grid(DType d, int n, int c, long long spatial, int chunks) {
    const PlaneGrid p = plane_grid(d, n * c, spatial);
    return GroupNormGrid{chunks, p.threads, p.tiles, p.grid_y};
}

void check_layer_norm(DType d, int rows, int width, int threads, Order order) {
    const std::vector<float> x = random(d, rows * width, 2.0f, -1.0f);
    const std::vector<float> wt = random(d, width, 1.5f), b = random(d, width, 1.0f);
    const float eps = 1e-5f;
    Buffer xb(d, x), wb(d, wt), bb(d, b), y = Buffer::unwritten(d, x.size());
    auto kernel = KILN_PICK(LayerNormFn, layer_norm, d);
    kiln_emu::launch({static_cast<unsigned>(rows), 1, 1}, {static_cast<unsigned>(threads), 1, 1},
                     order, 2,
                     [&] { kernel(y.data(), xb.data(), wb.data(), bb.data(), width, eps); });
    std::vector<double> want(x.size());
    for (int r = 0; r < rows; ++r) {
        const float* row = &x[static_cast<size_t>(r) * width];
        double mean = 0.0, var = 0.0;
        for (int j = 0; j < width; ++j) mean += row[j];
        mean /= width;
        for (int j = 0; j < width; ++j) var += (row[j] - mean) * (row[j] - mean);
        var /= width;
        for (int j = 0; j < width; ++j) {
            want[static_cast<size_t>(r) * width + j] =
                (row[j] - mean) / std::sqrt(var + eps) * wt[j] + b[j];
        }
    }
    report("layer_norm [" + std::to_string(rows) + "," + std::to_string(width) + "] " +
               std::to_string(threads) + " threads",
           d, y.values(), want);
}

using HeadLayerNormFn = void (*)(void*, const void*, const void*, int, int, float);

// Command R+'s / StableLM 2 12B's q and k norms: each head of `hd` values of a token's row
// layer-normed and scaled by its own head's weight row, no bias.
void check_head_layer_norm(DType d, int tokens, int heads, int hd, int threads, Order order) {
    const int rows = tokens * heads;
    const std::vector<float> x = random(d, static_cast<size_t>(rows) * hd, 2.0f, -1.0f);
    const std::vector<float> wt = random(d, static_cast<size_t>(heads) * hd, 1.5f);
    const float eps = 1e-5f;
    Buffer xb(d, x), wb(d, wt), y = Buffer::unwritten(d, x.size());
    auto kernel = KILN_PICK(HeadLayerNormFn, head_layer_norm, d);
    kiln_emu::launch({static_cast<unsigned>(rows), 1, 1}, {static_cast<unsigned>(threads), 1, 1},
                     order, 2, [&] { kernel(y.data(), xb.data(), wb.data(), hd, heads, eps); });
    std::vector<double> want(x.size());
    for (int r = 0; r < rows; ++r) {
        const float* row = &x[static_cast<size_t>(r) * hd];
        const float* w = &wt[static_cast<size_t>(r % heads) * hd];
        double mean = 0.0, var = 0.0;
        for (int j = 0; j < hd; ++j) mean += row[j];
        mean /= hd;
        for (int j = 0; j < hd; ++j) var += (row[j] - mean) * (row[j] - mean);
        var /= hd;
        for (int j = 0; j < hd; ++j) {
            want[static_cast<size_t>(r) * hd + j] = (row[j] - mean) / std::sqrt(var + eps) * w[j];
        }
    }
    report("head_layer_norm [" + std::to_string(tokens) + ", " + std::to_string(heads) + " x " +
               std::to_string(hd) + "] " + std::to_string(threads) + " threads",
           d, y.values(), want);
}

// ---- element-wise -----------------------------------------------------------------------

using ActivationFn = void (*)(void*, const void*, long long, int, float, float, float, float);
using GegluFn = void (*)(void*, const void*, long long, int);
using LincombFn = void (*)(void*, const void*, const void*, long long, float, float, int);
using ChannelBiasFn = void (*)(void*, const void*, const void*, int, int, long long, int);
using AddRowFn = void (*)(void*, const void*, const void*, long long, int);

double gelu_erf(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

// xIELU's parameters for the check (Apertus-like: alpha_p, alpha_n, beta, eps).
const double kXielu[4] = {0.55, 0.8, 0.5, -1e-6};

double activate(double x, int act) {
    switch (act) {
        case KILN_ACT_XIELU:
            return x > 0.0 ? kXielu[0] * x * x + kXielu[2] * x
                           : (std::expm1(std::min(x, kXielu[3])) - x) * kXielu[1] + kXielu[2] * x;
        case KILN_ACT_SILU:
            return x / (1.0 + std::exp(-x));
        case KILN_ACT_GELU_ERF:
            return gelu_erf(x);
        case KILN_ACT_GELU_TANH:
            return 0.5 * x *
                   (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
        case KILN_ACT_RELU:
            return x > 0.0 ? x : 0.0;
        case KILN_ACT_RELU2:
            return x > 0.0 ? x * x : 0.0;
        default:
            return x / (1.0 + std::exp(-1.702 * x));
    }
}

void check_activations(DType d) {
    const char* names[] = {"silu",       "gelu(erf)", "gelu(tanh)", "quick_gelu",
                           "relu",       "relu2",     "xielu"};
    for (int act = 0; act < 7; ++act) {
        std::vector<float> x = random(d, 301, 6.0f);
        x[0] = 0.0f;
        x[1] = -30.0f;  // exp overflow territory for the sigmoid forms
        Buffer xb(d, x), y = Buffer::unwritten(d, x.size());
        auto kernel = KILN_PICK(ActivationFn, activation, d);
        long long total = static_cast<long long>(x.size());
        kiln_emu::launch(kStrideGrid, kStrideBlock, Order::Forward, 3,
                         [&] {
                             kernel(y.data(), xb.data(), total, act, float(kXielu[0]),
                                    float(kXielu[1]), float(kXielu[2]), float(kXielu[3]));
                         });
        std::vector<double> want(x.size());
        for (size_t i = 0; i < x.size(); ++i) want[i] = activate(x[i], act);
        report(std::string("activation ") + names[act] + " [301]", d, y.values(), want);
    }
}

void check_geglu(DType d) {
    const int rows = 3, half = 19;
    const std::vector<float> x = random(d, rows * 2 * half, 4.0f);
    Buffer xb(d, x), y = Buffer::unwritten(d, rows * half);
    auto kernel = KILN_PICK(GegluFn, geglu, d);
    long long total = rows * half;
    kiln_emu::launch(kStrideGrid, {32, 1, 1}, Order::Forward, 4,
                     [&] { kernel(y.data(), xb.data(), total, half); });
    std::vector<double> want(total);
    for (int r = 0; r < rows; ++r) {
        for (int j = 0; j < half; ++j) {
            want[r * half + j] = x[r * 2 * half + j] * gelu_erf(x[r * 2 * half + half + j]);
        }
    }
    report("geglu [3, 2 x 19]", d, y.values(), want);
}

void check_lincomb(DType d) {
    const size_t n = 257;
    std::vector<float> a = random(d, n, 3.0f), b = random(d, n, 3.0f);
    auto kernel = KILN_PICK(LincombFn, lincomb, d);
    long long total = n;
    for (int has_b : {1, 0}) {
        a[5] = has_b ? a[5] : INFINITY;  // a plain scale keeps infinities (no 0 * inf)
        Buffer ab(d, a), bb(d, b), y = Buffer::unwritten(d, n);
        kiln_emu::launch(kStrideGrid, kStrideBlock, Order::Forward, 5,
                         [&] { kernel(y.data(), ab.data(), bb.data(), total, 0.7f, -1.3f, has_b); });
        std::vector<double> want(n);
        for (size_t i = 0; i < n; ++i) want[i] = 0.7 * a[i] + (has_b ? -1.3 * b[i] : 0.0);
        std::vector<float> got = y.values();
        if (!has_b) {
            const bool inf_kept = std::isinf(got[5]) && got[5] > 0;
            failures += inf_kept ? 0 : 1;
            std::printf("%s  %-52s %-4s  got %g\n", inf_kept ? "ok  " : "FAIL",
                        "scale keeps +inf", dtype_name(d), got[5]);
            got[5] = 0.0f;
            want[5] = 0.0;
        }
        report(has_b ? "lincomb 0.7 a - 1.3 b [257]" : "scale 0.7 a [257]", d, got, want);
    }
}

// x[n, c, h, w] + bias, at the host's grid with the y grid capped at `max_y` (the kernel
// loops over the planes past it), x and y `shift` elements into their buffers.
void check_channel_bias(DType d, int n, int c, int h, int w, int max_y, int shift) {
    const long long spatial = h * w;
    const int planes = n * c;
    const std::vector<float> x = random(d, n * c * spatial, 2.0f);
    std::vector<float> x_padded(shift, 0.0f);
    x_padded.insert(x_padded.end(), x.begin(), x.end());
    auto kernel = KILN_PICK(ChannelBiasFn, add_channel_bias, d);
    const PlaneGrid g = plane_grid(d, planes, spatial, max_y);
    const size_t elem = d == DType::F32 ? 4 : 2;
    for (int stride : {c, 0}) {
        const std::vector<float> bias = random(d, stride == 0 ? c : n * c, 2.0f);
        Buffer xb(d, x_padded), bb(d, bias), y = Buffer::unwritten(d, x_padded.size());
        kiln_emu::launch({static_cast<unsigned>(g.tiles), static_cast<unsigned>(g.grid_y), 1},
                         {static_cast<unsigned>(g.threads), 1, 1}, Order::Forward, 6, [&] {
                             kernel(static_cast<char*>(y.data()) + shift * elem,
                                    static_cast<char*>(xb.data()) + shift * elem, bb.data(),
                                    planes, c, spatial, stride);
                         });
        std::vector<double> want(x.size());
        for (size_t i = 0; i < x.size(); ++i) {
            const size_t plane = i / spatial;
            want[i] = x[i] + static_cast<double>(bias[(plane / c) * stride + plane % c]);
        }
        std::vector<float> got = y.values();
        got.erase(got.begin(), got.begin() + shift);
        char name[96];
        std::snprintf(name, sizeof name, "%s [%d,%d,%d,%d], %dx%d of %d, +%d",
                      stride ? "add_channel_bias" : "conv bias", n, c, h, w, g.tiles, g.grid_y,
                      g.threads, shift);
        report(name, d, got, want);
    }
}

void check_add_row(DType d) {
    const int rows = 4, width = 13;
    const std::vector<float> x = random(d, rows * width, 2.0f), row = random(d, width, 2.0f);
    Buffer xb(d, x), rb(d, row), y = Buffer::unwritten(d, x.size());
    auto kernel = KILN_PICK(AddRowFn, add_row, d);
    long long total = static_cast<long long>(x.size());
    kiln_emu::launch(kStrideGrid, {32, 1, 1}, Order::Forward, 7,
                     [&] { kernel(y.data(), xb.data(), rb.data(), total, width); });
    std::vector<double> want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want[i] = x[i] + static_cast<double>(row[i % width]);
    report("add_row [4,13] + [13]", d, y.values(), want);
}

// ---- layout -----------------------------------------------------------------------------

using UpsampleFn = void (*)(void*, const void*, int, int, int, int, int, int);
using CopyAxisFn = void (*)(void*, const void*, long long, long long, int, int, int, int, int);
using TransposeFn = void (*)(void*, const void*, long long, int, int);

// The host's launch of a plane gather (image_launch.rs GatherLaunch::new: im2col,
// upsample) with the y grid capped at `max_y` (65535 there; smaller here so the kernel's
// loop over planes runs).
struct GatherGrid {
    unsigned tiles, grid_y, threads;
    int vectorised;
};

GatherGrid gather_grid(DType d, int planes, int oh, int ow, int max_y) {
    const int per_vec = d == DType::F32 ? 4 : 8;
    const int vectorised = ow % per_vec == 0 ? 1 : 0;
    const int items = oh * ow / (vectorised ? per_vec : 1);
    int threads = 32;
    while (threads < items && threads < 256) threads *= 2;
    return GatherGrid{static_cast<unsigned>((items + threads - 1) / threads),
                      static_cast<unsigned>(std::min(planes, max_y)),
                      static_cast<unsigned>(threads), vectorised};
}

void check_upsample(DType d, int in_h, int in_w, int out_h, int out_w, int max_y = 65535) {
    const int planes = 6;  // n = 2, c = 3
    const std::vector<float> x = random(d, planes * in_h * in_w, 5.0f);
    Buffer xb(d, x), y = Buffer::unwritten(d, static_cast<size_t>(planes) * out_h * out_w);
    auto kernel = KILN_PICK(UpsampleFn, upsample_nearest, d);
    const GatherGrid g = gather_grid(d, planes, out_h, out_w, max_y);
    kiln_emu::launch({g.tiles, g.grid_y, 1}, {g.threads, 1, 1}, Order::Forward, 8, [&] {
        kernel(y.data(), xb.data(), planes, in_h, in_w, out_h, out_w, g.vectorised);
    });
    // Small sizes: floor(i * in / out) in exact integers is what the f32 rule gives.
    std::vector<double> want(y.size());
    for (int p = 0; p < planes; ++p) {
        for (int oy = 0; oy < out_h; ++oy) {
            for (int ox = 0; ox < out_w; ++ox) {
                const int sy = std::min(oy * in_h / out_h, in_h - 1);
                const int sx = std::min(ox * in_w / out_w, in_w - 1);
                want[(static_cast<size_t>(p) * out_h + oy) * out_w + ox] =
                    x[(static_cast<size_t>(p) * in_h + sy) * in_w + sx];
            }
        }
    }
    char name[96];
    std::snprintf(name, sizeof name, "upsample_nearest [2,3,%d,%d] -> %dx%d, %ux%u%s", in_h, in_w,
                  out_h, out_w, g.tiles, g.grid_y, g.vectorised ? " vec" : "");
    report(name, d, y.values(), want, true);
}

// Concat of `parts` (each dims with its own length on `axis`) and a narrow of the result,
// through copy_axis, the way src/backend/cuda/image_layout_ops.rs splits them.
void check_concat_narrow(DType d, const std::vector<std::vector<int>>& parts, int axis) {
    auto product = [](const std::vector<int>& dims, int from, int to) {
        long long p = 1;
        for (int i = from; i < to; ++i) p *= dims[i];
        return p;
    };
    const int rank = static_cast<int>(parts[0].size());
    const long long outer = product(parts[0], 0, axis), inner = product(parts[0], axis + 1, rank);
    int joined = 0;
    std::vector<std::vector<float>> values;
    for (const auto& p : parts) {
        joined += p[axis];
        values.push_back(random(d, product(p, 0, rank), 4.0f));
    }
    auto kernel = KILN_PICK(CopyAxisFn, copy_axis, d);
    Buffer out = Buffer::unwritten(d, outer * joined * inner);
    int offset = 0;
    for (size_t k = 0; k < parts.size(); ++k) {
        Buffer src(d, values[k]);
        const int len = parts[k][axis];
        long long total = outer * len * inner;
        kiln_emu::launch(kStrideGrid, kStrideBlock, Order::Forward, 9, [&] {
            kernel(out.data(), src.data(), total, inner, len, len, 0, joined, offset);
        });
        offset += len;
    }
    std::vector<double> want;
    for (long long o = 0; o < outer; ++o) {
        for (size_t k = 0; k < parts.size(); ++k) {
            const long long block = parts[k][axis] * inner;
            for (long long j = 0; j < block; ++j) want.push_back(values[k][o * block + j]);
        }
    }
    const std::string where = "axis " + std::to_string(axis) + " of " +
                              std::to_string(parts.size()) + " parts";
    report("concat " + where, d, out.values(), want, true);

    // narrow(joined, axis, start = 1, len = joined - 2)
    const int start = 1, len = joined - 2;
    Buffer narrowed = Buffer::unwritten(d, outer * len * inner);
    long long total = outer * len * inner;
    kiln_emu::launch(kStrideGrid, kStrideBlock, Order::Forward, 10, [&] {
        kernel(narrowed.data(), out.data(), total, inner, len, joined, start, len, 0);
    });
    std::vector<double> want_narrow;
    for (long long o = 0; o < outer; ++o) {
        for (long long j = 0; j < len * inner; ++j) {
            want_narrow.push_back(want[(o * joined + start) * inner + j]);
        }
    }
    report("narrow " + where, d, narrowed.values(), want_narrow, true);
}

void check_transpose(DType d) {
    const int batch = 2, c = 3, hw = 35;  // NCHW [2, 3, 5, 7] <-> tokens [2, 35, 3]
    const std::vector<float> x = random(d, batch * c * hw, 4.0f);
    auto kernel = KILN_PICK(TransposeFn, transpose_last2, d);
    long long total = static_cast<long long>(x.size());
    Buffer xb(d, x), tokens = Buffer::unwritten(d, x.size()), back = Buffer::unwritten(d, x.size());
    kiln_emu::launch(kStrideGrid, kStrideBlock, Order::Forward, 11,
                     [&] { kernel(tokens.data(), xb.data(), total, c, hw); });
    kiln_emu::launch(kStrideGrid, kStrideBlock, Order::Forward, 12,
                     [&] { kernel(back.data(), tokens.data(), total, hw, c); });
    std::vector<double> want(x.size()), same(x.begin(), x.end());
    for (int b = 0; b < batch; ++b) {
        for (int t = 0; t < hw; ++t) {
            for (int ch = 0; ch < c; ++ch) want[(b * hw + t) * c + ch] = x[(b * c + ch) * hw + t];
        }
    }
    report("nchw_to_tokens [2,3,5,7]", d, tokens.values(), want, true);
    report("tokens_to_nchw round trip", d, back.values(), same, true);
}

// ---- conv2d: im2col + (host) GEMM + bias -------------------------------------------------

using Im2colFn = void (*)(void*, const void*, int, int, int, int, int, int, int, int, int, int,
                          int, int, int);
using ConvWeightBiasFn = void (*)(void*, const void*, const void*, int, int, int, int);

// col[count, cin * k * k + bias_rows, oh * ow] of images first .. first + count, exactly,
// written `col_shift` elements into its buffer (off 16 bytes: the kernel must fall back to
// scalar).
void check_im2col(DType d, int n, int cin, int h, int w, int k, int stride, int pad, int first,
                  int count, int max_y, int col_shift = 0, int bias_rows = 0) {
    const int oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
    const int rows = cin * k * k + bias_rows, pixels = oh * ow, planes = count * rows;
    const std::vector<float> x = random(d, n * cin * h * w, 2.0f);
    Buffer xb(d, x), col = Buffer::unwritten(d, static_cast<size_t>(planes) * pixels + col_shift);
    const size_t elem = d == DType::F32 ? 4 : 2;
    void* col_at = static_cast<char*>(col.data()) + col_shift * elem;
    const GatherGrid g = gather_grid(d, planes, oh, ow, max_y);
    auto im2col = KILN_PICK(Im2colFn, im2col, d);
    kiln_emu::launch({g.tiles, g.grid_y, 1}, {g.threads, 1, 1}, Order::Random, 16, [&] {
        im2col(col_at, xb.data(), planes, first, cin, h, w, k, k, stride, pad, oh, ow, bias_rows,
               g.vectorised);
    });
    std::vector<double> want;
    for (int image = first; image < first + count; ++image) {
        for (int c = 0; c < cin; ++c) {
            for (int ky = 0; ky < k; ++ky) {
                for (int kx = 0; kx < k; ++kx) {
                    for (int oy = 0; oy < oh; ++oy) {
                        for (int ox = 0; ox < ow; ++ox) {
                            const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                            const bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                            want.push_back(inside ? x[((image * cin + c) * h + iy) * w + ix] : 0.0);
                        }
                    }
                }
            }
        }
        for (int r = 0; r < bias_rows * pixels; ++r) want.push_back(r < pixels ? 1.0 : 0.0);
    }
    std::vector<float> got = col.values();
    got.erase(got.begin(), got.begin() + col_shift);
    char name[120];
    std::snprintf(name, sizeof name, "im2col [%d,%d,%d,%d] k%d s%d p%d images %d+%d%s, %ux%u%s%s",
                  n, cin, h, w, k, stride, pad, first, count, bias_rows ? " +bias" : "", g.tiles,
                  g.grid_y, g.vectorised ? " vec" : "", col_shift ? " col+1" : "");
    report(name, d, got, want, true);
}

// As src/backend/cuda/image_conv.rs: a 3x3 (any non-1x1) conv carries its bias in the GEMM
// (conv_weight_bias's weights against im2col's 8 extra rows); a 1x1 conv multiplies the
// image itself, then add_channel_bias.
void check_conv(DType d, int n, int cin, int h, int w, int cout, int k, int stride, int pad) {
    const int oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
    const int patch = cin * k * k, pixels = oh * ow;
    const bool pointwise = k == 1 && stride == 1 && pad == 0;
    const int bias_rows = pointwise ? 0 : 8, rows = patch + bias_rows;
    const std::vector<float> x = random(d, n * cin * h * w, 2.0f);
    const std::vector<float> wt = random(d, cout * patch, 0.5f), bias = random(d, cout, 1.0f);
    Buffer xb(d, x), wb(d, wt), bb(d, bias);
    Buffer weights = pointwise ? Buffer(d, wt) : Buffer::unwritten(d, cout * rows);
    if (!pointwise) {
        auto weight_bias = KILN_PICK(ConvWeightBiasFn, conv_weight_bias, d);
        const GatherGrid g = gather_grid(d, 1, cout, rows, 65535);
        kiln_emu::launch({g.tiles, g.grid_y, 1}, {g.threads, 1, 1}, Order::Forward, 12, [&] {
            weight_bias(weights.data(), wb.data(), bb.data(), cout, patch, bias_rows,
                        g.vectorised);
        });
    }
    auto im2col = KILN_PICK(Im2colFn, im2col, d);
    std::vector<float> conv(static_cast<size_t>(n) * cout * pixels);
    // One image per im2col launch (`first` = the image), as the backend's chunking can.
    for (int image = 0; image < n; ++image) {
        Buffer col = Buffer::unwritten(d, static_cast<size_t>(rows) * pixels);
        if (pointwise) {
            col = Buffer(d, std::vector<float>(x.begin() + image * patch * pixels,
                                               x.begin() + (image + 1) * patch * pixels));
        } else {
            const GatherGrid g = gather_grid(d, rows, oh, ow, 65535);
            kiln_emu::launch({g.tiles, g.grid_y, 1}, {g.threads, 1, 1}, Order::Forward, 13, [&] {
                im2col(col.data(), xb.data(), rows, image, cin, h, w, k, k, stride, pad, oh, ow,
                       bias_rows, g.vectorised);
            });
        }
        // cuBLAS: out[cout, pixels] = W[cout, rows] col[rows, pixels], f32 accumulation,
        // rounded to the dtype.
        for (int o = 0; o < cout; ++o) {
            for (int p = 0; p < pixels; ++p) {
                float acc = 0.0f;
                for (int r = 0; r < rows; ++r) {
                    acc += weights.at(o * rows + r) * col.at(r * pixels + p);
                }
                conv[(static_cast<size_t>(image) * cout + o) * pixels + p] = round_to(d, acc);
            }
        }
    }
    std::vector<float> got = conv;
    if (pointwise) {
        Buffer cb(d, conv), y = Buffer::unwritten(d, conv.size());
        auto add_bias = KILN_PICK(ChannelBiasFn, add_channel_bias, d);
        const long long spatial = pixels;
        const PlaneGrid pg = plane_grid(d, n * cout, spatial);
        kiln_emu::launch({static_cast<unsigned>(pg.tiles), static_cast<unsigned>(pg.grid_y), 1},
                         {static_cast<unsigned>(pg.threads), 1, 1}, Order::Forward, 14, [&] {
                             add_bias(y.data(), cb.data(), bb.data(), n * cout, cout, spatial, 0);
                         });
        got = y.values();
    }
    std::vector<double> want(conv.size());
    for (int image = 0; image < n; ++image) {
        for (int o = 0; o < cout; ++o) {
            for (int oy = 0; oy < oh; ++oy) {
                for (int ox = 0; ox < ow; ++ox) {
                    double acc = bias[o];
                    for (int c = 0; c < cin; ++c) {
                        for (int ky = 0; ky < k; ++ky) {
                            for (int kx = 0; kx < k; ++kx) {
                                const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                                acc += static_cast<double>(wt[((o * cin + c) * k + ky) * k + kx]) *
                                       x[((image * cin + c) * h + iy) * w + ix];
                            }
                        }
                    }
                    want[((static_cast<size_t>(image) * cout + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    char name[96];
    std::snprintf(name, sizeof name, "conv2d [%d,%d,%d,%d] * [%d,%d,%d,%d] s%d p%d", n, cin, h, w,
                  cout, cin, k, k, stride, pad);
    report(name, d, got, want);
}

// ---- dense attention: (host) q k^T GEMM + softmax kernel + (host) p v GEMM ---------------

using SoftmaxFn = void (*)(void*, const float*, int, int, int, int);

void check_attention(DType d, int batch, int nq, int nk, int heads, int dim, bool causal,
                     int chunk, int threads) {
    const int width = heads * dim;
    const std::vector<float> q = random(d, batch * nq * width, 2.0f);
    const std::vector<float> k = random(d, batch * nk * width, 2.0f);
    const std::vector<float> v = random(d, batch * nk * width, 1.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
    auto softmax = KILN_PICK(SoftmaxFn, attention_softmax, d);
    std::vector<float> out(q.size(), NAN);
    for (int b = 0; b < batch; ++b) {
        for (int q0 = 0; q0 < nq; q0 += chunk) {
            const int qc = std::min(chunk, nq - q0);
            // scores[h, qc, nk] in f32 (cuBLAS: f32 output, alpha = scale).
            std::vector<float> scores(static_cast<size_t>(heads) * qc * nk);
            for (int h = 0; h < heads; ++h) {
                for (int i = 0; i < qc; ++i) {
                    for (int j = 0; j < nk; ++j) {
                        float acc = 0.0f;
                        for (int e = 0; e < dim; ++e) {
                            acc += q[((b * nq + q0 + i) * heads + h) * dim + e] *
                                   k[((b * nk + j) * heads + h) * dim + e];
                        }
                        scores[(h * qc + i) * nk + j] = scale * acc;
                    }
                }
            }
            Buffer probs = Buffer::unwritten(d, scores.size());
            kiln_emu::launch({static_cast<unsigned>(heads * qc), 1, 1},
                             {static_cast<unsigned>(threads), 1, 1}, Order::Random, 15, [&] {
                                 softmax(probs.data(), scores.data(), nk, qc, q0, causal ? 1 : 0);
                             });
            // out[b, q0 + i, h, :] = probs[h, i, :] v[b, :, h, :], rounded to the dtype.
            for (int h = 0; h < heads; ++h) {
                for (int i = 0; i < qc; ++i) {
                    for (int e = 0; e < dim; ++e) {
                        float acc = 0.0f;
                        for (int j = 0; j < nk; ++j) {
                            acc += probs.at((h * qc + i) * nk + j) *
                                   v[((b * nk + j) * heads + h) * dim + e];
                        }
                        out[((b * nq + q0 + i) * heads + h) * dim + e] = round_to(d, acc);
                    }
                }
            }
        }
    }
    std::vector<double> want(q.size());
    for (int b = 0; b < batch; ++b) {
        for (int h = 0; h < heads; ++h) {
            for (int i = 0; i < nq; ++i) {
                const int visible = causal ? std::min(i + 1, nk) : nk;
                std::vector<double> s(visible);
                for (int j = 0; j < visible; ++j) {
                    double dot = 0.0;
                    for (int e = 0; e < dim; ++e) {
                        dot += static_cast<double>(q[((b * nq + i) * heads + h) * dim + e]) *
                               k[((b * nk + j) * heads + h) * dim + e];
                    }
                    s[j] = dot / std::sqrt(static_cast<double>(dim));
                }
                const double m = *std::max_element(s.begin(), s.end());
                double sum = 0.0;
                for (double& x : s) sum += (x = std::exp(x - m));
                for (int e = 0; e < dim; ++e) {
                    double acc = 0.0;
                    for (int j = 0; j < visible; ++j) {
                        acc += s[j] / sum * v[((b * nk + j) * heads + h) * dim + e];
                    }
                    want[((b * nq + i) * heads + h) * dim + e] = acc;
                }
            }
        }
    }
    char name[96];
    std::snprintf(name, sizeof name, "attention%s b%d nq%d nk%d %dx%d, chunks of %d",
                  causal ? "(causal)" : "", batch, nq, nk, heads, dim, chunk);
    report(name, d, out, want);
}

}  // namespace

int main() {
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
        std::printf("== %s\n", dtype_name(d));
        // One group; 5 channels a group; one channel a group (spatial 9: never a whole row
        // of vectors); chunks > vectors (empty chunks); grid y < planes (the apply loops).
        check_group_norm(d, 2, 12, 5, 7, 1, false, host_grid(d, 2, 12, 35, 1), Order::Forward);
        check_group_norm(d, 2, 12, 5, 7, 4, true, host_grid(d, 2, 12, 35, 3), Order::Random);
        check_group_norm(d, 1, 40, 11, 15, 8, true, host_grid(d, 1, 40, 165, 7), Order::Reverse);
        check_group_norm(d, 2, 36, 3, 3, 36, false, host_grid(d, 2, 36, 9, 2), Order::Forward);
        check_group_norm(d, 1, 8, 4, 4, 2, false, {40, 32, 1, 8}, Order::Random);
        check_group_norm(d, 2, 40, 11, 15, 8, true, {5, 32, 2, 7}, Order::Forward);
        // Rows off 16-byte boundaries: equal shifts (vector body after a scalar head),
        // unequal (scalar apply), and a large mean (the merge must not cancel).
        check_group_norm(d, 2, 12, 8, 8, 4, true, {3, 64, 2, 24, 3, 3}, Order::Forward);
        check_group_norm(d, 2, 12, 8, 8, 4, false, {3, 64, 1, 24, 1, 2}, Order::Reverse);
        check_group_norm(d, 1, 32, 16, 16, 4, false, {6, 64, 4, 32, 5, 5}, Order::Random, 300.0f);
        // A VAE-like row, 32 x 32 x 64 / 32 groups, at the host's geometry with 8 chunks.
        check_group_norm(d, 1, 64, 32, 32, 32, true, host_grid(d, 1, 64, 1024, 8), Order::Forward);
        check_layer_norm(d, 5, 37, 32, Order::Forward);
        check_layer_norm(d, 3, 77, 96, Order::Random);
        check_head_layer_norm(d, 5, 12, 128, 128, Order::Random);  // Command R+'s q heads
        check_head_layer_norm(d, 3, 8, 160, 160, Order::Reverse);  // StableLM 2 12B's kv
        check_head_layer_norm(d, 2, 3, 37, 32, Order::Forward);    // a tail past 32 threads
        check_activations(d);
        check_geglu(d);
        check_lincomb(d);
        check_channel_bias(d, 2, 5, 3, 7, 65535, 0);  // 21 values a plane: heads and tails
        check_channel_bias(d, 2, 5, 8, 8, 3, 0);      // whole vectors, planes looped past y
        check_channel_bias(d, 1, 3, 40, 50, 2, 3);    // 2000 a plane: 2 tiles, off 16 bytes
        check_add_row(d);
        check_upsample(d, 3, 5, 6, 10);
        check_upsample(d, 11, 15, 22, 30);
        check_upsample(d, 3, 5, 5, 9);
        check_upsample(d, 6, 8, 11, 15);
        check_upsample(d, 3, 5, 2, 3);
        check_upsample(d, 3, 5, 3, 5);
        check_upsample(d, 8, 8, 16, 16, 4);   // vectorised, planes looped past the y grid
        check_upsample(d, 5, 6, 10, 12);      // vectorised in f32 only
        check_upsample(d, 32, 32, 64, 64);    // several vectors a row, 2 tiles in f16
        check_upsample(d, 6, 9, 11, 16);      // a 16-wide row of a non-2x resize
        check_concat_narrow(d, {{2, 3, 4}, {2, 5, 4}}, 1);
        check_concat_narrow(d, {{2, 3, 4}, {1, 3, 4}, {3, 3, 4}}, 0);
        check_concat_narrow(d, {{2, 3, 4}, {2, 3, 1}}, 2);
        check_transpose(d);
        check_conv(d, 2, 5, 11, 15, 7, 3, 1, 1);
        check_conv(d, 2, 5, 11, 15, 7, 3, 2, 1);
        check_conv(d, 2, 5, 11, 15, 7, 1, 1, 0);
        check_conv(d, 1, 3, 6, 9, 4, 3, 1, 0);
        check_conv(d, 1, 4, 16, 16, 5, 3, 1, 1);  // 16 wide: vectorised in every dtype
        // Exact im2col: vectorised (16 and 8 wide), scalar (15 wide), stride 2 (8 wide out),
        // a later image of the batch, planes looped past the y grid, col off 16 bytes.
        check_im2col(d, 2, 3, 16, 16, 3, 1, 1, 1, 1, 65535);
        check_im2col(d, 3, 5, 8, 8, 3, 1, 1, 0, 3, 7);
        check_im2col(d, 2, 5, 11, 15, 3, 1, 1, 0, 2, 65535);
        check_im2col(d, 1, 2, 16, 16, 3, 2, 1, 0, 1, 65535);
        check_im2col(d, 1, 2, 8, 9, 2, 1, 0, 0, 1, 65535);
        check_im2col(d, 2, 3, 16, 16, 3, 1, 1, 1, 1, 5, 1);
        check_im2col(d, 3, 5, 8, 8, 3, 1, 1, 1, 2, 9, 0, 8);     // bias rows, planes looped
        check_im2col(d, 2, 5, 11, 15, 3, 2, 1, 0, 2, 65535, 0, 8);
        check_conv(d, 2, 8, 8, 8, 16, 3, 1, 1);  // 72 + 8 weight columns: vectorised
        check_attention(d, 2, 7, 11, 3, 5, false, 7, 64);
        check_attention(d, 2, 9, 9, 3, 5, true, 4, 32);
        check_attention(d, 1, 13, 13, 2, 8, true, 13, 96);
        check_attention(d, 2, 5, 77, 2, 8, false, 2, 64);
    }
    std::printf("%s\n", failures == 0 ? "all image kernels match the reference"
                                      : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
