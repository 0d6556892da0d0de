//! diffusers' `EulerDiscreteScheduler` (no churn) and `EulerAncestralDiscreteScheduler`:
//! Euler steps of the probability-flow ODE in sigma space; the ancestral one steps to a lower
//! sigma and adds fresh noise back.

use super::{spaced_timesteps, Prediction, Scheduler, SchedulerConfig, Spacing, StepRule};

pub struct Euler {
    timesteps: Vec<f32>,
    /// One per step, then a final 0.
    sigmas: Vec<f32>,
    prediction: Prediction,
    ancestral: bool,
    init_noise_sigma: f32,
}

impl Euler {
    pub fn new(
        config: &SchedulerConfig,
        alphas_cumprod: &[f32],
        steps: usize,
        ancestral: bool,
    ) -> Self {
        let train_sigmas: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        let timesteps: Vec<f32> = spaced_timesteps(config, steps)
            .into_iter()
            .map(|t| t as f32)
            .collect();
        // numpy's interp of the training sigmas at (possibly fractional) timesteps.
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                let t = (t as f64).clamp(0.0, (train_sigmas.len() - 1) as f64);
                let lo = t.floor() as usize;
                let hi = (lo + 1).min(train_sigmas.len() - 1);
                let (a, b) = (train_sigmas[lo] as f64, train_sigmas[hi] as f64);
                (a + (b - a) * (t - lo as f64)) as f32
            })
            .collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0, f32::max);
        let init_noise_sigma = match config.spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        };
        Euler {
            timesteps,
            sigmas,
            prediction: config.prediction,
            ancestral,
            init_noise_sigma,
        }
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn input_scale(&self, i: usize) -> f32 {
        let s = self.sigmas[i];
        1.0 / (s * s + 1.0).sqrt()
    }

    fn step_rule(&self, i: usize) -> StepRule {
        let (sigma, next) = (self.sigmas[i] as f64, self.sigmas[i + 1] as f64);
        let (target, noise) = if self.ancestral {
            let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
            ((next * next - up * up).sqrt(), up)
        } else {
            (next, 0.0)
        };
        let dt = target - sigma;
        // prev = sample + dt * (sample - x0) / sigma, with x0 linear in (sample, output).
        let (x0_sample, x0_output) = match self.prediction {
            Prediction::Epsilon => (1.0, -sigma),
            Prediction::VPrediction => {
                let norm = sigma * sigma + 1.0;
                (1.0 / norm, -sigma / norm.sqrt())
            }
            Prediction::Sample => (0.0, 1.0),
        };
        StepRule {
            sample: (1.0 + dt * (1.0 - x0_sample) / sigma) as f32,
            model_output: (-dt * x0_output / sigma) as f32,
            noise: noise as f32,
        }
    }
}
