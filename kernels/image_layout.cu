// Data movement of the image models (copies, no arithmetic), grid-stride loops over the
// output:
//   upsample_nearest: x[planes, in_h, in_w] -> out[planes, out_h, out_w], each output pixel
//                     reads the input pixel PyTorch's legacy `nearest` rule picks
//   copy_axis:        tensors viewed as [outer, len, inner]; copies `count` entries of the
//                     middle axis from src (len src_len, from src_offset) to dst (len dst_len,
//                     from dst_offset): one part of a concat, or a narrow
//   transpose_last2:  x[batch, rows, cols] -> out[batch, cols, rows] (NCHW <-> tokens)
//   im2col:           images [first, first + count) of x[n, c, h, w] -> col[count, c * kh * kw,
//                     out_h * out_w], zero outside the image (the GEMM operand of a conv)

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

template <typename D>
__device__ __forceinline__ void im2col_impl(typename D::T* col, const typename D::T* x,
                                            long long total, int first, int channels, int h,
                                            int w, int kh, int kw, int stride, int pad,
                                            int out_h, int out_w) {
    const long long pixels = (long long)out_h * out_w;
    const long long rows = (long long)channels * kh * kw;
    KILN_GRID_STRIDE(i, total) {
        const long long p = i % pixels;
        const long long t = i / pixels;  // image * rows + (c * kh + ky) * kw + kx
        const long long image = t / rows;
        const int k = (int)(t - image * rows);
        const int kx = k % kw;
        const int ky = (k / kw) % kh;
        const int c = k / (kw * kh);
        const int iy = (int)(p / out_w) * stride - pad + ky;
        const int ix = (int)(p % out_w) * stride - pad + kx;
        const bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
        col[i] = inside ? x[(((first + image) * channels + c) * h + iy) * w + ix] : D::store(0.0f);
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
    extern "C" __global__ void im2col_##S(D::T* col, const D::T* x, long long total, int first, \
                                          int channels, int h, int w, int kh, int kw,           \
                                          int stride, int pad, int out_h, int out_w) {          \
        im2col_impl<D>(col, x, total, first, channels, h, w, kh, kw, stride, pad, out_h,        \
                       out_w);                                                                  \
    }
KILN_FOR_EACH_DTYPE(KILN_IMAGE_LAYOUT)
