//! The training noise schedule: betas and their cumulative alpha products, in f32 as
//! diffusers computes them with torch.

use super::SchedulerConfig;
use anyhow::Result;

/// torch's float32 `linspace`: the first half counts up from `start`, the second half down
/// from `end`, so both ends are exact.
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start as f32];
    }
    let (start, end) = (start as f32, end as f32);
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// The "squaredcos_cap_v2" (Glide cosine) betas.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `cumprod(1 - betas)`, one per training timestep.
pub fn alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f32>> {
    let n = config.num_train_timesteps;
    let betas = match config.beta_schedule.as_str() {
        "linear" => linspace_f32(config.beta_start, config.beta_end, n),
        "scaled_linear" => linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        "squaredcos_cap_v2" => cosine_betas(n),
        other => anyhow::bail!("beta_schedule '{other}' is not supported"),
    };
    let mut product = 1f32;
    Ok(betas
        .into_iter()
        .map(|b| {
            product *= 1.0 - b;
            product
        })
        .collect())
}
