//! Mixture-of-experts layers routed on the GPU for a few tokens (decode steps).
//!
//! The portable path ([`crate::backend::moe::host_routed_experts`]) copies each layer's
//! router logits to the host: a stream synchronisation per layer (48 in Qwen3-30B-A3B) and a
//! step no CUDA graph can record. For up to [`MOE_DEVICE_MAX_ROWS`] tokens the whole layer
//! stays on the device instead, in four launches:
//!
//! 1. `moe_route` (kernels/moe.cu): softmax, top-k and the weights, per token, into
//!    `top_k` (expert, weight) pairs sorted by expert;
//! 2. `gemv1_expert_swiglu` (kernels/gemv.cu): each pair's gate_up GEMV with its expert's
//!    weights, found through a device table of expert addresses made at load
//!    ([`CudaExpertIndex`]), and the SwiGLU as epilogue;
//! 3. `gemv1_expert`: each pair's down GEMV;
//! 4. `moe_combine`: the weighted sum per token, rounded as HF's loop rounds it, the
//!    shared expert last.
//!
//! Each pair reads its expert's weights once, so a batch whose tokens share experts reads
//! them more than once; above a few tokens the host path's per-expert GEMMs win (and a step
//! is long enough that the round trips matter less).

use super::device::CudaDevice;
use super::gemv::{gemv_launch, GEMV_K_MULTIPLE};
use super::launch::{as_i32, elementwise};
use super::tensor::CudaTensor;
use crate::backend::DType;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

/// Most tokens routed on the device: a decode batch of up to this many sequences (and its
/// recorded bucket, which never exceeds it: 1, 2, 4, 8).
pub const MOE_DEVICE_MAX_ROWS: usize = 8;
/// `MOE_MAX_EXPERTS` in kernels/moe.cu (16 per lane of the routing warp).
pub const MOE_MAX_EXPERTS: usize = 512;
/// `MOE_MAX_TOP_K` in kernels/moe.cu.
pub const MOE_MAX_TOP_K: usize = 32;
/// `MOE_ROUTE_THREADS` in kernels/moe.cu: one warp per token.
pub const MOE_ROUTE_THREADS: u32 = 32;

/// Whether `tokens` rows of a layer of `experts` experts, `top_k` per token, go through the
/// device path.
pub fn routes_on_device(enabled: bool, tokens: usize, experts: usize, top_k: usize) -> bool {
    enabled && (1..=MOE_DEVICE_MAX_ROWS).contains(&tokens) && route_kernel_fits(experts, top_k)
}

/// Whether `moe_route` takes a layer of `experts` experts, `top_k` per token.
fn route_kernel_fits(experts: usize, top_k: usize) -> bool {
    (1..=MOE_MAX_EXPERTS).contains(&experts) && (1..=MOE_MAX_TOP_K.min(experts)).contains(&top_k)
}

/// `KILN_MOE_DEVICE=0` (read once) keeps every MoE layer on the host path, for A/B runs.
pub fn moe_device_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("KILN_MOE_DEVICE").map_or(true, |v| v.trim() != "0"))
}

/// One layer's experts as the device path reads them. `None` inside when they do not fit
/// the kernels (shapes or dtypes that differ between experts, K not a multiple of 8,
/// misaligned weights): the layer then always takes the host path.
pub struct CudaExpertIndex {
    tables: Option<ExpertTables>,
}

struct ExpertTables {
    /// Device address of each expert's `[2 * inter, hidden]` gate_up weight.
    gate_up: CudaSlice<u64>,
    /// Device address of each expert's `[hidden, inter]` down weight.
    down: CudaSlice<u64>,
    experts: usize,
    hidden: usize,
    /// This rank's intermediate width.
    inter: usize,
    dtype: DType,
}

impl CudaExpertIndex {
    /// The layer's `(experts, hidden, inter, dtype)` when it can take the device path.
    pub fn shape(&self) -> Option<(usize, usize, usize, DType)> {
        self.tables
            .as_ref()
            .map(|t| (t.experts, t.hidden, t.inter, t.dtype))
    }
}

impl CudaDevice {
    /// The address tables of one layer's experts. The tables point into `gate_up` and
    /// `down`, which the caller keeps alive (and unmoved on the device) as long as the index.
    pub fn index_experts(
        &self,
        gate_up: &[CudaTensor],
        down: &[CudaTensor],
    ) -> Result<CudaExpertIndex> {
        let Some(first) = gate_up.first() else {
            return Ok(CudaExpertIndex { tables: None });
        };
        let (dtype, shape) = (first.dtype(), first.shape().to_vec());
        let &[two_inter, hidden] = shape.as_slice() else {
            return Ok(CudaExpertIndex { tables: None });
        };
        let inter = two_inter / 2;
        let uniform = gate_up.len() == down.len()
            && gate_up.len() <= MOE_MAX_EXPERTS
            && two_inter % 2 == 0
            && gate_up
                .iter()
                .all(|w| w.dtype() == dtype && w.shape() == [two_inter, hidden])
            && down
                .iter()
                .all(|w| w.dtype() == dtype && w.shape() == [hidden, inter])
            && hidden.is_multiple_of(GEMV_K_MULTIPLE)
            && inter.is_multiple_of(GEMV_K_MULTIPLE)
            && as_i32(two_inter * hidden, "expert size").is_ok()
            && gate_up.iter().chain(down).all(|w| self.aligned16(w));
        if !uniform {
            return Ok(CudaExpertIndex { tables: None });
        }
        let addresses = |ws: &[CudaTensor]| -> Vec<u64> {
            ws.iter()
                .map(|w| w.data().device_ptr(self.stream()).0)
                .collect()
        };
        Ok(CudaExpertIndex {
            tables: Some(ExpertTables {
                gate_up: self.upload(&addresses(gate_up))?,
                down: self.upload(&addresses(down))?,
                experts: gate_up.len(),
                hidden,
                inter,
                dtype,
            }),
        })
    }

    /// `moe_route`: `top_k` (expert, weight) pairs per row of `logits` (`[tokens, experts]`)
    /// into `ids` (as i32) and `weights` (f32 `[tokens * top_k]`), sorted by expert.
    pub fn moe_route(
        &self,
        logits: &CudaTensor,
        top_k: usize,
        normalize: bool,
        ids: &mut CudaSlice<u32>,
        weights: &mut CudaTensor,
    ) -> Result<()> {
        let &[tokens, experts] = logits.shape() else {
            bail!(
                "moe_route: logits must be [tokens, experts], got {:?}",
                logits.shape()
            );
        };
        ensure!(
            route_kernel_fits(experts, top_k),
            "moe_route: {experts} experts, top {top_k} (the kernel takes up to \
             {MOE_MAX_EXPERTS} experts and top {MOE_MAX_TOP_K})"
        );
        ensure!(
            ids.len() >= tokens * top_k && weights.numel() >= tokens * top_k,
            "moe_route: outputs too small for {tokens} x {top_k} pairs"
        );
        weights.expect_dtype(DType::F32, "moe_route weights")?;
        if tokens == 0 {
            return Ok(());
        }
        let (experts_i, top_k_i, normalize_i) = (
            as_i32(experts, "experts")?,
            as_i32(top_k, "top_k")?,
            i32::from(normalize),
        );
        let f = self.kernels().get("moe_route", logits.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(logits.data())
            .arg(ids)
            .arg(weights.data_mut())
            .arg(&experts_i)
            .arg(&top_k_i)
            .arg(&normalize_i);
        let config = LaunchConfig {
            grid_dim: (as_i32(tokens, "tokens")? as u32, 1, 1),
            block_dim: (MOE_ROUTE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches kernels/moe.cu; sizes checked above.
        unsafe { args.launch(config) }.context("moe_route launch")?;
        Ok(())
    }

    /// The expert GEMVs of every routed pair: `swiglu` gives `out[p] = silu(g) * u` of
    /// `x[p / top_k]` through expert `ids[p]`'s gate_up (`out` `[pairs, inter]`); otherwise
    /// `out[p] = down_{ids[p]} act[p]` (`x` the `[pairs, inter]` activations, `out`
    /// `[pairs, hidden]`).
    pub fn moe_expert_gemv(
        &self,
        index: &CudaExpertIndex,
        swiglu: bool,
        x: &CudaTensor,
        ids: &CudaSlice<u32>,
        top_k: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let Some(t) = &index.tables else {
            bail!("moe expert gemv: this layer's experts do not fit the device path");
        };
        let &[pairs, width] = out.shape() else {
            bail!("moe expert gemv: out must be 2-d, got {:?}", out.shape());
        };
        let (n, k, x_rows, x_div, table, op) = if swiglu {
            let tokens = pairs / top_k.max(1);
            (
                2 * t.inter,
                t.hidden,
                tokens,
                top_k,
                &t.gate_up,
                "gemv1_expert_swiglu",
            )
        } else {
            (t.hidden, t.inter, pairs, 1, &t.down, "gemv1_expert")
        };
        let out_width = if swiglu { t.inter } else { t.hidden };
        ensure!(
            top_k >= 1 && pairs.is_multiple_of(top_k) && width == out_width,
            "moe expert gemv: out {:?} for {} pairs of top {top_k} and width {out_width}",
            out.shape(),
            pairs
        );
        x.expect_shape(&[x_rows, k], "moe expert gemv input")?;
        ensure!(
            x.dtype() == t.dtype && out.dtype() == t.dtype && self.aligned16(x),
            "moe expert gemv: x / out must be aligned {} tensors",
            t.dtype
        );
        ensure!(
            ids.len() >= pairs,
            "moe expert gemv: {} ids for {pairs} pairs",
            ids.len()
        );
        if pairs == 0 {
            return Ok(());
        }
        let (x_div_i, n_i, k_i) = (as_i32(x_div, "top_k")?, as_i32(n, "N")?, as_i32(k, "K")?);
        let pairs_y = u32::try_from(pairs)
            .ok()
            .filter(|&p| p <= 65_535)
            .context("moe expert gemv: more than 65535 pairs")?;
        let mut config = gemv_launch(n)?;
        config.grid_dim.1 = pairs_y;
        let f = self.kernels().get(op, t.dtype)?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(x.data())
            .arg(table)
            .arg(ids)
            .arg(&x_div_i)
            .arg(&n_i)
            .arg(&k_i);
        // SAFETY: matches kernels/gemv.cu's expert kernels: the table holds `experts`
        // addresses of [n, k] weights of this dtype (checked at indexing), the ids come from
        // moe_route (below `experts`), x / out shapes and alignment checked above.
        unsafe { args.launch(config) }.context("moe expert gemv launch")?;
        Ok(())
    }

    /// `moe_combine`: `out[t] = sum_s y[t * top_k + s] * weights[..]` (rounded per add), then
    /// the shared expert's `output[t] * sigmoid(gate_logits[t])` when given.
    pub fn moe_combine(
        &self,
        y: &CudaTensor,
        weights: &CudaTensor,
        top_k: usize,
        shared: Option<(&CudaTensor, &CudaTensor)>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let &[tokens, hidden] = out.shape() else {
            bail!(
                "moe_combine: out must be [tokens, hidden], got {:?}",
                out.shape()
            );
        };
        y.expect_shape(&[tokens * top_k, hidden], "moe_combine expert outputs")?;
        weights.expect_dtype(DType::F32, "moe_combine weights")?;
        ensure!(
            weights.numel() >= tokens * top_k && y.dtype() == out.dtype(),
            "moe_combine: weights or dtypes do not fit"
        );
        if let Some((output, gate)) = shared {
            output.expect_shape(&[tokens, hidden], "moe_combine shared expert")?;
            gate.expect_shape(&[tokens, 1], "moe_combine shared gate")?;
            ensure!(
                output.dtype() == out.dtype() && gate.dtype() == out.dtype(),
                "moe_combine: the shared expert's dtype differs"
            );
        }
        if tokens * hidden == 0 {
            return Ok(());
        }
        let (rows_i, hidden_i, top_k_i) = (
            as_i32(tokens, "tokens")?,
            as_i32(hidden, "hidden")?,
            as_i32(top_k, "top_k")?,
        );
        let has_shared = i32::from(shared.is_some());
        // Without a shared expert the kernel never reads those pointers; y stands in.
        let (shared_out, shared_gate) =
            shared.map_or((y.data(), y.data()), |(o, g)| (o.data(), g.data()));
        let f = self.kernels().get("moe_combine", out.dtype())?;
        let mut args = self.stream().launch_builder(f);
        args.arg(out.data_mut())
            .arg(y.data())
            .arg(weights.data())
            .arg(&rows_i)
            .arg(&hidden_i)
            .arg(&top_k_i)
            .arg(shared_out)
            .arg(shared_gate)
            .arg(&has_shared);
        // SAFETY: matches kernels/moe.cu; shapes checked above.
        unsafe { args.launch(elementwise(tokens * hidden)) }.context("moe_combine launch")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_batches_of_real_moe_models_route_on_the_device() {
        // Qwen3-30B-A3B (128 experts, top 8), Mixtral (8, top 2), Qwen1.5-MoE (60, top 4).
        for (experts, top_k) in [(128, 8), (8, 2), (60, 4), (256, 8)] {
            for tokens in 1..=MOE_DEVICE_MAX_ROWS {
                assert!(routes_on_device(true, tokens, experts, top_k));
            }
            assert!(!routes_on_device(
                true,
                MOE_DEVICE_MAX_ROWS + 1,
                experts,
                top_k
            ));
            assert!(!routes_on_device(false, 1, experts, top_k));
        }
    }

    #[test]
    fn shapes_past_the_kernels_limits_stay_on_the_host() {
        assert!(!routes_on_device(true, 0, 8, 2));
        assert!(!routes_on_device(true, 1, MOE_MAX_EXPERTS + 1, 8));
        assert!(!routes_on_device(true, 1, 64, MOE_MAX_TOP_K + 1));
        assert!(!routes_on_device(true, 1, 4, 5));
        assert!(!routes_on_device(true, 1, 4, 0));
    }

    #[test]
    fn kernel_constants_match_the_host() {
        let src = include_str!("../../../kernels/moe.cu");
        for (name, value) in [
            ("MOE_ROUTE_THREADS", MOE_ROUTE_THREADS as usize),
            ("MOE_MAX_EXPERTS", MOE_MAX_EXPERTS),
            ("MOE_MAX_TOP_K", MOE_MAX_TOP_K),
        ] {
            assert!(src.contains(&format!("#define {name} {value}\n")), "{name}");
        }
    }
}
