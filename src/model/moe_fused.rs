//! Experts stored as whole stacks, one tensor per projection for all experts of a layer
//! (gpt-oss; Qwen3-VL-MoE the same without biases, gate and up columns in halves instead of
//! interleaved): `gate_up_proj [experts, hidden, 2 * intermediate]` with gate and up columns
//! interleaved, `down_proj [experts, intermediate, hidden]` (both `x @ w`, the transpose of
//! a linear layer's weight), or the same as MXFP4 blocks laid out `[experts, out, in]`; plus
//! a bias per projection and the router's. Each expert is cut out, de-interleaved into
//! kiln's `[gate rows; up rows]` and sliced for this rank at load. Generated (dummy) experts
//! are computed on the device in that layout directly.

use super::config::{ModelConfig, MoeConfig};
use super::llama::{cols_part, load, load_stacked, rows_part};
use super::moe::SparseMlp;
use super::mxfp4;
use super::weights::{Slice, WeightSource};
use crate::backend::moe::ExpertBiases;
use crate::backend::{Backend, DType};
use crate::parallel::ShardLayout;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::ops::Range;

/// gpt-oss's MoE layer `prefix` (this rank's slice of every expert).
pub(super) fn load_gpt_oss<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    config: &ModelConfig,
    moe: &MoeConfig,
    prefix: &str,
    layout: &ShardLayout,
    dtype: DType,
) -> Result<SparseMlp<B>> {
    let (h, inter, n) = dims(config, moe);
    let p = format!("{prefix}.mlp");
    let router = load(be, src, &format!("{p}.router.weight"), &[n, h], dtype)?;
    let router_bias = load(be, src, &format!("{p}.router.bias"), &[n], dtype)?;
    let name = |n: &str| format!("{p}.experts.{n}");
    let gate_up_bias = src.tensor(&name("gate_up_proj_bias"), &[n, 2 * inter], dtype)?;
    let down_bias = src.tensor(&name("down_proj_bias"), &[n, h], dtype)?;
    let cols = layout.expert_intermediate.clone();
    let (gate_rows, up_rows) = interleaved_rows(&cols)?;
    let split = |t: &Tensor| -> Result<Tensor> {
        // gate_up's rows (or bias entries) alternate gate, up: this rank's of each, stacked.
        Ok(Tensor::cat(
            &[t.index_select(&gate_rows, 0)?, t.index_select(&up_rows, 0)?],
            0,
        )?)
    };
    let experts = stacked_experts(be, src, &p, (n, h, inter), &cols, dtype, &split)?;
    let mut biases = (Vec::new(), Vec::new());
    for e in 0..n {
        biases.0.push(be.upload(split(&gate_up_bias.get(e)?)?)?);
        if layout.shard.rank == 0 {
            biases.1.push(be.upload(down_bias.get(e)?)?);
        }
    }
    let down_bias = (layout.shard.rank == 0).then_some(biases.1);
    let index = be
        .index_experts(
            &experts.0,
            &experts.1,
            ExpertBiases {
                gate_up: Some(&biases.0),
                down: down_bias.as_deref(),
            },
        )
        .with_context(|| format!("indexing the experts of {prefix}"))?;
    Ok(SparseMlp::from_parts(
        (router, Some(router_bias)),
        experts.0,
        experts.1,
        Some(biases.0),
        down_bias,
        index,
        moe,
    ))
}

/// Qwen3-VL-MoE's MoE layer `prefix`: Qwen3-MoE's routing (softmax, top k renormalised),
/// its router `mlp.gate` without a bias, and its experts as stacks: `gate_up_proj
/// [experts, hidden, 2 * intermediate]` (gate columns, then up columns) and `down_proj
/// [experts, intermediate, hidden]`, both `x @ w`.
pub(super) fn load_qwen3_vl_moe<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    config: &ModelConfig,
    moe: &MoeConfig,
    prefix: &str,
    layout: &ShardLayout,
    dtype: DType,
) -> Result<SparseMlp<B>> {
    let (h, inter, n) = dims(config, moe);
    let p = format!("{prefix}.mlp");
    let router = load(be, src, &format!("{p}.gate.weight"), &[n, h], dtype)?;
    let cols = layout.expert_intermediate.clone();
    // gate_up's rows as a linear weight: this rank's gate rows, then its up rows.
    let split = |t: &Tensor| -> Result<Tensor> {
        let up = inter + cols.start;
        Ok(Tensor::cat(
            &[
                t.narrow(0, cols.start, cols.len())?,
                t.narrow(0, up, cols.len())?,
            ],
            0,
        )?)
    };
    let (gate_up, down) = stacked_experts(be, src, &p, (n, h, inter), &cols, dtype, &split)?;
    unbiased_layer(be, router, (gate_up, down), moe, prefix)
}

/// Granite MoE's layer `prefix`: its router `block_sparse_moe.router.layer` (softmax over
/// the top k logits) and its experts as stacks of linear weights: `input_linear [experts,
/// 2 * intermediate, hidden]` (gate rows, then up rows) and `output_linear [experts, hidden,
/// intermediate]`. Granite's residual multiplier, which scales the layer's output, is folded
/// into the experts' down weights, as into a dense layer's.
pub(super) fn load_granite_moe<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    config: &ModelConfig,
    moe: &MoeConfig,
    prefix: &str,
    layout: &ShardLayout,
    dtype: DType,
) -> Result<SparseMlp<B>> {
    let (h, inter, n) = dims(config, moe);
    let p = format!("{prefix}.block_sparse_moe");
    let router = load(be, src, &format!("{p}.router.layer.weight"), &[n, h], dtype)?;
    let cols = layout.expert_intermediate.clone();
    let (_, residual_scale) = config.folded_scales();
    let (gate_name, down_name) = (
        format!("{p}.input_linear.weight"),
        format!("{p}.output_linear.weight"),
    );
    let mut gate_up = Vec::with_capacity(n);
    let mut down = Vec::with_capacity(n);
    for e in 0..n {
        if src
            .generated(&gate_name, &[n, 2 * inter, h], None)
            .is_some()
        {
            let (g, d) = generated_expert(be, src, &p, e, (h, inter), &cols, dtype)?;
            gate_up.push(g);
            down.push(d);
            continue;
        }
        // Read in f32 so the down weights take the residual factor before one rounding.
        let entry = |name: &str, shape: [usize; 3], as_dtype: DType| -> Result<Tensor> {
            Ok(src
                .tensor_slice(name, &shape, &Slice::entry(e), as_dtype)?
                .squeeze(0)?)
        };
        let w = entry(&gate_name, [n, 2 * inter, h], dtype)?;
        let rows = Tensor::cat(
            &[
                w.narrow(0, cols.start, cols.len())?,
                w.narrow(0, inter + cols.start, cols.len())?,
            ],
            0,
        )?;
        gate_up.push(be.upload(rows.contiguous()?)?);
        let w = entry(&down_name, [n, h, inter], DType::F32)?;
        let part = (w.narrow(1, cols.start, cols.len())? * residual_scale)?;
        down.push(be.upload(part.to_dtype(dtype.to_candle())?.contiguous()?)?);
    }
    unbiased_layer(be, router, (gate_up, down), moe, prefix)
}

/// A layer of experts without biases (and without a shared expert), indexed for routing.
fn unbiased_layer<B: Backend>(
    be: &B,
    router: B::Tensor,
    (gate_up, down): ExpertStacks<B>,
    moe: &MoeConfig,
    prefix: &str,
) -> Result<SparseMlp<B>> {
    let no_biases = ExpertBiases {
        gate_up: None,
        down: None,
    };
    let index = be
        .index_experts(&gate_up, &down, no_biases)
        .with_context(|| format!("indexing the experts of {prefix}"))?;
    Ok(SparseMlp::from_parts(
        (router, None),
        gate_up,
        down,
        None,
        None,
        index,
        moe,
    ))
}

/// Every expert's gate_up and down weights, in expert order.
type ExpertStacks<B> = (Vec<<B as Backend>::Tensor>, Vec<<B as Backend>::Tensor>);

/// `(hidden, expert intermediate, experts)` of a MoE layer.
fn dims(config: &ModelConfig, moe: &MoeConfig) -> (usize, usize, usize) {
    (
        config.hidden_size,
        moe.expert_intermediate_size,
        moe.num_experts,
    )
}

/// Every expert of the stacks `{p}.experts.gate_up_proj` / `down_proj`, this rank's part,
/// uploaded: gate_up's rows picked by `split` (from the expert's `[2 * inter, h]` linear
/// weight), down's columns `cols`. One expert at a time, so a rank's host memory holds one
/// expert, not a layer's stack.
fn stacked_experts<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    p: &str,
    (n, h, inter): (usize, usize, usize),
    cols: &Range<usize>,
    dtype: DType,
    split: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<ExpertStacks<B>> {
    let name = |n: &str| format!("{p}.experts.{n}");
    let generated = src
        .generated(&name("gate_up_proj"), &[n, h, 2 * inter], None)
        .is_some();
    let mut experts = (Vec::with_capacity(n), Vec::with_capacity(n));
    for e in 0..n {
        if generated {
            let (gate_up, down) = generated_expert(be, src, p, e, (h, inter), cols, dtype)?;
            experts.0.push(gate_up);
            experts.1.push(down);
        } else {
            let gate_up = as_linear(src, &name("gate_up_proj"), [n, h, 2 * inter], e, dtype)?;
            experts.0.push(be.upload(split(&gate_up)?.contiguous()?)?);
            let down = as_linear(src, &name("down_proj"), [n, inter, h], e, dtype)?;
            let down_e = down.narrow(1, cols.start, cols.len())?;
            experts.1.push(be.upload(down_e.contiguous()?)?);
        }
    }
    Ok(experts)
}

/// Expert `e` of stack `name`, stored `x @ w` as `[experts, in, out]` (or packed as MXFP4
/// `[experts, out, in]`), as a linear-layer weight `[out, in]` on the host; only its part
/// of the stack is read.
fn as_linear(
    src: &dyn WeightSource,
    name: &str,
    [n, inputs, outputs]: [usize; 3],
    e: usize,
    dtype: DType,
) -> Result<Tensor> {
    if mxfp4::is_packed(src, name) {
        return mxfp4::unpack(src, name, [n, outputs, inputs], e, dtype);
    }
    Ok(src
        .tensor_slice(name, &[n, inputs, outputs], &Slice::entry(e), dtype)?
        .squeeze(0)?
        .t()?
        .contiguous()?)
}

/// Expert `e` of a generated (dummy) checkpoint, this rank's columns `cols`, computed where
/// the backend can (the device) in the layout the kernels take: gate_up `[gate rows; up
/// rows]` of one `[2 * inter, h]` tensor per expert, down the `cols` columns of one `[h,
/// inter]` tensor. Random values have no stored layout to honour; what matters is that every
/// rank cuts its part out of the same tensors. The host path's transposes and
/// de-interleaving took gpt-oss-20b's dummy load past 150 s on an H200 machine.
fn generated_expert<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    prefix: &str,
    e: usize,
    (h, inter): (usize, usize),
    cols: &Range<usize>,
    dtype: DType,
) -> Result<(B::Tensor, B::Tensor)> {
    let gate_up = format!("{prefix}.experts.{e}.gate_up_proj.weight");
    let up_cols = inter + cols.start..inter + cols.end;
    let parts = [
        rows_part(gate_up.clone(), vec![2 * inter, h], cols.clone()),
        rows_part(gate_up, vec![2 * inter, h], up_cols),
    ];
    let down = format!("{prefix}.experts.{e}.down_proj.weight");
    let down_part = cols_part(down, vec![h, inter], cols.clone());
    Ok((
        load_stacked(be, src, &parts, dtype)?,
        load_stacked(be, src, &[down_part], dtype)?,
    ))
}

/// The row indices of intermediate columns `cols` in an interleaved gate/up stack: gate
/// `2c`, up `2c + 1`.
fn interleaved_rows(cols: &Range<usize>) -> Result<(Tensor, Tensor)> {
    let gate: Vec<u32> = cols.clone().map(|c| 2 * c as u32).collect();
    let up: Vec<u32> = gate.iter().map(|g| g + 1).collect();
    let (len, dev) = (gate.len(), &Device::Cpu);
    Ok((
        Tensor::from_vec(gate, len, dev)?,
        Tensor::from_vec(up, len, dev)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_columns_split_into_gate_then_up_rows() {
        let (gate, up) = interleaved_rows(&(1..3)).unwrap();
        assert_eq!(gate.to_vec1::<u32>().unwrap(), vec![2, 4]);
        assert_eq!(up.to_vec1::<u32>().unwrap(), vec![3, 5]);
    }
}
