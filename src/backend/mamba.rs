//! The Mamba-2 mixer's shape and parameters, as [`super::Backend::mamba_mixer`] takes them,
//! and where its recurrent state lives.
//!
//! A mixer keeps two kinds of memory per sequence: its causal convolution's window (the last
//! `taps - 1` x / B / C rows) and its state-space recurrence's `[heads, head_dim, state]`
//! state, large (Mamba-Codestral: 4 MiB per layer). Neither grows with the sequence, so
//! both are kept once per *running sequence*, in f32, not in the paged cache (a row per
//! token would cost Codestral 1.25 MiB per token): the scheduler gives each sequence it runs
//! one of `max_num_seqs` state slots ([`crate::backend::BatchLayout::state_slots`],
//! [`super::KvCacheSpec::state_layers`]). A step starts each sequence from its slot (zeros
//! at position 0) and leaves the window and state after its last token there, so chunked
//! prefill and decode continue them; a preempted sequence gives its slot back and is
//! recomputed from its first token. A state cannot be restored at a cached prefix or
//! rolled back, so these models run without prefix caching and refuse speculative
//! decoding.

/// A mixer's dimensions on this device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MambaShape {
    /// Heads (each with its own `dt`, `A` and `D`).
    pub heads: usize,
    pub head_dim: usize,
    /// The state size `N` per head row (`d_state`).
    pub state: usize,
    /// B / C groups; heads `g * heads / groups ..` share group `g`'s B and C.
    pub groups: usize,
    /// Convolution taps (`d_conv`).
    pub taps: usize,
    /// Whether `y * silu(z)` is RMS-normed (per `norm_group`, times the norm weight) before
    /// `out_proj`; Falcon-H1 without `mamba_rms_norm` passes it on as it is.
    pub normed: bool,
    /// Values the gated RMS norm averages over (the inner width in transformers' models).
    pub norm_group: usize,
    pub norm_eps: f32,
    /// `dt` is clamped to `[dt_min, dt_max]` after the softplus.
    pub dt_min: f32,
    pub dt_max: f32,
}

impl MambaShape {
    /// `heads * head_dim`: the width of x, the gate z and the output.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The convolution's channels: x, B and C.
    pub fn conv_dim(&self) -> usize {
        self.inner() + 2 * self.groups * self.state
    }

    /// The in-projection's width: z, then x / B / C, then one `dt` per head.
    pub fn projection_width(&self) -> usize {
        self.inner() + self.conv_dim() + self.heads
    }

    /// f32 values of the state-space part of a sequence's state, `[heads, head_dim, state]`.
    pub fn state_values(&self) -> usize {
        self.inner() * self.state
    }

    /// f32 values of the convolution's part: the last `taps - 1` x / B / C rows.
    pub fn window_values(&self) -> usize {
        (self.taps - 1) * self.conv_dim()
    }

    /// f32 values one sequence's slot holds: the state-space state, then the window.
    pub fn slot_values(&self) -> usize {
        self.state_values() + self.window_values()
    }

    /// Checks the dimensions divide as the kernels need.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.heads > 0 && self.head_dim > 0 && self.state > 0 && self.taps > 0,
            "Mamba: heads, head_dim, state size and convolution taps must be positive"
        );
        anyhow::ensure!(
            self.groups > 0 && self.heads.is_multiple_of(self.groups),
            "Mamba: {} heads do not split into {} groups",
            self.heads,
            self.groups
        );
        anyhow::ensure!(
            self.norm_group > 0 && self.inner().is_multiple_of(self.norm_group),
            "Mamba: the norm group {} does not divide the inner width {}",
            self.norm_group,
            self.inner()
        );
        Ok(())
    }
}

/// One mixer's parameters on a device. `dt_bias`, `a` (`-exp(A_log)`) and `d` are f32
/// `[heads]`; the others are in the model dtype.
pub struct MambaParams<'a, T> {
    pub shape: MambaShape,
    /// `[conv_dim, taps]`.
    pub conv_weight: &'a T,
    /// `[conv_dim]`.
    pub conv_bias: Option<&'a T>,
    pub dt_bias: &'a T,
    pub a: &'a T,
    pub d: &'a T,
    /// The gated norm's weight, `[inner]` (unread where the shape is not `normed`).
    pub norm: &'a T,
}

/// `softplus(raw + bias)` clamped to the shape's limits: a head's step size.
pub fn step_size(raw: f32, bias: f32, shape: &MambaShape) -> f32 {
    let v = raw + bias;
    // PyTorch's softplus is linear above a threshold of 20.
    let sp = if v > 20.0 { v } else { v.exp().ln_1p() };
    sp.clamp(shape.dt_min, shape.dt_max)
}

/// SiLU in f32.
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}
