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

use std::ops::Range;

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

    /// The shape of a tensor-parallel rank holding heads `heads` (an even share: whole B / C
    /// groups, or part of one group's heads), and the groups those heads read. A rank
    /// without the norm norms nothing, so its norm group is its own width.
    pub fn shard(&self, heads: &Range<usize>) -> (MambaShape, Range<usize>) {
        let per_group = self.heads / self.groups;
        let groups = heads.start / per_group..(heads.end - 1) / per_group + 1;
        let mut shape = MambaShape {
            heads: heads.len(),
            groups: groups.len(),
            ..*self
        };
        if !self.normed {
            shape.norm_group = shape.inner();
        }
        (shape, groups)
    }

    /// The in-projection's rows of heads `heads` and groups `groups`: its z, x, B, C and dt
    /// pieces, in that order (the whole projection for every head and group).
    pub fn projection_rows(
        &self,
        heads: &Range<usize>,
        groups: &Range<usize>,
    ) -> [Range<usize>; 5] {
        let [x, b, c] = self.conv_channels(heads, groups);
        let inner = self.inner();
        let shift = |r: &Range<usize>, by: usize| r.start + by..r.end + by;
        [
            shift(&x, 0),
            shift(&x, inner),
            shift(&b, inner),
            shift(&c, inner),
            shift(heads, inner + self.conv_dim()),
        ]
    }

    /// The convolution's channels of heads `heads` and groups `groups`: x, B and C.
    pub fn conv_channels(&self, heads: &Range<usize>, groups: &Range<usize>) -> [Range<usize>; 3] {
        let (hd, n) = (self.head_dim, self.state);
        let b = self.inner() + groups.start * n..self.inner() + groups.end * n;
        let c_at = self.groups * n;
        [
            heads.start * hd..heads.end * hd,
            b.clone(),
            b.start + c_at..b.end + c_at,
        ]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(heads: usize, groups: usize, normed: bool) -> MambaShape {
        MambaShape {
            heads,
            head_dim: 4,
            state: 2,
            groups,
            taps: 4,
            normed,
            norm_group: heads * 4 / groups,
            norm_eps: 1e-5,
            dt_min: 0.0,
            dt_max: f32::INFINITY,
        }
    }

    #[test]
    fn a_rank_reads_its_heads_rows_and_the_groups_they_read() {
        // 8 heads in 2 groups, 4 ranks: rank 2 holds heads 4..6, inside group 1.
        let full = shape(8, 2, false);
        let (local, groups) = full.shard(&(4..6));
        assert_eq!(groups, 1..2);
        assert_eq!((local.heads, local.groups, local.norm_group), (2, 1, 8));
        local.validate().unwrap();
        // inner 32, B and C 2 groups x 2 each: z at 0, x at 32, B at 64, C at 68, dt at 72.
        assert_eq!(
            full.projection_rows(&(4..6), &groups),
            [16..24, 48..56, 66..68, 70..72, 76..78]
        );
        assert_eq!(
            full.conv_channels(&(4..6), &groups),
            [16..24, 34..36, 38..40]
        );
        // Every head and group: the whole projection, piece by piece, in order.
        let all = full.projection_rows(&(0..8), &(0..2));
        assert_eq!(all[0].start, 0);
        assert!(all.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(all[4].end, full.projection_width());
        // Normed, 2 ranks: whole groups, the norm group unchanged.
        let (local, groups) = shape(8, 2, true).shard(&(4..8));
        assert_eq!((groups, local.groups, local.norm_group), (1..2, 1, 16));
        local.validate().unwrap();
    }
}
