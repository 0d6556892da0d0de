//! Rotary embedding frequencies, with the scalings HF configs use.

use super::config::{Architecture, ModelConfig, RopeScaling};
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
            // Dynamic NTK changes the frequencies only for sequences past
            // max_position_embeddings (transformers recomputes them per sequence length);
            // up to it they are the default ones, so kiln runs such models up to it.
            "dynamic" => {
                anyhow::ensure!(
                    cfg.context_len <= cfg.max_position_embeddings,
                    "dynamic NTK rope scaling past max_position_embeddings ({}) is not \
                     supported: use --max-model-len {} or less (the frequencies are exact \
                     up to there)",
                    cfg.max_position_embeddings,
                    cfg.max_position_embeddings
                );
                base
            }
            "linear" => {
                let factor = s.factor.unwrap_or(1.0);
                base.iter().map(|f| f / factor).collect()
            }
            "llama3" => llama3_scaled(&base, s, cfg)?,
            "yarn" => yarn_scaled(&base, s, cfg)?,
            "longrope" => longrope_scaled(&base, s, cfg)?,
            other => anyhow::bail!(
                "unsupported rope_scaling type '{other}' (supported: default, linear, llama3, \
                 yarn, longrope, dynamic up to max_position_embeddings)"
            ),
        },
    };
    // HF computes inv_freq in f32 and the angle as f32 products.
    Ok(Rope {
        inv_freq: inv_freq.iter().map(|&f| f as f32).collect(),
        // GLM-4 (both formats), Cohere, GPT-J, ERNIE 4.5, Helium and Llama 4 (complex pairs)
        // rotate adjacent pairs; the others HF's rotate_half.
        neox: !matches!(
            cfg.architecture,
            Architecture::Glm4
                | Architecture::Glm
                | Architecture::Cohere
                | Architecture::Cohere2
                | Architecture::GptJ
                | Architecture::Ernie45
                | Architecture::Ernie45Moe
                | Architecture::Helium
                | Architecture::Llama4
        ),
        scale: attention_factor(cfg) as f32,
        query_temperature: None,
    })
}

/// What cos and sin are multiplied by: YaRN's or LongRoPE's attention factor, 1 otherwise.
/// It scales the rotated values of both q and k, so the scores of a fully rotated head by
/// its square; under partial rotary the pass-through values stay unscaled, as in HF.
pub fn attention_factor(cfg: &ModelConfig) -> f64 {
    match &cfg.rope_scaling {
        Some(s) if s.rope_type == "yarn" => yarn_attention_factor(s),
        Some(s) if s.rope_type == "longrope" => longrope_attention_factor(s, cfg),
        _ => 1.0,
    }
}

/// Checks a config's `rope_scaling` and settles what it leaves to the rest of the config,
/// so that `rope_for` and `score_scale` read one struct. Only LongRoPE needs this: HF takes
/// its original context from the config's top level (Phi-3's config class defaults it to
/// 4096) and then derives the scaling factor as the ratio of the two contexts.
pub fn resolve_scaling(
    scaling: Option<RopeScaling>,
    architecture: Architecture,
    top_level_original: Option<usize>,
    max_position_embeddings: usize,
    rotary_dim: usize,
) -> Result<Option<RopeScaling>> {
    let Some(mut s) = scaling else {
        return Ok(None);
    };
    if s.rope_type != "longrope" {
        return Ok(Some(s));
    }
    // Without a top-level original context HF takes `max_position_embeddings` and keeps
    // `factor` (it ignores `rope_scaling`'s own original context here).
    match top_level_original.or((architecture == Architecture::Phi3).then_some(4096)) {
        Some(original) => {
            anyhow::ensure!(
                original > 0,
                "original_max_position_embeddings must be positive"
            );
            s.original_max_position_embeddings = Some(original);
            s.factor = Some(max_position_embeddings as f64 / original as f64);
        }
        None => s.original_max_position_embeddings = Some(max_position_embeddings),
    }
    for (name, factors) in [
        ("short_factor", &s.short_factor),
        ("long_factor", &s.long_factor),
    ] {
        let factors = factors
            .as_ref()
            .with_context(|| format!("longrope rope_scaling needs a {name} list"))?;
        anyhow::ensure!(
            factors.len() == rotary_dim / 2,
            "longrope {name} has {} entries; the {rotary_dim} rotary dims need {}",
            factors.len(),
            rotary_dim / 2
        );
        anyhow::ensure!(
            factors.iter().all(|&f| f.is_finite() && f > 0.0),
            "longrope {name} entries must be positive"
        );
    }
    Ok(Some(s))
}

/// The context LongRoPE was pretrained on: sequences longer than it use the long factors.
fn longrope_original(s: &RopeScaling, cfg: &ModelConfig) -> usize {
    s.original_max_position_embeddings
        .unwrap_or(cfg.max_position_embeddings)
}

/// Whether the model runs LongRoPE's long factors: `None` for other scalings.
///
/// HF switches per forward pass on the sequence's current length, so its cached keys keep
/// the rotation they were written with while later tokens rotate differently; a paged KV
/// cache shared by many sequences cannot follow that. kiln decides once, from the longest
/// sequence it will run: long factors when `context_len` exceeds the original context
/// (exact for sequences longer than it, the usual case for a 128k model), short ones
/// otherwise (exact for every sequence, since none can outgrow it).
pub fn uses_long_factors(cfg: &ModelConfig) -> Option<bool> {
    let s = cfg
        .rope_scaling
        .as_ref()
        .filter(|s| s.rope_type == "longrope")?;
    Some(cfg.context_len > longrope_original(s, cfg))
}

/// LongRoPE's attention factor: that of the factor set in use where the config gives one
/// per set (Phi-3.5-MoE's `short_mscale` / `long_mscale`), else given, else
/// `sqrt(1 + ln(factor) / ln(original context))`.
fn longrope_attention_factor(s: &RopeScaling, cfg: &ModelConfig) -> f64 {
    let per_set = if uses_long_factors(cfg) == Some(true) {
        s.long_mscale
    } else {
        s.short_mscale
    };
    if let Some(a) = per_set.or(s.attention_factor) {
        return a;
    }
    let factor = s.factor.unwrap_or(1.0);
    match s.original_max_position_embeddings {
        Some(original) if factor > 1.0 && original > 1 => {
            (1.0 + factor.ln() / (original as f64).ln()).sqrt()
        }
        _ => 1.0,
    }
}

/// LongRoPE: each inverse frequency divided by its pair's factor from the set
/// `uses_long_factors` picks.
fn longrope_scaled(base: &[f64], s: &RopeScaling, cfg: &ModelConfig) -> Result<Vec<f64>> {
    let factors = if uses_long_factors(cfg) == Some(true) {
        &s.long_factor
    } else {
        &s.short_factor
    };
    let factors = factors
        .as_ref()
        .context("longrope needs short and long factors")?;
    anyhow::ensure!(
        factors.len() == base.len(),
        "longrope has {} factors for {} rotary pairs",
        factors.len(),
        base.len()
    );
    Ok(base.iter().zip(factors).map(|(f, e)| f / e).collect())
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
    // Equal factors (Llama 4 Scout's 1 and 1) leave no band between the two wavelengths to
    // smooth: frequencies split at the one boundary.
    anyhow::ensure!(
        high >= low,
        "llama3 rope scaling needs high_freq_factor >= low_freq_factor"
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
            } else if high == low {
                f
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
            short_factor: None,
            long_factor: None,
            short_mscale: None,
            long_mscale: None,
            alpha: None,
        }
    }

    /// A Phi-3-mini-128k-shaped config (head 8, so 4 rotary pairs) with LongRoPE.
    fn phi3_longrope(extra: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(&format!(
            r#"{{"architectures": ["Phi3ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 8,
                "vocab_size": 100, "max_position_embeddings": 131072,
                "rope_scaling": {{"type": "longrope", "short_factor": [1, 1.5, 2, 4],
                                  "long_factor": [2, 3, 4, 8]}}{extra}}}"#
        ))
    }

    #[test]
    fn dynamic_ntk_is_the_default_rope_up_to_the_trained_context() {
        let json = |extra: &str| {
            ModelConfig::from_json(&format!(
                r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
                "vocab_size": 100, "max_position_embeddings": 2048{extra}}}"#
            ))
            .unwrap()
        };
        let plain = rope_for(&json("")).unwrap().inv_freq;
        let mut c = json(r#", "rope_scaling": {"type": "dynamic", "factor": 2.0}"#);
        assert_eq!(rope_for(&c).unwrap().inv_freq, plain);
        c.context_len = 4096;
        let err = rope_for(&c).unwrap_err().to_string();
        assert!(err.contains("--max-model-len 2048"), "{err}");
    }

    #[test]
    fn longrope_picks_its_factor_set_from_the_engine_context() {
        // Phi-3's config class defaults the original context to 4096.
        let mut c = phi3_longrope("").unwrap();
        let base = rope_for(&ModelConfig {
            rope_scaling: None,
            ..c.clone()
        })
        .unwrap()
        .inv_freq;
        let scaled = |c: &ModelConfig| -> Vec<f32> {
            let r = rope_for(c).unwrap().inv_freq;
            r.iter().zip(&base).map(|(r, b)| b / r).collect()
        };
        assert_eq!(uses_long_factors(&c), Some(true));
        assert_eq!(scaled(&c), [2.0, 3.0, 4.0, 8.0]);
        c.context_len = 4096;
        assert_eq!(uses_long_factors(&c), Some(false));
        assert_eq!(scaled(&c), [1.0, 1.5, 2.0, 4.0]);
        c.context_len = 4097;
        assert_eq!(scaled(&c), [2.0, 3.0, 4.0, 8.0]);
        let other =
            rope_for(&phi3_longrope(r#", "original_max_position_embeddings": 200000"#).unwrap());
        assert_eq!(other.unwrap().inv_freq.len(), 4);
        assert_eq!(
            uses_long_factors(
                &phi3_longrope(r#", "original_max_position_embeddings": 200000"#).unwrap()
            ),
            Some(false)
        );
    }

    #[test]
    fn longrope_attention_factor_comes_from_the_two_contexts() {
        // 131072 / 4096 = 32: sqrt(1 + ln 32 / ln 4096) = sqrt(1 + 5/12), applied even while
        // the short factors are in use, as HF does.
        let mut c = phi3_longrope("").unwrap();
        let expected = 1.0 + 5.0 / 12.0;
        assert!(
            (attention_factor(&c).powi(2) - expected).abs() < 1e-12,
            "{}",
            attention_factor(&c).powi(2)
        );
        c.context_len = 1024;
        assert!((attention_factor(&c).powi(2) - expected).abs() < 1e-12);
        // Without a top-level original context (not Phi-3), HF keeps `factor` and measures
        // against max_position_embeddings.
        let llama = ModelConfig::from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 8,
                "vocab_size": 100, "max_position_embeddings": 1024,
                "rope_scaling": {"rope_type": "longrope", "factor": 4.0,
                  "short_factor": [1, 1, 1, 1], "long_factor": [2, 2, 2, 2]}}"#,
        )
        .unwrap();
        let expected = 1.0 + 4f64.ln() / 1024f64.ln();
        assert!((attention_factor(&llama).powi(2) - expected).abs() < 1e-12);
        assert_eq!(uses_long_factors(&llama), Some(false));
        let given = phi3_longrope("").unwrap();
        let given = ModelConfig {
            rope_scaling: given.rope_scaling.map(|s| RopeScaling {
                attention_factor: Some(1.5),
                ..s
            }),
            ..given
        };
        assert_eq!(attention_factor(&given), 1.5);
    }

    #[test]
    fn longrope_factor_lists_must_cover_the_rotary_pairs() {
        let short = ModelConfig::from_json(
            r#"{"architectures": ["Phi3ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 8,
                "vocab_size": 100, "partial_rotary_factor": 0.5,
                "rope_scaling": {"type": "longrope", "short_factor": [1, 1, 1, 1],
                                 "long_factor": [1, 1]}}"#,
        )
        .unwrap_err();
        assert!(
            format!("{short:#}").contains("short_factor has 4 entries"),
            "{short:#}"
        );
        let missing = ModelConfig::from_json(
            r#"{"architectures": ["Phi3ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 8,
                "vocab_size": 100, "rope_scaling": {"type": "longrope", "short_factor": [1, 1, 1, 1]}}"#,
        )
        .unwrap_err();
        assert!(
            format!("{missing:#}").contains("long_factor"),
            "{missing:#}"
        );
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
