//! `kiln generate`: one prompt, completion streamed to stdout.

use crate::engine::{EngineHandle, SamplingParams};
use crate::launch::{build_engine, EngineArgs};
use crate::model::chat_template::ChatMessage;
use anyhow::{Context, Result};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Sampling flags, as OpenAI names them.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Seed of this request's sampling (`--seed` seeds the engine).
    #[arg(long)]
    pub request_seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    pub fn to_params(&self, max_tokens: usize) -> SamplingParams {
        SamplingParams {
            max_tokens: Some(max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.request_seed,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            ..Default::default()
        }
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (engine, name) = build_engine(&args.engine)?;
    let handle = EngineHandle::spawn(engine, 0);
    let tokenizer = handle.tokenizer().clone();
    let prompt_ids = if args.chat {
        let template = tokenizer
            .chat_template()
            .with_context(|| format!("{name} has no chat template; drop --chat"))?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.as_str()));
        }
        messages.push(ChatMessage::new("user", args.prompt.as_str()));
        let text = template.render(&messages, true, serde_json::Value::Null)?;
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    let params = args.sampling.to_params(args.max_tokens);
    let mut stream = handle.submit(prompt_ids, params)?;
    let mut stdout = std::io::stdout().lock();
    let start = std::time::Instant::now();
    let mut last = None;
    while let Some(ev) = stream.blocking_next() {
        let out = ev.map_err(anyhow::Error::msg)?;
        write!(stdout, "{}", out.text)?;
        stdout.flush()?;
        if out.finish_reason.is_some() {
            last = Some(out);
            break;
        }
    }
    writeln!(stdout)?;
    if let Some(out) = last {
        let secs = start.elapsed().as_secs_f64();
        tracing::info!(
            "finish_reason={} prompt_tokens={} completion_tokens={} ({:.1} tokens/s)",
            out.finish_reason.map(|f| f.as_str()).unwrap_or("?"),
            out.prompt_tokens,
            out.completion_tokens,
            out.completion_tokens as f64 / secs
        );
    }
    handle.shutdown();
    Ok(())
}
