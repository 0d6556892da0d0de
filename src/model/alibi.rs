//! ALiBi ("attention with linear biases"): instead of rotating q and k, each head penalises
//! a key by its distance from the query, `slope_h * (key - query)`, with one fixed slope
//! per head (BLOOM, MPT, Falcon-RW). The attention applies it (`HeadTerms::alibi`); this file
//! says which slopes a model's heads have.

/// A model's ALiBi.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alibi {
    /// The slopes run from `2^(-max_bias / n)` down to `2^(-max_bias)` (8 in the paper and
    /// every released model; MPT's `alibi_bias_max`).
    pub max_bias: f64,
    /// Falcon adds the biases to the raw `q . k` and scales the sum by head_dim^-0.5, so its
    /// slopes shrink by that factor; BLOOM and MPT add them to the scaled scores.
    pub scaled_by_head_dim: bool,
}

impl Alibi {
    /// The slopes of heads `0..num_heads`, as the attention adds them to its scaled scores.
    pub fn slopes(&self, num_heads: usize, head_dim: usize) -> Vec<f32> {
        let factor = if self.scaled_by_head_dim {
            1.0 / (head_dim as f64).sqrt()
        } else {
            1.0
        };
        head_slopes(num_heads, self.max_bias)
            .into_iter()
            .map(|s| (s * factor) as f32)
            .collect()
    }
}

/// The paper's geometric sequence for the largest power of two `p <= n` heads,
/// `2^(-max_bias * k / p)` for k = 1..=p; a head count that is not a power of two takes its
/// remaining heads from the sequence for `2p` heads, every other term (k = 1, 3, 5, ...),
/// which falls between the first ones. BLOOM's and MPT's formulas both give this.
fn head_slopes(num_heads: usize, max_bias: f64) -> Vec<f64> {
    if num_heads == 0 {
        return Vec::new();
    }
    let pow2 = 1usize << num_heads.ilog2();
    let step = |k: usize, of: usize| 2f64.powf(-max_bias * k as f64 / of as f64);
    let mut slopes: Vec<f64> = (1..=pow2).map(|k| step(k, pow2)).collect();
    slopes.extend((0..num_heads - pow2).map(|j| step(2 * j + 1, 2 * pow2)));
    slopes
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAPER: Alibi = Alibi {
        max_bias: 8.0,
        scaled_by_head_dim: false,
    };

    #[test]
    fn eight_heads_halve_from_one_half() {
        let expect = [
            0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
        ];
        assert_eq!(PAPER.slopes(8, 64), expect);
    }

    /// transformers' `build_alibi_tensor` (BLOOM) for 12 heads: 8 from the power of two,
    /// then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 from the 16-head sequence.
    #[test]
    fn twelve_heads_fill_in_from_the_next_power_of_two() {
        let s = PAPER.slopes(12, 64);
        assert_eq!(s[..8], PAPER.slopes(8, 64)[..]);
        for (j, e) in [-0.5f64, -1.5, -2.5, -3.5].iter().enumerate() {
            assert!((s[8 + j] as f64 - 2f64.powf(*e)).abs() < 1e-7, "{s:?}");
        }
    }

    /// MPT's formula (slopes of the next power of two, odd positions first) gives the same
    /// values for any head count and bias.
    #[test]
    fn mpt_formula_agrees() {
        for heads in 1..=40usize {
            for max_bias in [8.0, 6.0] {
                let pow2 = heads.next_power_of_two();
                let all: Vec<f64> = (1..=pow2)
                    .map(|k| 1.0 / 2f64.powf(k as f64 * max_bias / pow2 as f64))
                    .collect();
                let mpt: Vec<f64> = if pow2 == heads {
                    all
                } else {
                    let odd = all.iter().skip(1).step_by(2);
                    let even = all.iter().step_by(2);
                    odd.chain(even).copied().take(heads).collect()
                };
                let ours = head_slopes(heads, max_bias);
                for (a, b) in ours.iter().zip(&mpt) {
                    assert!((a - b).abs() < 1e-12, "{heads} heads: {ours:?} vs {mpt:?}");
                }
            }
        }
    }

    #[test]
    fn falcon_scales_by_head_dim() {
        let falcon = Alibi {
            scaled_by_head_dim: true,
            ..PAPER
        };
        assert_eq!(falcon.slopes(2, 64), [0.0625 / 8.0, 0.00390625 / 8.0]);
    }
}
