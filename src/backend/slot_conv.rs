//! The causal convolution every recurrent mixer runs before its recurrence (Mamba-2's x / B /
//! C, the gated delta rule's q / k / v, Mamba-1's x), over the step's rows and the window
//! of the sequence's last rows its state slot keeps: its parameters, as
//! [`super::Backend::slot_conv`] and the devices' mixer ops take them.

/// A causal convolution over a state slot's window, as [`super::Backend::slot_conv`] takes
/// it: `channels` columns from `offset` of each row of its input, `[channels, taps]`
/// weights, an optional bias; the slot keeps the window after its first `state_values`
/// values.
pub struct SlotConvParams<'a, T> {
    pub offset: usize,
    pub channels: usize,
    pub taps: usize,
    pub state_values: usize,
    pub weight: &'a T,
    pub bias: Option<&'a T>,
}

impl<T> SlotConvParams<'_, T> {
    /// f32 values of the slot the window ends.
    pub fn slot_values(&self) -> usize {
        self.state_values + (self.taps - 1) * self.channels
    }
}
