//! Tensor parallelism on the CPU: every fixture architecture sharded 2, 4 and 8 ways gives
//! TP = 1's logits (within float reordering) and its greedy tokens; a failing rank fails the
//! step, and the engine, without hanging anyone.

mod common;

use common::*;
use kiln::backend::cpu::CpuBackend;
use kiln::backend::{Backend, BatchLayout, DType};
use kiln::engine::runner::{ModelRunner, Runner, StepInput};
use kiln::engine::{EngineConfig, EngineHandle, LlmEngine};
use kiln::launch::prepare_model;
use kiln::parallel::host_group::HostStaged;
use kiln::parallel::tp_runner::{TpRunner, TpSpec};
use kiln::parallel::Communicator;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const BLOCK_SIZE: usize = 4;
const NUM_BLOCKS: usize = 64;

fn spec(
    arch: &str,
    dtype: &str,
    comms: Vec<Box<dyn Communicator<CpuBackend>>>,
) -> TpSpec<CpuBackend> {
    spec_with(arch, dtype, &[], comms)
}

/// [`spec`] with more `kiln serve` flags (`--load-format dummy`, say).
fn spec_with(
    arch: &str,
    dtype: &str,
    extra: &[&str],
    comms: Vec<Box<dyn Communicator<CpuBackend>>>,
) -> TpSpec<CpuBackend> {
    let dir = fixture(arch);
    let mut flags = vec!["--model", dir.to_str().unwrap(), "--dtype", dtype];
    flags.extend_from_slice(extra);
    let args = engine_args(&flags);
    let prepared = prepare_model(&args, kiln::launch::Device::Cpu).unwrap();
    TpSpec {
        config: prepared.config,
        dtype: prepared.dtype,
        weights: prepared.weights,
        block_size: BLOCK_SIZE,
        state_slots: 8,
        open_backend: Arc::new(|_| Ok(CpuBackend::new())),
        communicators: comms,
        on_layer: Arc::new(|_, _| {}),
        adapters: Vec::new().into(),
        max_lora_rank: 64,
    }
}

fn host_comms(world: usize) -> Vec<Box<dyn Communicator<CpuBackend>>> {
    HostStaged::group(world)
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Communicator<CpuBackend>>)
        .collect()
}

fn tp_runner(arch: &str, dtype: &str, world: usize) -> TpRunner {
    TpRunner::start(spec(arch, dtype, host_comms(world)), |_| Ok(NUM_BLOCKS))
        .unwrap()
        .0
}

fn single_runner(arch: &str, dtype: &str) -> ModelRunner<CpuBackend> {
    let m = load(arch, dtype);
    ModelRunner::new(m.backend, m.model, (NUM_BLOCKS, BLOCK_SIZE), 8).unwrap()
}

/// One prefill of each prompt, all in one batch, each sampling its last token.
fn prefill(prompts: &[&[u32]]) -> StepInput {
    let mut layout = BatchLayout {
        block_size: BLOCK_SIZE,
        query_start: vec![0],
        ..Default::default()
    };
    let mut tokens = Vec::new();
    let mut next_block = 0u32;
    for ids in prompts {
        let blocks = ids.len().div_ceil(BLOCK_SIZE) as u32;
        let table: Vec<u32> = (next_block..next_block + blocks).collect();
        next_block += blocks;
        for (pos, &t) in ids.iter().enumerate() {
            tokens.push(t);
            layout.positions.push(pos as u32);
            layout
                .slots
                .push((table[pos / BLOCK_SIZE] as usize * BLOCK_SIZE + pos % BLOCK_SIZE) as i64);
        }
        layout.query_start.push(tokens.len());
        layout.context_lens.push(ids.len());
        layout.block_tables.push(table);
        layout.logits_rows.push(tokens.len() - 1);
    }
    StepInput {
        tokens,
        layout,
        ..Default::default()
    }
}

#[test]
fn sharded_logits_equal_one_rank_for_every_architecture_and_size() {
    for arch in shardable_archs() {
        assert_shards_like_one_rank(arch, &[2, 4, 8]);
    }
}

/// Mamba-2 mixers with a gated norm split only into whole B / C groups: two ways for
/// these fixtures' two groups (Falcon-H1's, without the norm, split 2, 4 and 8 ways above).
#[test]
fn normed_mamba_mixers_shard_by_whole_groups() {
    for arch in ["bamba", "mamba2", "granitemoehybrid_moe", "nemotron_h"] {
        assert_shards_like_one_rank(arch, &[2]);
    }
}

/// The fixture's prompts' last logits on `worlds` ranks equal one rank's (f32 rounding) and
/// transformers'.
fn assert_shards_like_one_rank(arch: &str, worlds: &[usize]) {
    let r = reference(arch);
    let prompts: Vec<&[u32]> = r.prompts.iter().map(|p| p.prompt_ids.as_slice()).collect();
    let input = prefill(&prompts);
    let expected = single_runner(arch, "float32")
        .execute(&input)
        .unwrap()
        .logits;
    for &world in worlds {
        let got = tp_runner(arch, "float32", world)
            .execute(&input)
            .unwrap()
            .logits;
        // Row-parallel sums add the same products in another order: f32 rounding only.
        let diff = max_abs_diff(&got, &expected);
        assert!(diff < 1e-4, "{arch} TP={world}: max abs logit diff {diff}");
        // And against transformers, as TP = 1 is checked in hf_reference.rs.
        let vocab = got.len() / prompts.len();
        for (p, row) in r.prompts.iter().zip(got.chunks(vocab)) {
            let diff = max_abs_diff(row, &p.last_logits);
            assert!(diff < 1e-3, "{arch} TP={world} vs transformers: {diff}");
        }
    }
}

/// Quantized checkpoints shard after their weights expand: GPTQ's `desc_act` groups scatter
/// over every input, so a row-parallel rank's inputs take their groups' scales from the
/// whole. Each size matches the fixture's transformers reference.
#[test]
fn quantized_checkpoints_shard_like_unquantized_ones() {
    for name in [
        "llama_gptq",
        "qwen2_awq",
        "qwen3_w4a16",
        "qwen3_fp8",
        "qwen3_nvfp4",
        "qwen3_nvfp4_modelopt",
        "qwen3_bnb_nf4",
        "qwen3_bnb_int8",
    ] {
        let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids = |p: &serde_json::Value| -> Vec<u32> {
            serde_json::from_value(p["prompt_ids"].clone()).unwrap()
        };
        let prompts: Vec<Vec<u32>> = r["prompts"].as_array().unwrap().iter().map(ids).collect();
        let slices: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let input = prefill(&slices);
        for world in [2, 4] {
            let got = tp_runner(name, "float32", world)
                .execute(&input)
                .unwrap()
                .logits;
            let vocab = got.len() / prompts.len();
            for (p, row) in r["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .zip(got.chunks(vocab))
            {
                let want: Vec<f32> = serde_json::from_value(p["last_logits"].clone()).unwrap();
                let diff = max_abs_diff(row, &want);
                assert!(diff < 1e-3, "{name} TP={world} vs its reference: {diff}");
            }
        }
    }
}

/// Generated (dummy) weights shard like stored ones: every rank cuts its part out of the
/// same values, so TP = 2 and 4 give TP = 1's logits. gpt-oss's experts are generated
/// straight into the layout the kernels take, not cut from a stored stack.
#[test]
fn dummy_weights_shard_like_one_rank() {
    let input = prefill(&[&[3, 17, 29, 5], &[8, 1]]);
    let logits = |world: usize| {
        let spec = spec_with(
            "gpt_oss",
            "float32",
            &["--load-format", "dummy"],
            host_comms(world),
        );
        TpRunner::start(spec, |_| Ok(NUM_BLOCKS))
            .unwrap()
            .0
            .execute(&input)
            .unwrap()
            .logits
    };
    let one = logits(1);
    assert!(one.iter().all(|v| v.is_finite()) && one.iter().any(|&v| v != one[0]));
    for world in [2, 4] {
        let diff = max_abs_diff(&logits(world), &one);
        assert!(diff < 1e-4, "gpt_oss dummy TP={world} vs TP=1: {diff}");
    }
}

/// bf16 ranks round their partial sums to bf16 before the all-reduce adds them, one rounding
/// more than TP = 1: at these fixtures' logit magnitudes (16-32, one bf16 ulp = 0.125) that
/// stays within two ulps.
#[test]
fn sharded_bf16_logits_stay_within_two_ulps_of_one_rank() {
    for arch in shardable_archs() {
        let r = reference(arch);
        let input = prefill(&[r.prompts[2].prompt_ids.as_slice()]);
        let expected = single_runner(arch, "bfloat16")
            .execute(&input)
            .unwrap()
            .logits;
        for world in [2, 8] {
            let got = tp_runner(arch, "bfloat16", world)
                .execute(&input)
                .unwrap()
                .logits;
            let diff = max_abs_diff(&got, &expected);
            assert!(
                diff <= 0.25,
                "{arch} bf16 TP={world}: max abs logit diff {diff}"
            );
        }
    }
}

#[test]
fn sharded_engines_generate_the_reference_greedy_tokens_batched() {
    for arch in shardable_archs() {
        let r = reference(arch);
        for world in ["2", "4", "8"] {
            let h = handle(
                arch,
                &[
                    "--device",
                    "cpu",
                    "--tensor-parallel-size",
                    world,
                    "--block-size",
                    "4",
                ],
            );
            let streams: Vec<_> = r
                .prompts
                .iter()
                .map(|p| {
                    h.submit(p.prompt_ids.clone(), greedy(p.greedy_ids.len()))
                        .unwrap()
                })
                .collect();
            for (s, p) in streams.into_iter().zip(&r.prompts) {
                let out = s.collect_blocking().unwrap();
                assert_eq!(
                    out.token_ids, p.greedy_ids,
                    "{arch} TP={world} '{}'",
                    p.text
                );
            }
            h.shutdown();
        }
    }
}

#[test]
fn rows_marked_for_picking_get_the_argmax_and_the_rest_keep_their_logits() {
    let r = reference("qwen2");
    let prompts: Vec<&[u32]> = r.prompts.iter().map(|p| p.prompt_ids.as_slice()).collect();
    let mut input = prefill(&prompts);
    let all = single_runner("qwen2", "float32").execute(&input).unwrap();
    assert!(all.picked.iter().all(Option::is_none));
    input.pick_argmax = vec![true, false, true];
    let mixed = single_runner("qwen2", "float32").execute(&input).unwrap();
    let vocab = all.logits.len() / prompts.len();
    let rows: Vec<&[f32]> = all.logits.chunks(vocab).collect();
    assert_eq!(
        mixed.picked,
        [
            Some(kiln::engine::sampler::argmax(rows[0])),
            None,
            Some(kiln::engine::sampler::argmax(rows[2]))
        ]
    );
    assert_eq!(mixed.logits, rows[1]);
    // The first greedy token of each prompt is the reference's.
    assert_eq!(mixed.picked[0], Some(r.prompts[0].greedy_ids[0]));
    // A sharded runner sends every row back as logits.
    let tp = tp_runner("qwen2", "float32", 2).execute(&input).unwrap();
    assert_eq!(tp.picked, [None, None, None]);
}

#[test]
fn sizes_that_do_not_fit_the_model_are_refused_before_loading() {
    let dir = fixture("llama");
    for (size, expected) in [
        ("3", "supported sizes are 1, 2, 4 and 8"),
        ("16", "supported"),
    ] {
        let args = engine_args(&[
            "--model",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
            "--tensor-parallel-size",
            size,
        ]);
        let err = format!("{:#}", kiln::launch::build_engine(&args).err().unwrap());
        assert!(err.contains(expected), "{err}");
    }
}

/// A communicator that fails on rank `bad` at its `after`-th all-reduce, like a GPU that
/// runs out of memory mid-step.
struct FailingComm {
    inner: HostStaged,
    bad: bool,
    calls: AtomicUsize,
    after: usize,
}

impl Communicator<CpuBackend> for FailingComm {
    fn rank(&self) -> usize {
        Communicator::<CpuBackend>::rank(&self.inner)
    }
    fn world_size(&self) -> usize {
        Communicator::<CpuBackend>::world_size(&self.inner)
    }
    fn all_reduce_sum(
        &self,
        be: &CpuBackend,
        x: <CpuBackend as Backend>::Tensor,
    ) -> anyhow::Result<<CpuBackend as Backend>::Tensor> {
        if self.bad && self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.after {
            anyhow::bail!("injected device failure");
        }
        self.inner.all_reduce_sum(be, x)
    }
    fn abort(&self, reason: &str) {
        Communicator::<CpuBackend>::abort(&self.inner, reason)
    }
}

fn failing_comms(world: usize, bad: usize, after: usize) -> Vec<Box<dyn Communicator<CpuBackend>>> {
    HostStaged::group(world)
        .into_iter()
        .enumerate()
        .map(|(rank, inner)| {
            Box::new(FailingComm {
                inner,
                bad: rank == bad,
                calls: AtomicUsize::new(0),
                after,
            }) as Box<dyn Communicator<CpuBackend>>
        })
        .collect()
}

#[test]
fn a_rank_failing_mid_step_fails_the_step_with_its_cause_and_nothing_hangs() {
    let r = reference("qwen2");
    let input = prefill(&[r.prompts[0].prompt_ids.as_slice()]);
    let (mut runner, _) = TpRunner::start(spec("qwen2", "float32", failing_comms(4, 2, 3)), |_| {
        Ok(NUM_BLOCKS)
    })
    .unwrap();
    let err = format!("{:#}", runner.execute(&input).unwrap_err());
    assert!(
        err.contains("injected device failure") && err.contains("rank 2"),
        "{err}"
    );
    // The group stays failed: later steps error at once instead of waiting.
    assert!(runner.execute(&input).is_err());
}

#[test]
fn a_rank_that_cannot_open_its_device_fails_startup_naming_it() {
    let mut s = spec("llama", "float32", host_comms(4));
    s.open_backend = Arc::new(|rank| {
        anyhow::ensure!(rank != 3, "CUDA device 3 is lost");
        Ok(CpuBackend::new())
    });
    let err = format!(
        "{:#}",
        TpRunner::start(s, |_| Ok(NUM_BLOCKS)).err().unwrap()
    );
    assert!(
        err.contains("rank 3") && err.contains("device 3 is lost"),
        "{err}"
    );
}

#[test]
fn a_failing_rank_fails_the_engine_and_its_requests_get_errors() {
    let r = reference("llama");
    let (runner, blocks) =
        TpRunner::start(spec("llama", "float32", failing_comms(2, 1, 10)), |_| {
            Ok(NUM_BLOCKS)
        })
        .unwrap();
    let m = load("llama", "float32");
    let config = EngineConfig {
        max_model_len: 256,
        max_num_seqs: 8,
        max_num_batched_tokens: 256,
        block_size: BLOCK_SIZE,
        num_blocks: blocks,
        enable_prefix_caching: true,
        seed: 0,
        scheduling_policy: Default::default(),
    };
    let engine = LlmEngine::new(config, Box::new(runner), Arc::new(m.tokenizer), m.eos).unwrap();
    let h = EngineHandle::spawn(engine, 0);
    let streams: Vec<_> = r
        .prompts
        .iter()
        .map(|p| h.submit(p.prompt_ids.clone(), greedy(8)).unwrap())
        .collect();
    for s in streams {
        let err = s.collect_blocking().unwrap_err();
        assert!(err.contains("injected device failure"), "{err}");
    }
    assert!(h.stats().failure().is_some());
    h.shutdown();
}

#[test]
fn kv_heads_are_split_or_replicated_per_rank() {
    // 2 KV heads: split over 2 ranks, replicated over 4 and 8.
    let dir = fixture("mistral");
    let args = engine_args(&["--model", dir.to_str().unwrap(), "--dtype", "float32"]);
    let prepared = prepare_model(&args, kiln::launch::Device::Cpu).unwrap();
    let be = CpuBackend::new();
    for (world, kv_per_rank) in [(1, 2), (2, 1), (4, 1), (8, 1)] {
        let model = kiln::model::llama::LlamaModel::load_shard(
            &be,
            prepared.config.clone(),
            prepared.weights.as_ref(),
            DType::F32,
            kiln::parallel::Shard {
                rank: world - 1,
                world,
            },
            |_| {},
        )
        .unwrap();
        let shape = model.attention_shape();
        assert_eq!(shape.num_heads, 8 / world);
        assert_eq!(shape.num_kv_heads, kv_per_rank, "TP={world}");
    }
}

#[test]
fn a_model_whose_norms_span_every_head_refuses_tensor_parallelism() {
    let err = match TpRunner::start(spec("olmo2", "float32", host_comms(2)), |_| Ok(NUM_BLOCKS)) {
        Ok(_) => panic!("OLMo 2 was sharded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cannot be tensor-parallel"), "{err}");
}

/// A sharded Qwen3-Next keeps its mixers' states on every rank, so the engine must run it
/// without prefix caching as it runs one rank: the same prompt twice (the second would hit
/// the cache) gives the reference tokens both times.
#[test]
fn sharded_recurrent_models_run_without_prefix_caching() {
    let r = reference("qwen3_next");
    let p = &r.prompts[2];
    let h = handle(
        "qwen3_next",
        &[
            "--device",
            "cpu",
            "--tensor-parallel-size",
            "2",
            "--block-size",
            "4",
        ],
    );
    for round in 0..2 {
        let out = h
            .submit(p.prompt_ids.clone(), greedy(p.greedy_ids.len()))
            .unwrap()
            .collect_blocking()
            .unwrap();
        assert_eq!(out.token_ids, p.greedy_ids, "round {round}");
        assert_eq!(out.cached_tokens, 0, "round {round}");
    }
    h.shutdown();
}

#[test]
fn mamba_mixers_that_would_split_a_norm_or_x_proj_refuse_tensor_parallelism() {
    // One B / C group under a gated norm (Granite 4.0-H's), two groups four ways, Mamba-1.
    for (arch, world) in [
        ("granitemoehybrid", 2),
        ("bamba", 4),
        ("mamba", 2),
        ("jamba", 2),
    ] {
        let start = TpRunner::start(spec(arch, "float32", host_comms(world)), |_| Ok(NUM_BLOCKS));
        let err = match start {
            Ok(_) => panic!("{arch} was sharded {world} ways"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("Mamba mixers"), "{arch}: {err}");
    }
}
