//! diffusers' `DDIMScheduler` with eta 0 (deterministic): predict the clean sample, then move
//! to the previous timestep's noise level along the predicted noise.

use super::{spaced_timesteps, Prediction, Scheduler, SchedulerConfig, StepRule};

pub struct Ddim {
    timesteps: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    /// Timesteps between two steps, as diffusers computes the previous one.
    stride: usize,
    final_alpha_cumprod: f32,
    prediction: Prediction,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, alphas_cumprod: Vec<f32>, steps: usize) -> Self {
        // DDIM rounds its timesteps to integers.
        let timesteps = spaced_timesteps(config, steps)
            .into_iter()
            .map(|t| t.round_ties_even() as f32)
            .collect();
        Ddim {
            timesteps,
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            stride: config.num_train_timesteps / steps,
            prediction: config.prediction,
        }
    }

    fn alpha_at(&self, t: i64) -> f64 {
        if t >= 0 {
            let i = (t as usize).min(self.alphas_cumprod.len() - 1);
            self.alphas_cumprod[i] as f64
        } else {
            self.final_alpha_cumprod as f64
        }
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn input_scale(&self, _i: usize) -> f32 {
        1.0
    }

    fn step_rule(&self, i: usize) -> StepRule {
        let t = self.timesteps[i] as i64;
        let alpha = self.alpha_at(t);
        let alpha_prev = self.alpha_at(t - self.stride as i64);
        let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        // x0 and eps as (sample coefficient, output coefficient).
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => ((1.0 / sa, -sb / sa), (0.0, 1.0)),
            Prediction::VPrediction => ((sa, -sb), (sb, sa)),
            Prediction::Sample => ((0.0, 1.0), (1.0 / sb, -sa / sb)),
        };
        let (cx, ce) = (alpha_prev.sqrt(), (1.0 - alpha_prev).sqrt());
        StepRule {
            sample: (cx * x0.0 + ce * eps.0) as f32,
            model_output: (cx * x0.1 + ce * eps.1) as f32,
            noise: 0.0,
        }
    }
}
