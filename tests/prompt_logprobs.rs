//! Prompt log-probabilities (`echo` + `logprobs`): every prompt token scored, checked
//! against transformers where the fixtures pin the model's distribution, and unchanged by
//! chunked prefill and by a warm prefix cache.

mod common;

use common::*;
use kiln::engine::handle::merge;
use kiln::engine::output::TokenLogprob;
use kiln::engine::{LlmEngine, RequestOutput, SamplingParams};

fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    x.iter().map(|v| v - max - sum.ln()).collect()
}

/// The whole output of one request run to completion.
fn run(engine: &mut LlmEngine, id: u64, prompt: &[u32], top: usize) -> RequestOutput {
    let params = SamplingParams {
        max_tokens: Some(1),
        ignore_eos: true,
        prompt_logprobs: Some(top),
        ..SamplingParams::greedy()
    };
    engine.add_request(id, prompt.to_vec(), params).unwrap();
    let mut all = RequestOutput::default();
    while engine.has_work() {
        for (_, out) in engine.step().unwrap() {
            merge(&mut all, out);
        }
    }
    all
}

fn scores(out: &RequestOutput) -> Vec<Option<TokenLogprob>> {
    out.prompt_logprobs
        .clone()
        .expect("prompt logprobs delivered")
}

#[test]
fn prompt_tokens_are_scored_as_transformers_scores_them() {
    for arch in ARCHS {
        let reference = reference(arch);
        // Chunks of 8 tokens: each prompt is scored across several steps.
        let mut chunked = engine(
            arch,
            &["--block-size", "4", "--max-num-batched-tokens", "8"],
        );
        let mut whole = engine(arch, &["--block-size", "4"]);
        for (i, p) in reference.prompts.iter().enumerate() {
            let n = p.prompt_ids.len();
            // The prompt plus transformers' greedy continuation: there, each token is the
            // argmax of the distribution before it.
            let mut text = p.prompt_ids.clone();
            text.extend(&p.greedy_ids[..8]);
            let out = run(&mut chunked, 2 * i as u64, &text, 2);
            let got = scores(&out);
            assert_eq!(got.len(), text.len(), "{arch}");
            assert!(got[0].is_none(), "the first token has no score");
            for (k, entry) in got.iter().enumerate().skip(1) {
                let entry = entry.as_ref().unwrap();
                assert_eq!(entry.token_id, text[k]);
                assert!(entry.logprob <= 0.0);
                assert_eq!(entry.top.len(), 2);
                if k >= n && p.greedy_margins[k - n] > 1e-3 {
                    assert_eq!(entry.top[0], (text[k], entry.logprob), "{arch} token {k}");
                }
            }
            // Position n - 1's distribution is transformers' last_logits of the prompt.
            let expected = log_softmax(&p.last_logits)[text[n] as usize];
            let at_n = got[n].as_ref().unwrap().logprob;
            assert!(
                (at_n - expected).abs() < 1e-3,
                "{arch}: {at_n} vs {expected}"
            );

            // In one chunk, and again with the prompt's blocks in the prefix cache.
            for again in 0..2 {
                let other = scores(&run(&mut whole, 2 * i as u64 + 1 + 100 * again, &text, 2));
                for (a, b) in got.iter().zip(&other).skip(1) {
                    let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
                    assert_eq!(a.token_id, b.token_id);
                    assert!((a.logprob - b.logprob).abs() < 1e-4, "{arch}");
                }
            }
        }
    }
}

#[test]
fn a_sharded_model_scores_the_prompt_as_one_rank_does() {
    let p = &reference("qwen2").prompts[2];
    let one = scores(&run(&mut engine("qwen2", &[]), 1, &p.prompt_ids, 3));
    let mut sharded = engine(
        "qwen2",
        &[
            "--tensor-parallel-size",
            "2",
            "--max-num-batched-tokens",
            "8",
        ],
    );
    let two = scores(&run(&mut sharded, 1, &p.prompt_ids, 3));
    assert_eq!(one.len(), two.len());
    for (a, b) in one.iter().zip(&two).skip(1) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert!((a.logprob - b.logprob).abs() < 1e-4);
        assert_eq!(
            a.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            b.top.iter().map(|t| t.0).collect::<Vec<_>>()
        );
    }
}

#[test]
fn requests_without_prompt_logprobs_get_none() {
    let mut e = engine("llama", &[]);
    e.add_request(1, vec![5, 6, 7], SamplingParams::greedy())
        .unwrap();
    let mut all = RequestOutput::default();
    while e.has_work() {
        for (_, out) in e.step().unwrap() {
            merge(&mut all, out);
        }
    }
    assert!(all.prompt_logprobs.is_none());
}

/// A long prompt is scored a bounded number of positions per step (each is a logits row of
/// the whole vocabulary), and still completely.
#[test]
fn long_prompts_are_scored_in_bounded_chunks() {
    use kiln::engine::scheduler::PROMPT_LOGPROB_ROWS_PER_STEP;
    let mut e = kiln::launch::build_engine(&engine_args(&["--max-num-batched-tokens", "2048"]))
        .unwrap()
        .0; // the demo model: a 2048-token context
    let prompt: Vec<u32> = (0..600).map(|i| 10 + (i * 7) % 300).collect();
    let params = SamplingParams {
        max_tokens: Some(1),
        prompt_logprobs: Some(0),
        ..SamplingParams::greedy()
    };
    e.add_request(1, prompt.clone(), params).unwrap();
    let mut steps = 0;
    let mut all = RequestOutput::default();
    while e.has_work() {
        steps += 1;
        for (_, out) in e.step().unwrap() {
            merge(&mut all, out);
        }
    }
    assert!(
        steps >= prompt.len().div_ceil(PROMPT_LOGPROB_ROWS_PER_STEP),
        "{steps} steps"
    );
    let scores = scores(&all);
    assert_eq!(scores.len(), prompt.len());
    assert!(scores.iter().skip(1).all(|s| s.is_some()));
}

/// Requests preempted after their prompt scores went out are recomputed without scoring
/// the prompt again (a fuzzed server once died on exactly that), and every output still
/// equals the one an engine with room to spare gives.
#[test]
fn preemption_after_the_prompt_was_scored_recomputes_without_rescoring() {
    let params = SamplingParams {
        max_tokens: Some(20),
        ignore_eos: true,
        prompt_logprobs: Some(1),
        ..SamplingParams::greedy()
    };
    let prompts: Vec<Vec<u32>> = (0..12u32)
        .map(|i| (0..30).map(|j| 3 + (i * 31 + j * 7) % 400).collect())
        .collect();
    let run_all = |engine: &mut LlmEngine| {
        for (i, p) in prompts.iter().enumerate() {
            engine
                .add_request(i as u64, p.clone(), params.clone())
                .unwrap();
        }
        let mut outs: Vec<RequestOutput> = vec![RequestOutput::default(); prompts.len()];
        while engine.has_work() {
            for (id, out) in engine.step().unwrap() {
                merge(&mut outs[id as usize], out);
            }
        }
        outs
    };
    let expected = run_all(&mut engine("llama", &["--block-size", "4"]));
    let mut tight = engine(
        "llama",
        &[
            "--block-size",
            "4",
            "--num-kv-blocks",
            "24",
            "--max-model-len",
            "96",
        ],
    );
    let got = run_all(&mut tight);
    assert!(
        tight.num_preemptions() > 0,
        "the budget was meant to force preemption"
    );
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.token_ids, e.token_ids);
        assert_eq!(scores(g).len(), 30);
        let ids = |s: Vec<Option<TokenLogprob>>| -> Vec<Option<u32>> {
            s.into_iter().map(|t| t.map(|t| t.token_id)).collect()
        };
        assert_eq!(ids(scores(g)), ids(scores(e)));
    }
    assert_eq!(tight.num_free_blocks(), 24);
}
