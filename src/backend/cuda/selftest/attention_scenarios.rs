//! The attention batches the selftest checks, chosen so every kernel path and its edges run:
//! split-K decode at contexts around the block size and far past one split (uneven and
//! empty splits), batches of 1/8/32 at mixed contexts, GQA ratios 1, 4, 5, 7 and 8 at head
//! dims 64/80/96/128/256, sliding windows, the tensor-core prefill on several sequences
//! whose lengths are not multiples of its 64-row tile (chunked: context > new tokens),
//! serving steps of decode rows followed by prefill chunks (split between the two kernels),
//! the generic kernel (head dim 32), Gemma 2's soft-capped scores, gpt-oss's sinks and
//! ALiBi slopes on every kernel.

use super::suite::Suite;
use crate::backend::KeyWindow;
use rand::Rng;

/// Head geometry of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

/// A batch: per sequence `(context length after this step, new tokens this step)`.
pub struct Scenario {
    pub name: &'static str,
    pub seqs: Vec<(usize, usize)>,
    /// A sliding window or Llama 4's chunks.
    pub window: KeyWindow,
    /// Gemma 2's soft-cap of the scaled scores.
    pub softcap: Option<f32>,
    /// gpt-oss's attention sinks (random per head).
    pub sinks: bool,
    /// ALiBi (BLOOM, MPT): a slope per head, the standard `2^(-8 (h + 1) / hq)`.
    pub alibi: bool,
    pub heads: Heads,
}

pub fn scenarios(s: &mut Suite<'_>) -> Vec<Scenario> {
    let max_ctx = s.sizes.max_context;
    let model = Heads {
        q: s.sizes.q_heads,
        kv: s.sizes.kv_heads,
        dim: s.sizes.head_dim,
    };
    let mut decode = |count: usize| -> Vec<(usize, usize)> {
        let mut seqs: Vec<(usize, usize)> = (0..count)
            .map(|_| (s.rng.random_range(1..=max_ctx), 1))
            .collect();
        seqs[0].0 = 1;
        if count > 1 {
            seqs[count - 1].0 = max_ctx;
        }
        seqs
    };
    let (d1, d8, d32) = (vec![(max_ctx * 3 / 4, 1)], decode(8), decode(32));
    let prefill = s.sizes.prefill_tokens;
    let chunk = prefill / 4;
    let chunked = vec![(prefill * 3 / 5 + chunk, chunk), (77, 1)];
    // One token each at contexts on both sides of a block and of a split, up to many splits.
    let edges: Vec<(usize, usize)> = [1, 15, 16, 17, 255, 1000, 4097, 20_000]
        .iter()
        .map(|&ctx| (ctx, 1))
        .collect();
    // Prefill of several sequences: tile-sized, one row over, one row, chunked.
    let ragged = vec![(130, 130), (1, 1), (300, 65), (64, 64), (77, 13)];
    // A serving step: decode rows first, then prefill chunks (the decode rows run on the
    // split-K kernel, the rest on the tensor-core one).
    let mixed: Vec<(usize, usize)> = d8.iter().chain(&ragged).copied().collect();
    let mixed_for_sinks = mixed.clone();
    let mixed_for_alibi = mixed.clone();
    let mixed_for_chunks = mixed.clone();
    let d8_for_chunks = d8.clone();
    // Decode at the first and last positions of 8192-chunks and past two of them.
    let chunk_edges = vec![(8192, 1), (8193, 1), (16_384, 1), (16_385, 1), (20_000, 1)];
    let sink_edges = vec![(1, 1), (17, 1), (4097, 1), (20_000, 1)];
    let at = |name, seqs, heads| Scenario {
        name,
        seqs,
        window: KeyWindow::Full,
        softcap: None,
        sinks: false,
        alibi: false,
        heads,
    };
    let windowed = |name, seqs, window| Scenario {
        name,
        seqs,
        window: KeyWindow::Sliding(window),
        softcap: None,
        sinks: false,
        alibi: false,
        heads: model,
    };
    // Gemma 2's soft-capped scores (a cap small enough to change every softmax), with its
    // head dim 256 and its sliding window.
    let capped = |name, seqs, window, heads| Scenario {
        name,
        seqs,
        window: KeyWindow::sliding(window),
        softcap: Some(1.5),
        sinks: false,
        alibi: false,
        heads,
    };
    // gpt-oss: a sink per head, on every kernel path (split-K with and without the merge,
    // prefill tiles, the generic kernel), with its sliding window and head dim 64.
    let sunk = |name, seqs, window, heads| Scenario {
        name,
        seqs,
        window: KeyWindow::sliding(window),
        softcap: None,
        sinks: true,
        alibi: false,
        heads,
    };
    // ALiBi: on every kernel path (split-K over many splits at long contexts, prefill tiles
    // at head dims 64 and 128, a serving step split between the two, the generic kernel),
    // and in a window.
    let sloped = |name, seqs, window, heads| Scenario {
        name,
        seqs,
        window: KeyWindow::sliding(window),
        softcap: None,
        sinks: false,
        alibi: true,
        heads,
    };
    // Llama 4's chunked layers: chunks not a multiple of the block size (so a chunk starts
    // inside a block), at its real 8192 on long contexts, on every kernel path.
    let chunked_at = |name, seqs, chunk, heads| Scenario {
        name,
        seqs,
        window: KeyWindow::Chunked(chunk),
        softcap: None,
        sinks: false,
        alibi: false,
        heads,
    };
    let heads = |q, kv, dim| Heads { q, kv, dim };
    vec![
        at("decode x1", d1, model),
        at("decode x8", d8.clone(), model),
        at("decode x32", d32.clone(), model),
        at("decode ctx 1..20000", edges.clone(), model),
        at("decode x1 ctx 20000", vec![(20_000, 1)], model),
        at("decode x1 ctx 4097", vec![(4097, 1)], model),
        at("decode x8 mha hd64", d8.clone(), heads(16, 16, 64)),
        at("decode x32 gqa8 hd256", d32, heads(16, 2, 256)),
        at("decode edges gqa8 hd256", edges.clone(), heads(16, 2, 256)),
        at("decode x8 gqa5 hd80", d8.clone(), heads(20, 4, 80)),
        at("decode x8 gqa7 hd96", d8.clone(), heads(28, 4, 96)),
        at("decode edges mha hd64", edges, heads(8, 8, 64)),
        // DeepSeek's decompressed latent attention (V2-Lite's 16 heads of 192).
        at("decode x8 mha hd192", d8.clone(), heads(16, 16, 192)),
        at("prefill", vec![(prefill, prefill)], model),
        at("chunked prefill+decode", chunked.clone(), model),
        at("prefill ragged x5", ragged.clone(), model),
        at("prefill ragged mha hd64", ragged.clone(), heads(16, 16, 64)),
        at(
            "prefill ragged gqa8 hd256",
            ragged.clone(),
            heads(16, 2, 256),
        ),
        at("prefill ragged gqa7 hd96", ragged.clone(), heads(14, 2, 96)),
        at(
            "prefill ragged mha hd192",
            ragged.clone(),
            heads(16, 16, 192),
        ),
        at("mixed decode x8 + prefill", mixed.clone(), model),
        at(
            "mixed decode + prefill gqa8 hd256",
            mixed.clone(),
            heads(16, 2, 256),
        ),
        windowed("mixed decode + prefill window", mixed.clone(), 37),
        at("prefill ragged gqa5 hd80", ragged.clone(), heads(10, 2, 80)),
        at("generic hd32 decode x8", d8.clone(), heads(8, 2, 32)),
        at("generic hd32 ragged", ragged.clone(), heads(8, 2, 32)),
        // Windows shorter than most contexts, not a multiple of the block size, so the
        // first key falls inside a block.
        windowed("decode x8 window", d8, max_ctx / 4 + 3),
        windowed("decode x1 ctx 20000 window", vec![(20_000, 1)], 4099),
        windowed("chunked+decode window", chunked, chunk / 2 + 5),
        windowed("prefill ragged window", ragged.clone(), 37),
        chunked_at("decode x8 chunk", d8_for_chunks, max_ctx / 4 + 3, model),
        chunked_at("decode ctx 1..20000 chunk 8192", chunk_edges, 8192, model),
        chunked_at("prefill ragged chunk 37", ragged.clone(), 37, model),
        chunked_at(
            "mixed decode + prefill chunk 37",
            mixed_for_chunks,
            37,
            model,
        ),
        chunked_at(
            "generic hd32 ragged chunk 37",
            ragged.clone(),
            37,
            heads(8, 2, 32),
        ),
        capped("mixed decode + prefill softcap", mixed.clone(), None, model),
        capped(
            "mixed softcap window gqa2 hd256",
            mixed,
            Some(37),
            heads(8, 4, 256),
        ),
        capped(
            "decode edges softcap",
            vec![(1, 1), (17, 1), (4097, 1)],
            None,
            model,
        ),
        capped(
            "generic hd32 ragged softcap",
            ragged.clone(),
            None,
            heads(8, 2, 32),
        ),
        sunk(
            "mixed decode + prefill sinks",
            mixed_for_sinks.clone(),
            None,
            model,
        ),
        sunk(
            "mixed sinks window gqa8 hd64",
            mixed_for_sinks,
            Some(37),
            heads(64, 8, 64),
        ),
        sunk("decode edges sinks", sink_edges.clone(), None, model),
        sunk(
            "generic hd32 ragged sinks",
            ragged.clone(),
            None,
            heads(8, 2, 32),
        ),
        sloped("decode edges alibi", sink_edges, None, model),
        sloped("prefill alibi", vec![(prefill, prefill)], None, model),
        sloped(
            "prefill ragged alibi mha hd64",
            ragged.clone(),
            None,
            heads(16, 16, 64),
        ),
        sloped(
            "mixed decode + prefill alibi",
            mixed_for_alibi.clone(),
            None,
            model,
        ),
        sloped(
            "mixed alibi window gqa8 hd64",
            mixed_for_alibi,
            Some(37),
            heads(64, 8, 64),
        ),
        sloped("generic hd32 ragged alibi", ragged, None, heads(8, 2, 32)),
    ]
}
