//! Selftest cases of the per-row and element-wise ops, and a GEMM correctness check.

use super::compare::Check;
use super::suite::Suite;
use crate::backend::cuda::{reference, CudaTensor, DType, RopeStyle};
use crate::backend::QueryTemperature;
use anyhow::Result;
use rand::Rng;

/// One selftest case: checks and times one op family for a dtype.
type Case = fn(&mut Suite<'_>, DType) -> Result<()>;

/// Runs every case for `dtype`; an error in one case is recorded and the rest still run.
pub fn run(suite: &mut Suite<'_>, dtype: DType) {
    let cases: [(&str, Case); 13] = [
        ("embedding", embedding),
        ("rms_norm", rms_norm),
        ("fused_add_rms_norm", fused_add_rms_norm),
        ("rope", rope),
        ("silu_mul", silu_mul),
        ("add", add),
        ("join_heads", join_heads),
        ("softcap", softcap),
        ("sigmoid_gate", sigmoid_gate),
        ("argmax", argmax),
        ("softmax", softmax),
        ("linear", linear),
        ("dummy_weights", dummy_weights),
    ];
    for (name, case) in cases {
        if let Err(err) = case(suite, dtype) {
            suite.error(name, dtype, &err);
        }
    }
}

fn embedding(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (vocab, hidden, n) = (8192, s.sizes.hidden, s.sizes.prefill_tokens);
    let table_host = s.random(vocab * hidden, 1.0, dtype);
    let mut ids: Vec<u32> = (0..n)
        .map(|_| s.rng.random_range(0..vocab as u32))
        .collect();
    ids[n - 1] = vocab as u32 + 5; // out of range: must give a zero row
    let dev = s.dev;
    let table = CudaTensor::from_f32(dev, dtype, &[vocab, hidden], &table_host)?;
    let ids_dev = dev.upload(&ids)?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, hidden])?;
    dev.embedding(&table, &ids_dev, ids_dev.len(), &mut out)?;
    let expected = reference::embedding(&table_host, &ids, hidden);
    let row = s.check(
        "embedding",
        format!("[{vocab}, {hidden}] x {n} ids"),
        dtype,
        Check::Exact,
        &out.to_f32(dev)?,
        &expected,
    );
    s.time(row, || {
        dev.embedding(&table, &ids_dev, ids_dev.len(), &mut out)
    })?;
    Ok(())
}

fn rms_norm(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let n = s.sizes.prefill_tokens;
    // Whole hidden state, then Qwen3-style per-head q norm.
    for (rows, d, label) in [
        (n, s.sizes.hidden, "rms_norm"),
        (n * s.sizes.q_heads, s.sizes.head_dim, "rms_norm(head)"),
    ] {
        let x_host = s.random(rows * d, 2.0, dtype);
        let w_host = s.random(d, 1.5, dtype);
        let dev = s.dev;
        let x = CudaTensor::from_f32(dev, dtype, &[rows, d], &x_host)?;
        let w = CudaTensor::from_f32(dev, dtype, &[d], &w_host)?;
        let mut y = CudaTensor::zeros(dev, dtype, &[rows, d])?;
        dev.rms_norm(&x, &w, 1e-5, &mut y)?;
        let expected = reference::rms_norm(&x_host, &w_host, 1e-5);
        let row = s.check(
            label,
            format!("[{rows}, {d}]"),
            dtype,
            Check::Reduction,
            &y.to_f32(dev)?,
            &expected,
        );
        s.time(row, || dev.rms_norm(&x, &w, 1e-5, &mut y))?;
    }
    Ok(())
}

fn fused_add_rms_norm(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (n, d) = (s.sizes.prefill_tokens, s.sizes.hidden);
    let x_host = s.random(n * d, 2.0, dtype);
    let r_host = s.random(n * d, 2.0, dtype);
    let w_host = s.random(d, 1.5, dtype);
    let dev = s.dev;
    let mut x = CudaTensor::from_f32(dev, dtype, &[n, d], &x_host)?;
    let mut r = CudaTensor::from_f32(dev, dtype, &[n, d], &r_host)?;
    let w = CudaTensor::from_f32(dev, dtype, &[d], &w_host)?;
    dev.fused_add_rms_norm(&mut x, &mut r, &w, 1e-6)?;
    let (x_ref, r_ref) =
        reference::fused_add_rms_norm(&x_host, &r_host, &w_host, 1e-6, |v| dtype.round(v));
    let shape = format!("[{n}, {d}]");
    s.check(
        "fused_add(residual)",
        shape.clone(),
        dtype,
        Check::Exact,
        &r.to_f32(dev)?,
        &r_ref,
    );
    let row = s.check(
        "fused_add_rms_norm",
        shape,
        dtype,
        Check::Reduction,
        &x.to_f32(dev)?,
        &x_ref,
    );
    s.time(row, || dev.fused_add_rms_norm(&mut x, &mut r, &w, 1e-6))?;
    Ok(())
}

fn rope(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let sz = s.sizes;
    let n = sz.prefill_tokens;
    // Positions past several of Llama 4's 8192-position temperature steps.
    let positions: Vec<i32> = (0..n).map(|_| s.rng.random_range(0..40_000)).collect();
    // Llama 4's layers without rotary: an all-zero table, each query times its temperature.
    let temperature = QueryTemperature {
        floor_scale: 8192.0,
        attn_scale: 0.1,
    };
    // The whole head, and half of it (partial rotary, GLM-4); LongRoPE's attention factor on
    // three quarters of the head (Phi-4-mini).
    let variants = [
        (RopeStyle::Neox, sz.head_dim, 1.0, None),
        (RopeStyle::Interleaved, sz.head_dim, 1.0, None),
        (RopeStyle::Neox, sz.head_dim / 2, 1.0, None),
        (RopeStyle::Interleaved, sz.head_dim / 2, 1.0, None),
        (RopeStyle::Neox, sz.head_dim * 3 / 4 / 2 * 2, 1.19, None),
        (RopeStyle::Neox, sz.head_dim, 1.0, Some(temperature)),
    ];
    for (style, rot, scale, temperature) in variants {
        let inv_freq: Vec<f32> = (0..rot / 2)
            .map(|i| match temperature {
                Some(_) => 0.0,
                None => 1.0 / 500_000f32.powf(2.0 * i as f32 / rot as f32),
            })
            .collect();
        let neox = style == RopeStyle::Neox;
        let mut q_host = s.random(n * sz.q_heads * sz.head_dim, 1.0, dtype);
        let mut k_host = s.random(n * sz.kv_heads * sz.head_dim, 1.0, dtype);
        let dev = s.dev;
        let mut q = CudaTensor::from_f32(dev, dtype, &[n, sz.q_heads, sz.head_dim], &q_host)?;
        let mut k = CudaTensor::from_f32(dev, dtype, &[n, sz.kv_heads, sz.head_dim], &k_host)?;
        let (pos_dev, freq_dev) = (dev.upload(&positions)?, dev.upload(&inv_freq)?);
        dev.rope(
            &mut q,
            &mut k,
            &pos_dev,
            &freq_dev,
            style,
            scale,
            temperature,
        )?;
        reference::rope(
            &mut q_host,
            &positions,
            &inv_freq,
            sz.q_heads,
            sz.head_dim,
            neox,
            scale,
        );
        reference::rope(
            &mut k_host,
            &positions,
            &inv_freq,
            sz.kv_heads,
            sz.head_dim,
            neox,
            scale,
        );
        if let Some(t) = temperature {
            let width = sz.q_heads * sz.head_dim;
            for (row, &pos) in q_host.chunks_mut(width).zip(&positions) {
                let factor = t.factor(pos as u32);
                row.iter_mut().for_each(|v| *v = dtype.round(*v * factor));
            }
        }
        let mut gpu = q.to_f32(dev)?;
        gpu.extend(k.to_f32(dev)?);
        q_host.extend(k_host);
        let label = format!(
            "rope({}{}{})",
            if neox { "neox" } else { "interleaved" },
            match (rot == sz.head_dim, scale != 1.0) {
                (true, _) => "",
                (false, false) => ", half the head",
                (false, true) => ", 3/4 of the head",
            },
            match (scale != 1.0, temperature.is_some()) {
                (true, _) => ", attention factor",
                (_, true) => ", no rotary, query temperature",
                _ => "",
            }
        );
        let shape = format!(
            "q[{n}, {}, {}] k[.., {}, ..]",
            sz.q_heads, sz.head_dim, sz.kv_heads
        );
        let row = s.check(&label, shape, dtype, Check::Elementwise, &gpu, &q_host);
        s.time(row, || {
            dev.rope(
                &mut q,
                &mut k,
                &pos_dev,
                &freq_dev,
                style,
                scale,
                temperature,
            )
        })?;
    }
    Ok(())
}

fn silu_mul(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (n, inter) = (s.sizes.prefill_tokens / 4, s.sizes.intermediate);
    let gu_host = s.random(n * 2 * inter, 6.0, dtype);
    let dev = s.dev;
    let gu = CudaTensor::from_f32(dev, dtype, &[n, 2 * inter], &gu_host)?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, inter])?;
    dev.silu_mul(&gu, &mut out)?;
    let expected = reference::silu_mul(&gu_host, inter);
    let row = s.check(
        "silu_mul",
        format!("[{n}, 2 x {inter}]"),
        dtype,
        Check::Elementwise,
        &out.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.silu_mul(&gu, &mut out))?;
    dev.gelu_tanh_mul(&gu, &mut out)?;
    let expected = reference::gelu_tanh_mul(&gu_host, inter);
    let row = s.check(
        "gelu_tanh_mul",
        format!("[{n}, 2 x {inter}]"),
        dtype,
        Check::Elementwise,
        &out.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.gelu_tanh_mul(&gu, &mut out))?;
    // gpt-oss's clamped SwiGLU: inputs up to 6 in size, so a limit of 4 clamps many.
    let params = (4.0, 1.702);
    dev.clamped_swiglu(&gu, params, &mut out)?;
    let expected = reference::clamped_swiglu(&gu_host, inter, params);
    let row = s.check(
        "clamped_swiglu",
        format!("[{n}, 2 x {inter}], limit 4"),
        dtype,
        Check::Elementwise,
        &out.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.clamped_swiglu(&gu, params, &mut out))?;
    Ok(())
}

/// Gemma 2's final logit soft-capping, in place over a vocabulary-wide row block.
fn softcap(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (n, vocab) = (8, s.sizes.vocab);
    let cap = 30.0f32;
    let host = s.random(n * vocab, 90.0, dtype);
    let dev = s.dev;
    let mut x = CudaTensor::from_f32(dev, dtype, &[n, vocab], &host)?;
    dev.softcap(&mut x, cap)?;
    let expected: Vec<f32> = host.iter().map(|&v| cap * (v / cap).tanh()).collect();
    let row = s.check(
        "softcap",
        format!("[{n}, {vocab}] cap {cap}"),
        dtype,
        Check::Elementwise,
        &x.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.softcap(&mut x, cap))?;
    Ok(())
}

/// Qwen3-Next's gated attention output: `x * sigmoid(gate)`, the sigmoid rounded first.
fn sigmoid_gate(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (n, d) = (s.sizes.prefill_tokens, s.sizes.hidden);
    let x_host = s.random(n * d, 3.0, dtype);
    let gate_host = s.random(n * d, 6.0, dtype);
    let dev = s.dev;
    let x = CudaTensor::from_f32(dev, dtype, &[n, d], &x_host)?;
    let gate = CudaTensor::from_f32(dev, dtype, &[n, d], &gate_host)?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, d])?;
    dev.sigmoid_gate(&x, &gate, &mut out)?;
    let expected: Vec<f32> = x_host
        .iter()
        .zip(&gate_host)
        .map(|(&x, &g)| x * dtype.round(crate::backend::gated_delta::sigmoid(g)))
        .collect();
    let row = s.check(
        "sigmoid_gate",
        format!("[{n}, {d}]"),
        dtype,
        Check::Elementwise,
        &out.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.sigmoid_gate(&x, &gate, &mut out))?;
    Ok(())
}

fn add(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (n, d) = (s.sizes.prefill_tokens, s.sizes.hidden);
    let a_host = s.random(n * d, 3.0, dtype);
    let b_host = s.random(n * d, 3.0, dtype);
    let bias_host = s.random(d, 3.0, dtype);
    let dev = s.dev;
    let a = CudaTensor::from_f32(dev, dtype, &[n, d], &a_host)?;
    let b = CudaTensor::from_f32(dev, dtype, &[n, d], &b_host)?;
    let bias = CudaTensor::from_f32(dev, dtype, &[d], &bias_host)?;
    let mut out = CudaTensor::zeros(dev, dtype, &[n, d])?;
    dev.add(&a, &b, &mut out)?;
    let row = s.check(
        "add",
        format!("[{n}, {d}]"),
        dtype,
        Check::Elementwise,
        &out.to_f32(dev)?,
        &reference::add(&a_host, &b_host),
    );
    s.time(row, || dev.add(&a, &b, &mut out))?;
    let mut x = CudaTensor::from_f32(dev, dtype, &[n, d], &a_host)?;
    dev.add_bias(&mut x, &bias)?;
    let expected = reference::add_bias(&a_host, &bias_host);
    let row = s.check(
        "add_bias",
        format!("[{n}, {d}] + [{d}]"),
        dtype,
        Check::Elementwise,
        &x.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.add_bias(&mut x, &bias))?;
    add_position_embedding(s, dtype, &a_host)
}

/// GPT-2's and OPT's learned positions: `x += table[position + offset]`, with OPT's offset
/// of 2 and one position past the table (left unchanged).
fn add_position_embedding(s: &mut Suite<'_>, dtype: DType, x_host: &[f32]) -> Result<()> {
    let (n, d, offset) = (s.sizes.prefill_tokens, s.sizes.hidden, 2);
    let rows = n + offset;
    let table_host = s.random(rows * d, 3.0, dtype);
    let mut positions: Vec<i32> = (0..n as i32).rev().collect();
    positions[0] = rows as i32; // past the table
    let expected: Vec<f32> = x_host
        .chunks(d)
        .zip(&positions)
        .flat_map(|(x, &p)| {
            let at = p as usize + offset;
            let row = table_host.get(at * d..(at + 1) * d);
            x.iter()
                .enumerate()
                .map(|(j, &v)| row.map_or(v, |r| v + r[j]))
                .collect::<Vec<_>>()
        })
        .collect();
    let dev = s.dev;
    let table = CudaTensor::from_f32(dev, dtype, &[rows, d], &table_host)?;
    let positions_dev = dev.upload(&positions)?;
    let mut x = CudaTensor::from_f32(dev, dtype, &[n, d], x_host)?;
    dev.add_position_embedding(&mut x, &table, &positions_dev, offset)?;
    let row = s.check(
        "add_position_embedding",
        format!("[{n}, {d}] + [{rows}, {d}] rows"),
        dtype,
        Check::Elementwise,
        &x.to_f32(dev)?,
        &expected,
    );
    s.time(row, || {
        dev.add_position_embedding(&mut x, &table, &positions_dev, offset)
    })?;
    Ok(())
}

/// DeepSeek's key assembly at its shape: one 64-value rope part shared by every head, then
/// each head's own 128 values.
fn join_heads(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (n, heads, shared_width, own_width) = (s.sizes.prefill_tokens, s.sizes.q_heads, 64, 128);
    let shared_host = s.random(n * shared_width, 2.0, dtype);
    let own_host = s.random(n * heads * own_width, 2.0, dtype);
    let dev = s.dev;
    let shared = CudaTensor::from_f32(dev, dtype, &[n, shared_width], &shared_host)?;
    let own = CudaTensor::from_f32(dev, dtype, &[n, heads * own_width], &own_host)?;
    let width = heads * (shared_width + own_width);
    let mut out = CudaTensor::zeros(dev, dtype, &[n, width])?;
    dev.join_heads(&shared, &own, heads, &mut out)?;
    let row = s.check(
        "join_heads",
        format!("[{n}, {shared_width}] + [{n}, {heads} x {own_width}]"),
        dtype,
        Check::Exact,
        &out.to_f32(dev)?,
        &reference::join_heads(&shared_host, &own_host, n, heads),
    );
    s.time(row, || dev.join_heads(&shared, &own, heads, &mut out))?;
    Ok(())
}

fn argmax(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (rows, vocab) = (32, s.sizes.vocab);
    let logits_host = s.random(rows * vocab, 8.0, dtype);
    let dev = s.dev;
    let logits = CudaTensor::from_f32(dev, dtype, &[rows, vocab], &logits_host)?;
    let mut out = dev.stream().alloc_zeros::<u32>(rows)?;
    dev.argmax(&logits, &mut out)?;
    let gpu = dev.download(&out)?;
    let expected = reference::argmax(&logits_host, vocab);
    // Error = number of rows whose token differs.
    let mismatches = gpu.iter().zip(&expected).filter(|(a, b)| a != b).count() as f32;
    let row = s.check(
        "argmax",
        format!("[{rows}, {vocab}]"),
        dtype,
        Check::Exact,
        &[mismatches],
        &[0.0],
    );
    s.rows[row].note = "error = mismatching rows".into();
    s.time(row, || dev.argmax(&logits, &mut out))?;
    Ok(())
}

fn softmax(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (rows, vocab) = (8, s.sizes.vocab);
    let logits_host = s.random(rows * vocab, 8.0, dtype);
    let dev = s.dev;
    let logits = CudaTensor::from_f32(dev, dtype, &[rows, vocab], &logits_host)?;
    let mut out = dev.stream().alloc_zeros::<f32>(rows * vocab)?;
    for log_space in [false, true] {
        dev.softmax(&logits, log_space, &mut out)?;
        let gpu = dev.download(&out)?;
        let expected: Vec<f32> = logits_host
            .chunks(vocab)
            .flat_map(|r| {
                if log_space {
                    reference::log_softmax(r)
                } else {
                    reference::softmax(r)
                }
            })
            .collect();
        let label = if log_space { "log_softmax" } else { "softmax" };
        let row = s.check(
            label,
            format!("[{rows}, {vocab}] -> f32"),
            dtype,
            Check::F32Output,
            &gpu,
            &expected,
        );
        s.time(row, || dev.softmax(&logits, log_space, &mut out))?;
    }
    Ok(())
}

fn linear(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    let (m, k, n) = (
        32,
        s.sizes.hidden,
        if s.sizes.timing_iters < 10 {
            1024
        } else {
            4096
        },
    );
    let x_host = s.random(m * k, 1.0, dtype);
    let w_host = s.random(n * k, 1.0, dtype);
    let dev = s.dev;
    let x = CudaTensor::from_f32(dev, dtype, &[m, k], &x_host)?;
    let w = CudaTensor::from_f32(dev, dtype, &[n, k], &w_host)?;
    let mut y = CudaTensor::zeros(dev, dtype, &[m, n])?;
    dev.blas().linear(&x, &w, &mut y)?;
    let expected = reference::linear(&x_host, &w_host, k);
    let row = s.check(
        "linear(cuBLAS)",
        format!("x[{m}, {k}] w[{n}, {k}]"),
        dtype,
        Check::Reduction,
        &y.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.blas().linear(&x, &w, &mut y))?;
    // A router's logits: the dtype's inputs, an f32 output that nothing rounds (checked
    // at f32's tolerance).
    let experts = 128;
    let router_host = s.random(experts * k, 1.0, dtype);
    let router = CudaTensor::from_f32(dev, dtype, &[experts, k], &router_host)?;
    let mut logits = CudaTensor::zeros(dev, DType::F32, &[m, experts])?;
    dev.blas().linear_f32_out(&x, &router, &mut logits)?;
    let expected = reference::linear(&x_host, &router_host, k);
    s.check(
        "linear_f32(router)",
        format!("x[{m}, {k}] {dtype} w[{experts}, {k}] -> f32"),
        DType::F32,
        Check::Reduction,
        &logits.to_f32(dev)?,
        &expected,
    );
    // A router kept in f32 (ERNIE 4.5's, Nemotron 3's): the dtype's input widened first.
    let router_host_f32 = s.random(experts * k, 1.0, DType::F32);
    let router = CudaTensor::from_f32(dev, DType::F32, &[experts, k], &router_host_f32)?;
    let mut wide = CudaTensor::zeros(dev, DType::F32, &[m, k])?;
    dev.widen(&x, &mut wide)?;
    s.check(
        "widen",
        format!("x[{m}, {k}] {dtype} -> f32"),
        DType::F32,
        Check::Exact,
        &wide.to_f32(dev)?,
        &x_host,
    );
    dev.blas().linear_f32_out(&wide, &router, &mut logits)?;
    let expected = reference::linear(&x_host, &router_host_f32, k);
    s.check(
        "linear_f32(f32 router)",
        format!("x[{m}, {k}] {dtype} widened, w[{experts}, {k}] f32 -> f32"),
        DType::F32,
        Check::Reduction,
        &logits.to_f32(dev)?,
        &expected,
    );
    Ok(())
}

/// Dummy weights generated on the GPU must be the host generator's values, bit for bit
/// (after rounding to the dtype): a stacked weight of a whole part and a column slice.
fn dummy_weights(s: &mut Suite<'_>, dtype: DType) -> Result<()> {
    use crate::model::weights::{DummyWeights, Slice, WeightSource};
    let (rows, cols) = (s.sizes.kv_heads * s.sizes.head_dim, s.sizes.hidden);
    let src = DummyWeights { seed: 7 };
    let slice = Slice {
        dim: 1,
        range: cols / 4..cols / 2,
    };
    let parts = [
        src.generated("a.weight", &[rows, cols / 4], None),
        src.generated("b.weight", &[rows, cols], Some(&slice)),
    ];
    let parts: Vec<_> = parts
        .into_iter()
        .collect::<Option<_>>()
        .expect("dummy weights are generated");
    let expected: Vec<f32> = parts
        .iter()
        .flat_map(|p| p.values())
        .map(|v| dtype.round(v))
        .collect();
    let dev = s.dev;
    let mut out = CudaTensor::zeros(dev, dtype, &[2 * rows, cols / 4])?;
    dev.dummy_fill(&parts, &mut out)?;
    let row = s.check(
        "dummy_weights",
        format!("[{rows}, {}] + slice of [{rows}, {cols}]", cols / 4),
        dtype,
        Check::Exact,
        &out.to_f32(dev)?,
        &expected,
    );
    s.time(row, || dev.dummy_fill(&parts, &mut out))?;
    Ok(())
}
