//! Criterion benches of the CPU backend's ops at a ~100M-model shape, and of one engine step.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kiln::backend::cpu::CpuBackend;
use kiln::backend::{
    AttentionShape, Backend, BatchLayout, HeadTerms, KeyWindow, KvCacheSpec, Rope,
};

const HIDDEN: usize = 768;
const INTER: usize = 2048;

fn rand(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 0.02, shape, &Device::Cpu).unwrap()
}

fn ops(c: &mut Criterion) {
    let be = CpuBackend::new();
    let w = rand(&[2 * INTER, HIDDEN]);
    let w_t = w.t().unwrap().contiguous().unwrap();
    let norm_w = rand(&[HIDDEN]);
    let mut g = c.benchmark_group("cpu_ops");
    for batch in [1usize, 16] {
        let x = rand(&[batch, HIDDEN]);
        g.bench_with_input(BenchmarkId::new("linear_gate_up", batch), &batch, |b, _| {
            b.iter(|| be.linear(&x, &w, None).unwrap())
        });
        g.bench_with_input(
            BenchmarkId::new("matmul_pretransposed_gate_up", batch),
            &batch,
            |b, _| b.iter(|| x.matmul(&w_t).unwrap()),
        );
        g.bench_with_input(BenchmarkId::new("add_rms_norm", batch), &batch, |b, _| {
            b.iter(|| {
                be.add_rms_norm(x.clone(), x.clone(), &norm_w, 1e-5)
                    .unwrap()
            })
        });
        let gu = rand(&[batch, 2 * INTER]);
        g.bench_with_input(BenchmarkId::new("silu_mul", batch), &batch, |b, _| {
            b.iter(|| be.silu_mul(&gu).unwrap())
        });
        let q = rand(&[batch, HIDDEN]);
        let rope = Rope {
            inv_freq: (0..32)
                .map(|i| 1.0 / 10000f32.powf(i as f32 / 32.0))
                .collect(),
            neox: true,
            scale: 1.0,
            query_temperature: None,
        };
        let rope = be.prepare_rope(&rope).unwrap();
        let k = rand(&[batch, 4 * 64]);
        // Decode attention: `batch` sequences with 512 cached tokens each.
        let (ctx, bs) = (512usize, 16usize);
        let blocks_per = ctx / bs;
        let spec = KvCacheSpec {
            num_layers: 1,
            num_blocks: batch * blocks_per,
            block_size: bs,
            num_kv_heads: 4,
            head_dim: 64,
            dtype: kiln::backend::DType::F32,
            conv_layers: Vec::new(),
            state_layers: Vec::new(),
            state_slots: 0,
        };
        let cache = be.new_kv_cache(&spec).unwrap();
        let layout = BatchLayout {
            positions: vec![ctx as u32 - 1; batch],
            slots: vec![-1; batch],
            query_start: (0..=batch).collect(),
            context_lens: vec![ctx; batch],
            block_tables: (0..batch)
                .map(|s| ((s * blocks_per) as u32..((s + 1) * blocks_per) as u32).collect())
                .collect(),
            block_size: bs,
            logits_rows: vec![],
            adapters: vec![],
            state_slots: vec![],
        };
        let meta = be.prepare_batch(&layout).unwrap();
        g.bench_with_input(BenchmarkId::new("rope", batch), &batch, |b, _| {
            b.iter(|| be.rope(q.clone(), k.clone(), 64, &rope, &meta).unwrap())
        });
        let shape = AttentionShape {
            num_heads: 12,
            num_kv_heads: 4,
            head_dim: 64,
            window: KeyWindow::Full,
            logit_softcap: None,
        };
        g.bench_with_input(
            BenchmarkId::new("decode_attention_ctx512", batch),
            &batch,
            |b, _| {
                b.iter(|| {
                    be.attention(&q, &cache, 0, &meta, &shape, HeadTerms::none())
                        .unwrap()
                })
            },
        );
    }
    g.finish();
}

/// Host sampling of one row of a Llama-3 vocabulary (128,256 logits, spread like a real
/// model's) at temperature 0.8, top-p 0.95; beside it, the full sort of that row, which is
/// what the sampler did per token before it ordered candidates lazily.
fn sampling(c: &mut Criterion) {
    use kiln::engine::sampler::{sample, SampleContext};
    use kiln::engine::SamplingParams;
    use rand::SeedableRng;
    let logits: Vec<f32> = Tensor::randn(0f32, 3.0, 128_256, &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap();
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        ..Default::default()
    };
    let ctx = SampleContext {
        params: &params,
        prompt: &[],
        output: &[],
        end_tokens: &[],
        allowed: None,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut g = c.benchmark_group("sampling_128k_vocab");
    g.bench_function("sample_t0.8_top_p0.95", |b| {
        b.iter(|| sample(&mut logits.clone(), &ctx, &mut rng))
    });
    g.bench_function("full_sort_reference", |b| {
        b.iter(|| {
            let mut v: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            v
        })
    });
    g.finish();
}

criterion_group!(benches, ops, sampling);
criterion_main!(benches);
