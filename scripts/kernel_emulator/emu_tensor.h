// Host-side tensors for the emulator checks: the three storage dtypes with the kernels'
// rounding (common.cuh: bf16 round to nearest even, f16 through the host's _Float16), and a
// buffer holding values the way the GPU would (f32 words or 16-bit words).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace kiln_emu_tensor {

enum class DType { F32, F16, BF16 };

inline const char* dtype_name(DType d) {
    return d == DType::F32 ? "f32" : (d == DType::F16 ? "f16" : "bf16");
}

inline std::uint16_t to_bits(DType d, float x) {
    if (d == DType::F16) {
        const _Float16 h = static_cast<_Float16>(x);
        std::uint16_t b;
        std::memcpy(&b, &h, 2);
        return b;
    }
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}

inline float from_bits(DType d, std::uint16_t b) {
    if (d == DType::F16) {
        _Float16 h;
        std::memcpy(&h, &b, 2);
        return static_cast<float>(h);
    }
    const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// `x` rounded to the dtype and widened back.
inline float round_to(DType d, float x) {
    return d == DType::F32 ? x : from_bits(d, to_bits(d, x));
}

// `n` uniform values in [-range, range], rounded to `d`: the checks' random inputs.
inline std::vector<float> random_values(size_t n, float range, DType d, std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-range, range);
    std::vector<float> v(n);
    for (float& x : v) x = round_to(d, u(rng));
    return v;
}

// Values in the dtype's storage, as a kernel reads and writes them.
struct Buffer {
    DType dtype;
    std::vector<float> f32;
    std::vector<std::uint16_t> half;

    Buffer(DType d, const std::vector<float>& values) : dtype(d) {
        if (d == DType::F32) {
            f32 = values;
        } else {
            half.resize(values.size());
            for (size_t i = 0; i < values.size(); ++i) half[i] = to_bits(d, values[i]);
        }
    }
    // A buffer of `n` NaNs: an element a kernel forgets to write stays NaN.
    static Buffer unwritten(DType d, size_t n) {
        return Buffer(d, std::vector<float>(n, __builtin_nanf("")));
    }
    void* data() {
        return dtype == DType::F32 ? static_cast<void*>(f32.data())
                                   : static_cast<void*>(half.data());
    }
    size_t size() const { return dtype == DType::F32 ? f32.size() : half.size(); }
    float at(size_t i) const { return dtype == DType::F32 ? f32[i] : from_bits(dtype, half[i]); }
    std::vector<float> values() const {
        std::vector<float> v(size());
        for (size_t i = 0; i < v.size(); ++i) v[i] = at(i);
        return v;
    }
};

// The kernel of an op for dtype d (its _f32, _f16 and _bf16 instantiations), as a function
// pointer of type Fn taking untyped pointers.
template <typename Fn, typename A, typename B, typename C>
Fn pick(DType d, A f32, B f16, C bf16) {
    if (d == DType::F32) return reinterpret_cast<Fn>(f32);
    if (d == DType::F16) return reinterpret_cast<Fn>(f16);
    return reinterpret_cast<Fn>(bf16);
}

// Prints one case's line: the max abs error of `got` against `want`, which passes within
// `rel` times the largest |want| (a size mismatch or NaN fails). Returns whether it passed.
inline bool report_relative(const std::string& name, DType d, const std::vector<float>& got,
                            const std::vector<double>& want, double rel) {
    double worst = got.size() == want.size() ? 0.0 : INFINITY, largest = 1e-30;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
        largest = std::max(largest, std::fabs(want[i]));
        const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
        worst = std::isnan(err) ? INFINITY : std::max(worst, err);
    }
    const bool ok = worst <= rel * largest;
    std::printf("%s  %-64s %-4s  max abs err %.3g (max |ref| %.3g)\n", ok ? "ok  " : "FAIL",
                name.c_str(), dtype_name(d), worst, largest);
    return ok;
}

}  // namespace kiln_emu_tensor

#define KILN_PICK(Fn, op, d) kiln_emu_tensor::pick<Fn>(d, op##_f32, op##_f16, op##_bf16)
