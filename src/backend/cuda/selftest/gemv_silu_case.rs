//! The SwiGLU fused into the down projection's GEMV (`gemv1_silu` / `gemv2_silu`) at the
//! Llama-3.1-8B and Qwen2.5-0.5B decode shapes, one and two rows: against the reference's
//! `silu_mul` (rounded to the dtype, as the unfused kernel stores it) then a double-precision
//! x W^T, and timed next to the unfused `silu_mul` + GEMV.

use super::compare::Check;
use super::gemv_cases::reference_linear;
use super::suite::Suite;
use super::timing::time_us;
use crate::backend::cuda::{reference, CudaTensor, DType};
use anyhow::{ensure, Result};

/// `(inter, hidden, model)`: the down projection's in and out features.
const SHAPES: [(usize, usize, &str); 2] = [(14_336, 4096, "llama-8b"), (4864, 896, "qwen-0.5b")];

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let dev = s.dev;
    for (inter, n, model) in SHAPES {
        let w_host = s.random(n * inter, 1.0, dtype);
        let w = CudaTensor::from_f32(dev, dtype, &[n, inter], &w_host)?;
        for m in [1, 2] {
            let gu_host = s.random(m * 2 * inter, 4.0, dtype);
            let h_host: Vec<f32> = reference::silu_mul(&gu_host, inter)
                .into_iter()
                .map(|v| dtype.round(v))
                .collect();
            let expected = reference_linear(&h_host, &w_host, inter);
            let gate_up = CudaTensor::from_f32(dev, dtype, &[m, 2 * inter], &gu_host)?;
            let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
            let fused = dev.silu_mul_gemv(&gate_up, &w, None, &mut y)?;
            ensure!(
                fused,
                "the fused GEMV declined m={m} I={inter} n={n} (KILN_GEMV=0?)"
            );
            let row = s.check(
                "gemv_silu",
                format!("m={m} I={inter} n={n} ({model} down)"),
                dtype,
                Check::Reduction,
                &y.to_f32(dev)?,
                &expected,
            );
            let iters = s.sizes.timing_iters * 5;
            let us = time_us(dev, iters, || {
                dev.silu_mul_gemv(&gate_up, &w, None, &mut y).map(|_| ())
            })?;
            let mut h = CudaTensor::zeros(dev, dtype, &[m, inter])?;
            let unfused_us = time_us(dev, iters, || {
                dev.silu_mul(&gate_up, &mut h)?;
                dev.gemv(&h, &w, None, &mut y)
            })?;
            s.rows[row].us_per_call = Some(us);
            s.rows[row].note = format!(
                "silu_mul + gemv {unfused_us:.1} us: fused/unfused time {:.2}",
                us / unfused_us
            );
        }
    }
    Ok(())
}
