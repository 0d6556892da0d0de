//! Criterion benches of the CPU backend's ops at a ~100M-model shape, and of one engine step.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kiln::backend::cpu::CpuBackend;
use kiln::backend::{AttentionShape, Backend, BatchLayout, KvCacheSpec, Rope};

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
        };
        let meta = be.prepare_batch(&layout).unwrap();
        g.bench_with_input(BenchmarkId::new("rope", batch), &batch, |b, _| {
            b.iter(|| be.rope(q.clone(), k.clone(), 64, &rope, &meta).unwrap())
        });
        let shape = AttentionShape {
            num_heads: 12,
            num_kv_heads: 4,
            head_dim: 64,
            sliding_window: None,
        };
        g.bench_with_input(
            BenchmarkId::new("decode_attention_ctx512", batch),
            &batch,
            |b, _| b.iter(|| be.attention(&q, &cache, 0, &meta, &shape).unwrap()),
        );
    }
    g.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
