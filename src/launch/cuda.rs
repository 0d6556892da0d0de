//! The GPU side of launching: the KV cache takes what `--gpu-memory-utilization` leaves after
//! the weights (measured, not estimated) and one step's activations.

use super::gpu_memory::{activation_reserve, fitting_state_slots, kv_blocks, GpuMemory};
use super::{engine_with_blocks, max_model_len, EngineArgs, LoadedModel};
use crate::backend::cuda::CudaBackend;

use crate::engine::LlmEngine;
use anyhow::{Context, Result};

/// Wraps a model loaded on a GPU into an engine, its KV cache sized from the free memory.
pub fn engine_on_cuda(loaded: LoadedModel<CudaBackend>, args: &EngineArgs) -> Result<LlmEngine> {
    loaded.backend.set_decode_graphs(!args.enforce_eager);
    let (num_blocks, max_num_seqs) = match args.num_kv_blocks {
        Some(n) => (n, args.max_num_seqs),
        None => plan_kv_blocks(&loaded, args)?,
    };
    if max_num_seqs < args.max_num_seqs {
        tracing::warn!(
            "--max-num-seqs {} lowered to {max_num_seqs}: more sequences' recurrent states would \
             leave the KV cache too little room for one sequence of --max-model-len",
            args.max_num_seqs
        );
    }
    let args = EngineArgs {
        max_num_seqs,
        ..args.clone()
    };
    engine_with_blocks(loaded, &args, num_blocks)
}

/// The KV blocks to allocate and the sequences to run at once (`--max-num-seqs`, or fewer
/// where their recurrent states would crowd out the cache).
fn plan_kv_blocks(loaded: &LoadedModel<CudaBackend>, args: &EngineArgs) -> Result<(usize, usize)> {
    let config = &loaded.model.config;
    let dtype = loaded.model.dtype;
    // One sequence's states, and a block's bytes.
    let one = loaded.model.kv_cache_spec(1, args.block_size, 1);
    let bytes_per_block = one.bytes_per_block();
    let (free, total) = loaded.backend.free_and_total_memory()?;
    let activations = activation_reserve(
        config,
        dtype.size_in_bytes(),
        args.max_num_batched_tokens,
        args.max_num_seqs,
    );
    let mem = GpuMemory {
        free,
        total,
        utilization: args.gpu_memory_utilization,
    };
    let full_sequence = max_model_len(args, config).div_ceil(args.block_size);
    let seqs = fitting_state_slots(
        mem,
        activations,
        (one.state_bytes(), bytes_per_block),
        args.max_num_seqs,
        full_sequence,
    );
    // Recurrent mixers' states (one per sequence that can run) come before the blocks.
    let states = one.state_bytes() * seqs;
    let reserve = activations + states;
    // More blocks than every sequence at full length needs would never be used.
    let wanted = full_sequence * seqs.max(1);
    let gib = |bytes: usize| bytes as f64 / (1u64 << 30) as f64;
    let blocks = kv_blocks(mem, reserve, bytes_per_block, wanted).with_context(|| {
        if states > 0 {
            format!(
                "sizing the KV cache of {} after its recurrent states ({:.2} GiB for \
                 {seqs} sequences: fewer need less)",
                loaded.name,
                gib(states),
            )
        } else {
            format!("sizing the KV cache of {}", loaded.name)
        }
    })?;
    if states > 0 {
        tracing::info!(
            "recurrent states: {:.2} GiB for {seqs} sequences (--max-num-seqs)",
            gib(states),
        );
    }
    tracing::info!(
        "GPU memory: {:.2} of {:.2} GiB free after the weights; KV cache {blocks} blocks ({:.2} GiB), {:.2} GiB kept for activations and states",
        gib(free),
        gib(total),
        gib(blocks * bytes_per_block),
        gib(reserve),
    );
    Ok((blocks, seqs))
}
