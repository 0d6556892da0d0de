//! Rotary embedding frequencies, with the scalings HF configs use.

use super::config::ModelConfig;
use crate::backend::Rope;
use anyhow::{Context, Result};

/// Per-pair inverse frequencies `theta^(-2i/d)` over the rotary dims `d` (the head, or its
/// first part under partial rotary), scaled as the config asks.
pub fn rope_for(cfg: &ModelConfig) -> Result<Rope> {
    let d = cfg.rotary_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    let inv_freq = match &cfg.rope_scaling {
        None => base,
        Some(s) => match s.rope_type.as_str() {
            "default" => base,
            "linear" => {
                let factor = s.factor.unwrap_or(1.0);
                base.iter().map(|f| f / factor).collect()
            }
            "llama3" => llama3_scaled(&base, s, cfg)?,
            "yarn" => yarn_scaled(&base, s, cfg)?,
            other => anyhow::bail!(
                "unsupported rope_scaling type '{other}' (supported: default, linear, llama3, \
                 yarn)"
            ),
        },
    };
    // HF computes inv_freq in f32 and the angle as f32 products.
    Ok(Rope {
        inv_freq: inv_freq.iter().map(|&f| f as f32).collect(),
        // GLM-4 rotates adjacent pairs (GPT-J style); the others HF's rotate_half.
        neox: cfg.architecture != super::config::Architecture::Glm4,
    })
}

/// What the attention scores are multiplied by on top of `head_dim^-0.5`: YaRN's attention
/// factor, squared (HF scales cos and sin by it, so both q and k), 1 otherwise.
pub fn score_scale(cfg: &ModelConfig) -> f64 {
    match &cfg.rope_scaling {
        Some(s) if s.rope_type == "yarn" => yarn_attention_factor(s).powi(2),
        _ => 1.0,
    }
}

/// YaRN's attention factor: given, or `0.1 ln(factor) + 1` (with DeepSeek's `mscale` /
/// `mscale_all_dim` ratio when both are set).
fn yarn_attention_factor(s: &super::config::RopeScaling) -> f64 {
    let factor = s.factor.unwrap_or(1.0);
    let mscale = |m: f64| {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * m * factor.ln() + 1.0
        }
    };
    match (s.attention_factor, s.mscale, s.mscale_all_dim) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(m) / mscale(all),
        _ => mscale(1.0),
    }
}

/// YaRN (Qwen2.5 / Qwen3 long context, DeepSeek): frequencies that turn fewer than
/// `beta_slow` times over the original context are interpolated by `factor`, those that turn
/// more than `beta_fast` times kept, with a linear ramp over the pair indices between.
fn yarn_scaled(
    base: &[f64],
    s: &super::config::RopeScaling,
    cfg: &ModelConfig,
) -> Result<Vec<f64>> {
    let factor = s.factor.context("yarn rope scaling needs a factor")?;
    anyhow::ensure!(factor > 0.0, "yarn rope scaling needs a positive factor");
    let original = s
        .original_max_position_embeddings
        .unwrap_or(cfg.max_position_embeddings) as f64;
    let (fast, slow) = (s.beta_fast.unwrap_or(32.0), s.beta_slow.unwrap_or(1.0));
    let dim = cfg.rotary_dim as f64;
    let theta = cfg.rope_theta;
    // The pair index at which a frequency turns `rotations` times over the original context.
    let correction = |rotations: f64| {
        dim * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction(fast), correction(slow));
    if s.truncate.unwrap_or(true) {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, high) = (low.max(0.0), high.min(dim - 1.0));
    let span = if low == high { 0.001 } else { high - low };
    Ok(base
        .iter()
        .enumerate()
        .map(|(i, &f)| {
            // 1 where the frequency is kept (extrapolated), 0 where interpolated.
            let keep = 1.0 - ((i as f64 - low) / span).clamp(0.0, 1.0);
            f / factor * (1.0 - keep) + f * keep
        })
        .collect())
}

/// Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
/// interpolated smoothly.
fn llama3_scaled(
    base: &[f64],
    s: &super::config::RopeScaling,
    cfg: &ModelConfig,
) -> Result<Vec<f64>> {
    let factor = s.factor.unwrap_or(8.0);
    let low = s.low_freq_factor.unwrap_or(1.0);
    let high = s.high_freq_factor.unwrap_or(4.0);
    let original = s
        .original_max_position_embeddings
        .unwrap_or(cfg.max_position_embeddings) as f64;
    anyhow::ensure!(
        high > low,
        "llama3 rope scaling needs high_freq_factor > low_freq_factor"
    );
    let low_wavelen = original / low;
    let high_wavelen = original / high;
    Ok(base
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::RopeScaling;

    fn yarn(factor: f64) -> RopeScaling {
        RopeScaling {
            rope_type: "yarn".into(),
            factor: Some(factor),
            low_freq_factor: None,
            high_freq_factor: None,
            original_max_position_embeddings: None,
            beta_fast: None,
            beta_slow: None,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: None,
        }
    }

    #[test]
    fn yarn_attention_factor_follows_the_paper_and_its_overrides() {
        assert!((yarn_attention_factor(&yarn(4.0)) - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        assert_eq!(yarn_attention_factor(&yarn(1.0)), 1.0);
        let given = RopeScaling {
            attention_factor: Some(1.5),
            ..yarn(4.0)
        };
        assert_eq!(yarn_attention_factor(&given), 1.5);
        // DeepSeek-V3 sets mscale = mscale_all_dim: the ratio is 1.
        let deepseek = RopeScaling {
            mscale: Some(1.0),
            mscale_all_dim: Some(1.0),
            ..yarn(40.0)
        };
        assert!((yarn_attention_factor(&deepseek) - 1.0).abs() < 1e-12);
    }
}
