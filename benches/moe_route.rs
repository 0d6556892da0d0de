//! Criterion bench of host MoE routing (`kiln::backend::moe::route`), which every prefill of
//! a mixture-of-experts model runs once per layer on the CUDA backend's grouped path: the
//! router logits of a batch's tokens in, each expert's tokens and weights out.
//! Shapes: Qwen3-30B-A3B (128 experts, top 8, softmax) and DeepSeek-V3 (256 experts, top 8,
//! sigmoid in 8 groups, 4 kept), at 1024 and 4096 tokens (8 and 32 prompts of 128 tokens).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kiln::backend::moe::{route, RouteRule, RouterScoring};

/// Deterministic logits in [-4, 4): a hash per index, so every run routes the same way.
fn logits(n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ i;
            (h >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        })
        .collect()
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("moe_route");
    g.sample_size(20);
    let bias: Vec<f32> = logits(256).iter().map(|v| v * 0.01).collect();
    let cases = [
        ("qwen3_softmax", 128, RouterScoring::Softmax, None),
        (
            "deepseek_v3_sigmoid_grouped",
            256,
            RouterScoring::SigmoidGrouped {
                groups: 8,
                top_groups: 4,
                scale: 2.5,
            },
            Some(bias.as_slice()),
        ),
    ];
    for (name, experts, scoring, correction_bias) in cases {
        let rule = RouteRule {
            top_k: 8,
            normalize: true,
            scoring,
            correction_bias,
            dtype: kiln::backend::DType::BF16,
        };
        for tokens in [1024usize, 4096] {
            let x = logits(tokens * experts);
            g.bench_with_input(BenchmarkId::new(name, tokens), &tokens, |b, _| {
                b.iter(|| route(&x, experts, &rule))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
