// Runs kernels/sampling_draw.cu on the CPU through cuda_emu.h and compares it with a C++
// transcription of src/engine/sampler.rs (penalties, min_tokens masking, greedy, then
// `draw`: temperature, top-k, min-p, top-p and the walk with r = u * kept weight).
//
// A token that differs from the reference's passes only by `judge`: over the reference's
// candidate order with masses summed in f64, moving the draw's target by at most 1e-4 of the
// kept mass must reach it (the kernel sums in another order than the host's f32 walk, which
// itself drifts from the exact sum by a few 1e-4 over 128k candidates).
//
// Checks per dtype:
//   * token by token on many (params, u) rows over odd vocabularies (ties, equal logits,
//     all -inf rows included);
//   * the distribution: evenly spaced u over [0, 1) must hit each token in proportion to
//     its probability after the cuts (to within rounding of the spacing).
//
//   sampling_draw_check                  exit status 1 if any case is off
//   sampling_draw_check selftest [N]     the GPU selftest's shape (40 x 128256), N threads
//   sampling_draw_check gpu KERNELS.cubin  that shape on a real GPU (libcuda through
//                                        cuda_driver.h), with the time per call
// Build with -DKILN_DRAW_GATHER=8 to run the kernel's histogram and tie paths at small
// vocabularies too (at 1024 they start above ~1000 candidates of a cut).
#include "cuda_emu.h"
// The few intrinsics sampling_draw.cu uses beyond cuda_emu.h. Fibers only switch at
// barriers and shuffles, so a plain read-modify-write is atomic here.
inline unsigned atomicAdd(unsigned* a, unsigned v) {
    const unsigned old = *a;
    *a = old + v;
    return old;
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    const unsigned long long old = *a;
    *a = old + v;
    return old;
}
inline unsigned long long __float2ull_rn(float x) {
    return static_cast<unsigned long long>(std::nearbyint(static_cast<double>(x)));
}
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
// clang-format off
#include "common.cuh"
#include "sampling_draw.cu"
// clang-format on
#include "cuda_emu_end.h"
#include "cuda_driver.h"
#include "emu_tensor.h"

#include <chrono>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>

namespace {

using kiln_emu::Order;
using kiln_emu_tensor::Buffer;
using kiln_emu_tensor::DType;
using kiln_emu_tensor::dtype_name;
using kiln_emu_tensor::round_to;

using DrawFn = void (*)(unsigned*, const void*, int, const float*, const int*, const int*,
                        const float*, float*);

DrawFn kernel_for(DType d) {
    if (d == DType::F32) return reinterpret_cast<DrawFn>(sampling_draw_f32);
    if (d == DType::F16) return reinterpret_cast<DrawFn>(sampling_draw_f16);
    return reinterpret_cast<DrawFn>(sampling_draw_bf16);
}

struct Params {
    float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
    int top_k = 0;
    float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;
    std::vector<unsigned> prompt, output, end_tokens;
    int min_tokens = 0;
};

// ---- the reference: sampler.rs, transcribed ---------------------------------------------

void apply_penalties(std::vector<float>& l, const Params& p) {
    const int vocab = static_cast<int>(l.size());
    if (p.repetition != 1.0f) {
        std::vector<unsigned> seen = p.prompt;
        seen.insert(seen.end(), p.output.begin(), p.output.end());
        std::sort(seen.begin(), seen.end());
        seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
        for (unsigned t : seen) {
            if (static_cast<int>(t) < vocab) {
                l[t] = l[t] > 0.0f ? l[t] / p.repetition : l[t] * p.repetition;
            }
        }
    }
    if (p.presence != 0.0f || p.frequency != 0.0f) {
        std::map<unsigned, unsigned> counts;
        for (unsigned t : p.output) counts[t] += 1;
        for (auto [t, c] : counts) {
            if (static_cast<int>(t) < vocab) {
                l[t] -= p.presence + p.frequency * static_cast<float>(c);
            }
        }
    }
    if (static_cast<int>(p.output.size()) < p.min_tokens) {
        for (unsigned t : p.end_tokens) {
            if (static_cast<int>(t) < vocab) l[t] = -INFINITY;
        }
    }
}

unsigned argmax(const std::vector<float>& x) {
    size_t best = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        if (x[i] > x[best]) best = i;
    }
    return static_cast<unsigned>(best);
}

// Candidates in order (weight desc, id asc) with their weights, and how many are kept.
struct Kept {
    std::vector<std::pair<unsigned, float>> order;
    size_t keep = 0;
    float kept_weight = 0.0f;
};

bool by_probability(const std::pair<unsigned, float>& a, const std::pair<unsigned, float>& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
}

Kept cut(const std::vector<float>& logits, const Params& p) {
    Kept k;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (std::isfinite(logits[i])) k.order.push_back({i, logits[i] / p.temperature});
    }
    if (k.order.empty()) return k;
    std::sort(k.order.begin(), k.order.end(), by_probability);
    if (p.top_k > 0 && static_cast<size_t>(p.top_k) < k.order.size()) k.order.resize(p.top_k);
    const float max = k.order[0].second;
    float total = 0.0f;
    for (auto& c : k.order) {
        c.second = std::exp(c.second - max);
        total += c.second;
    }
    k.keep = k.order.size();
    k.kept_weight = total;
    if (p.min_p > 0.0f) {
        size_t n = 0;
        float w = 0.0f;
        for (auto& c : k.order) {
            if (c.second >= p.min_p) {
                n += 1;
                w += c.second;
            }
        }
        k.keep = std::max<size_t>(n, 1);
        k.kept_weight = w;
    }
    if (p.top_p < 1.0f) {
        const float target = p.top_p * total;
        float acc = 0.0f;
        size_t i = 0;
        while (i < k.keep) {
            acc += k.order[i].second;
            i += 1;
            if (acc >= target) break;
        }
        if (i < k.keep) {
            k.keep = i;
            k.kept_weight = acc;
        }
    }
    return k;
}

unsigned reference(std::vector<float> logits, const Params& p, float u) {
    apply_penalties(logits, p);
    if (p.temperature == 0.0f || p.top_k == 1) return argmax(logits);
    const Kept k = cut(logits, p);
    if (k.order.empty()) return argmax(logits);
    float r = u * k.kept_weight;
    for (size_t i = 0; i < k.keep; ++i) {
        if (r < k.order[i].second) return k.order[i].first;
        r -= k.order[i].second;
    }
    return k.order[k.keep - 1].first;
}

// ---- the acceptance rule for a token that is not the reference's -----------------------
//
// The kernel sums masses in another order (and in fixed point) than the host's f32 walk, so
// where u * kept mass falls within rounding of the boundary between two candidates the two
// may pick neighbours. A token passes when, over the host's candidate order with masses
// summed in f64, moving the target by at most `kTolerance` of the kept mass reaches it (a
// top-p cut within that tolerance of its own target may also fall on either side). Anything
// else (a token outside the cuts, a masked token, a pick further away) fails.

constexpr double kTolerance = 1e-4;

struct Verdict {
    bool ok = false;
    double distance = 0.0;  // how far (relative to the kept mass) the target had to move
};

Verdict judge(std::vector<float> logits, const Params& p, float u, unsigned got) {
    apply_penalties(logits, p);
    Verdict v;
    if (p.temperature == 0.0f || p.top_k == 1) {
        v.ok = got == argmax(logits);
        v.distance = v.ok ? 0.0 : INFINITY;
        return v;
    }
    std::vector<std::pair<unsigned, float>> order;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (std::isfinite(logits[i])) order.push_back({static_cast<unsigned>(i), logits[i] / p.temperature});
    }
    if (order.empty()) {
        v.ok = got == argmax(logits);
        v.distance = v.ok ? 0.0 : INFINITY;
        return v;
    }
    std::sort(order.begin(), order.end(), by_probability);  // top-k orders tempered logits
    if (p.top_k > 0 && static_cast<size_t>(p.top_k) < order.size()) order.resize(p.top_k);
    const float max = order[0].second;
    for (auto& c : order) c.second = std::exp(c.second - max);
    std::sort(order.begin(), order.end(), by_probability);  // the draw orders weights
    const size_t n = order.size();
    std::vector<double> cum(n + 1, 0.0);
    for (size_t i = 0; i < n; ++i) cum[i + 1] = cum[i] + order[i].second;
    size_t n_min_p = n;
    if (p.min_p > 0.0f) {
        n_min_p = 0;
        while (n_min_p < n && order[n_min_p].second >= p.min_p) n_min_p += 1;
        n_min_p = std::max<size_t>(n_min_p, 1);
    }
    std::vector<size_t> keeps;
    if (p.top_p < 1.0f) {
        const double target = static_cast<double>(p.top_p) * cum[n];
        const double slack = kTolerance * cum[n];
        for (size_t k = 1; k <= n_min_p; ++k) {
            if (cum[k] >= target - slack && cum[k - 1] < target + slack) keeps.push_back(k);
        }
        if (cum[n_min_p] < target + slack) keeps.push_back(n_min_p);
    } else {
        keeps.push_back(n_min_p);
    }
    size_t pos = n;
    for (size_t i = 0; i < n; ++i) {
        if (order[i].first == got) pos = i;
    }
    v.distance = INFINITY;
    for (size_t k : keeps) {
        if (pos >= k) continue;
        const double kept = cum[k];
        const double t = static_cast<double>(u) * kept;
        size_t ideal = 0;
        while (ideal + 1 < k && cum[ideal + 1] <= t) ideal += 1;
        double d = 0.0;
        if (pos > ideal) d = cum[pos] - t;
        if (pos < ideal) d = t - cum[pos + 1];
        v.distance = std::min(v.distance, std::max(0.0, d) / kept);
    }
    v.ok = v.distance <= kTolerance;
    return v;
}

// ---- the host packing the runtime does (src/backend/cuda/sampling_draw_rows.rs) ----------

struct Packed {
    std::vector<float> row_f;
    std::vector<int> row_i, edit_token;
    std::vector<float> edit_value;

    void add(const Params& p, float u) {
        row_f.insert(row_f.end(), {p.temperature, p.top_p, p.min_p, u});
        const int begin = static_cast<int>(edit_token.size());
        // token -> (repetition factor, bias)
        std::map<unsigned, std::pair<float, float>> edits;
        if (p.repetition != 1.0f) {
            for (unsigned t : p.prompt) edits[t] = {p.repetition, 0.0f};
            for (unsigned t : p.output) edits[t] = {p.repetition, 0.0f};
        }
        if (p.presence != 0.0f || p.frequency != 0.0f) {
            std::map<unsigned, unsigned> counts;
            for (unsigned t : p.output) counts[t] += 1;
            for (auto [t, c] : counts) {
                auto& e = edits.try_emplace(t, 1.0f, 0.0f).first->second;
                e.second = p.presence + p.frequency * static_cast<float>(c);
            }
        }
        if (static_cast<int>(p.output.size()) < p.min_tokens) {
            for (unsigned t : p.end_tokens) {
                edits.try_emplace(t, 1.0f, 0.0f).first->second.second = INFINITY;
            }
        }
        for (auto [t, e] : edits) {
            edit_token.push_back(static_cast<int>(t));
            edit_value.push_back(e.first);
            edit_value.push_back(e.second);
        }
        row_i.insert(row_i.end(), {p.top_k, begin, static_cast<int>(edit_token.size())});
    }
};

std::vector<unsigned> run_kernel(DType d, const std::vector<float>& logits_row, int vocab,
                                 Packed& packed, int threads, Order order) {
    const size_t rows = packed.row_i.size() / 3;
    std::vector<float> all;
    for (size_t r = 0; r < rows; ++r) all.insert(all.end(), logits_row.begin(), logits_row.end());
    Buffer logits(d, all);
    std::vector<float> scratch(all.size(), NAN);
    std::vector<unsigned> out(rows, 0xdeadbeefu);
    // Empty edit lists still need valid pointers.
    packed.edit_token.push_back(0);
    packed.edit_value.insert(packed.edit_value.end(), {1.0f, 0.0f});
    kiln_emu::launch({static_cast<unsigned>(rows), 1, 1}, {static_cast<unsigned>(threads), 1, 1},
                     order, 3, [&] {
                         kernel_for(d)(out.data(), logits.data(), vocab, packed.row_f.data(),
                                       packed.row_i.data(), packed.edit_token.data(),
                                       packed.edit_value.data(), scratch.data());
                     });
    return out;
}

std::mt19937 rng(11);
int failures = 0;
// Set by the `gpu CUBIN` mode: the selftest's shape runs there instead of in the emulator.
const kiln_gpu::Driver* gpu = nullptr;

std::vector<float> random_logits(DType d, int vocab, float spread) {
    std::normal_distribution<float> n(0.0f, spread);
    std::vector<float> v(vocab);
    for (float& x : v) x = round_to(d, n(rng));
    return v;
}

std::vector<Params> param_grid(int vocab) {
    std::vector<Params> grid;
    const unsigned v = static_cast<unsigned>(vocab);
    for (float t : {0.0f, 0.7f, 1.5f}) {
        for (int k : {0, 1, 3, 50}) {
            for (float top_p : {1.0f, 0.9f, 0.3f}) {
                for (float min_p : {0.0f, 0.1f}) {
                    Params p;
                    p.temperature = t;
                    p.top_k = k;
                    p.top_p = top_p;
                    p.min_p = min_p;
                    grid.push_back(p);
                }
            }
        }
    }
    Params pen;
    pen.repetition = 1.3f;
    pen.presence = 0.4f;
    pen.frequency = 0.25f;
    pen.prompt = {0, 2 % v, 5 % v, 999 % v};
    pen.output = {2 % v, 2 % v, 3 % v, 4098 % v};
    grid.push_back(pen);
    pen.temperature = 0.0f;  // greedy with penalties
    grid.push_back(pen);
    Params masked;
    masked.min_tokens = 3;
    masked.output = {1 % v};
    masked.end_tokens = {0, 1 % v, 6 % v};
    masked.top_p = 0.8f;
    grid.push_back(masked);
    masked.temperature = 0.0f;
    grid.push_back(masked);
    return grid;
}

// Logits: normal; `Coarse`: on a grid of 0.5 (many ties, so top-k and the draw must break
// them toward the lower id) with every 10th token -inf (excluded, as masked or non-finite
// logits are); `Equal`: all the same but every 10th -inf; `AllNegInf`: no candidate at all.
enum class Logits { Normal, Coarse, Equal, AllNegInf };

const char* logits_name(Logits l) {
    switch (l) {
        case Logits::Normal: return "";
        case Logits::Coarse: return " ties";
        case Logits::Equal: return " equal";
        case Logits::AllNegInf: return " all -inf";
    }
    return "";
}

void check_tokens(DType d, int vocab, int threads, Order order, Logits kind = Logits::Normal) {
    std::vector<float> logits = random_logits(d, vocab, 2.0f);
    for (size_t i = 0; i < logits.size(); ++i) {
        if (kind == Logits::Coarse) {
            logits[i] = i % 10 == 9 ? -INFINITY : std::floor(logits[i] * 2.0f) / 2.0f;
        } else if (kind == Logits::Equal) {
            logits[i] = i % 10 == 9 ? -INFINITY : 0.5f;
        } else if (kind == Logits::AllNegInf) {
            logits[i] = -INFINITY;
        }
    }
    const std::vector<Params> grid = param_grid(vocab);
    Packed packed;
    std::vector<std::pair<const Params*, float>> cases;
    std::uniform_real_distribution<float> uni(0.0f, 1.0f);
    for (const Params& p : grid) {
        for (int i = 0; i < 1; ++i) {
            const float u = cases.size() % 5 == 0 ? 0.0f : uni(rng);
            packed.add(p, u);
            cases.push_back({&p, u});
        }
    }
    const std::vector<unsigned> got = run_kernel(d, logits, vocab, packed, threads, order);
    int exact = 0, boundary = 0, wrong = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        const auto [p, u] = cases[i];
        const unsigned want = reference(logits, *p, u);
        if (got[i] == want) {
            exact += 1;
        } else if (judge(logits, *p, u, got[i]).ok) {
            boundary += 1;
        } else {
            wrong += 1;
            if (wrong <= 3) {
                std::printf("    row %zu: t %g k %d top_p %g min_p %g u %.6f: got %u want %u\n", i,
                            p->temperature, p->top_k, p->top_p, p->min_p, u, got[i], want);
            }
        }
    }
    failures += wrong == 0 ? 0 : 1;
    std::printf("%s  tokens vocab %-5d %4d threads %-4s%s  %zu rows: %d exact, %d at a boundary, "
                "%d wrong\n",
                wrong == 0 ? "ok  " : "FAIL", vocab, threads, dtype_name(d),
                logits_name(kind), cases.size(), exact,
                boundary, wrong);
}

// Evenly spaced u: token i must come up about n * p_i times (p after the cuts).
void check_distribution(DType d, int vocab, Params p, int n) {
    const std::vector<float> logits = random_logits(d, vocab, 1.0f);
    Packed packed;
    for (int i = 0; i < n; ++i) packed.add(p, (static_cast<float>(i) + 0.5f) / n);
    const std::vector<unsigned> got = run_kernel(d, logits, vocab, packed, 64, Order::Random);
    std::vector<float> edited = logits;
    apply_penalties(edited, p);
    const Kept k = cut(edited, p);
    std::vector<double> want(vocab, 0.0);
    for (size_t i = 0; i < k.keep; ++i) want[k.order[i].first] = n * k.order[i].second / k.kept_weight;
    std::vector<int> hits(vocab, 0);
    for (unsigned t : got) hits[t < static_cast<unsigned>(vocab) ? t : 0] += 1;
    double worst = 0.0;
    for (int t = 0; t < vocab; ++t) worst = std::max(worst, std::fabs(hits[t] - want[t]));
    const bool ok = worst <= 2.0;  // each token's interval holds its share of the grid +- 1
    failures += ok ? 0 : 1;
    std::printf("%s  distribution vocab %-5d %-4s  t %g k %d top_p %g min_p %g, %d draws: worst "
                "count off by %.2f\n",
                ok ? "ok  " : "FAIL", vocab, dtype_name(d), p.temperature, p.top_k, p.top_p,
                p.min_p, n, worst);
}

// The GPU selftest's case (src/backend/cuda/selftest/sampling_case.rs): 5 parameter sets x
// 8 rows over a 128256 vocabulary, logits uniform in [-6, 6] rounded to the dtype, each row
// its own logits and u. Reports how many rows differ from the reference and how far.
void check_selftest_shape(DType d, int vocab, int threads) {
    const int per_set = 8;
    std::vector<Params> sets(5);
    sets[1].temperature = 0.7f;
    sets[1].top_k = 40;
    sets[1].top_p = 0.9f;
    sets[2].temperature = 1.3f;
    sets[2].min_p = 0.05f;
    sets[2].top_p = 0.5f;
    for (int s : {3, 4}) {
        Params& p = sets[s];
        p.repetition = 1.2f;
        for (unsigned i = 0; i < 32; ++i) p.prompt.push_back(i * 37 % vocab);
        for (unsigned i = 0; i < 5; ++i) p.output.push_back(i * 11 % vocab);
        p.end_tokens = {0, 2};
    }
    sets[3].presence = 0.3f;
    sets[3].frequency = 0.2f;
    sets[3].min_tokens = 8;
    sets[4].temperature = 0.0f;
    const int rows = 5 * per_set;
    std::uniform_real_distribution<float> uni(0.0f, 1.0f);
    std::vector<float> all(static_cast<size_t>(rows) * vocab);
    for (float& x : all) x = round_to(d, (uni(rng) * 2.0f - 1.0f) * 6.0f);
    Packed packed;
    std::vector<float> us;
    for (int r = 0; r < rows; ++r) {
        us.push_back(uni(rng));
        packed.add(sets[r / per_set], us.back());
    }
    Buffer logits(d, all);
    std::vector<float> scratch(all.size(), NAN);
    std::vector<unsigned> out(rows, 0xdeadbeefu);
    packed.edit_token.push_back(0);
    packed.edit_value.insert(packed.edit_value.end(), {1.0f, 0.0f});
    double us_per_call = 0.0;
    if (gpu) {
        using kiln_gpu::DevPtr;
        const size_t elem = d == DType::F32 ? 4 : 2;
        DevPtr d_out = gpu->upload(out.data(), out.size() * 4);
        DevPtr d_logits = gpu->upload(logits.data(), all.size() * elem);
        DevPtr d_f = gpu->upload(packed.row_f.data(), packed.row_f.size() * 4);
        DevPtr d_i = gpu->upload(packed.row_i.data(), packed.row_i.size() * 4);
        DevPtr d_t = gpu->upload(packed.edit_token.data(), packed.edit_token.size() * 4);
        DevPtr d_v = gpu->upload(packed.edit_value.data(), packed.edit_value.size() * 4);
        DevPtr d_scratch = gpu->upload(scratch.data(), scratch.size() * 4);
        void* f = gpu->function(std::string("sampling_draw_") + dtype_name(d));
        std::vector<void*> args = {&d_out, &d_logits, &vocab, &d_f, &d_i, &d_t, &d_v, &d_scratch};
        gpu->launch(f, rows, 1, 1, threads, args);
        gpu->download(out.data(), d_out, out.size() * 4);
        const int iters = 50;
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) {
            gpu->check(gpu->cuLaunchKernel(f, rows, 1, 1, threads, 1, 1, 0, nullptr, args.data(),
                                           nullptr),
                       "cuLaunchKernel");
        }
        gpu->check(gpu->cuCtxSynchronize(), "kernel");
        us_per_call = std::chrono::duration<double, std::micro>(
                          std::chrono::steady_clock::now() - start)
                          .count() /
                      iters;
        for (DevPtr p : {d_out, d_logits, d_f, d_i, d_t, d_v, d_scratch}) gpu->cuMemFree_v2(p);
    } else {
        kiln_emu::launch({static_cast<unsigned>(rows), 1, 1},
                         {static_cast<unsigned>(threads), 1, 1}, Order::Random, 5, [&] {
                             kernel_for(d)(out.data(), logits.data(), vocab, packed.row_f.data(),
                                           packed.row_i.data(), packed.edit_token.data(),
                                           packed.edit_value.data(), scratch.data());
                         });
    }
    int differ = 0, wrong = 0;
    double worst = 0.0, host_worst = 0.0;
    for (int r = 0; r < rows; ++r) {
        const Params& p = sets[r / per_set];
        const std::vector<float> row(all.begin() + static_cast<size_t>(r) * vocab,
                                     all.begin() + static_cast<size_t>(r + 1) * vocab);
        const unsigned want = reference(row, p, us[r]);
        if (out[r] == want) continue;
        differ += 1;
        const Verdict v = judge(row, p, us[r], out[r]);
        const Verdict host = judge(row, p, us[r], want);
        worst = std::max(worst, v.distance);
        host_worst = std::max(host_worst, host.distance);
        if (!v.ok) wrong += 1;
        std::printf("    row %2d (set %d, u %.6f): got %u want %u; from the exact target: the "
                    "kernel's token %.3g, the reference's %.3g of the kept mass%s\n",
                    r, r / per_set, us[r], out[r], want, v.distance, host.distance,
                    v.ok ? "" : "  WRONG");
    }
    failures += wrong == 0 ? 0 : 1;
    if (gpu) std::printf("      on the GPU: %.1f us per call (wall clock over 50 launches)\n", us_per_call);
    std::printf("%s  selftest shape [%d, %d] %-4s %d threads: %d rows differ from the reference "
                "(worst %.3g of the kept mass from the exact target; the reference's own f32 "
                "walk %.3g), %d beyond the tolerance %.0e\n",
                wrong == 0 ? "ok  " : "FAIL", rows, vocab, dtype_name(d), threads, differ, worst,
                host_worst, wrong, kTolerance);
}

}  // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    std::unique_ptr<kiln_gpu::Driver> driver;
    if (mode == "gpu") {
        // `gpu KERNELS.cubin`: the selftest's shape on a real GPU, 1024 threads as kiln runs it.
        if (argc < 3) {
            std::fprintf(stderr, "usage: sampling_draw_check gpu KERNELS.cubin\n");
            return 2;
        }
        std::ifstream in(argv[2], std::ios::binary);
        const std::vector<char> cubin{std::istreambuf_iterator<char>(in), {}};
        driver = std::make_unique<kiln_gpu::Driver>(cubin);
        gpu = driver.get();
        for (DType d : {DType::F32, DType::F16, DType::BF16}) check_selftest_shape(d, 128256, 1024);
        std::printf("%s\n", failures == 0 ? "ok" : "SOME CASES FAILED");
        return failures == 0 ? 0 : 1;
    }
    if (mode == "selftest") {
        // The selftest's shape only: `selftest [threads]` (1024 as on the GPU by default).
        const int threads = argc > 2 ? std::atoi(argv[2]) : 1024;
        for (DType d : {DType::F32, DType::F16, DType::BF16}) check_selftest_shape(d, 128256, threads);
        std::printf("%s\n", failures == 0 ? "ok" : "SOME CASES FAILED");
        return failures == 0 ? 0 : 1;
    }
    setvbuf(stdout, nullptr, _IOLBF, 0);
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
        std::printf("== %s\n", dtype_name(d));
        check_tokens(d, 1, 32, Order::Forward);
        check_tokens(d, 7, 64, Order::Random);
        check_tokens(d, 1000, 96, Order::Reverse);
        check_tokens(d, 301, 64, Order::Random, Logits::Coarse);
        check_tokens(d, 2000, 64, Order::Random, Logits::Equal);
        check_tokens(d, 50, 32, Order::Forward, Logits::AllNegInf);
        // The 16-bit types differ only in the load; the large vocabulary runs once (~1 min).
        if (d == DType::F32) check_tokens(d, 4099, 128, Order::Random);
        Params plain;
        check_distribution(d, 7, plain, 400);
        Params cuts;
        cuts.temperature = 0.8f;
        cuts.top_k = 5;
        cuts.top_p = 0.9f;
        cuts.min_p = 0.05f;
        check_distribution(d, 9, cuts, 400);
        Params penalised;
        penalised.repetition = 1.5f;
        penalised.frequency = 0.3f;
        penalised.prompt = {1, 4};
        penalised.output = {4, 4, 6};
        check_distribution(d, 8, penalised, 400);
    }
    std::printf("%s\n", failures == 0 ? "the sampling kernel matches sampler.rs"
                                      : "SOME CASES FAILED");
    return failures == 0 ? 0 : 1;
}
