// Data movement of the image models (copies, no arithmetic), grid-stride loops over the
// output:
//   upsample_nearest: x[planes, in_h, in_w] -> out[planes, out_h, out_w], each output pixel
//                     reads the input pixel PyTorch's legacy `nearest` rule picks
//   copy_axis:        tensors viewed as [outer, len, inner]; copies `count` entries of the
//                     middle axis from src (len src_len, from src_offset) to dst (len dst_len,
//                     from dst_offset): one part of a concat, or a narrow
//   transpose_last2:  x[batch, rows, cols] -> out[batch, cols, rows] (NCHW <-> tokens)
//   im2col:           images [first, first + count) of x[n, c, h, w] -> col[count, c * kh * kw,
//                     out_h * out_w], zero outside the image (the GEMM operand of a conv);
//                     2-D grid over (tile of a plane's pixels, plane), see below

// src/backend/image_ops.rs `nearest_source_index`: floor(i * (in / out)) in f32, clamped.
__device__ __forceinline__ int kiln_nearest_source(int i, int in, int out) {
    if (out == in) return i;
    if (out == 2 * in) return i / 2;
    const float scale = (float)in / (float)out;
    const int s = (int)floorf((float)i * scale);
    return s < in - 1 ? s : in - 1;
}

template <typename D>
__device__ __forceinline__ void upsample_nearest_impl(typename D::T* out, const typename D::T* x,
                                                      long long total, int in_h, int in_w,
                                                      int out_h, int out_w) {
    KILN_GRID_STRIDE(i, total) {
        const int ox = (int)(i % out_w);
        const long long rows = i / out_w;  // plane * out_h + oy
        const int oy = (int)(rows % out_h);
        const long long plane = rows / out_h;
        const int sy = kiln_nearest_source(oy, in_h, out_h);
        const int sx = kiln_nearest_source(ox, in_w, out_w);
        out[i] = x[(plane * in_h + sy) * in_w + sx];
    }
}

template <typename D>
__device__ __forceinline__ void copy_axis_impl(typename D::T* dst, const typename D::T* src,
                                               long long total, long long inner, int count,
                                               int src_len, int src_offset, int dst_len,
                                               int dst_offset) {
    KILN_GRID_STRIDE(i, total) {
        const long long block = (long long)count * inner;
        const long long outer = i / block;
        const long long rest = i - outer * block;
        const long long a = rest / inner;
        const long long j = rest - a * inner;
        dst[((outer * dst_len) + dst_offset + a) * inner + j] =
            src[((outer * src_len) + src_offset + a) * inner + j];
    }
}

template <typename D>
__device__ __forceinline__ void transpose_last2_impl(typename D::T* out, const typename D::T* x,
                                                     long long total, int rows, int cols) {
    KILN_GRID_STRIDE(i, total) {
        const int r = (int)(i % rows);
        const long long t = i / rows;  // batch * cols + c
        const int c = (int)(t % cols);
        const long long batch = t / cols;
        out[i] = x[(batch * rows + r) * cols + c];
    }
}

// Block y walks the planes q = image * patch + (c * kh + ky) * kw + kx of col (grid-stride),
// block x a tile of the plane's output pixels, each thread `vec` consecutive output x: one
// 16-byte store when `vectorised` (the host sets it when out_w is a multiple of the vector;
// col's base is checked here). Per item one 32-bit division; the 64-bit offsets are only
// multiplied. im2col writes kh * kw times what it reads, so the stores are what must run
// at bandwidth; the loads of neighbouring taps hit the same cache lines.
template <typename D>
__device__ __forceinline__ void im2col_impl(typename D::T* col, const typename D::T* x,
                                            int planes, int first, int channels, int h, int w,
                                            int kh, int kw, int stride, int pad, int out_h,
                                            int out_w, int vectorised) {
    typedef typename D::T T;
    constexpr int PER = 16 / (int)sizeof(T);
    const bool vec = vectorised && ((unsigned long long)col & 15ull) == 0;
    const int width = vec ? PER : 1;
    const int per_row = out_w / width;
    const int items = out_h * per_row;
    const int taps = kh * kw;
    const int patch = channels * taps;
    const T zero = D::store(0.0f);
    for (int q = blockIdx.y; q < planes; q += gridDim.y) {
        const int image = q / patch;
        const int k = q - image * patch;
        const int c = k / taps;
        const int ky = (k - c * taps) / kw;
        const int kx = k - c * taps - ky * kw;
        const T* src = x + ((long long)(first + image) * channels + c) * h * w;
        T* dst = col + (long long)q * out_h * out_w;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < items;
             i += gridDim.x * blockDim.x) {
            const int oy = i / per_row;
            const int ox0 = (i - oy * per_row) * width;
            const int iy = oy * stride - pad + ky;
            const bool row_inside = iy >= 0 && iy < h;
            const T* srow = src + (long long)(row_inside ? iy : 0) * w;
            const int ix0 = ox0 * stride - pad + kx;
            T* out = dst + (long long)oy * out_w + ox0;
            if (vec) {
                T v[PER];
#pragma unroll
                for (int e = 0; e < PER; ++e) {
                    const int ix = ix0 + e * stride;
                    v[e] = row_inside && ix >= 0 && ix < w ? srow[ix] : zero;
                }
                *reinterpret_cast<KilnVec16*>(out) = kiln_pack16(v);
            } else {
                *out = row_inside && ix0 >= 0 && ix0 < w ? srow[ix0] : zero;
            }
        }
    }
}

#define KILN_IMAGE_LAYOUT(S, D)                                                                 \
    extern "C" __global__ void upsample_nearest_##S(D::T* out, const D::T* x, long long total,  \
                                                    int in_h, int in_w, int out_h, int out_w) { \
        upsample_nearest_impl<D>(out, x, total, in_h, in_w, out_h, out_w);                      \
    }                                                                                           \
    extern "C" __global__ void copy_axis_##S(D::T* dst, const D::T* src, long long total,       \
                                             long long inner, int count, int src_len,           \
                                             int src_offset, int dst_len, int dst_offset) {     \
        copy_axis_impl<D>(dst, src, total, inner, count, src_len, src_offset, dst_len,          \
                          dst_offset);                                                          \
    }                                                                                           \
    extern "C" __global__ void transpose_last2_##S(D::T* out, const D::T* x, long long total,   \
                                                   int rows, int cols) {                        \
        transpose_last2_impl<D>(out, x, total, rows, cols);                                     \
    }                                                                                           \
    extern "C" __global__ void im2col_##S(D::T* col, const D::T* x, int planes, int first,      \
                                          int channels, int h, int w, int kh, int kw,           \
                                          int stride, int pad, int out_h, int out_w,            \
                                          int vectorised) {                                     \
        im2col_impl<D>(col, x, planes, first, channels, h, w, kh, kw, stride, pad, out_h,       \
                       out_w, vectorised);                                                      \
    }
KILN_FOR_EACH_DTYPE(KILN_IMAGE_LAYOUT)
