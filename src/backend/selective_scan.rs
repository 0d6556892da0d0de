//! The Mamba-1 mixer's selective scan (`MambaForCausalLM`, `FalconMambaForCausalLM`): its
//! shape and parameters, as [`super::Backend::selective_scan`] takes them.
//!
//! A Mamba-1 mixer projects the stream to x and a gate z (`in_proj`, `[n, 2 * inner]`);
//! x is convolved causally over `taps` tokens (plus a bias) and SiLU'd
//! ([`super::Backend::slot_conv`]); `x_proj` gives a low-rank step `dt` and B / C
//! (`state` each) per token, `dt_proj` lifts the step to one per channel. Each channel `c`
//! keeps a state `h[c, :]` of `state` values: per token
//! `dt = softplus(dt_raw)`, `h = exp(A[c] dt) h + dt B x[c]`, `y = h C + D[c] x[c]`, gated
//! by `silu(z)`. Like the Mamba-2 mixer's, the state and the convolution's window live once
//! per running sequence in its state slot (f32, the `[inner, state]` state first).

/// A selective scan's dimensions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelectiveShape {
    /// Channels (`expand * hidden`).
    pub inner: usize,
    /// State values per channel (`state_size`).
    pub state: usize,
    /// The low-rank step's width (`time_step_rank`).
    pub dt_rank: usize,
    /// Convolution taps (`conv_kernel`).
    pub taps: usize,
}

impl SelectiveShape {
    /// f32 values of the recurrent state, `[inner, state]`.
    pub fn state_values(&self) -> usize {
        self.inner * self.state
    }

    /// f32 values one sequence's slot holds: the state, then the last `taps - 1` x rows.
    pub fn slot_values(&self) -> usize {
        self.state_values() + (self.taps - 1) * self.inner
    }

    /// `x_proj`'s width: the step, then B, then C.
    pub fn x_proj_width(&self) -> usize {
        self.dt_rank + 2 * self.state
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.inner > 0 && self.state > 0 && self.dt_rank > 0 && self.taps >= 2,
            "selective scan: channels, state, time_step_rank must be positive and the \
             convolution at least 2 taps ({self:?})"
        );
        Ok(())
    }
}

/// A mixer's scan parameters on a device: `a` (`-exp(A_log)`, `[inner, state]`) and `d`
/// (`[inner]`, the checkpoint's values rounded to the model dtype) in f32.
pub struct SelectiveParams<'a, T> {
    pub shape: SelectiveShape,
    pub a: &'a T,
    pub d: &'a T,
}

/// PyTorch's softplus (linear above 20), in f32.
pub fn softplus(v: f32) -> f32 {
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}
