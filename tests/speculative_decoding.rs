//! Speculative decoding by prompt lookup (`--speculative-config`): drafts change how many
//! tokens a step computes, never which tokens come out.

mod common;

use common::*;
use kiln::engine::{LlmEngine, RequestOutput, SamplingParams};
use std::collections::HashMap;

const NGRAM: &str = r#"{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}"#;

/// Prompts that repeat themselves, so their suffixes recur and drafts are made.
fn prompts(engine: &LlmEngine) -> Vec<Vec<u32>> {
    let tok = engine.tokenizer();
    (0..6)
        .map(|i| {
            let line = format!("The kiln fires {} pots today. ", "clay ".repeat(i % 3 + 1));
            tok.encode(&line.repeat(2 + i % 2), false).unwrap()
        })
        .collect()
}

/// Runs every request to its end, all at once (ids in order).
fn run(engine: &mut LlmEngine, reqs: &[(Vec<u32>, SamplingParams)]) -> HashMap<u64, RequestOutput> {
    let reqs = reqs
        .iter()
        .enumerate()
        .map(|(id, (p, s))| (id as u64, p.clone(), s.clone()))
        .collect();
    run_all(engine, reqs)
}

/// The same requests (greedy, penalised, short, and seeded sampled ones) with and without
/// speculation give the same tokens (and logprobs, and
/// texts; logprobs to rounding), across architectures, with a small step budget (drafts cut by the chunking)
/// and small blocks; the speculating engine made drafts and kept some.
#[test]
fn outputs_are_the_same_with_drafts() {
    let flags = ["--block-size", "4", "--max-num-batched-tokens", "24"];
    let mut kept = 0;
    for arch in [
        "llama",
        "qwen3",
        "gemma2",
        "mixtral",
        "gpt_oss",
        "deepseek_v3",
    ] {
        let mut plain = engine(arch, &flags);
        let mut spec_flags = flags.to_vec();
        spec_flags.extend(["--speculative-config", NGRAM]);
        let mut spec = engine(arch, &spec_flags);
        let ps = prompts(&plain);
        let mut reqs: Vec<(Vec<u32>, SamplingParams)> =
            ps.iter().map(|p| (p.clone(), greedy(40))).collect();
        // Penalties and logprobs are applied at each draft's position as without drafts;
        // a small max_tokens is never overshot.
        reqs.push((
            ps[0].clone(),
            SamplingParams {
                repetition_penalty: 1.3,
                frequency_penalty: 0.5,
                logprobs: Some(2),
                ..greedy(30)
            },
        ));
        reqs.push((ps[1].clone(), greedy(3)));
        // Sampled with a seed: each emitted token takes the stream's next draw, as without
        // drafts, so the text is the same.
        for (i, temperature) in [0.7f32, 1.5].into_iter().enumerate() {
            reqs.push((
                ps[2 + i].clone(),
                SamplingParams {
                    temperature,
                    top_p: 0.9,
                    seed: Some(7 + i as u64),
                    ..greedy(40)
                },
            ));
        }
        let a = run(&mut plain, &reqs);
        let b = run(&mut spec, &reqs);
        for id in 0..reqs.len() as u64 {
            let (x, y) = (&a[&id], &b[&id]);
            assert_eq!(x.token_ids, y.token_ids, "{arch} request {id}");
            assert_eq!(x.text, y.text, "{arch} request {id}");
            // A verification step batches several positions of a sequence, which sums in
            // another order than one position at a time: the values agree to rounding.
            assert_eq!(x.logprobs.len(), y.logprobs.len(), "{arch} request {id}");
            for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
                assert_eq!(p.token_id, q.token_id);
                assert!((p.logprob - q.logprob).abs() < 1e-4, "{arch} {p:?} {q:?}");
                let ids = |t: &[(u32, f32)]| t.iter().map(|(i, _)| *i).collect::<Vec<_>>();
                assert_eq!(ids(&p.top), ids(&q.top), "{arch} request {id}");
            }
            assert_eq!(x.finish_reason, y.finish_reason, "{arch} request {id}");
            assert_eq!(x.completion_tokens, y.completion_tokens);
        }
        let (drafted, accepted) = spec.speculation_counts();
        eprintln!("{arch}: {drafted} drafted, {accepted} kept");
        assert!(drafted > 0, "{arch}: no drafts were made");
        assert_eq!(plain.speculation_counts(), (0, 0));
        kept += accepted;
        // Every block is back once the requests are done.
        assert_eq!(spec.kv_usage(), 0.0, "{arch}");
    }
    assert!(kept > 0, "no draft was ever kept");
}

/// With KV blocks short, sequences are preempted and recomputed; drafts never take the
/// blocks a running sequence needs, and outputs stay the same.
#[test]
fn drafts_survive_preemption_and_give_every_block_back() {
    let flags = ["--block-size", "4", "--num-kv-blocks", "48"];
    let mut plain = engine("qwen3", &flags);
    let mut spec_flags = flags.to_vec();
    spec_flags.extend(["--speculative-config", NGRAM]);
    let mut spec = engine("qwen3", &spec_flags);
    let reqs: Vec<(Vec<u32>, SamplingParams)> = prompts(&plain)
        .into_iter()
        .map(|p| (p, greedy(48)))
        .collect();
    let a = run(&mut plain, &reqs);
    let b = run(&mut spec, &reqs);
    assert!(
        plain.num_preemptions() > 0,
        "the cache must be short enough to preempt"
    );
    for id in 0..reqs.len() as u64 {
        assert_eq!(a[&id].token_ids, b[&id].token_ids, "request {id}");
    }
    assert!(spec.speculation_counts().0 > 0);
    assert_eq!(spec.kv_usage(), 0.0);
}

/// Stop strings and stop token ids that fall among kept drafts end the output where
/// decoding without drafts ends it: the tokens after them are not sent.
#[test]
fn stops_inside_kept_drafts_end_the_output_at_the_same_place() {
    let mut plain = engine("qwen3", &["--block-size", "4"]);
    let mut spec = engine(
        "qwen3",
        &["--block-size", "4", "--speculative-config", NGRAM],
    );
    let ps = prompts(&plain);
    // Where the free-running outputs go, to pick stops from their middles.
    let free: Vec<(Vec<u32>, SamplingParams)> =
        ps.iter().map(|p| (p.clone(), greedy(40))).collect();
    let free = run(&mut plain, &free);
    let mut reqs = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let out = &free[&(i as u64)];
        let text: Vec<char> = out.text.chars().collect();
        let stop: String = text[text.len() / 2..text.len() / 2 + 3].iter().collect();
        reqs.push((
            p.clone(),
            SamplingParams {
                stop: vec![stop],
                ..greedy(40)
            },
        ));
        reqs.push((
            p.clone(),
            SamplingParams {
                stop_token_ids: vec![out.token_ids[25]],
                ..greedy(40)
            },
        ));
    }
    let a = run(&mut plain, &reqs);
    let b = run(&mut spec, &reqs);
    for id in 0..reqs.len() as u64 {
        let (x, y) = (&a[&id], &b[&id]);
        assert_eq!(x.token_ids, y.token_ids, "request {id}");
        assert_eq!(x.text, y.text, "request {id}");
        assert_eq!(x.finish_reason, y.finish_reason, "request {id}");
        assert_eq!(x.stop_reason, y.stop_reason, "request {id}");
        assert!(x.token_ids.len() < 40, "request {id} must stop early");
    }
    assert!(spec.speculation_counts().1 > 0, "some drafts must be kept");
}
