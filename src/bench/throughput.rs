//! `kiln bench throughput`: many requests at once through the in-process engine (offline
//! batch inference), reporting requests/s and input + output tokens/s.

use super::prompts::random_prompts;
use crate::engine::SamplingParams;
use crate::launch::{build_engine, EngineArgs};
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 1024)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Generate exactly output_len tokens whatever the model says.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ignore_eos: bool,
    #[arg(long)]
    pub result_json: Option<PathBuf>,
    /// Run every request with this LoRA adapter (one of `--lora-modules`).
    #[arg(long)]
    pub lora_adapter: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct ThroughputResult {
    pub model: String,
    pub num_prompts: usize,
    pub input_tokens: usize,
    pub output_tokens: usize,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
}

pub fn run(args: ThroughputArgs) -> Result<()> {
    let (mut engine, name) = build_engine(&args.engine)?;
    let prompts = random_prompts(args.num_prompts, args.input_len, engine.vocab_size(), 0);
    let params = SamplingParams {
        max_tokens: Some(args.output_len),
        ignore_eos: args.ignore_eos,
        lora_adapter: super::adapter_index(&args.engine, args.lora_adapter.as_deref())?,
        ..SamplingParams::greedy()
    };
    for (i, p) in prompts.into_iter().enumerate() {
        engine.add_request(i as u64, p, params.clone())?;
    }
    let bar = indicatif::ProgressBar::new(args.num_prompts as u64);
    let start = Instant::now();
    let mut output_tokens = 0;
    while engine.has_work() {
        for (_, out) in engine.step()? {
            output_tokens += out.token_ids.len();
            if out.finish_reason.is_some() {
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    let input_tokens = args.num_prompts * args.input_len;
    let r = ThroughputResult {
        model: name,
        num_prompts: args.num_prompts,
        input_tokens,
        output_tokens,
        elapsed_s: elapsed,
        requests_per_s: args.num_prompts as f64 / elapsed,
        output_tokens_per_s: output_tokens as f64 / elapsed,
        total_tokens_per_s: (input_tokens + output_tokens) as f64 / elapsed,
    };
    println!(
        "{} ({}): {} requests in {:.2} s: {:.2} req/s, {:.1} output tok/s, {:.1} total tok/s",
        r.model,
        engine.describe(),
        r.num_prompts,
        r.elapsed_s,
        r.requests_per_s,
        r.output_tokens_per_s,
        r.total_tokens_per_s
    );
    if let Some(path) = &args.result_json {
        super::write_json(path, &r)?;
    }
    Ok(())
}
