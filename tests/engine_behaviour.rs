//! The engine's promises: batching changes nothing, seeds reproduce, blocks come back,
//! prefix caching and preemption keep outputs identical, bad input is refused clearly.

mod common;

use common::*;
use kiln::engine::{FinishReason, LlmEngine, RequestError, RequestOutput, SamplingParams};

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(n),
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

/// Sixteen different prompts of varied lengths, from the fixture tokenizer.
fn prompts(engine: &LlmEngine) -> Vec<Vec<u32>> {
    let tok = engine.tokenizer();
    (0..16)
        .map(|i| {
            let text = format!(
                "Prompt number {i}: the kiln fires {} pots today.",
                "clay ".repeat(i % 5 + 1)
            );
            tok.encode(&text, false).unwrap()
        })
        .collect()
}

#[test]
fn sixteen_concurrent_prompts_equal_each_run_alone() {
    let mut e = engine(
        "qwen2",
        &["--block-size", "4", "--max-num-batched-tokens", "64"],
    );
    let ps = prompts(&e);
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            run_all(&mut e, vec![(i as u64, p.clone(), greedy(24))])
                .remove(&(i as u64))
                .unwrap()
                .token_ids
        })
        .collect();
    let batch = run_all(
        &mut e,
        ps.iter()
            .enumerate()
            .map(|(i, p)| (100 + i as u64, p.clone(), greedy(24)))
            .collect(),
    );
    for (i, a) in alone.iter().enumerate() {
        assert_eq!(&batch[&(100 + i as u64)].token_ids, a, "prompt {i}");
        assert_eq!(a.len(), 24);
    }
    assert_eq!(e.num_free_blocks(), e.config().num_blocks, "blocks leaked");
}

/// Rows the runner picks (plain greedy) and rows the host samples (logprobs, penalties,
/// min_tokens, seeded sampling) in one batch: each request gets what it gets alone.
#[test]
fn device_picked_and_host_sampled_rows_mix_in_one_batch() {
    let mut e = engine("mistral", &["--block-size", "4"]);
    let ps = prompts(&e);
    let kinds = [
        greedy(12),
        SamplingParams {
            logprobs: Some(2),
            ..greedy(12)
        },
        SamplingParams {
            repetition_penalty: 1.3,
            ..greedy(12)
        },
        SamplingParams {
            min_tokens: 5,
            ignore_eos: false,
            ..greedy(12)
        },
        SamplingParams {
            temperature: 0.8,
            seed: Some(5),
            ..greedy(12)
        },
    ];
    let alone: Vec<RequestOutput> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            run_all(&mut e, vec![(i as u64, ps[i].clone(), k.clone())])
                .remove(&(i as u64))
                .unwrap()
        })
        .collect();
    let batch = run_all(
        &mut e,
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| (50 + i as u64, ps[i].clone(), k.clone()))
            .collect(),
    );
    for (i, a) in alone.iter().enumerate() {
        let b = &batch[&(50 + i as u64)];
        assert_eq!(b.token_ids, a.token_ids, "request kind {i}");
        assert_eq!(b.logprobs.len(), a.logprobs.len(), "request kind {i}");
    }
    assert_eq!(
        alone[1].logprobs.len(),
        12,
        "logprobs rows are sampled on the host"
    );
}

#[test]
fn a_seeded_sample_is_the_same_alone_and_in_a_batch() {
    let mut e = engine("llama", &[]);
    let ps = prompts(&e);
    let seeded = SamplingParams {
        max_tokens: Some(20),
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(42),
        ignore_eos: true,
        ..Default::default()
    };
    let alone = run_all(&mut e, vec![(1, ps[3].clone(), seeded.clone())])
        .remove(&1)
        .unwrap();
    let mut reqs: Vec<_> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                10 + i as u64,
                p.clone(),
                SamplingParams {
                    seed: None,
                    ..seeded.clone()
                },
            )
        })
        .collect();
    reqs.push((2, ps[3].clone(), seeded.clone()));
    let batch = run_all(&mut e, reqs);
    assert_eq!(batch[&2].token_ids, alone.token_ids);
    assert_eq!(batch[&2].text, alone.text);
    // And a different seed gives a different sample (20 tokens at T=0.9 from 448).
    let other = run_all(
        &mut e,
        vec![(
            3,
            ps[3].clone(),
            SamplingParams {
                seed: Some(7),
                ..seeded
            },
        )],
    )
    .remove(&3)
    .unwrap();
    assert_ne!(other.token_ids, alone.token_ids);
}

#[test]
fn prefix_cache_hits_reuse_blocks_and_change_nothing() {
    let mut e = engine("mistral", &["--block-size", "4"]);
    let base = prompts(&e)[7].clone();
    let first = run_all(&mut e, vec![(1, base.clone(), greedy(16))])
        .remove(&1)
        .unwrap();
    assert_eq!(first.cached_tokens, 0);
    let second = run_all(&mut e, vec![(2, base.clone(), greedy(16))])
        .remove(&2)
        .unwrap();
    assert_eq!(second.token_ids, first.token_ids);
    assert_eq!(
        second.cached_tokens,
        (base.len() - 1) / 4 * 4,
        "full prompt blocks should be cache hits"
    );
    // Without prefix caching the result is the same too.
    let mut cold = engine(
        "mistral",
        &["--block-size", "4", "--enable-prefix-caching", "false"],
    );
    let third = run_all(&mut cold, vec![(3, base, greedy(16))])
        .remove(&3)
        .unwrap();
    assert_eq!(third.token_ids, first.token_ids);
    assert_eq!(third.cached_tokens, 0);
}

/// LFM2 keeps its convolutions' state (each token's `B * x` row) in the paged cache: prefix
/// cache hits, prefill in chunks that cut through a convolution's window, and batching must
/// all give what a cold run of each prompt alone gives.
#[test]
fn lfm2_convolution_rows_survive_prefix_caching_chunking_and_batching() {
    cached_state_survives_prefix_caching_chunking_and_batching("lfm2", true);
}

/// The Mamba models (1 and 2) and Qwen3-Next keep a convolution window and a recurrent state per
/// running sequence: prefill chunks (whose state the next chunk resumes) and batching (each
/// sequence in its own slot) must change nothing. Prefix caching is off for them, so
/// nothing is served from the cache.
#[test]
fn recurrent_states_survive_chunking_and_batching() {
    for arch in [
        "bamba",
        "granitemoehybrid",
        "granitemoehybrid_moe",
        "mamba2",
        "qwen3_next",
        "mamba",
        "falcon_mamba",
        "jamba",
        "falcon_h1",
        "nemotron_h",
        "nemotron_h_moe",
    ] {
        cached_state_survives_prefix_caching_chunking_and_batching(arch, false);
    }
}

/// A preempted Mamba or gated delta sequence gives its state slot back and is recomputed
/// from its first token into whichever slot it gets next; 16 requests through 4 slots and a
/// KV budget that forces preemption all finish as they do alone (a slot leaked or shared
/// would not).
#[test]
fn preempted_recurrent_sequences_recompute_their_state() {
    for arch in [
        "granitemoehybrid",
        "qwen3_next",
        "falcon_mamba",
        "falcon_h1",
    ] {
        preemption_changes_no_output(arch, &["--max-num-seqs", "4"]);
    }
}

#[test]
fn recurrent_models_refuse_speculative_decoding() {
    for arch in ["bamba", "qwen3_next", "mamba"] {
        let dir = fixture(arch);
        let args = engine_args(&[
            "--model",
            dir.to_str().unwrap(),
            "--speculative-config",
            r#"{"method": "ngram", "num_speculative_tokens": 3}"#,
        ]);
        let err = format!("{:#}", kiln::launch::build_engine(&args).err().unwrap());
        assert!(err.contains("recurrent state"), "{arch}: {err}");
    }
}

/// Five prompts run cold and alone, then twice through an engine with prefix caching (where
/// the model allows it: `hits`) and prefill chunks of 7 tokens (blocks of 4), batched: the
/// same tokens, cache hits on the second round, no leaked blocks.
fn cached_state_survives_prefix_caching_chunking_and_batching(arch: &str, hits: bool) {
    let mut cold = engine(
        arch,
        &["--block-size", "4", "--enable-prefix-caching", "false"],
    );
    let ps: Vec<Vec<u32>> = prompts(&cold).into_iter().take(5).collect();
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            run_all(&mut cold, vec![(i as u64, p.clone(), greedy(12))])
                .remove(&(i as u64))
                .unwrap()
                .token_ids
        })
        .collect();
    let mut warm = engine(
        arch,
        &["--block-size", "4", "--max-num-batched-tokens", "7"],
    );
    for round in 0..2u64 {
        let outs = run_all(
            &mut warm,
            ps.iter()
                .enumerate()
                .map(|(i, p)| (10 * round + i as u64, p.clone(), greedy(12)))
                .collect(),
        );
        for (i, a) in alone.iter().enumerate() {
            let out = &outs[&(10 * round + i as u64)];
            assert_eq!(&out.token_ids, a, "{arch}: round {round}, prompt {i}");
            if round == 1 && hits {
                assert!(
                    out.cached_tokens > 0,
                    "{arch}: prompt {i} hit no cached block"
                );
            } else if !hits {
                assert_eq!(
                    out.cached_tokens, 0,
                    "{arch}: prompt {i} served from a cache"
                );
            }
        }
    }
    assert_eq!(
        warm.num_free_blocks(),
        warm.config().num_blocks,
        "{arch}: blocks leaked"
    );
}

#[test]
fn preemption_under_a_tiny_kv_budget_completes_every_request_correctly() {
    preemption_changes_no_output("qwen3", &[]);
}

/// Every prompt, run with room to spare and then under a budget of 24 blocks of 4 tokens
/// (which cannot hold 16 sequences of ~35 tokens at once) plus `flags`: preemption happens,
/// every request gets the same tokens, and every block comes back.
fn preemption_changes_no_output(arch: &str, flags: &[&str]) {
    let mut roomy = engine(arch, &["--block-size", "4"]);
    let ps = prompts(&roomy);
    let requests = || {
        ps.iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p.clone(), greedy(20)))
            .collect()
    };
    let expected = run_all(&mut roomy, requests());
    let mut tight_flags = vec![
        "--block-size",
        "4",
        "--num-kv-blocks",
        "24",
        "--max-model-len",
        "96",
    ];
    tight_flags.extend_from_slice(flags);
    let mut tight = engine(arch, &tight_flags);
    let got = run_all(&mut tight, requests());
    assert!(
        tight.num_preemptions() > 0,
        "{arch}: the budget was meant to force preemption"
    );
    for i in 0..ps.len() as u64 {
        assert_eq!(
            got[&i].token_ids, expected[&i].token_ids,
            "{arch}: request {i}"
        );
    }
    assert_eq!(tight.num_free_blocks(), 24);
}

#[test]
fn cancellation_frees_blocks_at_once() {
    let mut e = engine("llama", &["--block-size", "4"]);
    let ps = prompts(&e);
    for (i, p) in ps.iter().enumerate() {
        e.add_request(i as u64, p.clone(), greedy(50)).unwrap();
    }
    for _ in 0..3 {
        e.step().unwrap();
    }
    assert!(e.num_free_blocks() < e.config().num_blocks);
    for i in 0..ps.len() as u64 {
        let out = e.abort(i).unwrap();
        assert_eq!(out.finish_reason, Some(FinishReason::Abort));
    }
    assert!(!e.has_work());
    assert_eq!(e.num_free_blocks(), e.config().num_blocks);
}

/// Cancelled sequences of a recurrent model give their state slots back: after cancelling
/// two rounds of requests that hold every slot, a third round runs and matches a cold run.
#[test]
fn cancelled_recurrent_sequences_give_their_state_slots_back() {
    let flags = ["--block-size", "4", "--max-num-seqs", "2"];
    let mut e = engine("qwen3_next", &flags);
    let ps: Vec<Vec<u32>> = prompts(&e).into_iter().take(2).collect();
    for round in 0..2u64 {
        for (i, p) in ps.iter().enumerate() {
            e.add_request(round * 10 + i as u64, p.clone(), greedy(50))
                .unwrap();
        }
        for _ in 0..3 {
            e.step().unwrap();
        }
        assert_eq!(e.num_free_state_slots(), 0, "round {round}");
        for i in 0..ps.len() as u64 {
            e.abort(round * 10 + i).unwrap();
        }
        assert_eq!(e.num_free_state_slots(), 2, "round {round}");
    }
    let requests = |base: u64| {
        ps.iter()
            .enumerate()
            .map(|(i, p)| (base + i as u64, p.clone(), greedy(12)))
            .collect()
    };
    let got = run_all(&mut e, requests(100));
    let expected = run_all(&mut engine("qwen3_next", &flags), requests(100));
    for i in 100..102u64 {
        assert_eq!(got[&i].token_ids, expected[&i].token_ids, "request {i}");
    }
}

#[test]
fn dropping_a_stream_cancels_its_request() {
    let h = handle("llama", &[]);
    let p = h
        .tokenizer()
        .encode("a long story about clay", false)
        .unwrap();
    let mut s = h.submit(p.clone(), greedy(200)).unwrap();
    assert!(s.blocking_next().unwrap().is_ok());
    drop(s);
    // The next request still runs, and the dropped one's blocks come back.
    let out = h.submit(p, greedy(3)).unwrap().collect_blocking().unwrap();
    assert_eq!(out.completion_tokens, 3);
    for _ in 0..200 {
        if h.stats().kv_usage() == 0.0
            && h.stats().running.load(std::sync::atomic::Ordering::Relaxed) == 0
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(h.stats().kv_usage(), 0.0);
    h.shutdown();
}

#[test]
fn stop_strings_and_max_tokens_end_requests_with_the_right_reason() {
    let mut e = engine("qwen2", &[]);
    let p = prompts(&e)[0].clone();
    let free = run_all(&mut e, vec![(1, p.clone(), greedy(12))])
        .remove(&1)
        .unwrap();
    assert_eq!(free.finish_reason, Some(FinishReason::Length));
    assert_eq!(free.completion_tokens, 12);
    // Stop on a piece of what greedy decoding will produce.
    let text = free.text.clone();
    let stop: String = text
        .chars()
        .skip(text.chars().count() / 2)
        .take(3)
        .collect();
    assert!(!stop.is_empty());
    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy(12)
    };
    let stopped = run_all(&mut e, vec![(2, p, params)]).remove(&2).unwrap();
    assert_eq!(stopped.finish_reason, Some(FinishReason::Stop));
    assert_eq!(stopped.stop_reason.as_deref(), Some(stop.as_str()));
    let cut = text.find(&stop).unwrap();
    assert_eq!(stopped.text, text[..cut]);
}

#[test]
fn bad_requests_are_refused_with_a_clear_reason() {
    let h = handle("llama", &["--max-model-len", "32"]);
    let too_long = h.submit(vec![5; 40], greedy(4)).err().unwrap();
    assert!(
        matches!(
            too_long,
            RequestError::PromptTooLong {
                prompt: 40,
                max: 32
            }
        ),
        "{too_long}"
    );
    assert!(too_long.to_string().contains("40 tokens"));
    assert!(matches!(
        h.submit(vec![], greedy(4)).err().unwrap(),
        RequestError::EmptyPrompt
    ));
    assert!(matches!(
        h.submit(vec![100_000], greedy(4)).err().unwrap(),
        RequestError::InvalidToken { .. }
    ));
    let bad = SamplingParams {
        top_p: 1.5,
        ..Default::default()
    };
    match h.submit(vec![5], bad).err().unwrap() {
        RequestError::InvalidParam(p) => assert_eq!(p.param, "top_p"),
        other => panic!("{other}"),
    }
    // Generation stops at the model length.
    let out = h
        .submit(
            vec![5; 30],
            SamplingParams {
                max_tokens: None,
                ignore_eos: true,
                ..SamplingParams::greedy()
            },
        )
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(out.finish_reason, Some(FinishReason::Length));
    assert_eq!(out.completion_tokens, 2);
    h.shutdown();
}

#[test]
fn missing_or_corrupt_model_files_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("llama");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let args = engine_args(&["--model", dir.path().to_str().unwrap()]);
    let err = format!("{:#}", kiln::launch::build_engine(&args).err().unwrap());
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(
        dir.path().join("config.json"),
        b"{\"architectures\": [\"RwkvForCausalLM\"]}",
    )
    .unwrap();
    let err = format!("{:#}", kiln::launch::build_engine(&args).err().unwrap());
    assert!(
        err.contains("LlamaForCausalLM") || err.contains("config"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("config.json"),
        std::fs::read_to_string(src.join("config.json"))
            .unwrap()
            .replace("LlamaForCausalLM", "RwkvForCausalLM"),
    )
    .unwrap();
    let err = format!("{:#}", kiln::launch::build_engine(&args).err().unwrap());
    assert!(
        err.contains("unsupported architecture 'RwkvForCausalLM'")
            && err.contains("Phi3ForCausalLM"),
        "{err}"
    );
}

/// `--gpu-sampling` routes rows to the runner's device sampler (on the CPU backend: the host
/// sampler behind the same contract). Every kind of row must come out token for token as
/// the host path has it: the device gets the request's next uniform, penalty edits and
/// min_tokens masks, and the stream moves on exactly as a host draw would move it.
#[test]
fn device_sampling_gives_the_host_samplers_tokens() {
    let kinds = [
        greedy(10),
        SamplingParams {
            temperature: 0.9,
            top_p: 0.9,
            seed: Some(3),
            ..greedy(10)
        },
        SamplingParams {
            temperature: 1.2,
            top_k: 20,
            min_p: 0.05,
            seed: Some(4),
            ..greedy(10)
        },
        SamplingParams {
            temperature: 0.7,
            repetition_penalty: 1.3,
            presence_penalty: 0.5,
            frequency_penalty: 0.4,
            seed: Some(5),
            ..greedy(10)
        },
        SamplingParams {
            temperature: 1.0,
            min_tokens: 6,
            ignore_eos: false,
            seed: Some(6),
            ..greedy(10)
        },
        SamplingParams {
            repetition_penalty: 1.5,
            ..greedy(10)
        },
        SamplingParams {
            temperature: 0.8,
            logprobs: Some(3),
            seed: Some(8),
            ..greedy(10)
        },
    ];
    let run = |device_sampling: bool| {
        let mut e = engine("qwen3", &["--block-size", "4"]);
        e.set_device_sampling(device_sampling);
        let ps = prompts(&e);
        let reqs = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u64, ps[i].clone(), k.clone()))
            .collect();
        run_all(&mut e, reqs)
    };
    let (host, device) = (run(false), run(true));
    for i in 0..kinds.len() as u64 {
        assert_eq!(device[&i].token_ids, host[&i].token_ids, "request kind {i}");
        assert_eq!(device[&i].logprobs, host[&i].logprobs, "request kind {i}");
    }
    // The sampled kinds did sample (not all greedy by accident).
    assert_ne!(host[&1].token_ids, host[&0].token_ids);
}

/// Decode steps recorded as CUDA graphs run on padded batches (extra sequences that store
/// nothing, block tables padded to a power-of-two width). The CPU backend can run that same
/// padding eagerly: every request must come out token for token as unpadded, with the
/// logprobs of its tokens, while requests of different lengths finish at different steps
/// (so the padding changes from step to step) and blocks are shared by prefix caching.
#[test]
fn padded_decode_batches_change_no_sequence() {
    let run = |padded: bool| {
        let args = engine_args(&[
            "--model",
            fixture("llama").to_str().unwrap(),
            "--dtype",
            "float32",
            "--block-size",
            "4",
        ]);
        let mut loaded = kiln::launch::load_model(&args).unwrap();
        if padded {
            loaded.backend = kiln::backend::cpu::CpuBackend::padding_decode_batches();
        }
        let mut e = kiln::launch::engine_from(loaded, &args).unwrap();
        let ps = prompts(&e);
        let reqs = (0..7u64)
            .map(|i| {
                let params = SamplingParams {
                    logprobs: Some(2),
                    temperature: if i % 3 == 0 { 0.8 } else { 0.0 },
                    seed: Some(i),
                    ..greedy(4 + 3 * i as usize)
                };
                (i, ps[i as usize % 4].clone(), params)
            })
            .collect();
        run_all(&mut e, reqs)
    };
    let (plain, padded) = (run(false), run(true));
    for i in 0..7u64 {
        assert_eq!(padded[&i].token_ids, plain[&i].token_ids, "request {i}");
        assert_eq!(
            padded[&i].token_ids.len(),
            4 + 3 * i as usize,
            "request {i} ran to its length"
        );
        let (a, b) = (&padded[&i].logprobs, &plain[&i].logprobs);
        assert_eq!(a.len(), b.len(), "request {i}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x.logprob - y.logprob).abs() < 1e-4,
                "request {i}: logprob {} vs {}",
                x.logprob,
                y.logprob
            );
        }
    }
}

/// GPT-2's and OPT's positions are a learned table: a longer context is refused at load,
/// not discovered as failed requests once a sequence passes the table.
#[test]
fn a_context_past_learned_positions_is_refused_at_load() {
    for arch in ["gpt2", "opt"] {
        let dir = fixture(arch);
        let args =
            |len: &str| engine_args(&["--model", dir.to_str().unwrap(), "--max-model-len", len]);
        let err = kiln::launch::load_model(&args("257"))
            .err()
            .unwrap_or_else(|| panic!("{arch}: 257 positions of 256 loaded"))
            .to_string();
        assert!(err.contains("256 learned positions"), "{arch}: {err}");
        assert!(kiln::launch::load_model(&args("256")).is_ok(), "{arch}");
    }
}
