// Data movement of the image models (copies, no arithmetic):
//   upsample_nearest: x[planes, in_h, in_w] -> out[planes, out_h, out_w], each output pixel
//                     reads the input pixel PyTorch's legacy `nearest` rule picks
//   im2col:           images [first, first + count) of x[n, c, h, w] -> col[count, c * kh * kw
//                     (+ bias_rows), out_h * out_w], zero outside the image (the GEMM operand
//                     of a conv), and conv_weight_bias, the matching weights
// all gather whole output planes on a 2-D grid (kiln_gather_planes), and, as grid-stride
// loops over the output:
//   copy_axis:        tensors viewed as [outer, len, inner]; copies `count` entries of the
//                     middle axis from src (len src_len, from src_offset) to dst (len dst_len,
//                     from dst_offset): one part of a concat, or a narrow
//   transpose_last2:  x[batch, rows, cols] -> out[batch, cols, rows] (NCHW <-> tokens)

// src/backend/image_ops.rs `nearest_source_index`: floor(i * (in / out)) in f32, clamped.
__device__ __forceinline__ int kiln_nearest_source(int i, int in, int out) {
    if (out == in) return i;
    if (out == 2 * in) return i / 2;
    const float scale = (float)in / (float)out;
    const int s = (int)floorf((float)i * scale);
    return s < in - 1 ? s : in - 1;
}

// Writes `planes` planes out[q, out_h, out_w]: block y walks the planes (grid-stride),
// block x a tile of a plane's pixels, each thread PER consecutive output x in one 16-byte
// store when `vectorised` (the host sets it when out_w is a multiple of the vector; out's
// base is checked here), else one value. `plane(q)` returns the plane's `row(oy)`, which
// returns the row's `pick(ox)`: the value of output pixel (oy, ox). One 32-bit division
// per item; 64-bit offsets are only multiplied. These are copies that write more than they
// read (im2col kh * kw times), so the stores are what must run at bandwidth.
template <typename D, typename PlaneFn>
__device__ __forceinline__ void kiln_gather_planes(typename D::T* out, int planes, int out_h,
                                                   int out_w, int vectorised, PlaneFn plane) {
    typedef typename D::T T;
    constexpr int PER = 16 / (int)sizeof(T);
    const bool vec = vectorised && ((unsigned long long)out & 15ull) == 0;
    const int width = vec ? PER : 1;
    const int per_row = out_w / width;
    const int items = out_h * per_row;
    for (int q = blockIdx.y; q < planes; q += gridDim.y) {
        const auto row = plane(q);
        T* dst = out + (long long)q * out_h * out_w;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < items;
             i += gridDim.x * blockDim.x) {
            const int oy = i / per_row;
            const int ox0 = (i - oy * per_row) * width;
            const auto pick = row(oy);
            T* o = dst + (long long)oy * out_w + ox0;
            if (vec) {
                T v[PER];
#pragma unroll
                for (int e = 0; e < PER; ++e) v[e] = pick(ox0 + e);
                *reinterpret_cast<KilnVec16*>(o) = kiln_pack16(v);
            } else {
                *o = pick(ox0);
            }
        }
    }
}

template <typename D>
__device__ __forceinline__ void upsample_nearest_impl(typename D::T* out, const typename D::T* x,
                                                      int planes, int in_h, int in_w, int out_h,
                                                      int out_w, int vectorised) {
    typedef typename D::T T;
    kiln_gather_planes<D>(out, planes, out_h, out_w, vectorised, [=](int q) {
        const T* src = x + (long long)q * in_h * in_w;
        return [=](int oy) {
            const T* srow = src + (long long)kiln_nearest_source(oy, in_h, out_h) * in_w;
            return [=](int ox) { return srow[kiln_nearest_source(ox, in_w, out_w)]; };
        };
    });
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

// Plane q of col is image q / rows, row k = q % rows of the image's rows = patch + bias_rows:
// k < patch is tap (c * kh + ky) * kw + kx; k == patch is all ones and the rest all zeros
// (bias_rows > 0: the GEMM adds the bias, a column of conv_weight_bias's weights).
template <typename D>
__device__ __forceinline__ void im2col_impl(typename D::T* col, const typename D::T* x,
                                            int planes, int first, int channels, int h, int w,
                                            int kh, int kw, int stride, int pad, int out_h,
                                            int out_w, int bias_rows, int vectorised) {
    typedef typename D::T T;
    const T zero = D::store(0.0f);
    const T one = D::store(1.0f);
    kiln_gather_planes<D>(col, planes, out_h, out_w, vectorised, [=](int q) {
        const int patch = channels * kh * kw;
        const int image = q / (patch + bias_rows);
        const int k = q - image * (patch + bias_rows);
        const int c = k / (kh * kw);
        const int ky = (k - c * kh * kw) / kw;
        const int kx = k - c * kh * kw - ky * kw;
        const T* src = x + ((long long)(first + image) * channels + c) * h * w;
        // A bias row is "outside the image" everywhere, with `one` or `zero` as its fill.
        const bool tap = k < patch;
        const T fill = k == patch ? one : zero;
        return [=](int oy) {
            const int iy = oy * stride - pad + ky;
            const bool inside = tap && iy >= 0 && iy < h;
            const T* srow = src + (long long)(inside ? iy : 0) * w;
            return [=](int ox) {
                const int ix = ox * stride - pad + kx;
                return inside && ix >= 0 && ix < w ? srow[ix] : fill;
            };
        };
    });
}

// The weights of a conv whose bias rides in its GEMM: out[c_out, patch + bias_rows] is
// w[c_out, patch], then b[o] (against im2col's row of ones), then zeros (bias_rows keeps
// the GEMM's K and leading dimension multiples of 8 for the tensor cores).
template <typename D>
__device__ __forceinline__ void conv_weight_bias_impl(typename D::T* out, const typename D::T* w,
                                                      const typename D::T* b, int c_out,
                                                      int patch, int bias_rows, int vectorised) {
    typedef typename D::T T;
    const T zero = D::store(0.0f);
    kiln_gather_planes<D>(out, 1, c_out, patch + bias_rows, vectorised, [=](int) {
        return [=](int o) {
            const T* row = w + (long long)o * patch;
            const T bias = b[o];
            return [=](int j) { return j < patch ? row[j] : (j == patch ? bias : zero); };
        };
    });
}

#define KILN_IMAGE_LAYOUT(S, D)                                                                 \
    extern "C" __global__ void upsample_nearest_##S(D::T* out, const D::T* x, int planes,       \
                                                    int in_h, int in_w, int out_h, int out_w,   \
                                                    int vectorised) {                           \
        upsample_nearest_impl<D>(out, x, planes, in_h, in_w, out_h, out_w, vectorised);         \
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
                                          int bias_rows, int vectorised) {                      \
        im2col_impl<D>(col, x, planes, first, channels, h, w, kh, kw, stride, pad, out_h,       \
                       out_w, bias_rows, vectorised);                                           \
    }                                                                                           \
    extern "C" __global__ void conv_weight_bias_##S(D::T* out, const D::T* w, const D::T* b,    \
                                                    int c_out, int patch, int bias_rows,        \
                                                    int vectorised) {                           \
        conv_weight_bias_impl<D>(out, w, b, c_out, patch, bias_rows, vectorised);               \
    }
KILN_FOR_EACH_DTYPE(KILN_IMAGE_LAYOUT)
