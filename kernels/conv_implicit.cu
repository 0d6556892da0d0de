// conv2d as an implicit GEMM on tensor cores (bf16 / f16, sm_80+): no im2col matrix.
//
// Semantics: those of the CPU backend's conv2d (groups 1, dilation 1, zero padding `pad`
// on every side, `stride` both ways). x [n, c_in, h, w], weights [c_out, c_in, kh, kw],
// optional bias [c_out], out [n, c_out, out_h, out_w]; all NCHW, contiguous.
//
// GEMM view per image: out[n, m] = sum_k A[m, k] B[k, n] (+ bias[n]) with m an output pixel
// (oy * out_w + ox), n an output channel, k = (ci * kh + ky) * kw + kx; A[m, k] =
// x[ci, oy * stride - pad + ky, ox * stride - pad + kx] (0 outside the image) and
// B[k, n] = w[n, k]. The im2col path writes A to memory (9x the image for a 3x3 conv: ~11 GB
// per 512x512 SD VAE decode) and reads it back; here each CTA gathers its A tile straight
// from x into shared memory.
//
// Two orders of K (the sum is the same; the host picks, image_conv_implicit.rs):
//   conv_implicit       the weights' order above, any c_in;
//   conv_implicit_taps  tap-major, k = (ky * kw + kx) * c_in + ci, for c_in % CI_BK == 0
//                       (every SD VAE / UNet conv but the VAE's 4-channel conv_in), with
//                       weights reordered by conv_weight_taps (a 1x1 conv's already are):
//                       a k tile is then one tap of 32 channels, so a thread tests its
//                       pixel's tap once per tile and loads 16 channels a plane apart.
//
// Tiling: a CTA (8 warps) computes a CI_BM x CI_BN = 128 pixels x 128 channels tile of one
// image, CI_BK = 32 values of k at a time. Warps form 2 (m) x 4 (n); each owns 64 x 32 of
// the tile: 4 x 4 mma.m16n8k16 per k16 step into 64 f32 accumulators per thread, with the
// A and B fragments read once per step from shared memory as 32-bit pairs of k.
//
// Shared memory: A as [m][k] and B as [n][k] (k contiguous: a fragment register is two
// consecutive k), rows padded from 32 to CI_SK = 40 elements (80 bytes) so that the eight
// fragment rows a load instruction touches (g = 0..7) fall on distinct banks, and so do the
// eight 16-byte stores of a quarter warp when the tiles are staged. Two buffers each:
// 2 x (128 + 128) x 40 x 2 bytes = 40 KiB, static (under the 48 KiB limit).
//
// The K loop is double-buffered through registers (no cp.async: A's gather is 2-byte
// scalar loads with zero fill, which cp.async's 4/8/16-byte copies do not fit): tile t + 1
// is loaded into registers before tile t's mma steps and stored to the other buffer after
// them, one barrier per tile. Loading roles: thread i gathers pixel m = i % 128, k half
// i / 128 (16 values; a warp's 32 lanes are 32 consecutive pixels, so for stride 1 each of
// its loads is one contiguous run of x), with a per-pixel bit mask of the kernel taps that
// fall inside the image (kh * kw <= 32) instead of bounds checks per value; and two
// 16-byte chunks of weight rows (scalar loads where K is not a multiple of 8 or at the K
// tail). Pixels past the image, k past K and padding pixels are
// zeros in A; channels past c_out and k past K zeros in B, so tails add nothing.
//
// Epilogue: accumulators + bias in f32, one rounding to the dtype, staged as a [n][m] tile
// in the (then free) shared memory and written out with 16-byte stores along m (an output
// channel's pixels are contiguous), scalar where pixels is not a multiple of 8.
//
// Expected bottleneck: issuing the A gather. In the weights' order a thread steps and
// tests each of its 16 values' tap (~15 PTX instructions per value): ~1900 warp
// instructions of gather per CTA tile next to 256 mma, more issue slots than the tensor
// cores need. Tap-major, a value costs a load, an address and half a pack, so the mma
// steps, shared-memory bandwidth (3 KiB of fragments per warp per k16 step, ~1.5 cycles
// per mma at 128 B/cycle) and the L1/L2 reads of x (a 3x3 conv reads each value ~9 times)
// are what is left; DRAM is not (x is read about once per channel tile). Next steps once a
// GPU run has timed both orders: ldmatrix for the fragments, cp.async for B, 64 x 64 warp
// tiles. c_out < 128 (the VAE's conv_out, 3 channels) wastes most of the n tile.
//
// Registers: 64 accumulators + 24 fragment + 16 staging registers per thread; the launch
// bounds ask for 2 CTAs per SM (at most 128 registers, 80 KiB of shared memory) so that 16
// warps hide the gather's latency. ptxas (NVRTC 13.0, sm_80 and sm_90, `-v`) reports 127
// (conv_implicit) and 128 (conv_implicit_taps) registers, no spills, 40960 bytes of shared
// memory (it also picks 128 without the hint).
//
// Grid: x = pixel tiles, y = channel tiles, z = images. conv_implicit(_taps) built for f32
// or for GPUs before sm_80 contain only a trap: the host
// (src/backend/cuda/image_conv_implicit.rs) never launches them.

#define CI_THREADS 256
#define CI_BM 128
#define CI_BN 128
#define CI_BK 32
#define CI_SK (CI_BK + 8)   // shared row of A / B: 40 elements, 80 bytes
#define CI_SC (CI_BM + 8)   // shared row of the output tile: 136 elements, 272 bytes
#define CI_TILE (CI_BM * CI_SK)  // elements of one A (or B) buffer

// The conv's sizes, as the host passes them.
struct CiShape {
    int c_in, h, w, c_out, kh, kw, stride, pad, out_h, out_w;
};

__device__ __forceinline__ unsigned int ci_load_pair(const kiln_u16* p) {
    return *reinterpret_cast<const unsigned int*>(p);
}

// This thread's 16 values of A for k tile `k0` (k0 + k_half ..), packed two per register.
// Which taps of its pixel fall inside the image is decided once per CTA (`inside`, bit
// ky * kw + kx, so kh * kw <= 32); per value the loop only steps an offset and tests a bit.
struct CiGather {
    const kiln_u16* x;    // this image
    int base;             // offset in a channel plane of tap (0, 0): negative in the padding
    unsigned int inside;  // taps reading the image (none for pixels past the output)
    int k_half;           // 0 or 16

    __device__ __forceinline__ void init(const CiShape& s, int oy, int ox, bool pixel_ok) {
        const int iy0 = oy * s.stride - s.pad;
        const int ix0 = ox * s.stride - s.pad;
        base = iy0 * s.w + ix0;
        inside = 0u;
        for (int ky = 0; pixel_ok && ky < s.kh; ++ky) {
            for (int kx = 0; kx < s.kw; ++kx) {
                const bool in = (unsigned)(iy0 + ky) < (unsigned)s.h &&
                                (unsigned)(ix0 + kx) < (unsigned)s.w;
                inside |= (in ? 1u : 0u) << (ky * s.kw + kx);
            }
        }
    }

    __device__ __forceinline__ void load(const CiShape& s, int k0, unsigned int (&r)[8]) const {
        const int taps = s.kh * s.kw;
        const int plane = s.h * s.w;
        const int k = k0 + k_half;
        const int left = s.c_in * taps - k;  // values from k on (the K tail)
        const int ci = k / taps;
        int tap = k - ci * taps;
        int kx = tap % s.kw;
        // Not dereferenced unless the tap is inside: then it is in the image.
        int off = base + ci * plane + (tap / s.kw) * s.w + kx;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const unsigned int v = i < left && ((inside >> tap) & 1u) ? x[off] : 0u;
            if (i % 2 == 0) {
                r[i / 2] = v;
            } else {
                r[i / 2] |= v << 16;
            }
            ++off;
            ++tap;
            if (++kx == s.kw) {  // next kernel row
                kx = 0;
                off += s.w - s.kw;
                if (tap == taps) {  // next channel
                    tap = 0;
                    off += plane - s.kh * s.w;
                }
            }
        }
    }

    // The same for K ordered tap-major (k = tap * c_in + ci, weights from conv_weight_taps)
    // with c_in % CI_BK == 0: the whole k tile is one tap, so one mask test covers it, and
    // the 16 values are 16 channels of one input pixel, a plane apart.
    __device__ __forceinline__ void load_taps(const CiShape& s, int k0,
                                              unsigned int (&r)[8]) const {
        const int tap = k0 / s.c_in;
        const int plane = s.h * s.w;
        if (((inside >> tap) & 1u) == 0u) {
#pragma unroll
            for (int i = 0; i < 8; ++i) r[i] = 0u;
            return;
        }
        const int ky = tap / s.kw;
        const int ci = k0 - tap * s.c_in + k_half;
        const kiln_u16* p = x + (ci * plane + base + ky * s.w + (tap - ky * s.kw));
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            r[i] = (unsigned int)p[2 * i * plane] | ((unsigned int)p[(2 * i + 1) * plane] << 16);
        }
    }
};

// 8 consecutive k of weight row `n` from `k`, zeros past K (or past c_out).
__device__ __forceinline__ KilnVec16 ci_weight_chunk(const kiln_u16* w, const CiShape& s,
                                                     int n, int k, bool vector_rows) {
    const int total = s.c_in * s.kh * s.kw;
    KilnVec16 c = {{0u, 0u, 0u, 0u}};
    if (n >= s.c_out || k >= total) return c;
    const kiln_u16* row = w + (long long)n * total;
    if (vector_rows) {  // K % 8 == 0 and w aligned: the chunk is whole and aligned
        return *reinterpret_cast<const KilnVec16*>(row + k);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const unsigned int v = k + j < total ? row[k + j] : 0u;
        c.w[j / 2] |= v << (16 * (j % 2));
    }
    return c;
}

// One k tile's loads, held in registers between the global reads and the shared store.
struct CiStage {
    unsigned int a[8];
    KilnVec16 b[2];
};

// The tile's B chunks: chunk c = tid + i * 256 is weight row c / 4, k (c % 4) * 8 ...
template <bool TAPS>
__device__ __forceinline__ void ci_load_stage(CiStage& st, const CiGather& gather,
                                              const kiln_u16* w, const CiShape& s, int n0,
                                              int k0, bool vector_rows) {
    if constexpr (TAPS) {
        gather.load_taps(s, k0, st.a);
    } else {
        gather.load(s, k0, st.a);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int c = threadIdx.x + i * CI_THREADS;
        st.b[i] = ci_weight_chunk(w, s, n0 + c / 4, k0 + (c % 4) * 8, vector_rows);
    }
}

__device__ __forceinline__ void ci_store_stage(const CiStage& st, kiln_u16* a_tile,
                                               kiln_u16* b_tile, int m, int k_half) {
    KilnVec16* a = reinterpret_cast<KilnVec16*>(a_tile + m * CI_SK + k_half);
    a[0] = KilnVec16{{st.a[0], st.a[1], st.a[2], st.a[3]}};
    a[1] = KilnVec16{{st.a[4], st.a[5], st.a[6], st.a[7]}};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int c = threadIdx.x + i * CI_THREADS;
        *reinterpret_cast<KilnVec16*>(b_tile + (c / 4) * CI_SK + (c % 4) * 8) = st.b[i];
    }
}

template <typename D, bool TAPS>
__device__ __forceinline__ void conv_implicit_tiles(kiln_u16* out, const kiln_u16* x,
                                                    const kiln_u16* w, const kiln_u16* bias,
                                                    const CiShape s, int has_bias) {
    // Two A and two B buffers during the K loop, the output tile after it.
    static_assert(CI_BN * CI_SC <= 4 * CI_TILE, "the output tile must fit the K buffers");
    alignas(16) __shared__ kiln_u16 smem[4 * CI_TILE];

    const int image = blockIdx.z;
    const int m0 = blockIdx.x * CI_BM;
    const int n0 = blockIdx.y * CI_BN;
    const int pixels = s.out_h * s.out_w;
    const int total_k = s.c_in * s.kh * s.kw;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int wm = (warp & 1) * 64;   // this warp's 64 pixels of the tile
    const int wn = (warp >> 1) * 32;  // and 32 channels

    const int am = threadIdx.x % CI_BM;  // the pixel this thread gathers
    CiGather gather;
    gather.x = x + (long long)image * s.c_in * s.h * s.w;
    gather.k_half = (threadIdx.x / CI_BM) * 16;
    const bool pixel_ok = m0 + am < pixels;
    const int oy = pixel_ok ? (m0 + am) / s.out_w : 0;
    gather.init(s, oy, pixel_ok ? (m0 + am) - oy * s.out_w : 0, pixel_ok);
    const bool vector_rows = total_k % 8 == 0 && ((unsigned long long)w & 15ull) == 0;

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    }

    const int tiles = (total_k + CI_BK - 1) / CI_BK;
    CiStage stage;
    ci_load_stage<TAPS>(stage, gather, w, s, n0, 0, vector_rows);
    ci_store_stage(stage, smem, smem + 2 * CI_TILE, am, gather.k_half);
    __syncthreads();
    for (int tile = 0; tile < tiles; ++tile) {
        const kiln_u16* a_tile = smem + (tile % 2) * CI_TILE;
        const kiln_u16* b_tile = smem + (2 + tile % 2) * CI_TILE;
        const bool more = tile + 1 < tiles;
        // The next tile's global loads are in flight during this tile's mma steps.
        if (more) ci_load_stage<TAPS>(stage, gather, w, s, n0, (tile + 1) * CI_BK, vector_rows);
#pragma unroll
        for (int kk = 0; kk < CI_BK; kk += 16) {
            unsigned int af[4][4];
            unsigned int bf[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const kiln_u16* p = a_tile + (wm + i * 16 + g) * CI_SK + kk + 2 * t;
                af[i][0] = ci_load_pair(p);
                af[i][1] = ci_load_pair(p + 8 * CI_SK);
                af[i][2] = ci_load_pair(p + 8);
                af[i][3] = ci_load_pair(p + 8 * CI_SK + 8);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const kiln_u16* p = b_tile + (wn + j * 8 + g) * CI_SK + kk + 2 * t;
                bf[j][0] = ci_load_pair(p);
                bf[j][1] = ci_load_pair(p + 8);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) KilnMma<D>::run(acc[i][j], af[i], bf[j][0], bf[j][1]);
            }
        }
        // The other buffers were last read in the previous tile, before its barrier.
        if (more) {
            ci_store_stage(stage, smem + ((tile + 1) % 2) * CI_TILE,
                           smem + (2 + (tile + 1) % 2) * CI_TILE, am, gather.k_half);
        }
        __syncthreads();
    }

    // The output tile [n][m] in shared memory (every warp passed the loop's last barrier,
    // so the K buffers are free): + bias, one rounding.
    kiln_u16* c_tile = smem;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int n = wn + j * 8 + 2 * t;
        const bool b0 = has_bias && n0 + n < s.c_out;
        const bool b1 = has_bias && n0 + n + 1 < s.c_out;
        const float bias0 = b0 ? D::load(bias[n0 + n]) : 0.0f;
        const float bias1 = b1 ? D::load(bias[n0 + n + 1]) : 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = wm + i * 16 + g;
            c_tile[n * CI_SC + m] = D::store(acc[i][j][0] + bias0);
            c_tile[(n + 1) * CI_SC + m] = D::store(acc[i][j][1] + bias1);
            c_tile[n * CI_SC + m + 8] = D::store(acc[i][j][2] + bias0);
            c_tile[(n + 1) * CI_SC + m + 8] = D::store(acc[i][j][3] + bias1);
        }
    }
    __syncthreads();
    // 16 threads write one channel's 128 pixels: 256 contiguous bytes.
    const bool vector_out =
        pixels % 8 == 0 && ((unsigned long long)out & 15ull) == 0;
    for (int c = threadIdx.x; c < CI_BN * (CI_BM / 8); c += CI_THREADS) {
        const int n = c / (CI_BM / 8);
        const int m = (c % (CI_BM / 8)) * 8;
        if (n0 + n >= s.c_out || m0 + m >= pixels) continue;
        kiln_u16* dst = out + ((long long)image * s.c_out + n0 + n) * pixels + m0 + m;
        const kiln_u16* src = c_tile + n * CI_SC + m;
        if (vector_out) {  // pixels % 8 == 0: the 8 pixels are all inside
            *reinterpret_cast<KilnVec16*>(dst) = *reinterpret_cast<const KilnVec16*>(src);
        } else {
            for (int j = 0; j < 8 && m0 + m + j < pixels; ++j) dst[j] = src[j];
        }
    }
}

template <typename D, bool TAPS>
__device__ __forceinline__ void conv_implicit_impl(typename D::T* out, const typename D::T* x,
                                                   const typename D::T* w,
                                                   const typename D::T* bias, const CiShape s,
                                                   int has_bias) {
#if __CUDA_ARCH__ >= 800 || defined(KILN_EMU_MMA)
    if constexpr (sizeof(typename D::T) == 2) {
        // The tap mask's bits, and whole-tap k tiles for TAPS: the host checks both.
        if (s.kh * s.kw > 32 || (TAPS && s.c_in % CI_BK != 0)) asm volatile("trap;");
        conv_implicit_tiles<D, TAPS>(out, x, w, bias, s, has_bias);
    } else {
        asm volatile("trap;");  // f32: the host runs im2col + GEMM instead
    }
#else
    asm volatile("trap;");  // no m16n8k16 before sm_80: the host runs im2col + GEMM
#endif
}

// out[n][tap][ci] = w[n][ci][tap]: the weights in conv_implicit_taps's K order (one pass
// over the weights per conv; a 1x1 conv's are already in it).
template <typename D>
__device__ __forceinline__ void conv_weight_taps_impl(typename D::T* out, const typename D::T* w,
                                                      long long total, int c_in, int taps) {
    const long long k = (long long)c_in * taps;
    KILN_GRID_STRIDE(i, total) {
        const long long n = i / k;
        const int r = (int)(i - n * k);
        const int tap = r / c_in;
        out[i] = w[n * k + (long long)(r - tap * c_in) * taps + tap];
    }
}

#define CI_PARAMS(D)                                                                         \
    D::T *out, const D::T *x, const D::T *w, const D::T *bias, int c_in, int h, int w_in,     \
        int c_out, int kh, int kw, int stride, int pad, int out_h, int out_w, int has_bias
#define CI_SHAPE {c_in, h, w_in, c_out, kh, kw, stride, pad, out_h, out_w}

// `bias` is read only when has_bias != 0 (the host passes any valid pointer otherwise).
// conv_implicit orders K as the weights are (k = (ci * kh + ky) * kw + kx); conv_implicit_taps
// tap-major, for c_in % 32 == 0, with weights from conv_weight_taps.
#define KILN_CONV_IMPLICIT(S, D)                                                             \
    extern "C" __global__ void __launch_bounds__(CI_THREADS, 2)                              \
        conv_implicit_##S(CI_PARAMS(D)) {                                                    \
        conv_implicit_impl<D, false>(out, x, w, bias, CI_SHAPE, has_bias);                   \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(CI_THREADS, 2)                              \
        conv_implicit_taps_##S(CI_PARAMS(D)) {                                               \
        conv_implicit_impl<D, true>(out, x, w, bias, CI_SHAPE, has_bias);                    \
    }                                                                                        \
    extern "C" __global__ void conv_weight_taps_##S(D::T* out, const D::T* w, long long total, \
                                                    int c_in, int taps) {                    \
        conv_weight_taps_impl<D>(out, w, total, c_in, taps);                                 \
    }
KILN_FOR_EACH_DTYPE(KILN_CONV_IMPLICIT)
