// kiln kernel prelude: prepended to every kernels/*.cu before NVRTC compiles it.
// It includes no CUDA toolkit header on purpose: runtime images ship libnvrtc but not the
// toolkit's include folder, so the few 16-bit helpers we need are written out here.

typedef unsigned short kiln_u16;

// ---- 16-bit float <-> f32 conversions -------------------------------------------------

// bf16 is the top half of an f32: widening is a shift.
__device__ __forceinline__ float kiln_bf16_to_f32(kiln_u16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest, ties to even (what PyTorch and the `half` crate do); NaN stays NaN.
__device__ __forceinline__ kiln_u16 kiln_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (kiln_u16)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (kiln_u16)(u >> 16);
}

// IEEE half: the PTX `cvt` instructions exist on every architecture we target.
__device__ __forceinline__ float kiln_f16_to_f32(kiln_u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ kiln_u16 kiln_f32_to_f16(float f) {
    kiln_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// ---- dtype traits: storage type + load/store through f32 ------------------------------

struct KilnF32 {
    typedef float T;
    static __device__ __forceinline__ float load(T x) { return x; }
    static __device__ __forceinline__ T store(float x) { return x; }
};

struct KilnF16 {
    typedef kiln_u16 T;
    static __device__ __forceinline__ float load(T x) { return kiln_f16_to_f32(x); }
    static __device__ __forceinline__ T store(float x) { return kiln_f32_to_f16(x); }
};

struct KilnBF16 {
    typedef kiln_u16 T;
    static __device__ __forceinline__ float load(T x) { return kiln_bf16_to_f32(x); }
    static __device__ __forceinline__ T store(float x) { return kiln_f32_to_bf16(x); }
};

// Instantiate an `extern "C"` wrapper per dtype. `M(suffix, Traits)` must define a kernel
// named `<op>_##suffix`; the host looks kernels up as `<op>_f32`, `<op>_f16`, `<op>_bf16`.
#define KILN_FOR_EACH_DTYPE(M) \
    M(f32, KilnF32)            \
    M(f16, KilnF16)            \
    M(bf16, KilnBF16)

// 16 bytes of a row of D::T (8 16-bit values or 4 f32), read with one vector load; the
// caller guarantees 16-byte alignment.
struct alignas(16) KilnVec16 {
    unsigned int w[4];
};

// The values of a KilnVec16 of D::T as f32 (4 for f32, 8 for the 16-bit types).
template <typename D>
__device__ __forceinline__ void kiln_unpack16(const KilnVec16& c, float* out) {
    if constexpr (sizeof(typename D::T) == 4) {
#pragma unroll
        for (int i = 0; i < 4; ++i) out[i] = __uint_as_float(c.w[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            out[2 * i] = D::load((kiln_u16)(c.w[i] & 0xffffu));
            out[2 * i + 1] = D::load((kiln_u16)(c.w[i] >> 16));
        }
    }
}

// The inverse of kiln_unpack16 on storage values: 16 bytes of T (8 16-bit values or 4 f32)
// as one vector, for a single 16-byte store.
template <typename T>
__device__ __forceinline__ KilnVec16 kiln_pack16(const T* v) {
    KilnVec16 c;
    if constexpr (sizeof(T) == 4) {
#pragma unroll
        for (int i = 0; i < 4; ++i) c.w[i] = __float_as_uint(v[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            c.w[i] = (unsigned int)v[2 * i] | ((unsigned int)v[2 * i + 1] << 16);
        }
    }
    return c;
}

// Elements of T before the first 16-byte boundary at or after `p` (0 when `p` is aligned).
template <typename T>
__device__ __forceinline__ int kiln_head_to_16(const T* p) {
    const int misalign = (int)(((unsigned long long)p & 15ull) / sizeof(T));
    return misalign == 0 ? 0 : (int)(16 / sizeof(T)) - misalign;
}

// y[j] = f(x[j]) for the `len` values of one row, by the blocks along the grid's x: 16-byte
// vectors strided over every block, plus a scalar head up to x's first 16-byte boundary and
// a scalar tail, both done by block 0. All scalar when x and y are aligned differently.
template <typename D, typename F>
__device__ __forceinline__ void kiln_map_row(typename D::T* y, const typename D::T* x,
                                             long long len, F f) {
    typedef typename D::T T;
    constexpr int PER = 16 / (int)sizeof(T);
    const bool together = (((unsigned long long)x ^ (unsigned long long)y) & 15ull) == 0;
    long long head = together ? kiln_head_to_16(x) : len;
    if (head > len) head = len;
    const long long nvec = (len - head) / PER;
    const long long tail = head + nvec * PER;
    if (blockIdx.x == 0) {
        for (long long j = threadIdx.x; j < head; j += blockDim.x) {
            y[j] = D::store(f(D::load(x[j])));
        }
        for (long long j = tail + threadIdx.x; j < len; j += blockDim.x) {
            y[j] = D::store(f(D::load(x[j])));
        }
    }
    const KilnVec16* xv = reinterpret_cast<const KilnVec16*>(x + head);
    KilnVec16* yv = reinterpret_cast<KilnVec16*>(y + head);
    for (long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x; v < nvec;
         v += (long long)gridDim.x * blockDim.x) {
        const KilnVec16 packed = xv[v];  // one 16-byte load (a reference would load words)
        float in[PER];
        kiln_unpack16<D>(packed, in);
        T out[PER];
#pragma unroll
        for (int i = 0; i < PER; ++i) out[i] = D::store(f(in[i]));
        yv[v] = kiln_pack16(out);
    }
}

// A grid-stride loop of index `i` over `total` elements.
#define KILN_GRID_STRIDE(i, total)                                                  \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (long long)gridDim.x * blockDim.x)

// The first cache position a query at `pos` attends to. window > 0 (Mistral's sliding
// window): the last `window` positions pos + 1 - window ..= pos. window < 0 (Llama 4's
// chunked layers): the positions of its own chunk of -window, from (pos / -window) *
// -window on. 0: the whole context. Padding rows (pos -1) get 0; they mask every key anyway.
__device__ __forceinline__ int kiln_first_key(int pos, int window) {
    if (window > 0) return pos >= window ? pos + 1 - window : 0;
    if (window < 0 && pos > 0) return (pos / -window) * -window;
    return 0;
}

// Gemma 2's attention-logit soft-capping of a scaled score: cap * tanh(s / cap); cap 0 is
// off (the score unchanged).
__device__ __forceinline__ float kiln_softcap(float s, float cap) {
    return cap > 0.0f ? cap * tanhf(s / cap) : s;
}

// gpt-oss's expert activation: g clamped to at most `limit`, u to [-limit, limit], then
// (u + 1) * g * sigmoid(alpha * g). One definition for activation.cu and the expert GEMVs'
// epilogue, so the two agree bit for bit.
__device__ __forceinline__ float kiln_clamped_swiglu(float g, float u, float limit, float alpha) {
    const float gc = fminf(g, limit);
    const float uc = fmaxf(fminf(u, limit), -limit);
    return (uc + 1.0f) * (gc / (1.0f + expf(-alpha * gc)));
}

// ---- reductions -------------------------------------------------------------------------

#define KILN_FULL_MASK 0xffffffffu
#define KILN_NEG_INF (-__int_as_float(0x7f800000))

// gpt-oss's attention sink joins a finished softmax as one more logit `sink` with no value.
// The softmax's accumulator and sum are relative to its max `m` (-inf: no key seen, both
// 0); returns what the accumulator is multiplied by: e^(m - M) / (sum e^(m - M) +
// e^(sink - M)) with M = max(m, sink), so nothing overflows whichever is larger. Without a
// sink (has_sink 0) it is 1 / sum (0 for an empty softmax). `exp` is expf or exp2f, for
// softmaxes kept in natural or base-2 units (sink and m in those units).
struct KilnExpE {
    __device__ __forceinline__ float operator()(float x) const { return expf(x); }
};
struct KilnExp2 {
    __device__ __forceinline__ float operator()(float x) const { return exp2f(x); }
};
template <typename Exp>
__device__ __forceinline__ float kiln_softmax_norm(float m, float sum, int has_sink, float sink,
                                                   Exp exp) {
    if (!has_sink) return sum > 0.0f ? 1.0f / sum : 0.0f;
    const float top = fmaxf(m, sink);
    const float keep = m == KILN_NEG_INF ? 0.0f : exp(m - top);
    return keep / (sum * keep + exp(sink - top));
}

__device__ __forceinline__ float kiln_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(KILN_FULL_MASK, v, offset);
    }
    return v;
}

__device__ __forceinline__ float kiln_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(KILN_FULL_MASK, v, offset));
    }
    return v;
}

// Block-wide sum; blockDim.x must be a multiple of 32 (at most 1024). Every thread gets
// the result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float kiln_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;
    v = kiln_warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : 0.0f;
    return kiln_warp_sum(v);
}

__device__ __forceinline__ float kiln_block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;
    v = kiln_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : KILN_NEG_INF;
    return kiln_warp_max(v);
}

// ---- tensor cores ----------------------------------------------------------------------

// D += A B on the tensor cores: mma.sync.aligned.m16n8k16.row.col, 16-bit inputs and f32
// accumulators, sm_80+ (fragment layouts in kernels/attention_prefill.cu's header). Shared
// by the tensor-core kernels (attention_prefill.cu, conv_implicit.cu).
// scripts/kernel_emulator/cuda_emu.h, which cannot run inline PTX, defines KILN_EMU_MMA as
// a warp-collective CPU model of the same instruction; NVRTC never sees that macro.
#if defined(KILN_EMU_MMA)
#define KILN_MMA_M16N8K16(TYPE) KILN_EMU_MMA(c, a, b0, b1, TYPE)
#elif __CUDA_ARCH__ >= 800
#define KILN_MMA_M16N8K16(TYPE)                                                           \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." #TYPE "." #TYPE ".f32 "           \
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"      \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                          \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
#else
#define KILN_MMA_M16N8K16(TYPE)  // no m16n8k16: callers trap before reaching it
#endif

template <typename D>
struct KilnMma;

#define KILN_MMA_FOR(D, TYPE)                                                               \
    template <>                                                                             \
    struct KilnMma<D> {                                                                     \
        static __device__ __forceinline__ void run(float (&c)[4], const unsigned int (&a)[4], \
                                                   unsigned int b0, unsigned int b1) {      \
            KILN_MMA_M16N8K16(TYPE);                                                        \
        }                                                                                   \
    };
KILN_MMA_FOR(KilnBF16, bf16)
KILN_MMA_FOR(KilnF16, f16)

// ---- paged attention helpers ------------------------------------------------------------

// The sequence owning flattened query row `token`: the last sequence whose first row
// (query_start[s]) is <= token. Shared by the attention kernels.
__device__ __forceinline__ int kiln_find_sequence(const int* query_start, int num_seqs,
                                                  int token) {
    int lo = 0;
    int hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (query_start[mid] <= token) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

__device__ __forceinline__ float kiln_silu(float v) { return v / (1.0f + expf(-v)); }

// PyTorch's softplus: linear above 20.
__device__ __forceinline__ float kiln_softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

// Where a sequence's step is, for the recurrent mixers (mamba.cu, gated_delta.cu): its
// tokens [start, end), its first position, its state slot's f32 values (null for a padding
// sequence or a slot past the pool).
struct KilnSlotStep {
    int start;
    int end;
    int first;
    float* slot;
};

__device__ __forceinline__ KilnSlotStep kiln_slot_step(int seq, float* states,
                                                       const int* slot_mapping,
                                                       const int* state_slots,
                                                       int num_state_slots,
                                                       const int* query_start,
                                                       const int* context_lens,
                                                       long long slot_values) {
    KilnSlotStep st;
    st.start = query_start[seq];
    st.end = query_start[seq + 1];
    st.first = context_lens[seq] - (st.end - st.start);
    const int slot = state_slots[seq];
    const bool live = st.start < st.end && slot_mapping[st.start] >= 0 && slot >= 0 &&
                      slot < num_state_slots;
    st.slot = live ? states + (long long)slot * slot_values : nullptr;
    return st;
}

