// Runs kernels/gemv.cu (the small-M linear layer) on the CPU through cuda_emu.h and
// compares every output with a double-precision x W^T (+ bias) over the same dtype-rounded
// inputs: M = 1..8 (each through the kernel the host picks, gemv1/2/4/8), odd N (a last
// block with rows past N), K not a multiple of a warp's stride, K crossing the shared-memory
// chunk of x (16384 16-bit values or 8192 f32 for M = 1, fewer for larger M), f32/f16/bf16,
// with and without bias, warps in forward, reverse and random order.
//
// The bound per element is tight enough that one missing or doubled 16-byte vector fails:
// half an ulp of the dtype at |ref| (the one output rounding) plus 64 f32 ulps of
// sum |x w| (the f32 accumulation; the real error is far below).
//
// gemv1_add_norm /
// gemv2_add_norm (a linear layer fused with the residual add + RMS norm before it) must store
// the residual stream exactly as fused_add_rms_norm does, and give y within the GEMV bound
// plus one dtype ulp per normalised value (its f32 sum of squares runs in another order).
// gemv1_add_norm_swiglu / gemv2_add_norm_swiglu (the gate_up projection with the SwiGLU as
// its epilogue) must equal gemv<m>_add_norm then silu_mul exactly, residual stream included;
// gemv1_swiglu / gemv2_swiglu (the same epilogue on plain rows) must equal gemv<m> then
// silu_mul exactly.
//
//   gemv_check      exit status 1 if any case is off
#include "cuda_emu.h"
// clang-format off
#include "common.cuh"
#include "activation.cu"
#include "norm.cu"
#include "gemv.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "emu_tensor.h"

namespace {

using kiln_emu::Order;
using kiln_emu_tensor::Buffer;
using kiln_emu_tensor::DType;
using kiln_emu_tensor::dtype_name;
using kiln_emu_tensor::round_to;

using GemvFn = void (*)(void*, const void*, const void*, const void*, int, int, int, int);

// The kernel the host (src/backend/cuda/gemv.rs) launches for m rows.
GemvFn pick(DType d, int m) {
    const int mt = m <= 1 ? 1 : (m <= 2 ? 2 : (m <= 4 ? 4 : 8));
#define KILN_PICK_MT(MT)                                                          \
    if (mt == MT) {                                                               \
        if (d == DType::F32) return reinterpret_cast<GemvFn>(gemv##MT##_f32);     \
        if (d == DType::F16) return reinterpret_cast<GemvFn>(gemv##MT##_f16);     \
        return reinterpret_cast<GemvFn>(gemv##MT##_bf16);                         \
    }
    KILN_PICK_MT(1)
    KILN_PICK_MT(2)
    KILN_PICK_MT(4)
    KILN_PICK_MT(8)
#undef KILN_PICK_MT
    return nullptr;
}

std::mt19937 rng(11);

std::vector<float> random(DType d, size_t n, float range) {
    return kiln_emu_tensor::random_values(n, range, d, rng);
}

int failures = 0;
int cases = 0;

void check(DType d, int m, int n, int k, bool bias, Order order) {
    const std::vector<float> x = random(d, static_cast<size_t>(m) * k, 1.0f);
    const std::vector<float> w = random(d, static_cast<size_t>(n) * k, 1.0f);
    const std::vector<float> b = random(d, n, 4.0f);
    Buffer xb(d, x), wb(d, w), bb(d, b), y = Buffer::unwritten(d, static_cast<size_t>(m) * n);
    GemvFn kernel = pick(d, m);
    const unsigned blocks = static_cast<unsigned>((n + GEMV_WARPS * GEMV_ROWS_PER_WARP - 1) /
                                                  (GEMV_WARPS * GEMV_ROWS_PER_WARP));
    kiln_emu::launch({blocks, 1, 1}, {GEMV_THREADS, 1, 1}, order, 3, [&] {
        kernel(y.data(), xb.data(), wb.data(), bias ? bb.data() : wb.data(), m, n, k,
               bias ? 1 : 0);
    });
    const double round_rel = d == DType::F32 ? 0.0 : (d == DType::F16 ? 0x1p-11 : 0x1p-8);
    double worst_ratio = 0.0;
    size_t at = 0;
    double at_want = 0.0;
    for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
            double dot = 0.0, mag = 0.0;
            for (int t = 0; t < k; ++t) {
                const double p = static_cast<double>(x[static_cast<size_t>(i) * k + t]) *
                                 w[static_cast<size_t>(j) * k + t];
                dot += p;
                mag += std::fabs(p);
            }
            if (bias) {
                dot += b[j];
                mag += std::fabs(b[j]);
            }
            const size_t idx = static_cast<size_t>(i) * n + j;
            const double err = std::fabs(static_cast<double>(y.at(idx)) - dot);
            const double allowed = round_rel * std::fabs(dot) + 64.0 * 0x1p-24 * mag + 1e-30;
            const double ratio = std::isnan(err) ? INFINITY : err / allowed;
            if (ratio > worst_ratio) {
                worst_ratio = ratio;
                at = idx;
                at_want = dot;
            }
        }
    }
    const bool ok = worst_ratio <= 1.0;
    failures += ok ? 0 : 1;
    ++cases;
    const char* order_name =
        order == Order::Forward ? "fwd" : (order == Order::Reverse ? "rev" : "rand");
    std::printf("%s  gemv m=%d n=%-5d k=%-5d %-7s %-4s %-4s  worst err/bound %.3f", ok ? "ok  " : "FAIL",
                m, n, k, bias ? "+bias" : "", order_name, dtype_name(d), worst_ratio);
    if (!ok) std::printf("  at [%zu, %zu]: got %g want %g", at / n, at % n, y.at(at), at_want);
    std::printf("\n");
}

using GemvNormFn = void (*)(void*, const void*, const void*, const void*, int, int, int, int, void*,
                           const void*, const void*, float);
using AddNormFn = void (*)(void*, void*, const void*, float, int);

void check_add_norm(DType d, int m, int n, int k, bool bias, Order order) {
    std::vector<float> x = random(d, static_cast<size_t>(m) * k, 2.0f);
    std::vector<float> r = random(d, static_cast<size_t>(m) * k, 2.0f);
    // Rows of different scale, so one row normalised by another's rms is off by 3x.
    for (size_t i = static_cast<size_t>(k); i < x.size(); ++i) {
        x[i] = round_to(d, 3.0f * x[i]);
        r[i] = round_to(d, 3.0f * r[i]);
    }
    const std::vector<float> nw = random(d, k, 1.5f);
    const std::vector<float> w = random(d, static_cast<size_t>(n) * k, 1.0f);
    const std::vector<float> b = random(d, n, 4.0f);
    const float eps = 1e-5f;
    Buffer xb(d, x), rb(d, r), nwb(d, nw), wb(d, w), bb(d, b);
    Buffer y = Buffer::unwritten(d, static_cast<size_t>(m) * n);
    Buffer res_out = Buffer::unwritten(d, static_cast<size_t>(m) * k);
    GemvNormFn fused = m == 1 ? KILN_PICK(GemvNormFn, gemv1_add_norm, d)
                              : KILN_PICK(GemvNormFn, gemv2_add_norm, d);
    const unsigned blocks = static_cast<unsigned>((n + GEMV_WARPS * GEMV_ROWS_PER_WARP - 1) /
                                                  (GEMV_WARPS * GEMV_ROWS_PER_WARP));
    const void* bias_ptr = bias ? bb.data() : wb.data();
    kiln_emu::launch({blocks, 1, 1}, {GEMV_THREADS, 1, 1}, order, 3, [&] {
        fused(y.data(), xb.data(), wb.data(), bias_ptr, m, n, k, bias ? 1 : 0, res_out.data(),
              rb.data(), nwb.data(), eps);
    });
    // The unfused residual stream: fused_add_rms_norm in place on copies.
    Buffer hx(d, x), hr(d, r);
    auto norm = KILN_PICK(AddNormFn, fused_add_rms_norm, d);
    kiln_emu::launch({static_cast<unsigned>(m), 1, 1}, {256, 1, 1}, Order::Forward, 2,
                     [&] { norm(hx.data(), hr.data(), nwb.data(), eps, k); });
    size_t residual_differs = 0;
    for (size_t i = 0; i < hr.size(); ++i) residual_differs += res_out.at(i) == hr.at(i) ? 0 : 1;
    // y against a double reference over the dtype-rounded residual.
    const double ulp = d == DType::F32 ? 0x1p-23 : (d == DType::F16 ? 0x1p-10 : 0x1p-7);
    const double round_rel = d == DType::F32 ? 0.0 : ulp / 2;
    double worst = 0.0;
    for (int i = 0; i < m; ++i) {
        double ss = 0.0;
        for (int t = 0; t < k; ++t) ss += static_cast<double>(hr.at(static_cast<size_t>(i) * k + t)) * hr.at(static_cast<size_t>(i) * k + t);
        const double inv = 1.0 / std::sqrt(ss / k + eps);
        for (int j = 0; j < n; ++j) {
            double dot = bias ? b[j] : 0.0, mag = bias ? std::fabs(b[j]) : 0.0;
            for (int t = 0; t < k; ++t) {
                const double h = round_to(d, static_cast<float>(hr.at(static_cast<size_t>(i) * k + t) * inv * nw[t]));
                const double p = h * w[static_cast<size_t>(j) * k + t];
                dot += p;
                mag += std::fabs(p);
            }
            const double err = std::fabs(static_cast<double>(y.at(static_cast<size_t>(i) * n + j)) - dot);
            const double allowed = round_rel * std::fabs(dot) + (ulp + 64.0 * 0x1p-24) * mag + 1e-30;
            worst = std::max(worst, std::isnan(err) ? INFINITY : err / allowed);
        }
    }
    const bool ok = worst <= 1.0 && residual_differs == 0;
    failures += ok ? 0 : 1;
    ++cases;
    std::printf("%s  gemv_add_norm m=%d n=%-5d k=%-5d %-7s %-4s  worst err/bound %.3f, %zu residual values differ\n",
                ok ? "ok  " : "FAIL", m, n, k, bias ? "+bias" : "", dtype_name(d), worst, residual_differs);
}


using SiluMulFn = void (*)(void*, const void*, long long, int);

// gemv<m>_add_norm_swiglu (y [m, I] from w [2I, K]) against gemv<m>_add_norm (y [m, 2I])
// then silu_mul: bit for bit, the residual stream too.
void check_swiglu(DType d, int m, int inter, int k, bool bias, Order order) {
    const int n = 2 * inter;
    const std::vector<float> x = random(d, static_cast<size_t>(m) * k, 2.0f);
    const std::vector<float> r = random(d, static_cast<size_t>(m) * k, 2.0f);
    const std::vector<float> nw = random(d, k, 1.5f);
    const std::vector<float> w = random(d, static_cast<size_t>(n) * k, 1.0f);
    const std::vector<float> b = random(d, n, 4.0f);
    const float eps = 1e-5f;
    Buffer xb(d, x), rb(d, r), nwb(d, nw), wb(d, w), bb(d, b);
    Buffer act = Buffer::unwritten(d, static_cast<size_t>(m) * inter);
    Buffer res_fused = Buffer::unwritten(d, static_cast<size_t>(m) * k);
    Buffer gate_up = Buffer::unwritten(d, static_cast<size_t>(m) * n);
    Buffer res_plain = Buffer::unwritten(d, static_cast<size_t>(m) * k);
    Buffer want = Buffer::unwritten(d, static_cast<size_t>(m) * inter);
    GemvNormFn fused = m == 1 ? KILN_PICK(GemvNormFn, gemv1_add_norm_swiglu, d)
                              : KILN_PICK(GemvNormFn, gemv2_add_norm_swiglu, d);
    GemvNormFn plain = m == 1 ? KILN_PICK(GemvNormFn, gemv1_add_norm, d)
                              : KILN_PICK(GemvNormFn, gemv2_add_norm, d);
    // The host's launch for both: one block per 8 rows of w (4 output columns of the SwiGLU).
    const unsigned blocks = static_cast<unsigned>((n + GEMV_WARPS * GEMV_ROWS_PER_WARP - 1) /
                                                  (GEMV_WARPS * GEMV_ROWS_PER_WARP));
    const void* bias_ptr = bias ? bb.data() : wb.data();
    kiln_emu::launch({blocks, 1, 1}, {GEMV_THREADS, 1, 1}, order, 3, [&] {
        fused(act.data(), xb.data(), wb.data(), bias_ptr, m, n, k, bias ? 1 : 0, res_fused.data(),
              rb.data(), nwb.data(), eps);
    });
    kiln_emu::launch({blocks, 1, 1}, {GEMV_THREADS, 1, 1}, Order::Forward, 3, [&] {
        plain(gate_up.data(), xb.data(), wb.data(), bias_ptr, m, n, k, bias ? 1 : 0,
              res_plain.data(), rb.data(), nwb.data(), eps);
    });
    auto silu = KILN_PICK(SiluMulFn, silu_mul, d);
    kiln_emu::launch({2, 1, 1}, {64, 1, 1}, Order::Forward, 1, [&] {
        silu(want.data(), gate_up.data(), static_cast<long long>(m) * inter, inter);
    });
    size_t differ = 0, residual_differs = 0;
    for (size_t i = 0; i < want.size(); ++i) differ += act.at(i) == want.at(i) ? 0 : 1;
    for (size_t i = 0; i < res_plain.size(); ++i)
        residual_differs += res_fused.at(i) == res_plain.at(i) ? 0 : 1;
    const bool ok = differ == 0 && residual_differs == 0;
    failures += ok ? 0 : 1;
    ++cases;
    std::printf("%s  gemv_add_norm_swiglu m=%d I=%-5d k=%-5d %-7s %-4s  %zu of %zu outputs, %zu residual values differ from add_norm gemv + silu_mul\n",
                ok ? "ok  " : "FAIL", m, inter, k, bias ? "+bias" : "", dtype_name(d), differ,
                want.size(), residual_differs);
}

// gemv<m>_swiglu (y [m, I] from w [2I, K]) against gemv<m> (y [m, 2I]) then silu_mul: bit
// for bit.
void check_plain_swiglu(DType d, int m, int inter, int k, bool bias, Order order) {
    const int n = 2 * inter;
    const std::vector<float> x = random(d, static_cast<size_t>(m) * k, 2.0f);
    const std::vector<float> w = random(d, static_cast<size_t>(n) * k, 1.0f);
    const std::vector<float> b = random(d, n, 4.0f);
    Buffer xb(d, x), wb(d, w), bb(d, b);
    Buffer act = Buffer::unwritten(d, static_cast<size_t>(m) * inter);
    Buffer gate_up = Buffer::unwritten(d, static_cast<size_t>(m) * n);
    Buffer want = Buffer::unwritten(d, static_cast<size_t>(m) * inter);
    GemvFn fused = m == 1 ? KILN_PICK(GemvFn, gemv1_swiglu, d) : KILN_PICK(GemvFn, gemv2_swiglu, d);
    GemvFn plain = pick(d, m);
    const unsigned blocks = static_cast<unsigned>((n + GEMV_WARPS * GEMV_ROWS_PER_WARP - 1) /
                                                  (GEMV_WARPS * GEMV_ROWS_PER_WARP));
    const void* bias_ptr = bias ? bb.data() : wb.data();
    kiln_emu::launch({blocks, 1, 1}, {GEMV_THREADS, 1, 1}, order, 3, [&] {
        fused(act.data(), xb.data(), wb.data(), bias_ptr, m, n, k, bias ? 1 : 0);
    });
    kiln_emu::launch({blocks, 1, 1}, {GEMV_THREADS, 1, 1}, Order::Forward, 3, [&] {
        plain(gate_up.data(), xb.data(), wb.data(), bias_ptr, m, n, k, bias ? 1 : 0);
    });
    auto silu = KILN_PICK(SiluMulFn, silu_mul, d);
    kiln_emu::launch({2, 1, 1}, {64, 1, 1}, Order::Forward, 1, [&] {
        silu(want.data(), gate_up.data(), static_cast<long long>(m) * inter, inter);
    });
    size_t differ = 0;
    for (size_t i = 0; i < want.size(); ++i) differ += act.at(i) == want.at(i) ? 0 : 1;
    const bool ok = differ == 0;
    failures += ok ? 0 : 1;
    ++cases;
    std::printf("%s  gemv_swiglu m=%d I=%-5d k=%-5d %-7s %-4s  %zu of %zu outputs differ from gemv + silu_mul\n",
                ok ? "ok  " : "FAIL", m, inter, k, bias ? "+bias" : "", dtype_name(d), differ,
                want.size());
}

}  // namespace

int main() {
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
        std::printf("== %s\n", dtype_name(d));
        // Every M through its kernel, odd N (last block partly past N), K = 17 vectors of
        // bf16 (not a multiple of 32 lanes, nor of the unroll).
        for (int m = 1; m <= 8; ++m) {
            check(d, m, 37, 136, m % 3 == 0, m % 2 ? Order::Forward : Order::Reverse);
        }
        // Tiny: one output, one vector (f32: two).
        check(d, 1, 1, 8, false, Order::Forward);
        check(d, 3, 5, 8, true, Order::Random);
        // K crossing the x chunk for M = 1 (16384 16-bit / 8192 f32 values per chunk) and
        // M = 2 (8192 / 4096), several chunks for M = 8 (2048 / 1024 values per chunk); many
        // unrolled iterations; the 8B's down projection (K = 14336: one 16-bit chunk).
        check(d, 1, 13, 16400, false, Order::Random);
        check(d, 2, 11, 8200, true, Order::Reverse);
        check(d, 1, 9, 14336, false, Order::Forward);
        check(d, 2, 7, 4104, true, Order::Random);
        check(d, 5, 9, 1032, false, Order::Forward);
        check(d, 8, 17, 2056, true, Order::Random);
        // Exactly filled blocks and a long K with all lanes busy.
        check(d, 1, 16, 4096, false, Order::Forward);
        check(d, 4, 24, 1024, true, Order::Reverse);
        // The residual add + RMS norm fused in front: both kernels, the x chunk crossed.
        check_add_norm(d, 1, 37, 136, false, Order::Reverse);
        check_add_norm(d, 2, 19, 1032, true, Order::Random);
        check_add_norm(d, 1, 9, 16400, true, Order::Forward);
        check_add_norm(d, 2, 11, 8200, false, Order::Forward);
        // The gate_up projection with the SwiGLU epilogue: an odd I (the last block's last
        // warps past I), both kernels, the x chunk crossed, with and without bias.
        check_swiglu(d, 1, 37, 136, false, Order::Reverse);
        check_swiglu(d, 2, 19, 1032, true, Order::Random);
        check_swiglu(d, 1, 13, 16400, true, Order::Forward);
        check_swiglu(d, 2, 6, 8200, false, Order::Forward);
        // The same epilogue without the norm.
        check_plain_swiglu(d, 1, 37, 136, true, Order::Reverse);
        check_plain_swiglu(d, 2, 19, 1032, false, Order::Random);
        check_plain_swiglu(d, 1, 13, 16400, false, Order::Forward);
        check_plain_swiglu(d, 2, 6, 8200, true, Order::Forward);
    }
    std::printf("%d cases: %s\n", cases,
                failures == 0 ? "the gemv kernels match the reference" : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
