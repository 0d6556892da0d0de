// A CPU model of the CUDA execution model, enough to run kiln's kernels/*.cu unchanged
// (compiled by g++) and compare them against a plain C++ reference without a GPU.
//
// What is modelled:
//   * every CUDA thread of a CTA is a fiber (ucontext) with its own stack and registers;
//     CTAs run one after another;
//   * __syncthreads() is a CTA barrier, __shfl_xor_sync a warp barrier plus an exchange
//     array (so a shuffle that not all 32 lanes reach deadlocks, which is reported);
//   * __shared__ variables are function statics, shared by the fibers of a CTA (CTAs run
//     one at a time);
//   * warps take turns, each running to its next CTA barrier, in a chosen order (forward,
//     reverse, random), so a missing barrier shows up as results that depend on the order;
//   * 16-bit float conversions through the host's _Float16 (IEEE, round to nearest even);
//   * mma.sync.m16n8k16 (row.col, f16/bf16 in, f32 accumulate; KILN_EMU_MMA, used by
//     kernels/attention_prefill.cu) as a warp collective like a shuffle: every lane
//     deposits its A and B fragments, a warp barrier, every lane computes its own four C
//     values from all 32 lanes' fragments. The products are exact (as on the hardware);
//     the 16 of a C element are summed in double and added to C with one f32 rounding,
//     where the tensor cores add in their own order and precision: the two differ by a few
//     f32 ulps of the sum of |products| per instruction, far below a 16-bit output's ulp.
//
// What is not: shared memory is not cleared between CTAs (a read of a value this CTA
// never wrote goes unnoticed), memory-model subtleties inside a phase (each fiber runs to its next barrier
// in one go), warp-synchronous code without __syncwarp, timing, anything not used by kiln.
//
// Include this before kernels/common.cuh and the kernel file, and cuda_emu_end.h after.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln_emu {

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

enum class Order { Forward, Reverse, Random };

enum class Wait { Start, Running, Block, Warp, Done };

struct Fiber {
    ucontext_t ctx{};
    std::vector<char> stack;
    Dim3 idx;
    int linear = 0;  // threadIdx flattened: warps are 32 consecutive values
    Wait wait = Wait::Start;
    unsigned long long gen = 0;  // generation of the barrier it waits at
    int shuffle_parity = 0;      // which half of the double-buffered exchange
};

// The state of the launch in progress: what the CUDA built-ins read. One launch at a time
// (the emulator is single-threaded), so the built-ins reach it through `current()`.
struct Launch {
    Dim3 grid, block, block_idx;
    std::vector<Fiber> fibers;
    ucontext_t scheduler{};
    Fiber* running = nullptr;
    int block_arrived = 0;
    unsigned long long block_gen = 0;
    std::vector<int> warp_arrived;
    std::vector<unsigned long long> warp_gen;
    std::vector<float> exchange;  // [warp][parity][lane]
    std::vector<unsigned> mma_exchange;  // [warp][parity][lane][a0..a3, b0, b1]
    std::function<void()> body;
};

inline Launch*& current() {
    static Launch* launch = nullptr;
    return launch;
}

inline Fiber& fiber() { return *current()->running; }

[[noreturn]] inline void fail(const std::string& what) {
    throw std::runtime_error("kernel emulator: " + what);
}

inline void yield() {
    Launch& l = *current();
    Fiber& f = *l.running;
    swapcontext(&f.ctx, &l.scheduler);
}

inline void syncthreads() {
    Launch& l = *current();
    Fiber& f = *l.running;
    f.wait = Wait::Block;
    f.gen = l.block_gen;
    ++l.block_arrived;
    yield();
}

inline void syncwarp_all() {
    Launch& l = *current();
    Fiber& f = *l.running;
    const int warp = f.linear / 32;
    f.wait = Wait::Warp;
    f.gen = l.warp_gen[warp];
    ++l.warp_arrived[warp];
    yield();
}

template <typename V>
V shfl_xor(unsigned mask, V value, int lane_mask, int width) {
    static_assert(sizeof(V) == 4, "32-bit shuffles only");
    if (mask != 0xffffffffu || width != 32) fail("only full-warp shuffles are modelled");
    Launch& l = *current();
    Fiber& f = fiber();
    const int warp = f.linear / 32;
    const int lane = f.linear % 32;
    float* slots = l.exchange.data() + (warp * 2 + f.shuffle_parity) * 32;
    std::memcpy(&slots[lane], &value, 4);
    syncwarp_all();
    V out;
    std::memcpy(&out, &slots[lane ^ (lane_mask & 31)], 4);
    // The next shuffle writes the other half: a lane can only come back to this half after
    // every lane of the warp passed the next barrier, i.e. finished reading this one.
    f.shuffle_parity ^= 1;
    return out;
}

enum class MmaType { f16, bf16 };

// Element `half` (0 = low) of a register holding two 16-bit values of `type`, widened.
inline double mma_element(unsigned reg, int half, MmaType type) {
    const unsigned short bits = static_cast<unsigned short>(half ? reg >> 16 : reg & 0xffffu);
    if (type == MmaType::bf16) {
        const unsigned u = static_cast<unsigned>(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<double>(h);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.f32, C += A B, with the fragment layout
// of the PTX ISA (g = lane / 4, t = lane % 4; the lower column in a register's low half):
//   A 16x16 (row k):  a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
//   B 16x8 (col k):   b0 = (k 2t..2t+1, n g)  b1 = (k 2t+8..2t+9, n g)
//   C 16x8:           c0, c1 = (g, 2t..2t+1)  c2, c3 = (g+8, 2t..2t+1)
// Double-buffered by the shuffles' parity: a lane can only write this half again after
// the next warp barrier (of a shuffle or an mma), which every lane reaches after reading.
inline void mma_m16n8k16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                         MmaType type) {
    Launch& l = *current();
    Fiber& f = fiber();
    const int warp = f.linear / 32;
    const int lane = f.linear % 32;
    unsigned* slots = l.mma_exchange.data() + (warp * 2 + f.shuffle_parity) * 32 * 6;
    unsigned* mine = slots + lane * 6;
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    mine[4] = b0;
    mine[5] = b1;
    syncwarp_all();
    // A(row, k) sits in lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8);
    // B(k, n) in lane n * 4 + (k % 8) / 2, register 4 + (k >= 8); half k % 2 for both.
    auto a_at = [&](int row, int k) {
        const unsigned* src = slots + ((row % 8) * 4 + (k % 8) / 2) * 6;
        return mma_element(src[(row >= 8) + 2 * (k >= 8)], k % 2, type);
    };
    auto b_at = [&](int k, int n) {
        const unsigned* src = slots + (n * 4 + (k % 8) / 2) * 6;
        return mma_element(src[4 + (k >= 8)], k % 2, type);
    };
    const int g = lane / 4;
    const int t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0);
        const int col = 2 * t + (i & 1);
        double sum = 0.0;
        for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
        c[i] = static_cast<float>(static_cast<double>(c[i]) + sum);
    }
    f.shuffle_parity ^= 1;
}

inline void fiber_entry() {
    Launch& l = *current();
    l.body();
    l.running->wait = Wait::Done;
    // Returning resumes uc_link: the scheduler.
}

inline bool runnable(const Launch& l, const Fiber& f) {
    switch (f.wait) {
        case Wait::Start:
            return true;
        case Wait::Block:
            return f.gen < l.block_gen;
        case Wait::Warp:
            return f.gen < l.warp_gen[f.linear / 32];
        default:
            return false;
    }
}

// Opens every barrier that all live threads (of the CTA, of the warp) have reached.
inline void release_barriers(Launch& l) {
    const int threads = static_cast<int>(l.fibers.size());
    int live = 0;
    std::vector<int> live_in_warp(l.warp_arrived.size(), 0);
    for (const Fiber& f : l.fibers) {
        if (f.wait != Wait::Done) {
            ++live;
            ++live_in_warp[f.linear / 32];
        }
    }
    if (l.block_arrived > 0 && l.block_arrived == live) {
        l.block_arrived = 0;
        ++l.block_gen;
    }
    for (size_t w = 0; w < l.warp_arrived.size(); ++w) {
        if (l.warp_arrived[w] == 0) continue;
        const int lanes = std::min(32, threads - static_cast<int>(w) * 32);
        if (live_in_warp[w] != lanes) fail("a shuffle in a warp where some lanes exited");
        if (l.warp_arrived[w] == lanes) {
            l.warp_arrived[w] = 0;
            ++l.warp_gen[w];
        }
    }
}

// Runs one CTA. Warps take turns: the chosen warp runs (through its shuffles) until all its
// threads wait at a CTA barrier or have exited, then the next warp does, so a warp finishes
// a whole phase before the next one starts it; forward and reverse warp orders are the two
// extremes a missing __syncthreads can be caught by, random mixes them (lanes too).
inline void run_cta(Launch& l, Order order, std::mt19937& rng) {
    l.block_arrived = 0;
    std::fill(l.warp_arrived.begin(), l.warp_arrived.end(), 0);
    const int threads = static_cast<int>(l.fibers.size());
    std::vector<int> warps(l.warp_arrived.size());
    std::iota(warps.begin(), warps.end(), 0);
    if (order == Order::Reverse) std::reverse(warps.begin(), warps.end());
    for (Fiber& f : l.fibers) {
        f.wait = Wait::Start;
        f.shuffle_parity = 0;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = &l.scheduler;
        makecontext(&f.ctx, fiber_entry, 0);
    }
    std::vector<int> lanes(32);
    for (;;) {
        if (order == Order::Random) std::shuffle(warps.begin(), warps.end(), rng);
        bool progressed = false;
        for (int w : warps) {
            const int first = w * 32;
            const int count = std::min(32, threads - first);
            lanes.resize(count);
            std::iota(lanes.begin(), lanes.end(), first);
            for (bool ran = true; ran;) {
                ran = false;
                if (order == Order::Random) std::shuffle(lanes.begin(), lanes.end(), rng);
                for (int i : lanes) {
                    Fiber& f = l.fibers[i];
                    if (!runnable(l, f)) continue;
                    f.wait = Wait::Running;
                    l.running = &f;
                    swapcontext(&l.scheduler, &f.ctx);
                    l.running = nullptr;
                    release_barriers(l);
                    ran = progressed = true;
                }
            }
        }
        const bool all_done = std::all_of(l.fibers.begin(), l.fibers.end(),
                                          [](const Fiber& f) { return f.wait == Wait::Done; });
        if (all_done) return;
        if (!progressed) fail("deadlock: threads wait at barriers that cannot complete");
    }
}

// Runs `body` (which calls the kernel with its arguments) on a grid of CTAs.
inline void launch(Dim3 grid, Dim3 block, Order order, unsigned seed,
                   std::function<void()> body) {
    if (current() != nullptr) fail("nested launch");
    Launch l;
    l.grid = grid;
    l.block = block;
    l.body = std::move(body);
    const int threads = static_cast<int>(block.x * block.y * block.z);
    const int warps = (threads + 31) / 32;
    l.fibers.resize(threads);
    for (int t = 0; t < threads; ++t) {
        Fiber& f = l.fibers[t];
        f.stack.resize(256 * 1024);
        f.linear = t;
        f.idx = Dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    }
    l.warp_arrived.assign(warps, 0);
    l.warp_gen.assign(warps, 0);
    l.exchange.assign(warps * 2 * 32, 0.0f);
    l.mma_exchange.assign(warps * 2 * 32 * 6, 0u);
    std::mt19937 rng(seed);
    current() = &l;
    try {
        for (unsigned z = 0; z < grid.z; ++z) {
            for (unsigned y = 0; y < grid.y; ++y) {
                for (unsigned x = 0; x < grid.x; ++x) {
                    l.block_idx = Dim3{x, y, z};
                    run_cta(l, order, rng);
                }
            }
        }
    } catch (...) {
        current() = nullptr;
        throw;
    }
    current() = nullptr;
}

// Inline PTX: the f16 conversions of common.cuh (whose operands are named f and h there)
// and trap. Anything else is refused.
inline void inline_asm(const char* text, float& f, unsigned short& h) {
    if (std::strstr(text, "cvt.f32.f16")) {
        _Float16 x;
        std::memcpy(&x, &h, 2);
        f = static_cast<float>(x);
    } else if (std::strstr(text, "cvt.rn.f16.f32")) {
        const _Float16 x = static_cast<_Float16>(f);
        std::memcpy(&h, &x, 2);
    } else {
        fail(std::string("unsupported inline asm: ") + text);
    }
}

}  // namespace kiln_emu

// `asm volatile("trap;")`: with `volatile` defined away below this becomes a call of the
// function KILN_EMU_ASM (a function-like macro name not followed by `(` is not expanded).
inline void KILN_EMU_ASM(const char* text) {
    if (std::strstr(text, "trap")) kiln_emu::fail("the kernel executed trap");
    kiln_emu::fail(std::string("unsupported inline asm: ") + text);
}

// ---- the CUDA built-ins ------------------------------------------------------------------

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define asm KILN_EMU_ASM
#define volatile
#define KILN_EMU_ASM(...) kiln_emu::inline_asm(#__VA_ARGS__, f, h)

#define threadIdx (kiln_emu::fiber().idx)
#define blockIdx (kiln_emu::current()->block_idx)
#define gridDim (kiln_emu::current()->grid)
#define blockDim (kiln_emu::current()->block)

inline void __syncthreads() { kiln_emu::syncthreads(); }
// Fibers run one at a time and switch only at barriers, so a plain read-modify-write is
// atomic here.
inline int atomicAdd(int* address, int value) {
    const int old = *address;
    *address = old + value;
    return old;
}

#define KILN_EMU_MMA(c, a, b0, b1, type) \
    kiln_emu::mma_m16n8k16(c, a, b0, b1, kiln_emu::MmaType::type)

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width = 32) {
    return kiln_emu::shfl_xor(mask, v, lane_mask, width);
}
inline int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int width = 32) {
    return kiln_emu::shfl_xor(mask, v, lane_mask, width);
}

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// Round-to-nearest f32 arithmetic the compiler may not fuse (ISO C++ does not contract).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
