//! `kiln bench latency`: for each batch size, the time to prefill every prompt and the decode
//! speed after that, with the fraction of the weight-bandwidth roofline when it is known.

use super::prompts::random_prompts;
use crate::backend::cuda::pool::PoolStats;
use crate::engine::{LlmEngine, SamplingParams};
use crate::launch::{build_engine, EngineArgs};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// A text file every sequence takes as its prompt (tokenized; `--input-len` is then its
    /// length) instead of random tokens: text that repeats itself, for
    /// `--speculative-config`, whose drafts random tokens never confirm.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Untimed warm-up runs before each measured one (kernel JIT, caches).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Memory bandwidth to compare decode against, in GB/s (decode at batch 1 reads every
    /// weight once per token). Default on a GPU: its type's spec bandwidth; on the CPU none.
    #[arg(long, env = "KILN_BENCH_PEAK_GBS")]
    pub peak_bandwidth_gbs: Option<f64>,
    #[arg(long)]
    pub result_json: Option<PathBuf>,
    /// Run every request with this LoRA adapter (one of `--lora-modules`; `NAME=dummy:RANK`
    /// generates one for a dummy model).
    #[arg(long)]
    pub lora_adapter: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct LatencyResult {
    pub batch_size: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// Time until every sequence has its first token.
    pub prefill_ms: f64,
    /// Mean time of one decode step of the whole batch.
    pub decode_step_ms: f64,
    pub decode_tokens_per_s: f64,
    /// Per sequence.
    pub tokens_per_s_per_seq: f64,
    /// Output tokens per decode step and sequence: 1, or more with speculative decoding.
    pub tokens_per_step_per_seq: f64,
    pub weight_gbs: f64,
    pub roofline_fraction: Option<f64>,
    /// Prompt tokens of the measured prefill served from the prefix cache: 0, because the
    /// warm-up runs other prompts (a warm-up on the measured prompts once made the "prefill"
    /// a cache hit that computed one block per sequence).
    pub prefill_cached_tokens: usize,
    /// GPU only: buffers the caching allocator took from the driver during the measured
    /// decode steps (0 once the warm-up has seen the batch's shapes), and buffers it reused.
    pub decode_driver_allocations: Option<u64>,
    pub decode_buffer_reuses: Option<u64>,
}

#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    engine: String,
    weight_bytes: u64,
    results: &'a [LatencyResult],
}

/// One batch's measurements.
struct BatchRun {
    prefill_s: f64,
    prefill_cached_tokens: usize,
    decode_steps: usize,
    decode_s: f64,
    decode_tokens: usize,
    /// The device allocator's counters over the decode steps (GPU only).
    decode_alloc: Option<PoolStats>,
}

fn run_batch(
    engine: &mut LlmEngine,
    prompts: &[Vec<u32>],
    output_len: usize,
    lora_adapter: Option<usize>,
) -> Result<BatchRun> {
    let params = SamplingParams {
        max_tokens: Some(output_len),
        ignore_eos: true,
        lora_adapter,
        ..SamplingParams::greedy()
    };
    for (i, p) in prompts.iter().enumerate() {
        engine.add_request(i as u64, p.clone(), params.clone())?;
    }
    let start = Instant::now();
    let (mut first_tokens, mut cached) = (0, 0);
    while first_tokens < prompts.len() {
        let outputs = engine.step()?;
        first_tokens += outputs.len();
        cached += outputs.iter().map(|(_, o)| o.cached_tokens).sum::<usize>();
    }
    let prefill = start.elapsed().as_secs_f64();
    let alloc_before = engine.allocator_stats();
    let decode_start = Instant::now();
    let (mut steps, mut tokens) = (0, 0);
    while engine.has_work() {
        tokens += engine
            .step()?
            .iter()
            .map(|(_, o)| o.token_ids.len())
            .sum::<usize>();
        steps += 1;
    }
    let decode_s = decode_start.elapsed().as_secs_f64();
    let decode_alloc = engine
        .allocator_stats()
        .zip(alloc_before)
        .map(|(after, before)| after.since(before));
    Ok(BatchRun {
        prefill_s: prefill,
        prefill_cached_tokens: cached,
        decode_steps: steps,
        decode_s,
        decode_tokens: tokens,
        decode_alloc,
    })
}

/// The warm-up's prompts and the measured ones for one batch size: the same lengths (so the
/// warm-up compiles kernels and records graphs for the measured shapes) but other tokens, so
/// that no measured prompt finds its prefix in the cache the warm-up filled.
fn bench_prompts(batch: usize, len: usize, vocab: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let measured = random_prompts(batch, len, vocab, batch as u64);
    let warm = random_prompts(batch, len, vocab, (1 << 32) | batch as u64);
    (warm, measured)
}

/// [`bench_prompts`] for a given prompt: it is every measured sequence's, and its tokens
/// reversed every warm-up sequence's (the same length, no shared prefix).
fn given_prompts(batch: usize, prompt: &[u32]) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let reversed: Vec<u32> = prompt.iter().rev().copied().collect();
    (vec![reversed; batch], vec![prompt.to_vec(); batch])
}

/// The spec bandwidth of the GPU the engine runs on, if it is a known type.
fn gpu_spec_bandwidth(args: &EngineArgs) -> Option<f64> {
    use crate::launch::{device, Device};
    let Device::Cuda(i) = device::resolve(args.device, crate::backend::cuda::device_count).ok()?
    else {
        return None;
    };
    let gpu = crate::gpu::Inventory::detect()
        .devices
        .into_iter()
        .find(|d| d.index == i)?;
    crate::plan::gpu_facts(gpu.gpu_type).map(|(_, gbs)| gbs)
}

pub fn run(mut args: LatencyArgs) -> Result<()> {
    let adapter = super::adapter_index(&args.engine, args.lora_adapter.as_deref())?;
    let (mut engine, name) = build_engine(&args.engine)?;
    if args.peak_bandwidth_gbs.is_none() && engine.describe().contains("cuda") {
        args.peak_bandwidth_gbs = gpu_spec_bandwidth(&args.engine);
    }
    let vocab = engine.vocab_size();
    let weight_bytes = engine.weight_bytes();
    let given = match &args.prompt_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let ids = engine.tokenizer().encode(&text, false)?;
            anyhow::ensure!(!ids.is_empty(), "{} holds no tokens", path.display());
            args.input_len = ids.len();
            Some(ids)
        }
        None => None,
    };
    let mut results = Vec::new();
    let bar = indicatif::ProgressBar::new(args.batch_sizes.len() as u64);
    for &batch in &args.batch_sizes {
        anyhow::ensure!(batch >= 1, "batch sizes must be at least 1");
        anyhow::ensure!(
            batch <= engine.config().max_num_seqs,
            "batch {batch} exceeds --max-num-seqs {}",
            engine.config().max_num_seqs
        );
        let (warm_prompts, prompts) = match &given {
            Some(ids) => given_prompts(batch, ids),
            None => bench_prompts(batch, args.input_len, vocab),
        };
        for _ in 0..args.warmup {
            run_batch(&mut engine, &warm_prompts, args.output_len.min(8), adapter)?;
        }
        let run = run_batch(&mut engine, &prompts, args.output_len, adapter)?;
        if run.prefill_cached_tokens > 0 {
            tracing::warn!(
                "batch {batch}: {} prompt tokens of the measured prefill came from the prefix \
                 cache",
                run.prefill_cached_tokens
            );
        }
        let (prefill, steps, decode, tokens) = (
            run.prefill_s,
            run.decode_steps,
            run.decode_s,
            run.decode_tokens,
        );
        let step = decode / steps.max(1) as f64;
        let weight_gbs = weight_bytes as f64 / step / 1e9;
        results.push(LatencyResult {
            batch_size: batch,
            input_len: args.input_len,
            output_len: args.output_len,
            prefill_ms: prefill * 1e3,
            prefill_cached_tokens: run.prefill_cached_tokens,
            decode_step_ms: step * 1e3,
            decode_tokens_per_s: tokens as f64 / decode,
            tokens_per_s_per_seq: tokens as f64 / batch as f64 / decode,
            tokens_per_step_per_seq: tokens as f64 / batch as f64 / steps.max(1) as f64,
            weight_gbs,
            roofline_fraction: args.peak_bandwidth_gbs.map(|peak| weight_gbs / peak),
            decode_driver_allocations: run.decode_alloc.map(|a| a.driver_allocations),
            decode_buffer_reuses: run.decode_alloc.map(|a| a.reuses),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "model {name} ({}), weights {:.2} GB, input {} output {}, roofline against {}",
        engine.describe(),
        weight_bytes as f64 / 1e9,
        args.input_len,
        args.output_len,
        args.peak_bandwidth_gbs
            .map(|g| format!("{g:.0} GB/s"))
            .unwrap_or_else(|| "nothing".into())
    );
    println!("| batch | prefill ms | decode step ms | decode tok/s | tok/s per seq | tok/step per seq | weight GB/s | roofline |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &results {
        let roof = r
            .roofline_fraction
            .map(|f| format!("{:.0}%", f * 100.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} | {:.0} | {roof} |",
            r.batch_size,
            r.prefill_ms,
            r.decode_step_ms,
            r.decode_tokens_per_s,
            r.tokens_per_s_per_seq,
            r.tokens_per_step_per_seq,
            r.weight_gbs
        );
    }
    for r in &results {
        if let (Some(allocs), Some(reuses)) = (r.decode_driver_allocations, r.decode_buffer_reuses)
        {
            println!(
                "GPU allocator, batch {}: {allocs} driver allocations during the measured decode \
                 ({reuses} buffers reused)",
                r.batch_size
            );
        }
    }
    if let Some(path) = &args.result_json {
        super::write_json(
            path,
            &Report {
                model: &name,
                engine: engine.describe(),
                weight_bytes,
                results: &results,
            },
        )?;
    }
    Ok(())
}
