//! The `kiln` command line. Every flag can also be set through a `KILN_*` environment variable.

use clap::{Parser, Subcommand};

/// mimalloc, not glibc's malloc. The engine thread allocates each request's outputs and the
/// server's threads free them: under glibc every such free takes the engine thread's arena
/// lock, and a profile of 64 streaming requests put about half of the engine thread's own
/// CPU time in malloc and that lock's futex waits. mimalloc returns frees from other
/// threads without a shared lock. (In the binary, not the library: tests bring their own
/// counting allocators.) The benches that time the server declare the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "GPU inference runtime: serve LLMs over an OpenAI-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks: in-process latency / throughput, or load on an HTTP server.
    Bench(kiln::bench::BenchArgs),
    /// Memory a model needs and which GPU types and counts can serve it.
    Plan(kiln::cli::plan::PlanArgs),
    /// Generate a completion for one prompt, streamed to stdout.
    Generate(kiln::cli::generate::GenerateArgs),
    /// Generate images from a diffusers pipeline directory to PNG files.
    Image(kiln::cli::image::ImageArgs),
    // Subcommands are added here, each delegating to a function in the library.
    /// List the GPUs, classify a GPU name, or check a GPU request (`kiln gpus --help`).
    Gpus(kiln::gpu::cli::GpusArgs),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(kiln::server::ServeArgs),
    /// Run a reference fixture (tests/fixtures/<arch>) and compare logits and greedy tokens
    /// with its reference.json; exits 1 on a mismatch.
    CheckReference(kiln::cli::check_reference::CheckReferenceArgs),
    /// Run a diffusion fixture (tests/fixtures/diffusion/<name>) and compare its stages and
    /// full runs with the diffusers references it holds; exits 1 on a mismatch.
    CheckImageReference(kiln::cli::check_image_reference::CheckImageReferenceArgs),
    /// Render the chat-template cases recorded with transformers
    /// (scripts/chat_template_parity.py) and compare the prompts; exits 1 on a difference.
    CheckChatTemplates(kiln::cli::check_chat_templates::CheckChatTemplatesArgs),
    /// Check every CUDA kernel against the CPU reference and time it (exits 0 without a GPU).
    Selftest {
        /// Print the report as JSON.
        #[arg(long, env = "KILN_SELFTEST_JSON")]
        json: bool,
        /// Smaller shapes and fewer timing iterations.
        #[arg(long, env = "KILN_SELFTEST_QUICK")]
        quick: bool,
        /// Run only these groups of cases (comma-separated): ops, attention, qkv, short_conv, gemv,
        /// gemv_fused, moe, linear_lt, image, sampling, allocator, gemm_bench. Default: all.
        #[arg(long, env = "KILN_SELFTEST_ONLY", value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    kiln::backend::cpu::pin_thread_count();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: container and journal logs get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => kiln::bench::run(args),
        Command::Generate(args) => kiln::cli::generate::run(args),
        Command::Image(args) => kiln::cli::image::run(args),
        Command::Plan(args) => kiln::cli::plan::run(args),
        Command::Gpus(args) => kiln::gpu::cli::run(args),
        Command::Serve(args) => kiln::server::run(args),
        Command::CheckReference(args) => {
            if !kiln::cli::check_reference::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::CheckImageReference(args) => {
            if !kiln::cli::check_image_reference::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::CheckChatTemplates(args) => {
            if !kiln::cli::check_chat_templates::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Selftest { json, quick, only } => {
            if !kiln::backend::cuda::selftest::run(json, quick, &only)? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
