//! `kiln plan`: memory needs of a model and the GPU types and counts that can serve it.

use crate::backend::DType;
use crate::launch::resolve_model_named;
use crate::model::source::WeightFiles;
use crate::plan::{estimate, table, PlanInput};
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Local model directory, config.json, preset name or hub repo id (config only is read).
    #[arg(long, env = "KILN_MODEL")]
    pub model: String,
    /// Dtype of weights and KV cache (auto: the checkpoint's, else bfloat16).
    #[arg(long, env = "KILN_DTYPE", default_value = "auto")]
    pub dtype: String,
    /// Context length to budget for (default: the model's max_position_embeddings).
    #[arg(long, env = "KILN_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    /// Sequences that must fit at full length at the same time.
    #[arg(long, env = "KILN_MAX_NUM_SEQS", default_value_t = 1)]
    pub max_num_seqs: usize,
    #[arg(long, env = "KILN_MAX_NUM_BATCHED_TOKENS", default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PlanArgs) -> Result<()> {
    // Only the config is needed: resolve as for dummy weights (no weight download).
    let files = resolve_model_named(Some(&args.model), None, WeightFiles::Skip)?;
    let config = files.model_config()?;
    let dtype = if args.dtype == "auto" {
        config
            .checkpoint_dtype
            .as_deref()
            .and_then(DType::from_hf)
            .unwrap_or(DType::BF16)
    } else {
        args.dtype.parse().map_err(anyhow::Error::msg)?
    };
    let input = PlanInput {
        config: &config,
        dtype,
        max_model_len: args.max_model_len.unwrap_or(config.max_position_embeddings),
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
    };
    let est = estimate(&input);
    let rows = table(&input, &est);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "model": files.name, "dtype": dtype.to_string(), "max_model_len": input.max_model_len, "max_num_seqs": input.max_num_seqs, "estimate": est, "gpus": rows })
            )?
        );
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "{} in {dtype}: weights {:.2} GiB, KV {:.1} KiB/token -> {:.2} GiB for {} x {} tokens, activations {:.2} GiB, runtime {:.1} GiB",
        files.name,
        gib(est.weights),
        est.kv_per_token as f64 / 1024.0,
        gib(est.kv_cache),
        input.max_num_seqs,
        input.max_model_len,
        gib(est.activations),
        gib(est.runtime_overhead)
    );
    println!("| GPU | count | fits | headroom per GPU (GiB) | batch-1 decode bound (tok/s) |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.0} |",
            r.gpu,
            r.count,
            if r.fits { "yes" } else { "no" },
            r.headroom_gib,
            r.max_decode_tokens_per_s
        );
    }
    if let Some(best) = rows.iter().filter(|r| r.fits).min_by(|a, b| {
        (a.count, a.max_decode_tokens_per_s as u64)
            .cmp(&(b.count, b.max_decode_tokens_per_s as u64))
    }) {
        println!("smallest fit: {}:{}", best.gpu, best.count);
    } else {
        println!("no single machine of up to 8 known GPUs fits this configuration");
    }
    Ok(())
}
