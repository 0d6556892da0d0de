//! Embedding requests (last-token pooling) against transformers: the base model's last
//! hidden state at the last prompt token, L2-normalised, on the qwen3 fixture.

mod common;

use common::*;
use kiln::engine::params::Pooling;
use kiln::engine::SamplingParams;
use serde::Deserialize;

#[derive(Deserialize)]
struct EmbeddingReference {
    prompts: Vec<EmbeddingCase>,
}

#[derive(Deserialize)]
struct EmbeddingCase {
    prompt_ids: Vec<u32>,
    embedding: Vec<f32>,
    embedding_16: Vec<f32>,
}

fn reference() -> EmbeddingReference {
    let path = fixture("qwen3").join("embeddings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn embed(dimensions: Option<usize>) -> SamplingParams {
    SamplingParams {
        pooling: Some(Pooling {
            dimensions,
            normalize: true,
        }),
        ..SamplingParams::default()
    }
}

/// All prompts in one batch, beside generating requests, give transformers' vectors; each
/// alone gives the same; `dimensions` cuts before normalising; every block comes back.
#[test]
fn embeddings_match_transformers_batched_and_alone() {
    let cases = reference().prompts;
    let mut engine = engine("qwen3", &["--block-size", "4"]);
    let mut reqs = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        reqs.push((i as u64, case.prompt_ids.clone(), embed(None)));
        reqs.push((100 + i as u64, case.prompt_ids.clone(), embed(Some(16))));
        // Generation runs in the same steps.
        reqs.push((200 + i as u64, case.prompt_ids.clone(), greedy(8)));
    }
    let outs = run_all(&mut engine, reqs);
    for (i, case) in cases.iter().enumerate() {
        let full = outs[&(i as u64)].embedding.as_ref().expect("an embedding");
        let cut = outs[&(100 + i as u64)]
            .embedding
            .as_ref()
            .expect("an embedding");
        assert!(max_abs_diff(full, &case.embedding) < 1e-4, "prompt {i}");
        assert!(max_abs_diff(cut, &case.embedding_16) < 1e-4, "prompt {i}");
        let out = &outs[&(i as u64)];
        assert_eq!(out.prompt_tokens, case.prompt_ids.len());
        assert!(out.token_ids.is_empty(), "nothing is generated");
        assert_eq!(outs[&(200 + i as u64)].token_ids.len(), 8);
        // Alone, in its own batch.
        let alone = run_all(&mut engine, vec![(7, case.prompt_ids.clone(), embed(None))]);
        let alone = alone[&7].embedding.as_ref().unwrap();
        assert!(max_abs_diff(alone, full) < 1e-5, "prompt {i}");
    }
    assert_eq!(engine.kv_usage(), 0.0);
    assert!(!engine.has_work());
}

/// A prompt longer than the step's token budget runs in chunks and gives the same vector.
#[test]
fn long_prompts_run_in_chunks_of_the_step_budget() {
    let cases = reference().prompts;
    let long = &cases[2];
    assert!(long.prompt_ids.len() > 8);
    let mut engine = engine(
        "qwen3",
        &["--max-num-batched-tokens", "8", "--block-size", "4"],
    );
    let outs = run_all(&mut engine, vec![(1, long.prompt_ids.clone(), embed(None))]);
    let e = outs[&1].embedding.as_ref().unwrap();
    assert!(max_abs_diff(e, &long.embedding) < 1e-4);
    assert_eq!(engine.kv_usage(), 0.0);
}

/// Embedding requests with the KV cache nearly full wait for blocks instead of failing.
#[test]
fn embeddings_wait_for_blocks() {
    let cases = reference().prompts;
    let long = &cases[2].prompt_ids;
    // Room for one long prompt's blocks at a time (block size 4).
    let blocks = long.len().div_ceil(4) + 1;
    let mut engine = engine(
        "qwen3",
        &["--block-size", "4", "--num-kv-blocks", &blocks.to_string()],
    );
    let reqs = (0..4).map(|i| (i, long.clone(), embed(None))).collect();
    let outs = run_all(&mut engine, reqs);
    for i in 0..4 {
        let e = outs[&i].embedding.as_ref().unwrap();
        assert!(max_abs_diff(e, &cases[2].embedding) < 1e-4);
    }
}

/// An embedding model published as a base model alone (`AutoModel`: no `model.` prefix, no
/// LM head, as Qwen3-Embedding) loads and gives the same vectors.
#[test]
fn a_base_model_saved_alone_serves_embeddings() {
    use safetensors::tensor::TensorView;
    let source = fixture("qwen3");
    let dir = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(&source).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            continue;
        }
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, TensorView)> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "lm_head.weight")
        .map(|(name, view)| {
            let bare = name.strip_prefix("model.").unwrap_or(&name).to_string();
            (bare, view)
        })
        .collect();
    assert!(renamed.iter().any(|(n, _)| n == "embed_tokens.weight"));
    safetensors::serialize_to_file(renamed, None, &dir.path().join("model.safetensors")).unwrap();
    let model = dir.path().to_str().unwrap();
    let mut engine =
        kiln::launch::build_engine(&engine_args(&["--model", model, "--dtype", "float32"]))
            .unwrap()
            .0;
    let cases = reference().prompts;
    let reqs = cases
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u64, c.prompt_ids.clone(), embed(None)))
        .collect();
    let outs = run_all(&mut engine, reqs);
    for (i, case) in cases.iter().enumerate() {
        let e = outs[&(i as u64)].embedding.as_ref().unwrap();
        assert!(max_abs_diff(e, &case.embedding) < 1e-4, "prompt {i}");
    }
}

/// Tensor-parallel engines give the same vectors (every rank holds the all-reduced rows).
#[test]
fn tensor_parallel_engines_give_the_same_embeddings() {
    let cases = reference().prompts;
    for tp in ["2", "4"] {
        let mut engine = engine(
            "qwen3",
            &["--tensor-parallel-size", tp, "--block-size", "4"],
        );
        let mut reqs: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, c.prompt_ids.clone(), embed(None)))
            .collect();
        reqs.push((9, cases[0].prompt_ids.clone(), greedy(4)));
        let outs = run_all(&mut engine, reqs);
        for (i, case) in cases.iter().enumerate() {
            let e = outs[&(i as u64)].embedding.as_ref().unwrap();
            assert!(
                max_abs_diff(e, &case.embedding) < 1e-4,
                "tp {tp} prompt {i}"
            );
        }
        assert_eq!(outs[&9].token_ids.len(), 4);
    }
}
