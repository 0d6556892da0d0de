//! The gated delta rule mixer (Qwen3-Next's "linear attention", a Gated DeltaNet): its
//! shape and parameters, as [`super::Backend::gated_delta_net`] takes them.
//!
//! One projection row holds, in order: q and k (`k_heads` heads of `k_dim`), v (`v_heads`
//! heads of `v_dim`), the output gate z (as v), then one `b` and one `a` per value head.
//! q / k / v are convolved causally over the last `taps` tokens and SiLU'd (as Mamba-2's
//! x / B / C, by the same kernels); q and k are L2-normed per head, q scaled by
//! `k_dim^-0.5`. Each value head `h` (reading key head `h / (v_heads / k_heads)`) keeps a
//! state `S: [k_dim, v_dim]` and per token runs
//! `S = exp(g) S; S += k (beta (v - S^T k))^T; o = S^T q` with
//! `g = -exp(A_log) softplus(a + dt_bias)`, `beta = sigmoid(b)`; `o` is RMS-normed per head,
//! scaled by the norm weight and gated by `silu(z)`. Like a Mamba mixer's, the state and
//! the convolution's window live once per running sequence in its state slot (f32, state
//! first; [`crate::backend::mamba`] has why).

/// A gated delta mixer's dimensions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GatedDeltaShape {
    pub k_heads: usize,
    pub v_heads: usize,
    pub k_dim: usize,
    pub v_dim: usize,
    /// Convolution taps (`linear_conv_kernel_dim`).
    pub taps: usize,
    /// The output norm's epsilon.
    pub norm_eps: f32,
}

/// The epsilon of the q / k L2 norms (fla's and transformers' `l2norm`).
pub const L2_NORM_EPS: f32 = 1e-6;

impl GatedDeltaShape {
    /// q's (and k's) width.
    pub fn key_dim(&self) -> usize {
        self.k_heads * self.k_dim
    }

    /// v's (and z's, and the output's) width.
    pub fn value_dim(&self) -> usize {
        self.v_heads * self.v_dim
    }

    /// The convolution's channels: q, k and v.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }

    /// The projection's width: q, k, v, z, then b and a.
    pub fn projection_width(&self) -> usize {
        self.conv_dim() + self.value_dim() + 2 * self.v_heads
    }

    /// f32 values of the recurrent state, `[v_heads, k_dim, v_dim]`.
    pub fn state_values(&self) -> usize {
        self.v_heads * self.k_dim * self.v_dim
    }

    /// f32 values one sequence's slot holds: the state, then the last `taps - 1` q / k / v
    /// rows.
    pub fn slot_values(&self) -> usize {
        self.state_values() + (self.taps - 1) * self.conv_dim()
    }

    /// Value heads per key head.
    pub fn heads_per_key(&self) -> usize {
        self.v_heads / self.k_heads
    }

    /// The shape of a tensor-parallel rank holding value heads `v_heads` (whole groups of a
    /// key head's value heads, or part of one group), and the key heads they read.
    pub fn shard(
        &self,
        v_heads: &std::ops::Range<usize>,
    ) -> (GatedDeltaShape, std::ops::Range<usize>) {
        let per_key = self.heads_per_key();
        let keys = v_heads.start / per_key..(v_heads.end - 1) / per_key + 1;
        let shape = GatedDeltaShape {
            k_heads: keys.len(),
            v_heads: v_heads.len(),
            ..*self
        };
        (shape, keys)
    }

    /// Checks the dimensions divide as the kernels need.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.k_heads > 0 && self.k_dim > 0 && self.v_dim > 0 && self.taps > 0,
            "gated delta net: heads, head sizes and convolution taps must be positive"
        );
        anyhow::ensure!(
            self.v_heads.is_multiple_of(self.k_heads) && self.v_heads > 0,
            "gated delta net: {} value heads do not share {} key heads evenly",
            self.v_heads,
            self.k_heads
        );
        Ok(())
    }
}

/// One mixer's parameters on a device: `dt_bias` and `a` (`-exp(A_log)`) f32 `[v_heads]`,
/// the others in the model dtype.
pub struct GatedDeltaParams<'a, T> {
    pub shape: GatedDeltaShape,
    /// `[conv_dim, taps]` (no bias).
    pub conv_weight: &'a T,
    pub dt_bias: &'a T,
    pub a: &'a T,
    /// The output norm's weight, `[v_dim]` (shared by the heads).
    pub norm: &'a T,
}

/// `g` of a token's head: the state's log-decay, `a * softplus(raw + dt_bias)`.
pub fn log_decay(raw: f32, dt_bias: f32, a: f32) -> f32 {
    let v = raw + dt_bias;
    // PyTorch's softplus is linear above a threshold of 20.
    let sp = if v > 20.0 { v } else { v.exp().ln_1p() };
    a * sp
}

/// The logistic sigmoid in f32.
pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}
