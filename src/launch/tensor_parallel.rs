//! Launching a model sharded over several ranks: which device each rank gets, the
//! communicator they meet in, the KV-cache size every rank can hold, and the engine.

use super::gpu_memory::{activation_reserve, fitting_state_slots, kv_blocks, GpuMemory};
use super::{
    cpu_kv_blocks, engine_with_runner, max_model_len, prepare_model, progress_bar, AllReduceArg,
    Device, EngineArgs, PreparedModel,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::Backend;
use crate::engine::LlmEngine;
use crate::parallel::device_group::DeviceAllReduce;
use crate::parallel::host_group::HostStaged;
use crate::parallel::nccl_group::NcclAllReduce;
use crate::parallel::nccl_lib::Nccl;
use crate::parallel::peer_access::{choose_path, distinct, enable_all, AllReducePath, PeerMatrix};
use crate::parallel::shard::check_divides;
use crate::parallel::tp_runner::{CachePlan, RankLoaded, TpRunner, TpSpec};
use crate::parallel::Communicator;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The device of each of `ranks` ranks over the GPUs `gpus`: one GPU per rank when there
/// are enough, else round-robin, several ranks per GPU (a test setup: slower than one rank).
pub fn assign_gpus(gpus: &[usize], ranks: usize) -> Vec<Device> {
    if ranks > gpus.len() {
        tracing::warn!(
            "--tensor-parallel-size {ranks} with {} GPU(s) {gpus:?}: ranks share GPUs \
             (useful for testing; slower than fewer ranks)",
            gpus.len()
        );
    }
    (0..ranks)
        .map(|r| Device::Cuda(gpus[r % gpus.len()]))
        .collect()
}

/// Loads the model sharded over `ranks` (one device each) and returns the engine and the
/// model's name.
pub fn engine(args: &EngineArgs, ranks: &[Device]) -> Result<(LlmEngine, String)> {
    let world = ranks.len();
    let prepared = prepare_model(args, ranks[0])?;
    check_divides(&prepared.config, world)
        .with_context(|| format!("{} cannot be split {world} ways", prepared.name))?;
    tracing::info!("tensor parallel: {world} ranks on {ranks:?}");
    match ranks[0] {
        Device::Cpu => {
            let comms = HostStaged::group(world)
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator<CpuBackend>>)
                .collect();
            let open = Arc::new(|_rank: usize| Ok(CpuBackend::new()));
            let wanted = cpu_kv_blocks(
                args,
                &prepared.config,
                max_model_len(args, &prepared.config),
            );
            start(args, prepared, open, comms, move |_| Ok(wanted.into()))
        }
        Device::Cuda(_) => {
            let ordinals = cuda_ordinals(ranks);
            let (comms, _) = gpu_communicators(&ordinals, args.all_reduce)?;
            let open_ordinals = ordinals.clone();
            let open = Arc::new(move |rank: usize| {
                let ordinal = open_ordinals[rank];
                CudaBackend::new(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
            });
            let fixed = args.num_kv_blocks;
            let (config, dtype) = (prepared.config.clone(), prepared.dtype);
            let args_for_plan = args.clone();
            start(args, prepared, open, comms, move |loaded| match fixed {
                Some(n) => Ok(n.into()),
                None => gpu_cache_plan(&args_for_plan, &config, dtype.size_in_bytes(), loaded),
            })
        }
    }
}

fn start<B: Backend + 'static>(
    args: &EngineArgs,
    prepared: PreparedModel,
    open_backend: Arc<dyn Fn(usize) -> Result<B> + Send + Sync>,
    communicators: Vec<Box<dyn Communicator<B>>>,
    decide_cache: impl FnOnce(&[RankLoaded]) -> Result<CachePlan>,
) -> Result<(LlmEngine, String)> {
    let world = communicators.len();
    let PreparedModel {
        name,
        config,
        dtype,
        tokenizer,
        eos,
        weights,
    } = prepared;
    tracing::info!(
        "loading {name} ({:?}, {:.2}B parameters) in {dtype}, sharded {world} ways",
        config.architecture,
        config.num_parameters() as f64 / 1e9,
    );
    let started = std::time::Instant::now();
    let bar = progress_bar((config.num_layers * world) as u64, "loading shards");
    let progress = bar.clone();
    let spec = TpSpec {
        config: config.clone(),
        dtype,
        weights,
        block_size: args.block_size,
        state_slots: args.max_num_seqs,
        open_backend,
        communicators,
        on_layer: Arc::new(move |_rank, _layer| progress.inc(1)),
        adapters: args.lora_modules.clone().into(),
        max_lora_rank: args.max_lora_rank,
    };
    let (runner, num_blocks) = TpRunner::start(spec, decide_cache)
        .with_context(|| format!("loading {name} over {world} ranks"))?;
    let max_num_seqs = runner.state_slots().min(args.max_num_seqs);
    if max_num_seqs < args.max_num_seqs {
        tracing::warn!(
            "--max-num-seqs {} lowered to {max_num_seqs}: more sequences' recurrent states would \
             leave the KV cache too little room for one sequence of --max-model-len",
            args.max_num_seqs
        );
    }
    let args = &EngineArgs {
        max_num_seqs,
        ..args.clone()
    };
    bar.finish_and_clear();
    tracing::info!(
        "shards loaded in {:.2} s; KV cache: {num_blocks} blocks of {} tokens per rank",
        started.elapsed().as_secs_f64(),
        args.block_size
    );
    let engine = engine_with_runner(
        Box::new(runner),
        args,
        max_model_len(args, &config),
        num_blocks,
        tokenizer,
        eos,
    )?;
    Ok((engine, name))
}

/// One communicator per GPU rank.
pub type GpuCommunicators = Vec<Box<dyn Communicator<CudaBackend>>>;

/// The communicators of GPU ranks on `ordinals`: NCCL when it is installed and each rank
/// has its own GPU, else kiln's device all-reduce where every rank can read every other
/// rank's memory, else sums through host memory (`--all-reduce` overrides). The choice, the
/// reason and the peer-access matrix are logged.
pub fn gpu_communicators(
    ordinals: &[usize],
    choice: AllReduceArg,
) -> Result<(GpuCommunicators, String)> {
    let gpus = distinct(ordinals);
    let matrix = PeerMatrix::probe(&gpus)?;
    if gpus.len() > 1 {
        tracing::info!("peer access between the group's GPUs:\n{}", matrix.render());
    }
    // Opened only where it could serve: ranks on distinct GPUs.
    let nccl = if gpus.len() > 1 {
        Some(Nccl::open())
    } else {
        None
    };
    let nccl_status = match &nccl {
        Some(Ok(lib)) => lib.version().map_err(|e| format!("{e:#}")),
        Some(Err(e)) => Err(format!("{e:#}")),
        None => Err("one GPU".to_string()),
    };
    let path = match (choice, choose_path(ordinals, &matrix, &nccl_status)) {
        (AllReduceArg::Host, _) => AllReducePath::Host("--all-reduce host".into()),
        (AllReduceArg::Device, AllReducePath::Host(why)) => {
            anyhow::bail!("--all-reduce device is not possible: {why}")
        }
        (AllReduceArg::Device, AllReducePath::Nccl(_)) => {
            match choose_path(ordinals, &matrix, &Err("--all-reduce device".into())) {
                AllReducePath::Host(why) => {
                    anyhow::bail!("--all-reduce device is not possible: {why}")
                }
                path => path,
            }
        }
        (AllReduceArg::Nccl, AllReducePath::Nccl(why)) => AllReducePath::Nccl(why),
        (AllReduceArg::Nccl, _) => {
            let why = if gpus.len() < ordinals.len() {
                "it needs one GPU per rank, and ranks share GPUs here".to_string()
            } else {
                nccl_status.clone().err().unwrap_or_default()
            };
            anyhow::bail!("--all-reduce nccl is not possible: {why}")
        }
        (AllReduceArg::Auto | AllReduceArg::Device, path) => path,
    };
    let world = ordinals.len();
    let comms = match &path {
        AllReducePath::Nccl(why) => {
            tracing::info!("all-reduce: NCCL ({why})");
            let Some(Ok(lib)) = nccl else {
                anyhow::bail!("NCCL was chosen without having opened")
            };
            NcclAllReduce::group(lib, world)?
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator<CudaBackend>>)
                .collect()
        }
        AllReducePath::Device(why) => {
            tracing::info!("all-reduce: kiln's device kernel ({why})");
            let contexts = if gpus.len() > 1 {
                enable_all(&gpus)?
            } else {
                Vec::new()
            };
            DeviceAllReduce::group(world, contexts)?
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator<CudaBackend>>)
                .collect()
        }
        AllReducePath::Host(why) => {
            tracing::info!("all-reduce: through host memory ({why})");
            HostStaged::group(world)
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator<CudaBackend>>)
                .collect()
        }
    };
    let name = match path {
        AllReducePath::Nccl(why) => format!("NCCL: {why}"),
        AllReducePath::Device(why) => format!("device kernel: {why}"),
        AllReducePath::Host(why) => format!("host staging: {why}"),
    };
    Ok((comms, name))
}

/// The CUDA ordinal of each rank (all ranks are GPUs).
pub fn cuda_ordinals(ranks: &[Device]) -> Vec<usize> {
    ranks
        .iter()
        .filter_map(|d| match d {
            Device::Cuda(o) => Some(*o),
            Device::Cpu => None,
        })
        .collect()
}

/// KV blocks every rank can hold, and the recurrent-state slots: each GPU's budget is
/// shared by the ranks on it (their caches, states and activations), and the smallest GPU
/// decides, since ranks hold the same blocks and slots. Where `--max-num-seqs` sequences'
/// states would leave a GPU less KV cache than one `--max-model-len` sequence, fewer
/// sequences run (as on one GPU: `fitting_state_slots`).
fn gpu_cache_plan(
    args: &EngineArgs,
    config: &crate::model::config::ModelConfig,
    dtype_bytes: usize,
    loaded: &[RankLoaded],
) -> Result<CachePlan> {
    let mut per_device: BTreeMap<String, Vec<&RankLoaded>> = BTreeMap::new();
    for l in loaded {
        per_device
            .entry(l.backend_name.clone())
            .or_default()
            .push(l);
    }
    let full_sequence = max_model_len(args, config).div_ceil(args.block_size);
    let reserve = activation_reserve(
        config,
        dtype_bytes,
        args.max_num_batched_tokens,
        args.max_num_seqs,
    );
    // Each device's memory, its ranks' block and state-slot bytes, and its share of the
    // activations.
    let mut devices = Vec::new();
    for (device, ranks) in per_device {
        let (free, total) = ranks[0]
            .memory
            .with_context(|| format!("{device} did not report its memory"))?;
        let mem = GpuMemory {
            free,
            total,
            utilization: args.gpu_memory_utilization,
        };
        let bytes_per_block: usize = ranks.iter().map(|r| r.kv_bytes_per_block).sum();
        let slot_bytes: usize = ranks.iter().map(|r| r.state_bytes_per_slot).sum();
        devices.push((device, ranks.len(), mem, bytes_per_block, slot_bytes));
    }
    let slots = devices
        .iter()
        .map(|&(_, sharing, mem, block, slot)| {
            let held = reserve * sharing;
            fitting_state_slots(mem, held, (slot, block), args.max_num_seqs, full_sequence)
        })
        .min()
        .unwrap_or(args.max_num_seqs);
    let wanted = full_sequence * slots.max(1);
    let mut blocks = usize::MAX;
    for (device, sharing, mem, bytes_per_block, slot_bytes) in devices {
        // The ranks' recurrent states come out of the same memory, before the blocks.
        let states = slot_bytes * slots;
        let n = kv_blocks(mem, reserve * sharing + states, bytes_per_block, wanted)
            .with_context(|| format!("sizing the KV cache on {device} ({sharing} ranks)"))?;
        tracing::info!("{device}: room for {n} KV blocks per rank ({sharing} rank(s))");
        blocks = blocks.min(n);
    }
    Ok(CachePlan {
        blocks,
        state_slots: Some(slots),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EngineArgs,
    }

    fn rank(rank: usize, device: &str, free_gib: usize, kv_bytes_per_block: usize) -> RankLoaded {
        RankLoaded {
            rank,
            memory: Some((free_gib << 30, 80 << 30)),
            kv_bytes_per_block,
            state_bytes_per_slot: 0,
            backend_name: device.to_string(),
        }
    }

    #[test]
    fn kv_blocks_fit_the_fullest_gpu_and_ranks_sharing_a_gpu_split_it() {
        let config = crate::model::config::ModelConfig::from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 131072}"#,
        )
        .unwrap();
        let args = Cli::parse_from(["kiln", "--gpu-memory-utilization", "0.9"]).args;
        let block = 1 << 20;
        // Two GPUs with one rank each: the one with less free memory decides.
        let two = [rank(0, "cuda:0", 60, block), rank(1, "cuda:1", 40, block)];
        let lean = [rank(0, "cuda:1", 40, block)];
        let n_two = gpu_cache_plan(&args, &config, 2, &two).unwrap().blocks;
        assert_eq!(
            n_two,
            gpu_cache_plan(&args, &config, 2, &lean).unwrap().blocks
        );
        // Two ranks on one GPU: both caches (and activations) come out of its budget.
        let shared = [rank(0, "cuda:0", 40, block), rank(1, "cuda:0", 40, block)];
        let n_shared = gpu_cache_plan(&args, &config, 2, &shared).unwrap().blocks;
        assert!(n_shared < n_two, "{n_shared} vs {n_two}");
        assert!(n_shared * 2 <= n_two + 1, "{n_shared} vs {n_two}");
        // A GPU that is already full is an error naming it.
        let full = [rank(0, "cuda:3", 1, block)];
        let err = format!(
            "{:#}",
            gpu_cache_plan(&args, &config, 2, &full).unwrap_err()
        );
        assert!(err.contains("cuda:3"), "{err}");
    }

    /// Recurrent states that would crowd out the cache lower the slots every rank keeps (the
    /// fullest GPU decides), leaving room for one full-length sequence; a model without
    /// states keeps `--max-num-seqs`.
    #[test]
    fn ranks_keep_fewer_state_slots_where_their_states_would_crowd_out_the_cache() {
        let config = crate::model::config::ModelConfig::from_json(
            crate::model::presets::preset("nemotron-nano-9b-v2").unwrap(),
        )
        .unwrap();
        let args = Cli::parse_from(["kiln", "--max-model-len", "32768"]).args;
        assert_eq!(args.max_num_seqs, 256);
        let (block, slot) = (1 << 20, 70 << 20);
        let with_states = |free_gib: usize, device: &str| RankLoaded {
            state_bytes_per_slot: slot,
            ..rank(0, device, free_gib, block)
        };
        let ranks = [with_states(30, "cuda:0"), with_states(20, "cuda:1")];
        let plan = gpu_cache_plan(&args, &config, 2, &ranks).unwrap();
        let slots = plan.state_slots.unwrap();
        assert!((1..256).contains(&slots), "{slots}");
        // The slots are those of the fuller GPU alone, and its cache still holds a sequence.
        let lean = gpu_cache_plan(&args, &config, 2, &ranks[1..]).unwrap();
        assert_eq!(lean.state_slots, Some(slots));
        let full_sequence = 32768usize.div_ceil(args.block_size);
        assert!(plan.blocks >= full_sequence, "{plan:?}");
        // Without states: every sequence runs.
        let plain = [rank(0, "cuda:0", 30, block)];
        let plan = gpu_cache_plan(&args, &config, 2, &plain).unwrap();
        assert_eq!(plan.state_slots, Some(256));
    }

    #[test]
    fn ranks_get_their_own_gpu_when_there_are_enough_else_share() {
        assert_eq!(
            assign_gpus(&[3, 5, 6, 7], 2),
            [Device::Cuda(3), Device::Cuda(5)]
        );
        assert_eq!(assign_gpus(&[0], 2), [Device::Cuda(0), Device::Cuda(0)]);
        assert_eq!(
            assign_gpus(&[0, 1], 4),
            [
                Device::Cuda(0),
                Device::Cuda(1),
                Device::Cuda(0),
                Device::Cuda(1)
            ]
        );
    }
}
