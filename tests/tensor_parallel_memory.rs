//! Host memory while loading a sharded model: each rank copies only its slices out of the
//! memory-mapped safetensors, so loading 4 CPU ranks holds about one model's worth of heap
//! (the shards add up to one copy), never a full copy per rank.
//!
//! The heap is measured by a counting allocator, which is why this file holds one test:
//! nothing else runs in the process while it measures.

use kiln::backend::cpu::CpuBackend;
use kiln::backend::DType;
use kiln::model::config::ModelConfig;
use kiln::model::weights::{SafetensorsWeights, WeightSource};
use kiln::parallel::host_group::HostStaged;
use kiln::parallel::tp_runner::{TpRunner, TpSpec};
use kiln::parallel::Communicator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The system allocator, counting live bytes and their high-water mark.
struct Counting {
    live: AtomicUsize,
    peak: AtomicUsize,
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = self.live.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            self.peak.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        self.live.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static HEAP: Counting = Counting {
    live: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 8192,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 256, "tie_word_embeddings": false}"#;

/// Writes the config's weights (values irrelevant) and returns their total bytes.
fn write_model(dir: &std::path::Path, config: &ModelConfig) -> usize {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (q, kv) = (config.q_width(), config.kv_width());
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("lm_head.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for l in 0..config.num_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            shapes.push((format!("{p}.{name}"), shape));
        }
    }
    let mut total = 0;
    let tensors: HashMap<String, candle_core::Tensor> = shapes
        .into_iter()
        .map(|(name, shape)| {
            total += shape.iter().product::<usize>() * 4;
            let t = candle_core::Tensor::ones(
                shape,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap();
            (name, t)
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    total
}

#[test]
fn four_cpu_ranks_load_about_one_model_of_heap_not_four() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig::from_json(CONFIG).unwrap();
    let model_bytes = write_model(dir.path(), &config);
    let weights: Arc<dyn WeightSource + Send + Sync> =
        Arc::new(SafetensorsWeights::open(&[dir.path().join("model.safetensors")]).unwrap());
    let comms: Vec<Box<dyn Communicator<CpuBackend>>> = HostStaged::group(4)
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Communicator<CpuBackend>>)
        .collect();
    let spec = TpSpec {
        config,
        dtype: DType::F32,
        weights,
        block_size: 16,
        state_slots: 8,
        open_backend: Arc::new(|_| Ok(CpuBackend::new())),
        communicators: comms,
        on_layer: Arc::new(|_, _| {}),
        adapters: Vec::new().into(),
        max_lora_rank: 64,
    };
    let before = HEAP.live.load(Ordering::SeqCst);
    HEAP.peak.store(before, Ordering::SeqCst);
    let (runner, _) = TpRunner::start(spec, |_| Ok(1)).unwrap();
    let peak = HEAP.peak.load(Ordering::SeqCst) - before;
    let held = HEAP.live.load(Ordering::SeqCst) - before;
    eprintln!(
        "model {:.1} MB; 4 ranks hold {:.1} MB, peak while loading {:.1} MB",
        model_bytes as f64 / 1e6,
        held as f64 / 1e6,
        peak as f64 / 1e6
    );
    // The shards add up to one copy, plus the replicated KV heads and norms.
    assert!(held as f64 > 0.95 * model_bytes as f64, "held {held}");
    assert!((held as f64) < 1.15 * model_bytes as f64, "held {held}");
    // Loading adds only per-tensor transients (a stacked QKV or gate/up being built): 4
    // full copies would be 4x, one full copy per rank of the largest tensor alone +0.6x.
    assert!(
        (peak as f64) < 1.35 * model_bytes as f64,
        "peak {peak} for a {model_bytes}-byte model"
    );
    drop(runner);
}
