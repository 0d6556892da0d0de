//! How many KV-cache blocks fit on a GPU once the weights are loaded: vLLM's
//! `--gpu-memory-utilization` rule (kiln may use that fraction of the whole device, and what
//! others already use counts against it), minus room for one step's activations.

use crate::model::config::ModelConfig;
use anyhow::Result;

const GIB: f64 = (1u64 << 30) as f64;

/// What the plan is computed from.
#[derive(Clone, Copy, Debug)]
pub struct GpuMemory {
    /// Free and total device bytes, measured after the weights were uploaded.
    pub free: usize,
    pub total: usize,
    /// Fraction of `total` kiln may use, in (0, 1].
    pub utilization: f64,
}

/// Bytes one step's activations may take at most (with 2x slack for the allocator): the
/// widest per-token tensors of a layer for every batched token, plus the logits.
pub fn activation_reserve(
    config: &ModelConfig,
    dtype_bytes: usize,
    max_batched_tokens: usize,
    max_seqs: usize,
) -> usize {
    let per_token = 4 * config.hidden_size
        + 2 * (config.q_width() + 2 * config.kv_width())
        + 3 * config.intermediate_size;
    let logits = max_seqs * config.vocab_size * (dtype_bytes + 4);
    2 * (max_batched_tokens * per_token * dtype_bytes + logits)
}

/// KV blocks to allocate: what the budget holds, at most `wanted`. Errors name the numbers.
pub fn kv_blocks(
    mem: GpuMemory,
    reserve: usize,
    bytes_per_block: usize,
    wanted: usize,
) -> Result<usize> {
    anyhow::ensure!(
        mem.utilization > 0.0 && mem.utilization <= 1.0,
        "--gpu-memory-utilization must be in (0, 1], got {}",
        mem.utilization
    );
    let allowed = (mem.total as f64 * mem.utilization) as i128;
    let used = mem.total.saturating_sub(mem.free) as i128;
    let budget = allowed - used - reserve as i128;
    let blocks = if budget > 0 {
        budget as usize / bytes_per_block.max(1)
    } else {
        0
    };
    anyhow::ensure!(
        blocks > 0,
        "not enough GPU memory for the KV cache: {:.2} GiB in use after loading the weights, \
         {:.2} GiB reserved for activations, {:.2} GiB allowed by --gpu-memory-utilization {} \
         of {:.2} GiB; raise it, use a smaller --dtype or a smaller model",
        used as f64 / GIB,
        reserve as f64 / GIB,
        allowed as f64 / GIB,
        mem.utilization,
        mem.total as f64 / GIB
    );
    Ok(blocks.min(wanted.max(1)))
}

/// How many sequences' recurrent states to keep: `max_num_seqs`, or fewer where their
/// states (`state_bytes_per_seq` each) would leave the KV cache less than `min_blocks` blocks
/// of the budget (`reserve` already held back for activations). vLLM's default of 256
/// sequences costs a model such as Nemotron-Nano-9B-v2 36 GiB of states, more than a 24 GiB
/// GPU has; running fewer at once serves it instead of refusing to start. At least one.
pub fn fitting_state_slots(
    mem: GpuMemory,
    reserve: usize,
    (state_bytes_per_seq, bytes_per_block): (usize, usize),
    max_num_seqs: usize,
    min_blocks: usize,
) -> usize {
    if state_bytes_per_seq == 0 {
        return max_num_seqs;
    }
    let allowed = (mem.total as f64 * mem.utilization) as i128;
    let used = mem.total.saturating_sub(mem.free) as i128;
    let for_states = allowed - used - reserve as i128 - (min_blocks * bytes_per_block) as i128;
    let fit = if for_states > 0 {
        for_states as usize / state_bytes_per_seq
    } else {
        0
    };
    fit.clamp(1, max_num_seqs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_that_crowd_out_the_cache_cap_the_running_sequences() {
        // 24 GiB card, 18 GiB of weights in use, all of it allowed, 1 GiB of activations:
        // 5 GiB left. 256 sequences of 144 MiB of states would need 36 GiB; keeping 1 GiB
        // of 1 MiB blocks leaves 4 GiB: 28 sequences.
        let mem = GpuMemory {
            free: 6 * G,
            total: 24 * G,
            utilization: 1.0,
        };
        let per_seq = 144 << 20;
        assert_eq!(
            fitting_state_slots(mem, G, (per_seq, 1 << 20), 256, 1024),
            28
        );
        // Room for all of them: unchanged; no states: unchanged; no room: one.
        let big = GpuMemory {
            free: 140 * G,
            total: 141 * G,
            utilization: 0.9,
        };
        assert_eq!(
            fitting_state_slots(big, G, (per_seq, 1 << 20), 256, 1024),
            256
        );
        assert_eq!(fitting_state_slots(mem, G, (0, 1 << 20), 256, 1024), 256);
        let full = GpuMemory { free: 0, ..mem };
        assert_eq!(
            fitting_state_slots(full, G, (per_seq, 1 << 20), 256, 1024),
            1
        );
    }

    const G: usize = 1 << 30;

    #[test]
    fn budget_is_the_utilized_share_minus_what_is_used_and_reserved() {
        // 80 GiB card, 16 GiB in use, 0.75 -> 60 - 16 - 2 = 42 GiB of 1 MiB blocks.
        let mem = GpuMemory {
            free: 64 * G,
            total: 80 * G,
            utilization: 0.75,
        };
        let blocks = kv_blocks(mem, 2 * G, 1 << 20, usize::MAX).unwrap();
        assert_eq!(blocks, 42 * 1024);
        assert_eq!(kv_blocks(mem, 2 * G, 1 << 20, 100).unwrap(), 100);
    }

    #[test]
    fn no_room_is_a_clear_error() {
        let mem = GpuMemory {
            free: 8 * G,
            total: 80 * G,
            utilization: 0.9,
        };
        let err = kv_blocks(mem, G, 1 << 20, 10).unwrap_err().to_string();
        assert!(err.contains("not enough GPU memory"), "{err}");
        assert!(err.contains("72.00 GiB in use"), "{err}");
        let bad = GpuMemory {
            utilization: 1.5,
            ..mem
        };
        assert!(kv_blocks(bad, 0, 1, 1).is_err());
    }
}
