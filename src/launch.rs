//! Turning command-line / environment settings into a running engine: find the model, pick
//! the device and the dtype, load the weights with progress, size the KV cache.

pub mod chat_template;
mod cuda;
pub mod device;
pub mod gpu_memory;
pub mod gpu_request;
pub mod images;
mod tensor_parallel;

pub use tensor_parallel::{cuda_ordinals, gpu_communicators};

pub use cuda::engine_on_cuda;
pub use device::{Device, DeviceArg};

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DType};
use crate::engine::runner::ModelRunner;
use crate::engine::{EngineConfig, LlmEngine};
use crate::model::apertus::ApertusWeights;
use crate::model::base_model_weights::BaseModelWeights;
use crate::model::bloom::BloomWeights;
use crate::model::bnb::{Bnb4, Bnb4Weights};
use crate::model::bnb8::{Bnb8, Bnb8Weights};
use crate::model::config::Architecture;
use crate::model::config::{ModelConfig, Quantization};
use crate::model::falcon::FalconWeights;
use crate::model::fp8::{Fp8, Fp8Weights};
use crate::model::gpt2::Gpt2Weights;
use crate::model::gpt_neo::GptNeoWeights;
use crate::model::gpt_neox_weights::GptNeoXWeights;
use crate::model::gptj::GptJWeights;
use crate::model::hunyuan::HunYuanWeights;
use crate::model::int_quant::IntQuantWeights;
use crate::model::language_model_weights::LanguageModelWeights;
use crate::model::lfm2::Lfm2Weights;
use crate::model::llama::LlamaModel;
use crate::model::llama4::Llama4Weights;
use crate::model::lora::load_adapter;
use crate::model::mamba::{BambaWeights, GraniteHybridWeights, Mamba2Weights};
use crate::model::modelopt_mixed::{Fp8OrNvfp4, MixedWeights};
use crate::model::mpt::MptWeights;
use crate::model::nemotron_h::NemotronHWeights;
use crate::model::nvfp4::{Nvfp4, Nvfp4Weights};
use crate::model::opt::OptWeights;
use crate::model::pytorch_weights::PytorchWeights;
use crate::model::source::{self, ModelFiles, WeightFiles};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::{DummyWeights, SafetensorsWeights, WeightSource};
use crate::model::{demo, presets};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;

/// The model used when none is given, if it can be had (cache or download).
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-0.5B-Instruct";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadFormat {
    /// Safetensors weights from the model directory or repo, else a PyTorch checkpoint.
    Auto,
    Safetensors,
    /// A PyTorch checkpoint (`pytorch_model.bin`, whole or sharded).
    Pt,
    /// Random weights of the config's shapes, for benchmarking.
    Dummy,
}

/// `--all-reduce`: which collective tensor-parallel GPU ranks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AllReduceArg {
    Auto,
    Nccl,
    Device,
    Host,
}

/// Settings shared by every command that runs a model (vLLM's flag names).
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// Where to run: auto (the first GPU if there is one, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, env = "KILN_DEVICE", default_value = "auto")]
    pub device: DeviceArg,
    /// GPU request, cloud style: `H100`, `H100:8`, `H100!` (no upgrade), `A100-80GB:2`, an
    /// ordered fallback list `H100:8,A100-80GB:8` (or a JSON array), `any`. Unsatisfiable
    /// requests fail before loading. Without it: the largest group of same-type GPUs.
    #[arg(long, env = "KILN_GPU")]
    pub gpu: Option<String>,
    /// Ranks to shard the model across (1, 2, 4 or 8): attention heads, MLP and vocabulary
    /// split, one worker per rank. Defaults to the number of GPUs `--gpu` matched, else 1.
    /// More ranks than GPUs share them (for testing); on the CPU, ranks are threads.
    #[arg(long, env = "KILN_TENSOR_PARALLEL_SIZE")]
    pub tensor_parallel_size: Option<usize>,
    /// How tensor-parallel GPU ranks sum their partials: `auto` (NCCL when libnccl.so.2 is
    /// installed and each rank has its own GPU, else kiln's device all-reduce when every GPU
    /// can reach every other, else through host memory), `nccl`, `device` or `host`.
    #[arg(long, env = "KILN_ALL_REDUCE", value_enum, default_value = "auto")]
    pub all_reduce: AllReduceArg,
    /// Sample temperature / top-k / top-p / min-p / penalty rows on the GPU
    /// (`kernels/sampling_draw.cu`) instead of copying their logits to the host (default;
    /// `--gpu-sampling false` samples every row on the host). Rows that want logprobs always
    /// sample on the host.
    #[arg(long, env = "KILN_GPU_SAMPLING", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub gpu_sampling: bool,
    /// Launch every kernel of every step from the host; without it, decode steps of up to
    /// 256 sequences on a single GPU are recorded as CUDA graphs (one per batch-size bucket
    /// and block-table width, the first time each is seen) and replayed.
    #[arg(long, env = "KILN_ENFORCE_EAGER", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub enforce_eager: bool,
    /// Fraction of the GPU's memory kiln may use for weights, KV cache and activations.
    #[arg(long, env = "KILN_GPU_MEMORY_UTILIZATION", default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Local HF model directory, config.json, preset name (with --load-format dummy) or hub repo id.
    #[arg(long, env = "KILN_MODEL")]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long, env = "KILN_REVISION")]
    pub revision: Option<String>,
    #[arg(long, env = "KILN_LOAD_FORMAT", value_enum, default_value = "auto")]
    pub load_format: LoadFormat,
    /// vLLM's `--quantization`: the method the checkpoint must be quantized with (`awq`,
    /// `gptq`, `fp8`, `compressed-tensors`, `mxfp4`; vLLM's kernel-specific names such as
    /// `awq_marlin` count as their method). kiln reads the method from the checkpoint, so
    /// this only checks it; it never quantizes an unquantized checkpoint.
    #[arg(long, env = "KILN_QUANTIZATION")]
    pub quantization: Option<String>,
    /// auto, bfloat16, float16 or float32. `auto` is the checkpoint's dtype on a GPU and
    /// float32 on the CPU (whose matmuls widen 16-bit types to f32 anyway).
    #[arg(long, env = "KILN_DTYPE", default_value = "auto")]
    pub dtype: String,
    /// Longest prompt + output; defaults to the model's max_position_embeddings.
    #[arg(long, env = "KILN_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    #[arg(long, env = "KILN_MAX_NUM_SEQS", default_value_t = 256)]
    pub max_num_seqs: usize,
    #[arg(long, env = "KILN_MAX_NUM_BATCHED_TOKENS", default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// fcfs (first come, first served) or priority (a request's `priority`, lower first,
    /// then arrival; the lowest-priority running request yields its blocks first).
    #[arg(long, env = "KILN_SCHEDULING_POLICY", default_value = "fcfs")]
    pub scheduling_policy: crate::engine::scheduler::SchedulingPolicy,
    /// Tokens per KV-cache block.
    #[arg(long, env = "KILN_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// Exact number of KV-cache blocks (overrides the memory-based size).
    #[arg(long, env = "KILN_NUM_KV_BLOCKS")]
    pub num_kv_blocks: Option<usize>,
    /// Host memory for the KV cache when running on the CPU, in GiB.
    #[arg(long, env = "KILN_KV_CACHE_MEMORY_GB", default_value_t = 2.0)]
    pub kv_cache_memory_gb: f64,
    /// Speculative decoding, in vLLM's JSON: `{"method": "ngram", "num_speculative_tokens":
    /// 4, "prompt_lookup_max": 4, "prompt_lookup_min": 1}` drafts tokens by looking the
    /// latest tokens up earlier in the sequence and verifies them in one forward pass.
    /// Requests without a grammar speculate; their outputs do not change (a seed gives the
    /// same text).
    #[arg(long, env = "KILN_SPECULATIVE_CONFIG")]
    pub speculative_config: Option<String>,
    /// LoRA adapters to serve beside the base model, each `NAME=PATH` (a PEFT adapter
    /// directory: adapter_config.json, adapter_model.safetensors) or vLLM's JSON form
    /// `{"name": NAME, "path": PATH}`. Requests choose one by its name as their `model`.
    #[arg(long, env = "KILN_LORA_MODULES", num_args = 1..)]
    pub lora_modules: Vec<crate::model::lora::AdapterSpec>,
    /// Accepted for vLLM compatibility: adapters are served whenever `--lora-modules`
    /// names some.
    #[arg(long, env = "KILN_ENABLE_LORA", default_value_t = false)]
    pub enable_lora: bool,
    /// Let `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` change the served
    /// adapters while serving (vLLM's `VLLM_ALLOW_RUNTIME_LORA_UPDATING`): whoever can reach
    /// the API can then make the server read files by path.
    #[arg(
        long,
        env = "KILN_ALLOW_RUNTIME_LORA_UPDATING",
        default_value_t = false
    )]
    pub allow_runtime_lora_updating: bool,
    /// Largest LoRA rank an adapter may have (larger ones are refused at load).
    #[arg(long, env = "KILN_MAX_LORA_RANK", default_value_t = 64)]
    pub max_lora_rank: usize,
    /// Share KV blocks of common prompt prefixes between requests.
    #[arg(long, env = "KILN_ENABLE_PREFIX_CACHING", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_prefix_caching: bool,
    /// Seed of the random streams of requests without their own seed (and of dummy weights).
    #[arg(long, env = "KILN_SEED", default_value_t = 0)]
    pub seed: u64,
    /// A chat template to use instead of the model's: a file, or the Jinja text itself.
    #[arg(long, env = "KILN_CHAT_TEMPLATE")]
    pub chat_template: Option<String>,
    /// How the chat template reads `message.content`: `auto` (`openai` when it loops over
    /// a message's content, else `string`), `string` (text parts joined with newlines,
    /// null content empty) or `openai` (the list of parts).
    #[arg(
        long,
        env = "KILN_CHAT_TEMPLATE_CONTENT_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    pub chat_template_content_format: chat_template::ContentFormatArg,
    /// How tool calls are found in chat output when a request offers `tools`: `auto`
    /// (from the chat template: `hermes` for `<tool_call>` blocks, `llama3_json` for bare
    /// `{"name": ..., "parameters": ...}` answers), `hermes`, `llama3_json` or `none` (calls
    /// stay in the text).
    #[arg(
        long,
        env = "KILN_TOOL_CALL_PARSER",
        value_enum,
        default_value = "auto"
    )]
    pub tool_call_parser: chat_template::ToolCallParserArg,
    /// Return a reasoning model's thinking apart from its answer, as `reasoning_content`:
    /// `none` (default: thinking stays in the content) or `think` (`<think>...</think>`;
    /// `qwen3` and `deepseek_r1` are accepted too).
    #[arg(
        long,
        env = "KILN_REASONING_PARSER",
        value_enum,
        default_value = "none"
    )]
    pub reasoning_parser: chat_template::ReasoningParserArg,
}

/// Resolves the model files named by the arguments.
pub fn resolve_model(args: &EngineArgs) -> Result<ModelFiles> {
    resolve_model_named(
        args.model.as_deref(),
        args.revision.as_deref(),
        args.load_format.weight_files(),
    )
}

impl LoadFormat {
    /// The weight files this format reads.
    pub fn weight_files(self) -> WeightFiles {
        match self {
            LoadFormat::Auto => WeightFiles::Auto,
            LoadFormat::Safetensors => WeightFiles::Safetensors,
            LoadFormat::Pt => WeightFiles::Pytorch,
            LoadFormat::Dummy => WeightFiles::Skip,
        }
    }
}

/// Resolves a model by name, with the weight files `wanted` asks for (none: only the config
/// is needed).
pub fn resolve_model_named(
    model: Option<&str>,
    revision: Option<&str>,
    wanted: WeightFiles,
) -> Result<ModelFiles> {
    let dummy = wanted == WeightFiles::Skip;
    let Some(name) = model else {
        return match source::hub(DEFAULT_MODEL, None, wanted) {
            Ok(files) => Ok(files),
            Err(e) => {
                tracing::warn!("default model {DEFAULT_MODEL} unavailable ({e:#}); using the built-in DEMO model (tiny, random-quality text)");
                demo::files()
            }
        };
    };
    if Path::new(name).exists() {
        return source::local_with(Path::new(name), wanted);
    }
    if let Some(text) = presets::preset(name) {
        anyhow::ensure!(
            dummy,
            "'{name}' is a config-only preset: use it with --load-format dummy"
        );
        return demo::preset_files(name, text);
    }
    anyhow::ensure!(
        name.split('/').count() == 2 && !name.starts_with('.') && !name.starts_with('/'),
        "model '{name}' is neither a local path, a preset ({}) nor a hub repo id (owner/name)",
        presets::names().join(", ")
    );
    source::hub(name, revision, wanted)
}

/// The model's weight files as a source: safetensors, or a PyTorch checkpoint.
fn open_weight_files(files: &ModelFiles) -> Result<Box<dyn WeightSource + Send + Sync>> {
    anyhow::ensure!(
        !files.weights.is_empty(),
        "{} has no weights of the format asked for (model.safetensors, pytorch_model.bin, \
         or their shards)",
        files.name
    );
    if files
        .weights
        .iter()
        .all(|p| source::is_pytorch_checkpoint(p))
    {
        tracing::info!(
            "{}: reading a PyTorch checkpoint ({} file(s))",
            files.name,
            files.weights.len()
        );
        return Ok(Box::new(PytorchWeights::open(&files.weights)?));
    }
    Ok(Box::new(SafetensorsWeights::open(&files.weights)?))
}

/// The dtype to run in, from `--dtype` and the checkpoint.
pub fn pick_dtype(arg: &str, config: &ModelConfig, on_cpu: bool) -> Result<DType> {
    if arg != "auto" {
        return arg.parse().map_err(anyhow::Error::msg);
    }
    if on_cpu {
        return Ok(DType::F32);
    }
    Ok(config
        .checkpoint_dtype
        .as_deref()
        .and_then(DType::from_hf)
        .unwrap_or(DType::BF16))
}

/// EOS ids from the config, generation_config.json and the tokenizer, deduplicated.
fn eos_ids(config: &ModelConfig, files: &ModelFiles, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids = config.eos_token_ids.clone();
    if let Some(path) = &files.generation_config {
        if let Ok(g) =
            std::fs::read_to_string(path).map(|t| ModelConfig::eos_from_generation_config(&t))
        {
            ids.extend(g);
        }
    }
    ids.extend(tokenizer.eos_token_ids());
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub(crate) fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} layers {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A model loaded on a backend (the CPU unless said otherwise), with what the engine needs
/// beside it.
pub struct LoadedModel<B: Backend = CpuBackend> {
    pub name: String,
    pub model: LlamaModel<B>,
    pub backend: B,
    pub tokenizer: Tokenizer,
    pub eos: Vec<u32>,
}

/// Finds and loads the model the arguments name on the CPU (whatever `--device` says: the
/// reference path of tests and tools).
pub fn load_model(args: &EngineArgs) -> Result<LoadedModel> {
    load_model_on(args, CpuBackend::new(), Device::Cpu)
}

/// A model found and its host-side parts read, before any weight is loaded.
pub struct PreparedModel {
    pub name: String,
    pub config: ModelConfig,
    pub dtype: DType,
    pub tokenizer: Tokenizer,
    pub eos: Vec<u32>,
    pub weights: Arc<dyn WeightSource + Send + Sync>,
}

/// Finds the model the arguments name, for running on `device` (that decides what
/// `--dtype auto` means): config, tokenizer, EOS ids and the weight source.
pub fn prepare_model(args: &EngineArgs, device: Device) -> Result<PreparedModel> {
    let files = resolve_model(args)?;
    let mut config = files.model_config()?;
    if let Some(asked) = &args.quantization {
        crate::model::config::check_quantization_flag(asked, config.quantization.as_ref())
            .with_context(|| format!("--quantization {asked} for {}", files.name))?;
    }
    config.context_len = max_model_len(args, &config);
    // Learned positions end with their table (rotary ones extrapolate, if badly).
    if config.learned_positions.is_some() {
        anyhow::ensure!(
            config.context_len <= config.max_position_embeddings,
            "--max-model-len {} is past {}'s {} learned positions",
            config.context_len,
            files.name,
            config.max_position_embeddings
        );
    }
    if let Some(long) = crate::model::rope::uses_long_factors(&config) {
        tracing::info!(
            "LongRoPE: {} factors for a {}-token context{}",
            if long { "long" } else { "short" },
            config.context_len,
            if long {
                " (--max-model-len at or under the original context picks the short ones)"
            } else {
                ""
            }
        );
    }
    let dtype = pick_dtype(&args.dtype, &config, device == Device::Cpu)?;
    let tokenizer = match &files.tokenizer_dir {
        Some(dir) => Tokenizer::from_dir(dir)?,
        None => {
            tracing::warn!(
                "{} has no tokenizer; using the demo model's tokenizer for text",
                files.name
            );
            Tokenizer::from_dir(&demo::files()?.tokenizer_dir.context("demo tokenizer")?)?
        }
    };
    let mut tokenizer = tokenizer;
    chat_template::configure(
        &mut tokenizer,
        args.chat_template.as_deref(),
        args.chat_template_content_format,
        args.tool_call_parser,
        reasoning_parser(args.reasoning_parser, &config),
    )?;
    let eos = eos_ids(&config, &files, &tokenizer);
    let weights: Arc<dyn WeightSource + Send + Sync> = match args.load_format {
        LoadFormat::Dummy => Arc::new(DummyWeights { seed: args.seed }),
        _ => {
            let files_source = open_weight_files(&files)?;
            let bare = BaseModelWeights::applies_to(&files_source);
            if bare {
                tracing::info!(
                    "{}: a base model saved alone (no `model.` prefix, no LM head): it serves \
                     embeddings; generation would score with its embedding table",
                    files.name
                );
            }
            // Names first (where the checkpoint keeps the text model's weights), then the
            // expansion of quantized weights under those names.
            let named: Box<dyn WeightSource + Send + Sync> = if config.nested_language_model {
                let language_model = LanguageModelWeights::wrap(files_source)?;
                match config.architecture {
                    Architecture::Llama4 => Box::new(Llama4Weights::wrap(language_model)),
                    Architecture::Lfm2 => Box::new(Lfm2Weights::wrap(language_model)),
                    _ => Box::new(language_model),
                }
            } else {
                match config.architecture {
                    Architecture::GptJ => Box::new(GptJWeights::wrap(files_source)),
                    Architecture::Opt => Box::new(OptWeights::wrap(files_source)),
                    Architecture::Gpt2 => Box::new(Gpt2Weights::wrap(files_source)),
                    Architecture::GptBigCode => Box::new(Gpt2Weights::wrap_linear(files_source)),
                    Architecture::GptNeo => Box::new(GptNeoWeights::wrap(files_source)),
                    Architecture::HunYuanDense | Architecture::HunYuanMoe => {
                        Box::new(HunYuanWeights::wrap(files_source))
                    }
                    Architecture::Apertus => Box::new(ApertusWeights::wrap(files_source)),
                    Architecture::Llama4 => Box::new(Llama4Weights::wrap(files_source)),
                    Architecture::Lfm2 => Box::new(Lfm2Weights::wrap(files_source)),
                    Architecture::NemotronH => Box::new(NemotronHWeights::wrap(
                        files_source,
                        config
                            .nemotron_h
                            .clone()
                            .context("a Nemotron-H config without its block pairing")?,
                    )),
                    Architecture::Bamba | Architecture::FalconH1 => {
                        Box::new(BambaWeights::wrap(files_source))
                    }
                    Architecture::Jamba => Box::new(BambaWeights::wrap_jamba(files_source)),
                    Architecture::GraniteMoeHybrid => {
                        Box::new(GraniteHybridWeights::wrap(files_source))
                    }
                    Architecture::Mamba2 | Architecture::Mamba | Architecture::FalconMamba => {
                        Box::new(Mamba2Weights::wrap(files_source))
                    }
                    Architecture::Bloom => Box::new(BloomWeights::wrap(files_source)),
                    Architecture::Mpt => Box::new(MptWeights::wrap(files_source)),
                    Architecture::Falcon => {
                        Box::new(FalconWeights::wrap(files_source, config.parallel_two_norms))
                    }
                    Architecture::GptNeoX => Box::new(GptNeoXWeights::wrap(files_source)),
                    _ if bare => Box::new(BaseModelWeights::wrap(files_source)),
                    _ => Box::new(files_source),
                }
            };
            match &config.quantization {
                Some(Quantization::Fp8) => {
                    tracing::info!("FP8 checkpoint: weights are expanded to {dtype} as they load");
                    Arc::new(Fp8Weights::new(named, Fp8))
                }
                Some(Quantization::Int(scheme)) => {
                    tracing::info!(
                        "integer-quantized checkpoint ({scheme:?}): weights are expanded to \
                         {dtype} as they load"
                    );
                    Arc::new(IntQuantWeights::new(named, scheme.clone()))
                }
                Some(Quantization::Bnb4) => {
                    tracing::info!(
                        "bitsandbytes 4-bit checkpoint: weights are expanded to {dtype} as they load"
                    );
                    Arc::new(Bnb4Weights::new(named, Bnb4))
                }
                Some(Quantization::Fp8AndNvfp4) => {
                    tracing::info!(
                        "ModelOpt mixed-precision checkpoint (FP8 / NVFP4): weights are expanded \
                         to {dtype} as they load"
                    );
                    Arc::new(MixedWeights::new(named, Fp8OrNvfp4))
                }
                Some(Quantization::Nvfp4) => {
                    tracing::info!(
                        "NVFP4 checkpoint: weights are expanded to {dtype} as they load"
                    );
                    Arc::new(Nvfp4Weights::new(named, Nvfp4))
                }
                Some(Quantization::Bnb8) => {
                    tracing::info!(
                        "bitsandbytes 8-bit checkpoint: weights are expanded to {dtype} as they load"
                    );
                    Arc::new(Bnb8Weights::new(named, Bnb8))
                }
                Some(Quantization::Mxfp4) | None => Arc::from(named),
            }
        }
    };
    Ok(PreparedModel {
        name: files.name,
        config,
        dtype,
        tokenizer,
        eos,
        weights,
    })
}

/// Finds the model the arguments name and loads it onto `backend`, which runs on `device`
/// (that decides what `--dtype auto` means).
pub fn load_model_on<B: Backend>(
    args: &EngineArgs,
    backend: B,
    device: Device,
) -> Result<LoadedModel<B>> {
    let PreparedModel {
        name,
        config,
        dtype,
        tokenizer,
        eos,
        weights,
    } = prepare_model(args, device)?;
    tracing::info!(
        "loading {name} ({:?}, {:.2}B parameters) in {dtype} on {}",
        config.architecture,
        config.num_parameters() as f64 / 1e9,
        backend.name()
    );
    if let Some(info) = backend.memory_info() {
        // The same estimate as `kiln plan`: refuse before loading what cannot fit.
        let (free, total) = info?;
        let input = crate::plan::PlanInput {
            config: &config,
            dtype,
            max_model_len: args.max_model_len.unwrap_or(config.max_position_embeddings),
            max_num_seqs: 1,
            max_num_batched_tokens: args.max_num_batched_tokens,
        };
        let est = crate::plan::estimate(&input);
        crate::plan::check_fits(
            &est,
            &input,
            free as u64,
            total as u64,
            args.gpu_memory_utilization,
        )
        .with_context(|| format!("{name} on {}", backend.name()))?;
    }
    let started = std::time::Instant::now();
    let bar = progress_bar(config.num_layers as u64, "loading weights");
    let mut model = LlamaModel::load(&backend, config, weights.as_ref(), dtype, |_| bar.inc(1))
        .with_context(|| format!("loading {name} onto {}", backend.name()))?;
    bar.finish_and_clear();
    for spec in &args.lora_modules {
        let adapter = load_adapter(
            &backend,
            &model.config,
            &model.layout,
            dtype,
            spec,
            args.max_lora_rank,
        )
        .with_context(|| {
            format!(
                "loading LoRA adapter {} from {}",
                spec.name,
                spec.path.display()
            )
        })?;
        model.add_adapter(adapter)?;
        tracing::info!(
            "LoRA adapter {} loaded from {}",
            spec.name,
            spec.path.display()
        );
    }
    tracing::info!(
        "weights loaded in {:.2} s ({:?})",
        started.elapsed().as_secs_f64(),
        args.load_format
    );
    Ok(LoadedModel {
        name,
        model,
        backend,
        tokenizer,
        eos,
    })
}

/// KV-cache blocks for the CPU: the memory budget, but no more than every sequence at full
/// length needs.
pub(crate) fn cpu_kv_blocks(
    args: &EngineArgs,
    config: &ModelConfig,
    max_model_len: usize,
) -> usize {
    if let Some(n) = args.num_kv_blocks {
        return n;
    }
    // The CPU cache stores f32 whatever the model dtype.
    let per_token = 2 * config.num_layers * config.kv_width() * 4;
    let budget = (args.kv_cache_memory_gb * (1u64 << 30) as f64) as usize;
    let want = max_model_len.div_ceil(args.block_size) * args.max_num_seqs.max(1);
    (budget / (per_token * args.block_size)).min(want).max(1)
}

/// gpt-oss always writes harmony messages: without a parser its channel markers would be
/// dropped (special tokens) and the reasoning run into the answer, so harmony is its
/// default. Other models keep what `--reasoning-parser` says.
fn reasoning_parser(
    given: chat_template::ReasoningParserArg,
    config: &ModelConfig,
) -> chat_template::ReasoningParserArg {
    use chat_template::ReasoningParserArg;
    match (given, config.architecture) {
        (ReasoningParserArg::None, crate::model::config::Architecture::GptOss) => {
            tracing::info!("gpt-oss: its harmony channels are parsed (reasoning, answer, calls)");
            ReasoningParserArg::Harmony
        }
        (given, _) => given,
    }
}

/// Longest prompt + output the engine accepts.
pub(crate) fn max_model_len(args: &EngineArgs, config: &ModelConfig) -> usize {
    args.max_model_len.unwrap_or(config.max_position_embeddings)
}

/// Wraps a model loaded on the CPU into an engine.
pub fn engine_from(loaded: LoadedModel, args: &EngineArgs) -> Result<LlmEngine> {
    let config = &loaded.model.config;
    let num_blocks = cpu_kv_blocks(args, config, max_model_len(args, config));
    engine_with_blocks(loaded, args, num_blocks)
}

/// Wraps a loaded model into an engine with a KV cache of `num_blocks` blocks.
fn engine_with_blocks<B: Backend + 'static>(
    loaded: LoadedModel<B>,
    args: &EngineArgs,
    num_blocks: usize,
) -> Result<LlmEngine>
where
    B::Tensor: 'static,
{
    let max_model_len = max_model_len(args, &loaded.model.config);
    // Rejected drafts rewind a sequence; a recurrent mixer's state cannot be rewound.
    anyhow::ensure!(
        !loaded.model.config.keeps_recurrent_state() || args.speculative_config.is_none(),
        "--speculative-config: {:?}'s mixers keep a recurrent state that rejected draft \
         tokens cannot be taken back from",
        loaded.model.config.architecture
    );
    tracing::info!(
        "KV cache: {num_blocks} blocks of {} tokens",
        args.block_size
    );
    let runner = ModelRunner::new(
        loaded.backend,
        loaded.model,
        (num_blocks, args.block_size),
        args.max_num_seqs,
    )?;
    engine_with_runner(
        Box::new(runner),
        args,
        max_model_len,
        num_blocks,
        loaded.tokenizer,
        loaded.eos,
    )
}

/// An engine over any runner whose KV cache has `num_blocks` blocks.
pub(crate) fn engine_with_runner(
    runner: Box<dyn crate::engine::runner::Runner>,
    args: &EngineArgs,
    max_model_len: usize,
    num_blocks: usize,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
) -> Result<LlmEngine> {
    let recurrent = runner.keeps_recurrent_state();
    if recurrent && args.enable_prefix_caching {
        tracing::info!(
            "prefix caching is off: the model's recurrent mixers keep a state per sequence, \
             which a cached prefix cannot restore"
        );
    }
    let engine_config = EngineConfig {
        max_model_len,
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        block_size: args.block_size,
        num_blocks,
        enable_prefix_caching: args.enable_prefix_caching && !recurrent,
        seed: args.seed,
        scheduling_policy: args.scheduling_policy,
    };
    let mut engine = LlmEngine::new(engine_config, runner, Arc::new(tokenizer), eos)?;
    engine.set_device_sampling(args.gpu_sampling);
    let speculation = args
        .speculative_config
        .as_deref()
        .map(crate::engine::ngram::NgramConfig::from_json)
        .transpose()?;
    if let Some(s) = &speculation {
        tracing::info!(
            "speculative decoding: up to {} drafted tokens per step by prompt lookup \
             ({}..={}-token suffixes)",
            s.num_speculative_tokens,
            s.prompt_lookup_min,
            s.prompt_lookup_max
        );
    }
    engine.set_speculation(speculation);
    Ok(engine)
}

/// The device of each tensor-parallel rank: `--device`, narrowed by `--gpu` (or, without
/// it, the largest group of same-type GPUs), and `--tensor-parallel-size` (default: the GPU
/// count `--gpu` matched, else 1). An unsatisfiable `--gpu` fails here, before anything is
/// loaded.
pub fn place_ranks(args: &EngineArgs) -> Result<Vec<Device>> {
    if let Some(tp) = args.tensor_parallel_size {
        anyhow::ensure!(
            matches!(tp, 1 | 2 | 4 | 8),
            "--tensor-parallel-size {tp}: supported sizes are 1, 2, 4 and 8"
        );
    }
    let device = device::resolve(args.device, crate::backend::cuda::device_count)?;
    let Device::Cuda(explicit) = device else {
        anyhow::ensure!(
            args.gpu.is_none() || args.device != DeviceArg::Cpu,
            "--gpu {} asks for GPUs but --device cpu was given",
            args.gpu.as_deref().unwrap_or_default()
        );
        if let Some(spec) = &args.gpu {
            // auto found no GPU: say what was asked and what is (not) there.
            gpu_request::choose(Some(spec), &crate::gpu::Inventory::detect())?;
        }
        return Ok(vec![Device::Cpu; args.tensor_parallel_size.unwrap_or(1)]);
    };
    let gpus = if args.device != DeviceArg::Auto && args.gpu.is_none() {
        vec![explicit]
    } else {
        match gpu_request::choose(args.gpu.as_deref(), &crate::gpu::Inventory::detect())? {
            Some(selection) => {
                tracing::info!(
                    "GPUs matched: {} x {} {:?}",
                    selection.indices.len(),
                    selection.gpu_type,
                    selection.indices
                );
                if args.gpu.is_some() || args.tensor_parallel_size.is_some_and(|t| t > 1) {
                    selection.indices
                } else {
                    vec![gpu_request::primary_ordinal(&selection)]
                }
            }
            None => vec![explicit],
        }
    };
    let ranks = args.tensor_parallel_size.unwrap_or(gpus.len());
    Ok(tensor_parallel::assign_gpus(&gpus, ranks))
}

/// The device a single-rank engine runs on (the first rank's).
pub fn pick_device(args: &EngineArgs) -> Result<Device> {
    Ok(place_ranks(args)?[0])
}

/// Loads everything on the device `--device` / `--gpu` pick and returns a ready engine plus
/// the model's name.
pub fn build_engine(args: &EngineArgs) -> Result<(LlmEngine, String)> {
    let ranks = place_ranks(args)?;
    if ranks.len() > 1 {
        return tensor_parallel::engine(args, &ranks);
    }
    match ranks[0] {
        Device::Cpu => {
            let loaded = load_model(args)?;
            let name = loaded.name.clone();
            Ok((engine_from(loaded, args)?, name))
        }
        Device::Cuda(ordinal) => {
            let backend = CudaBackend::new(ordinal)
                .with_context(|| format!("opening CUDA device {ordinal}"))?;
            tracing::info!("running on cuda:{ordinal} ({})", backend.device().name());
            let loaded = load_model_on(args, backend, Device::Cuda(ordinal))?;
            let name = loaded.name.clone();
            Ok((engine_on_cuda(loaded, args)?, name))
        }
    }
}
