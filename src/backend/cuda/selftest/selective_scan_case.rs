//! Selftest case of Mamba-1's mixer steps at Falcon-Mamba-7B's channel shape (a state of 16
//! per channel; fewer channels): the convolution (`mamba.cu` at column offset 0, with a
//! bias) and the selective scan (`selective_scan.cu`), their outputs and the state slots
//! (states and windows) after a serving step (decode rows at the first positions and deep
//! in a sequence, a prefill chunk resuming a state, a fresh prompt, a padding token;
//! sequences holding shuffled slots of a larger pool), against the CPU backend's host
//! implementation, which the fixtures check against transformers.

use super::compare::Check;
use super::paged_step::PagedStep;
use super::suite::Suite;
use crate::backend::cpu::selective_scan::{selective_scan, slot_conv, ScanInputs};
use crate::backend::cpu::slot_conv::SlotConv as HostSlotConv;
use crate::backend::cuda::ops_mamba::SlotStates;
use crate::backend::cuda::ops_selective_scan;
use crate::backend::cuda::{CudaTensor, DType};
use crate::backend::selective_scan::{SelectiveParams, SelectiveShape};
use crate::backend::slot_conv::SlotConvParams;
use anyhow::Result;

pub fn run(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let shape = SelectiveShape {
        inner: 2048,
        state: 16,
        dt_rank: 64,
        taps: 4,
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
    let (inner, state) = (shape.inner, shape.state);
    let values = shape.slot_values();
    let step = PagedStep::new(&seqs, block_size, &mut s.rng);
    let n = step.num_tokens();
    let xz_host = s.random(n * 2 * inner, 1.5, dtype);
    let dt_host = s.random(n * inner, 2.0, dtype);
    let b_host = s.random(n * state, 1.0, dtype);
    let c_host = s.random(n * state, 1.0, dtype);
    let conv_host = s.random(inner * shape.taps, 0.8, dtype);
    let bias_host = s.random(inner, 0.3, dtype);
    let a_host: Vec<f32> = s
        .random(inner * state, 1.0, DType::F32)
        .iter()
        .map(|v| -v.exp())
        .collect();
    let d_host = s.random(inner, 1.0, dtype);
    let (num_state_slots, state_slots) = step.shuffled_state_slots(&mut s.rng);
    let states_host = s.random(num_state_slots * values, 1.0, DType::F32);

    let dev = s.dev;
    let upload = |dt: DType, shape: &[usize], v: &[f32]| CudaTensor::from_f32(dev, dt, shape, v);
    let xz = upload(dtype, &[n, 2 * inner], &xz_host)?;
    let dt = upload(dtype, &[n, inner], &dt_host)?;
    let b = upload(dtype, &[n, state], &b_host)?;
    let c = upload(dtype, &[n, state], &c_host)?;
    let conv_weight = upload(dtype, &[inner, shape.taps], &conv_host)?;
    let conv_bias = upload(dtype, &[inner], &bias_host)?;
    let a = upload(DType::F32, &[inner, state], &a_host)?;
    let d = upload(DType::F32, &[inner], &d_host)?;
    let mut states = upload(DType::F32, &[num_state_slots, values], &states_host)?;
    let slots_i32: Vec<i32> = state_slots.iter().map(|&v| v as i32).collect();
    let state_slots_dev = dev.upload(&slots_i32)?;
    let mut x = CudaTensor::zeros(dev, dtype, &[n, inner])?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, inner])?;
    let on_device = step.upload(dev)?;
    let batch = on_device.conv_batch();
    let conv = SlotConvParams {
        offset: 0,
        channels: inner,
        taps: shape.taps,
        state_values: shape.state_values(),
        weight: &conv_weight,
        bias: Some(&conv_bias),
    };
    let params = SelectiveParams {
        shape,
        a: &a,
        d: &d,
    };
    let run_step = |states: &mut CudaTensor, x: &mut CudaTensor, out: &mut CudaTensor| {
        let mut slots = SlotStates {
            states,
            state_slots: &state_slots_dev,
        };
        dev.slot_conv(&xz, &conv, &mut slots, &batch, x)?;
        let inputs = ops_selective_scan::ScanInputs {
            x,
            dt: &dt,
            b: &b,
            c: &c,
            xz: &xz,
        };
        dev.selective_scan(&inputs, &params, slots, &batch, out)
    };
    run_step(&mut states, &mut x, &mut out)?;

    // The host implementation over the same cache contents and step.
    let mut host_cache = step.host_state_cache(block_size, dtype, values, states_host);
    let layout = step.host_layout(block_size, state_slots);
    let host_conv = HostSlotConv {
        offset: 0,
        width: 2 * inner,
        channels: inner,
        taps: shape.taps,
        window_at: shape.state_values(),
        weight: &conv_host,
        bias: Some(&bias_host),
    };
    let conv_of = (&host_conv, values);
    let x_host = slot_conv(&mut host_cache, 0, &layout, &xz_host, conv_of, dtype)?;
    let inputs = ScanInputs {
        x: &x_host,
        dt: &dt_host,
        b: &b_host,
        c: &c_host,
        xz: &xz_host,
    };
    let scan_of = (&shape, a_host.as_slice(), d_host.as_slice());
    let mut expected = selective_scan(&mut host_cache, 0, &layout, &inputs, scan_of, dtype)?;
    let mut gpu = out.to_f32(dev)?;
    gpu.extend(x.to_f32(dev)?);
    gpu.extend(states.to_f32(dev)?);
    expected.extend(x_host);
    expected.extend(&host_cache.v[0]);
    let what = format!(
        "{n} tok of {} seqs, {inner} channels x state {state}",
        seqs.len()
    );
    let row = s.check(
        "selective_scan",
        what,
        dtype,
        Check::Reduction,
        &gpu,
        &expected,
    );
    s.time(row, || run_step(&mut states, &mut x, &mut out))?;
    Ok(())
}
