//! Selftest cases of the Mamba-2 mixer (`kernels/mamba.cu`) at Granite-4.0-H's head shape
//! (heads of 64 x a state of 128, one B / C group, the gated norm) and Falcon-H1-0.5B's (24
//! heads, the gate without the norm): the output and the state slots (states
//! and convolution windows) after a serving step (decode rows at the first positions and deep in a
//! sequence, a prefill chunk resuming a state, a fresh prompt, a padding token; sequences
//! holding shuffled slots of a larger pool), against the CPU backend's host implementation,
//! which the fixtures check against transformers.

use super::compare::Check;
use super::paged_step::PagedStep;
use super::suite::Suite;
use crate::backend::cpu::mamba::{mamba_mixer, HostMambaParams};
use crate::backend::cuda::ops_mamba::{MambaScratch, SlotStates};
use crate::backend::cuda::{CudaTensor, DType};
use crate::backend::mamba::{MambaParams, MambaShape};
use anyhow::Result;

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let granite = MambaShape {
        heads: 16,
        head_dim: 64,
        state: 128,
        groups: 1,
        taps: 4,
        norm_group: 1024,
        normed: true,
        norm_eps: 1e-5,
        dt_min: 0.0,
        dt_max: f32::INFINITY,
    };
    let falcon_h1 = MambaShape {
        heads: 24,
        norm_group: 1536,
        normed: false,
        ..granite
    };
    run_shape(s, dtype, granite)?;
    run_shape(s, dtype, falcon_h1)
}

fn run_shape(s: &mut Suite<'_>, dtype: DType, shape: MambaShape) -> Result<()> {
    let block_size = 16;
    let seqs = [
        (1usize, 1usize),
        (2, 1),
        (4, 1),
        (900, 1),
        (300, 37),
        (77, 77),
    ];
    let (inner, conv_dim, width) = (shape.inner(), shape.conv_dim(), shape.projection_width());
    let values = shape.slot_values();
    let step = PagedStep::new(&seqs, block_size, &mut s.rng);
    let n = step.num_tokens();
    let zxbcdt_host = s.random(n * width, 1.5, dtype);
    let conv_host = s.random(conv_dim * shape.taps, 0.8, dtype);
    let bias_host = s.random(conv_dim, 0.3, dtype);
    let norm_host = s.random(inner, 1.0, dtype);
    let dt_bias_host = s.random(shape.heads, 1.0, DType::F32);
    let a_host: Vec<f32> = s
        .random(shape.heads, 1.0, DType::F32)
        .iter()
        .map(|v| -v.exp())
        .collect();
    let d_host = s.random(shape.heads, 1.0, DType::F32);
    let (num_state_slots, state_slots) = step.shuffled_state_slots(&mut s.rng);
    let states_host = s.random(num_state_slots * values, 1.0, DType::F32);

    let dev = s.dev;
    let upload = |dt: DType, shape: &[usize], v: &[f32]| CudaTensor::from_f32(dev, dt, shape, v);
    let zxbcdt = upload(dtype, &[n, width], &zxbcdt_host)?;
    let conv_weight = upload(dtype, &[conv_dim, shape.taps], &conv_host)?;
    let conv_bias = upload(dtype, &[conv_dim], &bias_host)?;
    let norm = upload(dtype, &[inner], &norm_host)?;
    let dt_bias = upload(DType::F32, &[shape.heads], &dt_bias_host)?;
    let a = upload(DType::F32, &[shape.heads], &a_host)?;
    let d = upload(DType::F32, &[shape.heads], &d_host)?;
    let mut states = upload(DType::F32, &[num_state_slots, values], &states_host)?;
    let slots_i32: Vec<i32> = state_slots.iter().map(|&v| v as i32).collect();
    let state_slots_dev = dev.upload(&slots_i32)?;
    let mut xbc = CudaTensor::zeros(dev, dtype, &[n, conv_dim])?;
    let mut y = CudaTensor::zeros(dev, DType::F32, &[n, inner])?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, inner])?;
    let on_device = step.upload(dev)?;
    let batch = on_device.conv_batch();
    let params = MambaParams {
        shape,
        conv_weight: &conv_weight,
        conv_bias: Some(&conv_bias),
        dt_bias: &dt_bias,
        a: &a,
        d: &d,
        norm: &norm,
    };
    let mut run_step = |states: &mut CudaTensor, out: &mut CudaTensor| {
        dev.mamba_mixer(
            &zxbcdt,
            &params,
            SlotStates {
                states,
                state_slots: &state_slots_dev,
            },
            &batch,
            MambaScratch {
                xbc: &mut xbc,
                y: &mut y,
            },
            out,
        )
    };
    run_step(&mut states, &mut out)?;

    // The host implementation over the same cache contents and step.
    let mut host_cache = step.host_state_cache(block_size, dtype, values, states_host);
    let layout = step.host_layout(block_size, state_slots);
    let host = HostMambaParams {
        shape,
        conv_weight: conv_host,
        conv_bias: Some(bias_host),
        dt_bias: dt_bias_host,
        a: a_host,
        d: d_host,
        norm: norm_host,
    };
    let mut expected = mamba_mixer(&mut host_cache, 0, &layout, &zxbcdt_host, &host, dtype)?;
    let mut gpu = out.to_f32(dev)?;
    gpu.extend(states.to_f32(dev)?);
    expected.extend(&host_cache.v[0]);
    let what = format!(
        "{n} tok of {} seqs, {} heads x {} x {}{}",
        seqs.len(),
        shape.heads,
        shape.head_dim,
        shape.state,
        if shape.normed { "" } else { ", no norm" }
    );
    let row = s.check(
        "mamba_mixer",
        what,
        dtype,
        Check::Reduction,
        &gpu,
        &expected,
    );
    s.time(row, || run_step(&mut states, &mut out))?;
    Ok(())
}
