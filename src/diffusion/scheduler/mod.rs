//! Noise schedulers, read from `scheduler/scheduler_config.json`: Euler, Euler ancestral and
//! DDIM (eta 0), with diffusers' "leading", "trailing" and "linspace" timestep spacings.
//!
//! Every supported step is linear in the sample, the model output and fresh noise, so a
//! scheduler hands the pipeline the three coefficients ([`StepRule`]) and the pipeline applies
//! them with backend ops: the latents never leave the device.

mod betas;
mod ddim;
mod euler;

use super::config::{read_json, SchedulerKind};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

/// `prev = sample * sample_coef + model_output * model_coef + noise * noise_coef`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRule {
    pub sample: f32,
    pub model_output: f32,
    /// Zero for deterministic steps: then no noise needs drawing.
    pub noise: f32,
}

/// What the UNet predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

/// How inference timesteps are spread over the training ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// A schedule for one run of `steps` steps.
pub trait Scheduler: Send + Sync {
    /// The timestep given to the UNet at each step.
    fn timesteps(&self) -> &[f32];
    /// Initial latents are standard normal noise times this.
    fn init_noise_sigma(&self) -> f32;
    /// The UNet's input at step `i` is the latents times this.
    fn input_scale(&self, i: usize) -> f32;
    /// How step `i` moves the latents.
    fn step_rule(&self, i: usize) -> StepRule;
}

#[derive(Clone, Debug, Deserialize)]
struct RawConfig {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(default = "default_train_steps")]
    num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    beta_start: f64,
    #[serde(default = "default_beta_end")]
    beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    beta_schedule: String,
    #[serde(default)]
    trained_betas: Option<serde_json::Value>,
    #[serde(default = "default_prediction")]
    prediction_type: String,
    #[serde(default)]
    timestep_spacing: Option<String>,
    #[serde(default)]
    steps_offset: usize,
    #[serde(default)]
    clip_sample: Option<bool>,
    #[serde(default)]
    thresholding: bool,
    #[serde(default)]
    set_alpha_to_one: Option<bool>,
    #[serde(default)]
    use_karras_sigmas: bool,
    #[serde(default)]
    use_exponential_sigmas: bool,
    #[serde(default)]
    use_beta_sigmas: bool,
    #[serde(default)]
    rescale_betas_zero_snr: bool,
    #[serde(default)]
    interpolation_type: Option<String>,
    #[serde(default)]
    final_sigmas_type: Option<String>,
    #[serde(default)]
    timestep_type: Option<String>,
}

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".into()
}
fn default_prediction() -> String {
    "epsilon".into()
}

/// A parsed, validated `scheduler_config.json`.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub kind: SchedulerKind,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub prediction: Prediction,
    pub spacing: Spacing,
    pub steps_offset: usize,
    /// DDIM: the "previous" alpha product of the last step is 1 (else that of timestep 0).
    pub set_alpha_to_one: bool,
}

impl SchedulerConfig {
    /// `scheduler/scheduler_config.json` of a directory or a built-in preset.
    pub fn from_files(files: &super::presets::PipelineFiles) -> Result<SchedulerConfig> {
        let rel = "scheduler/scheduler_config.json";
        Self::from_json(files.json(rel)?).with_context(|| format!("in {}", files.describe(rel)))
    }

    pub fn read(path: &Path) -> Result<SchedulerConfig> {
        let value: serde_json::Value = read_json(path)?;
        Self::from_json(value).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(value: serde_json::Value) -> Result<SchedulerConfig> {
        let raw: RawConfig = serde_json::from_value(value).context("scheduler config")?;
        let kind = SchedulerKind::from_class(&raw.class_name)?;
        let unsupported = [
            (
                "trained_betas",
                raw.trained_betas.as_ref().is_some_and(|v| !v.is_null()),
            ),
            ("thresholding", raw.thresholding),
            ("use_karras_sigmas", raw.use_karras_sigmas),
            ("use_exponential_sigmas", raw.use_exponential_sigmas),
            ("use_beta_sigmas", raw.use_beta_sigmas),
            ("rescale_betas_zero_snr", raw.rescale_betas_zero_snr),
            (
                "interpolation_type other than linear",
                !matches!(raw.interpolation_type.as_deref(), None | Some("linear")),
            ),
            (
                "final_sigmas_type other than zero",
                !matches!(raw.final_sigmas_type.as_deref(), None | Some("zero")),
            ),
            (
                "timestep_type other than discrete",
                !matches!(raw.timestep_type.as_deref(), None | Some("discrete")),
            ),
            // DDIM clips the predicted sample by default; SD configs turn that off.
            (
                "clip_sample",
                kind == SchedulerKind::Ddim && raw.clip_sample.unwrap_or(true),
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, bad)| *bad) {
            anyhow::bail!("scheduler setting '{name}' is not supported by kiln");
        }
        let prediction = match raw.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            "sample" => Prediction::Sample,
            other => anyhow::bail!("prediction_type '{other}' is not supported"),
        };
        let default_spacing = if kind == SchedulerKind::Ddim {
            "leading"
        } else {
            "linspace"
        };
        let spacing = match raw.timestep_spacing.as_deref().unwrap_or(default_spacing) {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => anyhow::bail!("timestep_spacing '{other}' is not supported"),
        };
        anyhow::ensure!(
            raw.num_train_timesteps >= 2,
            "num_train_timesteps {} is too small",
            raw.num_train_timesteps
        );
        Ok(SchedulerConfig {
            kind,
            num_train_timesteps: raw.num_train_timesteps,
            beta_start: raw.beta_start,
            beta_end: raw.beta_end,
            beta_schedule: raw.beta_schedule,
            prediction,
            spacing,
            steps_offset: raw.steps_offset,
            set_alpha_to_one: raw.set_alpha_to_one.unwrap_or(true),
        })
    }

    /// The schedule of a run of `steps` steps.
    pub fn build(&self, steps: usize) -> Result<Box<dyn Scheduler>> {
        anyhow::ensure!(
            steps >= 1 && steps <= self.num_train_timesteps,
            "steps must be between 1 and {}, not {steps}",
            self.num_train_timesteps
        );
        let alphas_cumprod = betas::alphas_cumprod(self)?;
        Ok(match self.kind {
            SchedulerKind::Euler => {
                Box::new(euler::Euler::new(self, &alphas_cumprod, steps, false))
            }
            SchedulerKind::EulerAncestral => {
                Box::new(euler::Euler::new(self, &alphas_cumprod, steps, true))
            }
            SchedulerKind::Ddim => Box::new(ddim::Ddim::new(self, alphas_cumprod, steps)),
        })
    }
}

/// numpy's `arange(start, stop, step)` for a negative float step, as diffusers' "trailing"
/// spacing uses it (its length is `ceil((stop - start) / step)`).
fn arange_down(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// The inference timesteps as diffusers computes them before any integer cast, largest first.
fn spaced_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<f64> {
    let train = config.num_train_timesteps;
    match config.spacing {
        Spacing::Linspace => {
            let last = (train - 1) as f64;
            let step = if steps > 1 {
                last / (steps - 1) as f64
            } else {
                0.0
            };
            // numpy's linspace pins the last value to `stop` exactly.
            (0..steps)
                .rev()
                .map(|i| {
                    if i + 1 == steps && steps > 1 {
                        last
                    } else {
                        i as f64 * step
                    }
                })
                .collect()
        }
        Spacing::Leading => {
            let ratio = train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            arange_down(train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(class: &str, spacing: &str) -> SchedulerConfig {
        SchedulerConfig::from_json(serde_json::json!({
            "_class_name": class,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "timestep_spacing": spacing,
            "steps_offset": 1,
            "clip_sample": false,
        }))
        .unwrap()
    }

    #[test]
    fn spacings_give_diffusers_timesteps() {
        let ts =
            |spacing, steps| spaced_timesteps(&config("EulerDiscreteScheduler", spacing), steps);
        assert_eq!(ts("leading", 4), vec![751.0, 501.0, 251.0, 1.0]);
        assert_eq!(ts("trailing", 4), vec![999.0, 749.0, 499.0, 249.0]);
        assert_eq!(ts("trailing", 1), vec![999.0]);
        assert_eq!(ts("linspace", 1), vec![0.0]);
        assert_eq!(ts("linspace", 3), vec![999.0, 499.5, 0.0]);
        // Ties round to even, as numpy does: 1000 - 62.5 * 3 = 812.5 -> 812, minus 1.
        assert_eq!(ts("trailing", 16)[3], 811.0);
    }

    #[test]
    fn unsupported_settings_are_named() {
        let err = SchedulerConfig::from_json(serde_json::json!({
            "_class_name": "EulerDiscreteScheduler",
            "use_karras_sigmas": true,
        }))
        .unwrap_err();
        assert!(format!("{err:#}").contains("use_karras_sigmas"), "{err:#}");
        let err =
            SchedulerConfig::from_json(serde_json::json!({"_class_name": "LMSDiscreteScheduler"}))
                .unwrap_err();
        assert!(
            format!("{err:#}").contains("LMSDiscreteScheduler"),
            "{err:#}"
        );
        // DDIM clips by default: kiln refuses rather than silently not clipping.
        assert!(
            SchedulerConfig::from_json(serde_json::json!({"_class_name": "DDIMScheduler"}))
                .is_err()
        );
    }
}
