//! Selftest of the caching allocator on the real driver: the buffers of a decode step
//! (Llama-3.1-8B widths, ids and batch metadata) taken and dropped for several steps, with
//! embedding and rms_norm writing into reused, never-zeroed buffers. Passes when every step
//! after the first asks the driver for nothing and the outputs still match the reference.

use super::compare::Check;
use super::suite::Suite;
use crate::backend::cuda::device_pools::DevicePools;
use crate::backend::cuda::{reference, CudaTensor, DType};
use anyhow::Result;
use rand::Rng;

const STEPS: usize = 4;

pub fn run(s: &mut Suite<'_>) {
    if let Err(err) = check(s) {
        s.error("allocator", DType::BF16, &err);
    }
}

fn check(s: &mut Suite<'_>) -> Result<()> {
    let dtype = DType::BF16;
    let sz = s.sizes;
    let (batch, hidden, vocab) = (8, sz.hidden, 4096);
    let dev = s.dev;
    let pools = DevicePools::new(dev.stream());
    let table_host = s.random(vocab * hidden, 1.0, dtype);
    let w_host = s.random(hidden, 1.5, dtype);
    let table = CudaTensor::from_f32(dev, dtype, &[vocab, hidden], &table_host)?;
    let w = CudaTensor::from_f32(dev, dtype, &[hidden], &w_host)?;
    let qkv_width = (sz.q_heads + 2 * sz.kv_heads) * sz.head_dim;
    let widths = [
        hidden,
        qkv_width,
        2 * sz.intermediate,
        sz.intermediate,
        hidden,
    ];

    let mut after_first = None;
    let mut worst = 0.0f64;
    let mut max_ref = 0.0f64;
    for step in 0..STEPS {
        // Batch metadata as prepare_batch uploads it; the block tables grow each step.
        let positions: Vec<i32> = (0..batch as i32).map(|b| 100 + b + step as i32).collect();
        let tables: Vec<i32> = (0..(batch * (7 + step)) as i32).collect();
        let _meta = (pools.upload_i32(&positions)?, pools.upload_i32(&tables)?);
        // Activations a decode step allocates, dropped at the end of the step.
        let mut activations = Vec::new();
        for &width in &widths {
            let buffer = pools.bytes(batch * width * dtype.size_in_bytes())?;
            activations.push(CudaTensor::from_pooled(buffer, dtype, &[batch, width])?);
        }
        // Real kernels into reused buffers: the previous step's values are still there.
        let ids: Vec<u32> = (0..batch)
            .map(|_| s.rng.random_range(0..vocab as u32))
            .collect();
        let ids_dev = pools.upload_u32(&ids)?;
        let mut embedded = CudaTensor::from_pooled(
            pools.bytes(batch * hidden * dtype.size_in_bytes())?,
            dtype,
            &[batch, hidden],
        )?;
        dev.embedding(&table, &ids_dev, ids.len(), &mut embedded)?;
        let mut normed = CudaTensor::from_pooled(
            pools.bytes(batch * hidden * dtype.size_in_bytes())?,
            dtype,
            &[batch, hidden],
        )?;
        dev.rms_norm(&embedded, &w, 1e-5, &mut normed)?;
        let expected = reference::rms_norm(
            &reference::embedding(&table_host, &ids, hidden),
            &w_host,
            1e-5,
        );
        let (err, reference_max) = super::max_abs_error(&normed.to_f32(dev)?, &expected);
        worst = worst.max(err);
        max_ref = max_ref.max(reference_max);
        if step == 0 {
            after_first = Some(pools.stats());
        }
    }
    let first = after_first.unwrap_or_default();
    let later = pools.stats().since(first);
    let label = format!("{} decode steps after the first", STEPS - 1);
    let row = s.rows.len();
    s.rows.push(super::Row::checked(
        "allocator",
        label,
        dtype.kernel_suffix(),
        later.driver_allocations as f64,
        0.0,
    ));
    s.rows[row].note = format!(
        "driver allocations (error column); step 1: {}, later: {} reuses",
        first.driver_allocations, later.reuses
    );
    let tol = super::tolerance(Check::Reduction, dtype, max_ref);
    s.rows.push(super::Row::checked(
        "rms_norm (pooled)",
        format!("[{batch}, {hidden}] x {STEPS} steps"),
        dtype.kernel_suffix(),
        worst,
        tol,
    ));
    Ok(())
}
