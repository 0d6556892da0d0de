//! The CUDA kernels are checked against [`super::reference`] on the GPU; this checks that
//! reference against the CPU backend (what the models are verified with), so the three agree.
//! Paged attention with GQA, a chunked prefill beside a decode, shuffled blocks, sliding
//! windows shorter than the context, soft-capped scores and the per-head terms (sinks,
//! ALiBi slopes).

use super::reference::{self, AttentionShape as RefShape};
use crate::backend::cpu::CpuBackend;
use crate::backend::{
    AttentionShape, Backend, BatchLayout, DType, HeadTerms, KeyWindow, KvCacheSpec,
};
use candle_core::{Device, Tensor};

const HQ: usize = 4;
const HK: usize = 2;
const HD: usize = 8;
const BLOCK: usize = 4;

/// Deterministic values in [-1, 1) (a small LCG: no RNG crate needed for a fixture).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Sequence 0: a 5-token chunk ending a 13-token context; sequence 1: one decode token of 10.
fn layout() -> BatchLayout {
    let tables = vec![vec![3u32, 0, 5, 1], vec![2, 6, 4]];
    let mut positions = Vec::new();
    let mut slots = Vec::new();
    for (table, (ctx, q_len)) in tables.iter().zip([(13usize, 5usize), (10, 1)]) {
        for p in ctx - q_len..ctx {
            positions.push(p as u32);
            slots.push((table[p / BLOCK] as usize * BLOCK + p % BLOCK) as i64);
        }
    }
    BatchLayout {
        positions,
        slots,
        query_start: vec![0, 5, 6],
        context_lens: vec![13, 10],
        block_tables: tables,
        block_size: BLOCK,
        logits_rows: vec![4, 5],
        adapters: Vec::new(),
        state_slots: Vec::new(),
    }
}

/// Blocks of the test cache (the layout's tables use blocks 0 to 6).
const NUM_BLOCKS: usize = 7;

/// A one-layer f32 cache of the layout's blocks (a convolution layer's rows where
/// `conv_layers` says).
fn one_layer(conv_layers: Vec<(usize, usize)>) -> KvCacheSpec {
    KvCacheSpec {
        num_layers: 1,
        num_blocks: NUM_BLOCKS,
        block_size: BLOCK,
        num_kv_heads: HK,
        head_dim: HD,
        dtype: DType::F32,
        conv_layers,
        state_layers: Vec::new(),
        state_slots: 0,
    }
}

/// What one comparison adds to plain causal attention.
#[derive(Debug, Default, Clone, Copy)]
struct Variant {
    window: KeyWindow,
    softcap: Option<f32>,
    sinks: bool,
    alibi: bool,
}

/// ALiBi slopes halving from head to head (0.5, 0.25, ...), large enough that a key a few
/// positions back loses most of its weight in the first heads.
fn alibi_slopes() -> Vec<f32> {
    (1..=HQ as i32).map(|h| 0.5f32.powi(h)).collect()
}

fn compare(variant: Variant) {
    let Variant {
        window,
        softcap,
        sinks: with_sinks,
        alibi: with_alibi,
    } = variant;
    let batch = layout();
    let cpu = CpuBackend::new();
    let mut cache = cpu.new_kv_cache(&one_layer(Vec::new())).unwrap();
    let len = NUM_BLOCKS * BLOCK * HK * HD;
    cache.k[0] = values(len, 1);
    cache.v[0] = values(len, 2);
    let n = batch.num_tokens();
    let q = values(n * HQ * HD, 3);

    let shape = AttentionShape {
        num_heads: HQ,
        num_kv_heads: HK,
        head_dim: HD,
        window,
        logit_softcap: softcap,
    };
    let q_t = Tensor::from_vec(q.clone(), (n, HQ * HD), &Device::Cpu).unwrap();
    let meta = cpu.prepare_batch(&batch).unwrap();
    let sinks = with_sinks.then(|| values(HQ, 4).iter().map(|v| v * 3.0).collect::<Vec<_>>());
    let alibi = with_alibi.then(alibi_slopes);
    let on_cpu = |v: &Vec<f32>| Tensor::from_vec(v.clone(), HQ, &Device::Cpu).unwrap();
    let (sinks_t, alibi_t) = (sinks.as_ref().map(on_cpu), alibi.as_ref().map(on_cpu));
    let out = cpu
        .attention(
            &q_t,
            &cache,
            0,
            &meta,
            &shape,
            HeadTerms {
                sinks: sinks_t.as_ref(),
                alibi: alibi_t.as_ref(),
            },
        )
        .unwrap();
    let cpu_out = cpu.to_host_f32(&out).unwrap();

    let max_blocks = 4;
    let mut flat_tables = vec![0i32; 2 * max_blocks];
    for (s, table) in batch.block_tables.iter().enumerate() {
        for (i, &b) in table.iter().enumerate() {
            flat_tables[s * max_blocks + i] = b as i32;
        }
    }
    let ref_out = reference::attention(
        &q,
        &cache.k[0],
        &cache.v[0],
        &flat_tables,
        &[0, 5, 6],
        &[13, 10],
        RefShape {
            q_heads: HQ,
            kv_heads: HK,
            head_dim: HD,
            block_size: BLOCK,
            max_blocks_per_seq: max_blocks,
            window,
            softcap,
            sinks: sinks.as_deref(),
            alibi: alibi.as_deref(),
        },
        1.0 / (HD as f32).sqrt(),
    );
    assert_eq!(cpu_out.len(), ref_out.len());
    let err = cpu_out
        .iter()
        .zip(&ref_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 1e-5, "{variant:?}: max abs error {err}");
}

#[test]
fn reference_attention_matches_the_cpu_backend_without_a_window() {
    compare(Variant::default());
}

#[test]
fn reference_attention_matches_the_cpu_backend_with_attention_sinks() {
    for window in [
        KeyWindow::Full,
        KeyWindow::Sliding(3),
        KeyWindow::Chunked(4),
    ] {
        compare(Variant {
            window,
            sinks: true,
            ..Variant::default()
        });
    }
}

#[test]
fn reference_attention_matches_the_cpu_backend_with_soft_capped_scores() {
    for (window, cap) in [
        (KeyWindow::Full, 0.5),
        (KeyWindow::Sliding(3), 2.0),
        (KeyWindow::Full, 50.0),
    ] {
        compare(Variant {
            window,
            softcap: Some(cap),
            ..Variant::default()
        });
    }
}

#[test]
fn reference_attention_matches_the_cpu_backend_with_windows_shorter_than_the_context() {
    for w in [1, 3, 6, 9] {
        compare(Variant {
            window: KeyWindow::Sliding(w),
            ..Variant::default()
        });
    }
}

/// Llama 4's chunked layers: chunks shorter than the context, one of a single position
/// (each token sees only itself), and one longer than every sequence (no effect).
#[test]
fn reference_attention_matches_the_cpu_backend_in_chunks() {
    for c in [1, 3, 4, 5, 16] {
        compare(Variant {
            window: KeyWindow::Chunked(c),
            ..Variant::default()
        });
    }
}

#[test]
fn reference_attention_matches_the_cpu_backend_with_alibi() {
    compare(Variant {
        alibi: true,
        ..Variant::default()
    });
    // With the other terms: the slope joins after the cap, beside the sink.
    compare(Variant {
        softcap: Some(2.0),
        sinks: true,
        alibi: true,
        ..Variant::default()
    });
}

#[test]
fn reference_attention_matches_the_cpu_backend_with_alibi_in_a_window() {
    for w in [1, 3, 6] {
        compare(Variant {
            window: KeyWindow::Sliding(w),
            alibi: true,
            ..Variant::default()
        });
    }
}

#[test]
fn alibi_slopes_change_the_result() {
    // Sanity of the test itself: the slopes move every head's output (keys are 4 back).
    let q = values(HQ * HD, 9);
    let k = values(5 * HD, 10);
    let v = values(5 * HD, 11);
    let slopes = alibi_slopes();
    let shape = |alibi| RefShape {
        q_heads: HQ,
        kv_heads: 1,
        head_dim: HD,
        block_size: 8,
        max_blocks_per_seq: 1,
        window: KeyWindow::Full,
        softcap: None,
        sinks: None,
        alibi,
    };
    let plain = reference::attention(&q, &k, &v, &[0], &[0, 1], &[5], shape(None), 1.0);
    let biased = reference::attention(&q, &k, &v, &[0], &[0, 1], &[5], shape(Some(&slopes)), 1.0);
    for (head, (a, b)) in plain.chunks(HD).zip(biased.chunks(HD)).enumerate() {
        assert_ne!(a, b, "head {head}");
    }
}

#[test]
fn a_window_changes_the_result_once_the_context_exceeds_it() {
    // Sanity of the test itself: with w = 3 the chunk's tokens see fewer keys than without.
    let q = values(HD, 9);
    let k = values(8 * HD, 10);
    let v = values(8 * HD, 11);
    let shape = |w| RefShape {
        q_heads: 1,
        kv_heads: 1,
        head_dim: HD,
        block_size: 8,
        max_blocks_per_seq: 1,
        window: w,
        softcap: None,
        sinks: None,
        alibi: None,
    };
    let run = |w| reference::attention(&q, &k, &v, &[0], &[0, 1], &[8], shape(w), 1.0);
    let full = run(KeyWindow::Full);
    assert_ne!(full, run(KeyWindow::Sliding(3)));
    assert_eq!(
        full,
        run(KeyWindow::Sliding(8)),
        "a window as long as the context changes nothing"
    );
    // The token at position 7 in chunks of 3 sees positions 6 and 7: a window of 2.
    assert_eq!(run(KeyWindow::Chunked(3)), run(KeyWindow::Sliding(2)));
    assert_eq!(full, run(KeyWindow::Chunked(8)));
}

/// LFM2's gated short convolution: the chunk reads rows of its cached prefix (random values
/// stand for them) and its own, the decode row the rows before it; the cache after the step
/// agrees too.
#[test]
fn reference_gated_short_conv_matches_the_cpu_backend() {
    let (width, taps) = (6, 3);
    let batch = layout();
    let cpu = CpuBackend::new();
    let mut cache = cpu.new_kv_cache(&one_layer(vec![(0, width)])).unwrap();
    let rows = values(NUM_BLOCKS * BLOCK * width, 4);
    cache.k[0] = rows.clone();
    let n = batch.num_tokens();
    let bcx = values(n * 3 * width, 5);
    let weight = values(width * taps, 6);
    let dev = Device::Cpu;
    let out = cpu
        .gated_short_conv(
            &Tensor::from_vec(bcx.clone(), (n, 3 * width), &dev).unwrap(),
            &Tensor::from_vec(weight.clone(), (width, taps), &dev).unwrap(),
            &mut cache,
            0,
            &batch,
        )
        .unwrap();
    let cpu_out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let tables: Vec<i32> = batch
        .block_tables
        .iter()
        .flat_map(|t| {
            let mut row: Vec<i32> = t.iter().map(|&b| b as i32).collect();
            row.resize(4, 0);
            row
        })
        .collect();
    let slots: Vec<i32> = batch.slots.iter().map(|&s| s as i32).collect();
    let mut ref_rows = rows;
    let ref_out = reference::gated_short_conv(
        &bcx,
        (&weight, taps),
        &mut ref_rows,
        &reference::PagedTokens {
            tables: &tables,
            max_blocks: 4,
            block_size: BLOCK,
            query_start: &[0, 5, 6],
            context_lens: &[13, 10],
            slots: &slots,
        },
        |v| v,
    );
    let err = cpu_out
        .iter()
        .zip(&ref_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 1e-6, "max abs error {err}");
    assert_eq!(cache.k[0], ref_rows);
}

#[test]
fn reference_gated_activations_match_the_cpu_backend() {
    let (n, inter) = (3, 40);
    let host = values(n * 2 * inter, 7)
        .iter()
        .map(|v| v * 4.0)
        .collect::<Vec<_>>();
    let be = CpuBackend::new();
    let t = Tensor::from_vec(host.clone(), (n, 2 * inter), &candle_core::Device::Cpu).unwrap();
    for (name, cpu, reference) in [
        (
            "silu",
            be.silu_mul(&t).unwrap(),
            reference::silu_mul(&host, inter),
        ),
        (
            "gelu_tanh",
            be.gelu_tanh_mul(&t).unwrap(),
            reference::gelu_tanh_mul(&host, inter),
        ),
        (
            "clamped_swiglu",
            be.clamped_swiglu(&t, 2.0, 1.702).unwrap(),
            reference::clamped_swiglu(&host, inter, (2.0, 1.702)),
        ),
    ] {
        let cpu: Vec<f32> = cpu.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in cpu.iter().zip(&reference) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{name}: {a} vs {b}"
            );
        }
    }
}
