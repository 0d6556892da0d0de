//! Rotary embedding frequencies, with the scalings HF configs use.

use super::config::ModelConfig;
use crate::backend::Rope;
use anyhow::Result;

/// Per-pair inverse frequencies `theta^(-2i/d)`, scaled as the config asks.
pub fn rope_for(cfg: &ModelConfig) -> Result<Rope> {
    let d = cfg.head_dim;
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
            other => anyhow::bail!(
                "unsupported rope_scaling type '{other}' (supported: default, linear, llama3)"
            ),
        },
    };
    // HF computes inv_freq in f32 and the angle as f32 products.
    Ok(Rope {
        inv_freq: inv_freq.iter().map(|&f| f as f32).collect(),
        neox: true,
    })
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
