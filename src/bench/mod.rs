//! `kiln bench`: latency and offline throughput of the in-process engine, and (`serve`) an
//! HTTP load generator for any OpenAI-compatible server.

pub mod all_reduce;
pub mod image;
pub mod latency;
pub mod prompts;
pub mod serve;
pub mod throughput;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Batch-size sweep of prefill time and decode tokens/s, in process.
    Latency(latency::LatencyArgs),
    /// Offline throughput of many requests, in process.
    Throughput(throughput::ThroughputArgs),
    /// Latency of the tensor-parallel all-reduce, 4 KB to 64 MB.
    AllReduce(all_reduce::AllReduceArgs),
    /// Load-test an OpenAI-compatible server over HTTP (vLLM `bench serve` metrics).
    Serve(serve::ServeBenchArgs),
    /// A diffusion pipeline end to end: stage times, UNet it/s and TFLOP/s.
    Image(image::ImageBenchArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Latency(a) => latency::run(a),
        BenchCommand::Throughput(a) => throughput::run(a),
        BenchCommand::Serve(a) => serve::run(a),
        BenchCommand::AllReduce(a) => all_reduce::run(a),
        BenchCommand::Image(a) => image::run(a),
    }
}

/// Writes a result as pretty JSON, creating the folder if needed.
/// The index of `--lora-adapter NAME` among `--lora-modules` (the benchmarks' requests then
/// run with that adapter).
pub fn adapter_index(
    engine: &crate::launch::EngineArgs,
    name: Option<&str>,
) -> anyhow::Result<Option<usize>> {
    let Some(name) = name else {
        return Ok(None);
    };
    let index = engine.lora_modules.iter().position(|a| a.name == name);
    index
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("--lora-adapter {name} is not among --lora-modules"))
}

pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}
