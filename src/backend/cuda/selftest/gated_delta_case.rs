//! Selftest case of the gated delta rule mixer (`kernels/gated_delta.cu` after `mamba.cu`'s
//! convolution) at Qwen3-Next-80B's head shape (key and value heads of 128, two value heads
//! per key head): the output and the state slots (states and convolution windows) after a
//! serving step (decode rows at the first positions and deep in a sequence, a prefill chunk
//! resuming a state, a fresh prompt, a padding token; sequences holding shuffled slots of a
//! larger pool), against the CPU backend's host implementation, which the fixture checks
//! against transformers.

use super::compare::Check;
use super::paged_step::PagedStep;
use super::suite::Suite;
use crate::backend::cpu::gated_delta::{gated_delta_net, HostGatedDeltaParams};
use crate::backend::cuda::ops_gated_delta::GatedDeltaScratch;
use crate::backend::cuda::ops_mamba::SlotStates;
use crate::backend::cuda::{CudaTensor, DType};
use crate::backend::gated_delta::{GatedDeltaParams, GatedDeltaShape};
use anyhow::Result;

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let shape = GatedDeltaShape {
        k_heads: 4,
        v_heads: 8,
        k_dim: 128,
        v_dim: 128,
        taps: 4,
        norm_eps: 1e-6,
    };
    let block_size = 16;
    let seqs = [
        (1usize, 1usize),
        (2, 1),
        (4, 1),
        (900, 1),
        (300, 37),
        (77, 77),
    ];
    let (conv_dim, width, value_dim) = (
        shape.conv_dim(),
        shape.projection_width(),
        shape.value_dim(),
    );
    let values = shape.slot_values();
    let step = PagedStep::new(&seqs, block_size, &mut s.rng);
    let n = step.num_tokens();
    let proj_host = s.random(n * width, 1.5, dtype);
    let conv_host = s.random(conv_dim * shape.taps, 0.8, dtype);
    let norm_host = s.random(shape.v_dim, 1.0, dtype);
    let dt_bias_host = s.random(shape.v_heads, 1.0, DType::F32);
    let a_host: Vec<f32> = s
        .random(shape.v_heads, 1.0, DType::F32)
        .iter()
        .map(|v| -v.exp())
        .collect();
    let (num_state_slots, state_slots) = step.shuffled_state_slots(&mut s.rng);
    let states_host = s.random(num_state_slots * values, 0.5, DType::F32);

    let dev = s.dev;
    let upload = |dt: DType, shape: &[usize], v: &[f32]| CudaTensor::from_f32(dev, dt, shape, v);
    let proj = upload(dtype, &[n, width], &proj_host)?;
    let conv_weight = upload(dtype, &[conv_dim, shape.taps], &conv_host)?;
    let norm = upload(dtype, &[shape.v_dim], &norm_host)?;
    let dt_bias = upload(DType::F32, &[shape.v_heads], &dt_bias_host)?;
    let a = upload(DType::F32, &[shape.v_heads], &a_host)?;
    let mut states = upload(DType::F32, &[num_state_slots, values], &states_host)?;
    let slots_i32: Vec<i32> = state_slots.iter().map(|&v| v as i32).collect();
    let state_slots_dev = dev.upload(&slots_i32)?;
    let mut qkv = CudaTensor::zeros(dev, dtype, &[n, conv_dim])?;
    let mut o = CudaTensor::zeros(dev, DType::F32, &[n, value_dim])?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, value_dim])?;
    let on_device = step.upload(dev)?;
    let batch = on_device.conv_batch();
    let params = GatedDeltaParams {
        shape,
        conv_weight: &conv_weight,
        dt_bias: &dt_bias,
        a: &a,
        norm: &norm,
    };
    let mut run_step = |states: &mut CudaTensor, out: &mut CudaTensor| {
        dev.gated_delta_net(
            &proj,
            &params,
            SlotStates {
                states,
                state_slots: &state_slots_dev,
            },
            &batch,
            GatedDeltaScratch {
                qkv: &mut qkv,
                o: &mut o,
            },
            out,
        )
    };
    run_step(&mut states, &mut out)?;

    // The host implementation over the same cache contents and step.
    let mut host_cache = step.host_state_cache(block_size, dtype, values, states_host);
    let layout = step.host_layout(block_size, state_slots);
    let host = HostGatedDeltaParams {
        shape,
        conv_weight: conv_host,
        dt_bias: dt_bias_host,
        a: a_host,
        norm: norm_host,
    };
    let mut expected = gated_delta_net(&mut host_cache, 0, &layout, &proj_host, &host, dtype)?;
    let mut gpu = out.to_f32(dev)?;
    gpu.extend(states.to_f32(dev)?);
    expected.extend(&host_cache.v[0]);
    let what = format!(
        "{n} tok of {} seqs, {} x {} heads of {} x {}",
        seqs.len(),
        shape.k_heads,
        shape.v_heads,
        shape.k_dim,
        shape.v_dim
    );
    let row = s.check(
        "gated_delta_net",
        what,
        dtype,
        Check::Reduction,
        &gpu,
        &expected,
    );
    s.time(row, || run_step(&mut states, &mut out))?;
    Ok(())
}
