//! The engine's own host time per decode step: scheduling, building the step's input,
//! appending the picked tokens, detokenising and stop checks; everything but the forward
//! pass. On a GPU this time is added to every step the device runs (the engine does not
//! yet overlap it with the device's work), so it says how much a faster scheduler or an
//! overlapped one could give back: an 8B batch-1 step takes about 6.5 ms on an H100, a
//! 0.5B one about 1.3 ms.
//!
//! The runner here does no forward pass: it answers every row with a token picked from
//! the row's position, as a device that picks greedy tokens would. Nothing it returns is
//! checked: it stands in for the device only so the host side can be timed alone.
//!
//! `cargo bench --bench engine_host` (criterion; time per step at batch 1, 32 and 256).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
#[path = "support/picking_runner.rs"]
mod picking_runner;

use kiln::engine::{EngineConfig, LlmEngine, SamplingParams};
use kiln::model::tokenizer::Tokenizer;
use picking_runner::{PickingRunner, VOCAB};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the `kiln` binary runs with (src/main.rs says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROMPT: usize = 128;
/// Decode steps per engine: the contexts stay between 128 and 640 tokens.
const STEPS_PER_ENGINE: usize = 512;

/// An engine with `batch` greedy requests of a 128-token prompt, past their prefill.
fn decoding_engine(tokenizer: &Arc<Tokenizer>, batch: usize) -> LlmEngine {
    let config = EngineConfig {
        max_model_len: 4096,
        max_num_seqs: batch,
        max_num_batched_tokens: 8192,
        block_size: 16,
        num_blocks: batch * (PROMPT + STEPS_PER_ENGINE + 32).div_ceil(16),
        enable_prefix_caching: true,
        seed: 0,
        scheduling_policy: Default::default(),
    };
    let mut engine = LlmEngine::new(
        config,
        Box::new(PickingRunner {
            step: Duration::ZERO,
        }),
        tokenizer.clone(),
        vec![2],
    )
    .unwrap();
    for id in 0..batch as u64 {
        // Distinct prompts, so prefix caching shares nothing.
        let prompt = (0..PROMPT as u32)
            .map(|i| 3 + (i * 7 + id as u32 * 13) % (VOCAB as u32 - 3))
            .collect();
        let params = SamplingParams {
            max_tokens: Some(STEPS_PER_ENGINE + 16),
            ignore_eos: true,
            ..SamplingParams::greedy()
        };
        engine.add_request(id, prompt, params).unwrap();
    }
    while engine.num_waiting() > 0 {
        engine.step().unwrap();
    }
    engine
}

fn decode_step(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let tokenizer = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let mut g = c.benchmark_group("engine_host_decode_step");
    g.measurement_time(Duration::from_secs(4));
    for batch in [1usize, 32, 256] {
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let mut engine = decoding_engine(&tokenizer, batch);
                    let steps = left.min(STEPS_PER_ENGINE);
                    let start = Instant::now();
                    for _ in 0..steps {
                        let out = engine.step().unwrap();
                        debug_assert_eq!(out.len(), batch);
                    }
                    spent += start.elapsed();
                    left -= steps;
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
