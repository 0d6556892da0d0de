//! Shape rules of the CUDA image ops, as pure functions: what an op accepts (the CPU
//! backend's semantics, returned as errors instead of panics) and how a tensor is viewed by
//! the layout kernels. Unit-tested without a GPU.

use anyhow::{bail, ensure, Result};

/// A tensor viewed as `[outer, len, inner]` around one axis (what `copy_axis` walks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisView {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
}

impl AxisView {
    pub fn of(dims: &[usize], axis: usize) -> Result<AxisView> {
        ensure!(
            axis < dims.len(),
            "axis {axis} out of range for a rank-{} tensor {dims:?}",
            dims.len()
        );
        Ok(AxisView {
            outer: dims[..axis].iter().product(),
            len: dims[axis],
            inner: dims[axis + 1..].iter().product(),
        })
    }
}

/// The shape of the concatenation of `parts` along `axis`: every part of one rank, equal
/// on every other axis.
pub fn concat_dims(parts: &[&[usize]], axis: usize) -> Result<Vec<usize>> {
    let Some(first) = parts.first() else {
        bail!("concat: no tensors to concatenate");
    };
    ensure!(
        axis < first.len(),
        "concat: axis {axis} out of range for rank {}",
        first.len()
    );
    let mut joined = first.to_vec();
    joined[axis] = 0;
    for dims in parts {
        let agrees = dims.len() == first.len()
            && dims
                .iter()
                .zip(first.iter())
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        ensure!(
            agrees,
            "concat along axis {axis}: shapes {first:?} and {dims:?} differ off the axis"
        );
        joined[axis] += dims[axis];
    }
    Ok(joined)
}

/// `[n, c, h, w]` of a rank-4 tensor.
pub fn nchw(dims: &[usize], what: &str) -> Result<[usize; 4]> {
    match *dims {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => bail!("{what}: {dims:?} is not NCHW"),
    }
}

/// The geometry of a 2-D convolution (groups 1, dilation 1, zero padding on every side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvShape {
    /// Checks `x: [n, c_in, h, w]` against `weight: [c_out, c_in, kh, kw]`.
    pub fn new(x: &[usize], weight: &[usize], stride: usize, pad: usize) -> Result<ConvShape> {
        let [n, c_in, h, w] = nchw(x, "conv2d input")?;
        let [c_out, w_in, kh, kw] = nchw(weight, "conv2d weight")?;
        ensure!(
            w_in == c_in,
            "conv2d of {x:?} with {weight:?}: the weight expects {w_in} input channels"
        );
        ensure!(stride > 0, "conv2d: stride 0");
        ensure!(
            kh > 0 && kw > 0 && h + 2 * pad >= kh && w + 2 * pad >= kw,
            "conv2d: a {kh}x{kw} kernel does not fit a {h}x{w} image padded by {pad}"
        );
        Ok(ConvShape {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad,
            out_h: (h + 2 * pad - kh) / stride + 1,
            out_w: (w + 2 * pad - kw) / stride + 1,
        })
    }

    pub fn out_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h, self.out_w]
    }

    /// Rows of the im2col matrix (and the GEMM's inner dimension): `c_in * kh * kw`.
    pub fn patch(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Output pixels per image.
    pub fn pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    /// A 1x1 convolution with stride 1 and no padding reads the image itself as its im2col
    /// matrix: no copy needed.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

/// The dims of dense attention's q `[b, nq, width]` and k, v `[b, nk, width]`, checked as
/// the CPU backend checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub nq: usize,
    pub nk: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    pub fn new(
        q: &[usize],
        k: &[usize],
        v: &[usize],
        heads: usize,
        causal: bool,
    ) -> Result<AttentionDims> {
        let (&[b, nq, width], &[kb, nk, k_width]) = (q, k) else {
            bail!("attention: q {q:?} and k {k:?} must be [b, n, heads * d]");
        };
        ensure!(
            heads > 0 && width % heads == 0,
            "attention: width {width} is not {heads} heads"
        );
        ensure!(
            k == v && kb == b && k_width == width,
            "attention: q {q:?}, k {k:?}, v {v:?}"
        );
        ensure!(!causal || nq == nk, "causal attention needs nq == nk");
        Ok(AttentionDims {
            batch: b,
            nq,
            nk,
            heads,
            head_dim: width / heads,
        })
    }

    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Leading entries of a batch processed together when each costs `per_entry` elements of
/// scratch and the scratch may hold `budget` elements: at least 1, at most `total`.
pub fn entries_per_chunk(total: usize, per_entry: usize, budget: usize) -> usize {
    (budget / per_entry.max(1)).clamp(1, total.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_views_split_the_shape() {
        let v = AxisView::of(&[2, 3, 4, 5], 1).unwrap();
        assert_eq!((v.outer, v.len, v.inner), (2, 3, 20));
        let v = AxisView::of(&[2, 3, 4, 5], 3).unwrap();
        assert_eq!((v.outer, v.len, v.inner), (24, 5, 1));
        assert_eq!(AxisView::of(&[7], 0).unwrap().outer, 1);
        assert!(AxisView::of(&[2, 3], 2).is_err());
    }

    #[test]
    fn concat_joins_one_axis_and_refuses_mismatches() {
        let (a, b) = ([2, 3, 4], [2, 5, 4]);
        assert_eq!(concat_dims(&[&a, &b], 1).unwrap(), [2, 8, 4]);
        assert!(concat_dims(&[&a, &b], 0).is_err());
        assert!(concat_dims(&[&a, &[2, 3]], 0).is_err());
        assert!(concat_dims(&[&a], 3).is_err());
        assert!(concat_dims(&[], 0).is_err());
        assert_eq!(concat_dims(&[&a], 2).unwrap(), [2, 3, 4]);
    }

    #[test]
    fn conv_output_sizes_follow_pytorch() {
        // 22x30 pixels, 3x3, stride 2, padding 1 (a UNet downsample): ceil halves.
        let s = ConvShape::new(&[2, 5, 11, 15], &[7, 5, 3, 3], 2, 1).unwrap();
        assert_eq!(s.out_dims(), [2, 7, 6, 8]);
        assert_eq!((s.patch(), s.pixels()), (45, 48));
        assert!(!s.is_pointwise());
        let s = ConvShape::new(&[1, 4, 5, 5], &[8, 4, 1, 1], 1, 0).unwrap();
        assert!(s.is_pointwise());
        assert_eq!(s.out_dims(), [1, 8, 5, 5]);
        let s = ConvShape::new(&[1, 3, 6, 9], &[4, 3, 3, 3], 1, 0).unwrap();
        assert_eq!(s.out_dims(), [1, 4, 4, 7]);
    }

    #[test]
    fn conv_refuses_bad_shapes() {
        assert!(ConvShape::new(&[1, 4, 5, 5], &[8, 3, 3, 3], 1, 1).is_err());
        assert!(ConvShape::new(&[1, 4, 5], &[8, 4, 3, 3], 1, 1).is_err());
        assert!(ConvShape::new(&[1, 4, 5, 5], &[8, 4, 3, 3], 0, 1).is_err());
        assert!(ConvShape::new(&[1, 4, 2, 2], &[8, 4, 5, 5], 1, 1).is_err());
    }

    #[test]
    fn attention_dims_are_checked_like_the_cpu_backend() {
        let d = AttentionDims::new(&[2, 7, 15], &[2, 11, 15], &[2, 11, 15], 3, false).unwrap();
        assert_eq!((d.head_dim, d.width()), (5, 15));
        assert!(AttentionDims::new(&[2, 7, 15], &[2, 11, 15], &[2, 11, 15], 3, true).is_err());
        assert!(AttentionDims::new(&[2, 7, 15], &[2, 11, 15], &[2, 11, 15], 4, false).is_err());
        assert!(AttentionDims::new(&[2, 7, 15], &[2, 11, 15], &[2, 11, 15], 0, false).is_err());
        assert!(AttentionDims::new(&[2, 7, 15], &[1, 11, 15], &[1, 11, 15], 3, false).is_err());
        assert!(AttentionDims::new(&[2, 7, 15], &[2, 11, 15], &[2, 10, 15], 3, false).is_err());
        assert!(AttentionDims::new(&[7, 15], &[11, 15], &[11, 15], 3, false).is_err());
    }

    #[test]
    fn chunks_stay_within_the_budget_but_are_never_empty() {
        assert_eq!(entries_per_chunk(10, 3, 100), 10);
        assert_eq!(entries_per_chunk(10, 30, 100), 3);
        assert_eq!(entries_per_chunk(10, 1000, 100), 1);
        assert_eq!(entries_per_chunk(0, 5, 100), 1);
    }
}
