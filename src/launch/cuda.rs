//! The GPU side of launching: the KV cache takes what `--gpu-memory-utilization` leaves after
//! the weights (measured, not estimated) and one step's activations.

use super::gpu_memory::{activation_reserve, kv_blocks, GpuMemory};
use super::{engine_with_blocks, max_model_len, EngineArgs, LoadedModel};
use crate::backend::cuda::CudaBackend;

use crate::engine::LlmEngine;
use anyhow::{Context, Result};

/// Wraps a model loaded on a GPU into an engine, its KV cache sized from the free memory.
pub fn engine_on_cuda(loaded: LoadedModel<CudaBackend>, args: &EngineArgs) -> Result<LlmEngine> {
    loaded.backend.set_decode_graphs(!args.enforce_eager);
    let num_blocks = match args.num_kv_blocks {
        Some(n) => n,
        None => plan_kv_blocks(&loaded, args)?,
    };
    engine_with_blocks(loaded, args, num_blocks)
}

fn plan_kv_blocks(loaded: &LoadedModel<CudaBackend>, args: &EngineArgs) -> Result<usize> {
    let config = &loaded.model.config;
    let dtype = loaded.model.dtype;
    let spec = loaded
        .model
        .kv_cache_spec(1, args.block_size, args.max_num_seqs);
    let bytes_per_block = spec.bytes_per_block();
    let (free, total) = loaded.backend.free_and_total_memory()?;
    // Recurrent mixers' states (one per sequence that can run) come before the blocks.
    let reserve = activation_reserve(
        config,
        dtype.size_in_bytes(),
        args.max_num_batched_tokens,
        args.max_num_seqs,
    ) + spec.state_bytes();
    // More blocks than every sequence at full length needs would never be used.
    let wanted = max_model_len(args, config).div_ceil(args.block_size) * args.max_num_seqs.max(1);
    let mem = GpuMemory {
        free,
        total,
        utilization: args.gpu_memory_utilization,
    };
    let gib = |bytes: usize| bytes as f64 / (1u64 << 30) as f64;
    let states = spec.state_bytes();
    let blocks = kv_blocks(mem, reserve, bytes_per_block, wanted).with_context(|| {
        if states > 0 {
            format!(
                "sizing the KV cache of {} after its recurrent states ({:.2} GiB for \
                 --max-num-seqs {}: fewer sequences need less)",
                loaded.name,
                gib(states),
                args.max_num_seqs
            )
        } else {
            format!("sizing the KV cache of {}", loaded.name)
        }
    })?;
    if states > 0 {
        tracing::info!(
            "recurrent states: {:.2} GiB for {} sequences (--max-num-seqs)",
            gib(states),
            args.max_num_seqs
        );
    }
    tracing::info!(
        "GPU memory: {:.2} of {:.2} GiB free after the weights; KV cache {blocks} blocks ({:.2} GiB), {:.2} GiB kept for activations and states",
        gib(free),
        gib(total),
        gib(blocks * bytes_per_block),
        gib(reserve),
    );
    Ok(blocks)
}
