//! Memory planning: what a model needs (weights, KV cache, activations) and which GPU types
//! and counts can serve it. Batch-1 decoding reads every weight it uses once per token (a
//! mixture of experts' router and chosen experts, not all of them), so the bandwidth
//! column bounds single-stream speed: pick the smallest GPU that fits.

use crate::backend::DType;
use crate::gpu::GpuType;
use crate::model::config::ModelConfig;
use serde::Serialize;

const GIB: f64 = (1u64 << 30) as f64;

/// Usable memory (what CUDA reports, MiB) and spec bandwidth (GB/s) of each GPU type.
pub fn gpu_facts(t: GpuType) -> Option<(u64, f64)> {
    Some(match t {
        GpuType::T4 => (15_360, 320.0),
        GpuType::L4 => (23_034, 300.0),
        GpuType::A10 => (23_028, 600.0),
        GpuType::A100_40GB => (40_960, 1_555.0),
        GpuType::A100_80GB => (81_920, 2_039.0),
        GpuType::L40S => (46_068, 864.0),
        GpuType::H100 => (81_559, 3_350.0),
        GpuType::H200 => (143_771, 4_800.0),
        GpuType::B200 => (183_359, 8_000.0),
        GpuType::Other => return None,
    })
}

/// What one configuration needs, in bytes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MemoryEstimate {
    pub weights: u64,
    /// The weights one token's forward pass reads (a mixture of experts' `top_k` experts,
    /// not all of them): what bounds batch-1 decoding.
    pub active_weights: u64,
    pub kv_per_token: u64,
    pub kv_cache: u64,
    /// Peak activations of one step of `max_num_batched_tokens` tokens (logits included).
    pub activations: u64,
    /// CUDA context, cuBLAS workspace and allocator slack, per GPU.
    pub runtime_overhead: u64,
}

impl MemoryEstimate {
    /// Bytes each of `tp` GPUs needs (weights and KV split evenly).
    pub fn per_gpu(&self, tp: usize) -> u64 {
        let tp = tp.max(1) as u64;
        (self.weights + self.kv_cache) / tp + self.activations + self.runtime_overhead
    }
}

pub struct PlanInput<'a> {
    pub config: &'a ModelConfig,
    pub dtype: DType,
    pub max_model_len: usize,
    /// Sequences that must fit at full length at once.
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
}

pub fn estimate(p: &PlanInput) -> MemoryEstimate {
    let c = p.config;
    let e = p.dtype.size_in_bytes() as u64;
    let kv_per_token = c.cache_values_per_token() * e;
    // Recurrent mixers' f32 states, one per sequence.
    let states = c.state_values_per_sequence() * 4 * p.max_num_seqs as u64;
    let t = p.max_num_batched_tokens as u64;
    // Residual + normed hidden, qkv, attention out, gate_up and its product, f32 logits of
    // up to one row per sequence.
    let widths =
        2 * c.hidden_size + c.q_width() + 2 * c.kv_width() + c.q_width() + 3 * c.intermediate_size;
    let activations = t * widths as u64 * e + p.max_num_seqs as u64 * c.vocab_size as u64 * 4;
    MemoryEstimate {
        weights: c.num_parameters() * e,
        active_weights: c.active_parameters() * e,
        kv_per_token,
        kv_cache: kv_per_token * p.max_model_len as u64 * p.max_num_seqs as u64 + states,
        activations,
        runtime_overhead: (GIB * 1.0) as u64,
    }
}

/// Refuses, before anything is loaded, a configuration whose estimate (weights, the KV cache
/// of the sequences that must fit, activations, runtime) exceeds what
/// `--gpu-memory-utilization` allows of a device with `free` of `total` bytes free, saying
/// by how much.
pub fn check_fits(
    est: &MemoryEstimate,
    p: &PlanInput,
    free: u64,
    total: u64,
    utilization: f64,
) -> anyhow::Result<()> {
    let allowed = total as f64 * utilization - total.saturating_sub(free) as f64;
    let need = est.per_gpu(1) as f64;
    let gib = |b: f64| b / GIB;
    anyhow::ensure!(
        need <= allowed,
        "the model does not fit: it needs {:.2} GiB (weights {:.2}, KV cache {:.2} for {} x {} tokens,          activations {:.2}, runtime {:.2}) but {:.2} GiB is allowed ({:.0}% of {:.2} GiB, {:.2} GiB already in use):          short by {:.2} GiB. Lower --max-model-len, use a smaller --dtype or model, raise          --gpu-memory-utilization, or pick a bigger GPU (see `kiln plan`)",
        gib(need),
        gib(est.weights as f64),
        gib(est.kv_cache as f64),
        p.max_num_seqs,
        p.max_model_len,
        gib(est.activations as f64),
        gib(est.runtime_overhead as f64),
        gib(allowed.max(0.0)),
        utilization * 100.0,
        gib(total as f64),
        gib(total.saturating_sub(free) as f64),
        gib(need - allowed)
    );
    Ok(())
}

/// One row of the planning table.
#[derive(Clone, Debug, Serialize)]
pub struct PlanRow {
    pub gpu: String,
    pub count: usize,
    pub fits: bool,
    /// Free memory per GPU after everything, GiB (negative: short by that much).
    pub headroom_gib: f64,
    /// Upper bound of batch-1 decode speed from memory bandwidth.
    pub max_decode_tokens_per_s: f64,
}

/// Every known GPU type at 1, 2, 4 and 8 GPUs, where kiln can shard the model that many ways
/// (`check_divides`: heads, widths and experts divide; recurrent mixers that kiln keeps
/// whole refuse any split).
pub fn table(p: &PlanInput, est: &MemoryEstimate) -> Vec<PlanRow> {
    let mut rows = Vec::new();
    for t in GpuType::KNOWN {
        let Some((mib, gbs)) = gpu_facts(t) else {
            continue;
        };
        for count in [1usize, 2, 4, 8] {
            let shardable = crate::parallel::shard::check_divides(p.config, count).is_ok();
            if !shardable || (t == GpuType::A10 && count > 4) {
                continue;
            }
            let capacity = mib as f64 * 1024.0 * 1024.0;
            let headroom = (capacity - est.per_gpu(count) as f64) / GIB;
            rows.push(PlanRow {
                gpu: t.to_string(),
                count,
                fits: headroom >= 0.0,
                headroom_gib: headroom,
                max_decode_tokens_per_s: gbs * 1e9 * count as f64 / est.active_weights as f64,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::presets::preset;

    /// Planning `c` in bf16 for `seqs` sequences of `len` tokens, 2048 per step.
    fn bf16_input(c: &ModelConfig, len: usize, seqs: usize) -> PlanInput<'_> {
        PlanInput {
            config: c,
            dtype: DType::BF16,
            max_model_len: len,
            max_num_seqs: seqs,
            max_num_batched_tokens: 2048,
        }
    }

    fn input(name: &str, len: usize, seqs: usize) -> (ModelConfig, usize, usize) {
        (
            ModelConfig::from_json(preset(name).unwrap()).unwrap(),
            len,
            seqs,
        )
    }

    #[test]
    fn llama_3_1_8b_bf16_matches_the_hand_count() {
        let (c, len, seqs) = input("llama-3.1-8b", 8192, 1);
        let e = estimate(&bf16_input(&c, len, seqs));
        // 8,030,261,248 parameters x 2 bytes.
        assert_eq!(e.weights, 16_060_522_496);
        // 2 (K, V) x 32 layers x 8 kv heads x 128 dims x 2 bytes = 128 KiB per token.
        assert_eq!(e.kv_per_token, 131_072);
        assert_eq!(e.kv_cache, 131_072 * 8192);
        let rows = table(&bf16_input(&c, len, seqs), &e);
        let fits = |gpu: &str, n: usize| {
            rows.iter()
                .find(|r| r.gpu == gpu && r.count == n)
                .unwrap()
                .fits
        };
        assert!(!fits("T4", 1) && fits("L40S", 1) && fits("H100", 1));
        let h100 = rows
            .iter()
            .find(|r| r.gpu == "H100" && r.count == 1)
            .unwrap();
        // 3.35 TB/s / 16.06 GB = 208.6 tokens/s.
        assert!((h100.max_decode_tokens_per_s - 208.6).abs() < 0.5);
    }

    /// A mixture of experts' batch-1 step reads its active experts, not all of them:
    /// Qwen3-30B-A3B is bounded by its 3.3B active parameters, not its 30.5B.
    #[test]
    fn moe_decode_is_bounded_by_the_active_weights() {
        let (c, len, seqs) = input("qwen3-30b-a3b", 4096, 1);
        let p = bf16_input(&c, len, seqs);
        let e = estimate(&p);
        assert_eq!(e.active_weights, c.active_parameters() * 2);
        assert!(e.weights > 9 * e.active_weights);
        let h100 = table(&p, &e)
            .into_iter()
            .find(|r| r.gpu == "H100" && r.count == 1)
            .unwrap();
        let bound = 3.35e12 / e.active_weights as f64;
        assert!((h100.max_decode_tokens_per_s - bound).abs() < 1.0);
        assert!(h100.max_decode_tokens_per_s > 450.0, "{h100:?}");
    }

    #[test]
    fn startup_refuses_what_cannot_fit_saying_by_how_much() {
        let (c, len, seqs) = input("llama-3.1-8b", 131072, 1);
        let p = bf16_input(&c, len, seqs);
        let e = estimate(&p);
        let gib = 1u64 << 30;
        // An L4 (22.5 GiB): 15 GiB of weights + 16 GiB of KV for 131072 tokens cannot fit.
        let err = check_fits(&e, &p, 22 * gib, 22 * gib + gib / 2, 0.9)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("short by") && err.contains("131072 tokens"),
            "{err}"
        );
        // An H100 holds it.
        assert!(check_fits(&e, &p, 79 * gib, 80 * gib, 0.9).is_ok());
        // At 8192 tokens it fits the L4 too.
        let p = PlanInput {
            max_model_len: 8192,
            ..p
        };
        assert!(check_fits(&estimate(&p), &p, 22 * gib, 22 * gib + gib / 2, 0.9).is_ok());
    }

    #[test]
    fn llama_3_1_70b_bf16_needs_several_big_gpus() {
        let (c, len, seqs) = input("llama-3.1-70b", 8192, 1);
        let p = bf16_input(&c, len, seqs);
        let e = estimate(&p);
        // 70,553,706,496 parameters x 2 bytes; 2 x 80 x 8 x 128 x 2 = 320 KiB per token.
        assert_eq!(e.weights, 141_107_412_992);
        assert_eq!(e.kv_per_token, 327_680);
        let rows = table(&p, &e);
        let fits = |gpu: &str, n: usize| {
            rows.iter()
                .find(|r| r.gpu == gpu && r.count == n)
                .unwrap()
                .fits
        };
        assert!(
            !fits("H100", 1) && fits("H100", 2) && fits("A100-80GB", 2) && !fits("A100-40GB", 2)
        );
        // 131.4 GiB of weights just fit one H200's 140.4 GiB.
        let h200 = rows
            .iter()
            .find(|r| r.gpu == "H200" && r.count == 1)
            .unwrap();
        assert!(h200.fits && h200.headroom_gib < 6.0, "{h200:?}");
        assert!(fits("A100-40GB", 4) && fits("L4", 8));
    }

    /// A model kiln cannot shard gets single-GPU rows only (Jamba's Mamba mixers stay whole),
    /// while Qwen3-Next, whose mixers split by head, gets every count.
    #[test]
    fn the_table_offers_only_the_splits_kiln_can_run() {
        let counts = |name: &str| {
            let (c, len, seqs) = input(name, 4096, 1);
            let p = bf16_input(&c, len, seqs);
            let mut counts: Vec<usize> = table(&p, &estimate(&p)).iter().map(|r| r.count).collect();
            counts.dedup();
            counts.sort_unstable();
            counts.dedup();
            counts
        };
        assert_eq!(counts("jamba-mini-1.5"), vec![1]);
        assert_eq!(counts("qwen3-next-80b-a3b"), vec![1, 2, 4, 8]);
    }
}
