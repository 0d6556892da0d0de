//! LoRA adapters (PEFT format) against PEFT's own outputs: four adapters on three fixture
//! architectures (every projection; q/v with rsLoRA on one layer; Granite's folded
//! multipliers; Phi-3's fused projections). Logits per prompt, greedy tokens in batches
//! mixing adapters and the base model (one rank and sharded), prefix caching kept apart per
//! adapter, and the refusals.

mod common;

use common::{engine_args, fixture, greedy, max_abs_diff, reference, run_all};
use kiln::cli::check_reference::last_logits_with_adapter;
use kiln::launch::{build_engine, load_model};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct AdapterReference {
    base: String,
    prompts: Vec<AdapterPrompt>,
}

#[derive(Deserialize)]
struct AdapterPrompt {
    prompt_ids: Vec<u32>,
    last_logits: Vec<f32>,
    greedy_ids: Vec<u32>,
}

fn adapters() -> BTreeMap<String, AdapterReference> {
    let text = std::fs::read_to_string(fixture("lora").join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn adapter_flag(name: &str) -> String {
    format!("{name}={}", fixture("lora").join(name).display())
}

fn base_flags(base: &str) -> Vec<String> {
    let dir = fixture(base);
    ["--model", dir.to_str().unwrap(), "--dtype", "float32"]
        .map(String::from)
        .to_vec()
}

fn with_adapters(base: &str, names: &[&str], extra: &[&str]) -> Vec<String> {
    let mut flags = base_flags(base);
    flags.push("--lora-modules".into());
    flags.extend(names.iter().map(|n| adapter_flag(n)));
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

fn args(flags: &[String]) -> kiln::launch::EngineArgs {
    engine_args(&flags.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn every_adapter_gives_peft_logits() {
    let all = adapters();
    assert_eq!(all.len(), 4);
    for (name, r) in &all {
        let m = load_model(&args(&with_adapters(&r.base, &[name], &[]))).unwrap();
        let base = reference(&r.base);
        for (p, b) in r.prompts.iter().zip(&base.prompts) {
            let ours = last_logits_with_adapter(&m, &p.prompt_ids, Some(0)).unwrap();
            let diff = max_abs_diff(&ours, &p.last_logits);
            assert!(diff < 1e-3, "{name}: max abs logit diff {diff}");
            // The adapter matters, and the base model stays the base model.
            assert!(
                max_abs_diff(&p.last_logits, &b.last_logits) > 0.05,
                "{name}"
            );
            let plain = last_logits_with_adapter(&m, &p.prompt_ids, None).unwrap();
            assert!(
                max_abs_diff(&plain, &b.last_logits) < 1e-3,
                "{name} base rows"
            );
        }
    }
}

/// One engine, two llama adapters and the base model, all requests in one batch: each
/// request's greedy tokens are those PEFT (or transformers, for the base) generates.
#[test]
fn batches_mixing_adapters_and_the_base_model_decode_each_as_its_own_model() {
    let all = adapters();
    let flags = with_adapters("llama", &["llama_all", "llama_qv_rslora"], &[]);
    let (mut engine, _) = build_engine(&args(&flags)).unwrap();
    let base = reference("llama");
    let new = 12;
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for (i, prompt) in base.prompts.iter().enumerate() {
        for (slot, adapter) in [None, Some("llama_all"), Some("llama_qv_rslora")]
            .into_iter()
            .enumerate()
        {
            let mut params = greedy(new);
            params.lora_adapter = adapter.map(|_| slot - 1);
            let want = match adapter {
                None => prompt.greedy_ids[..new].to_vec(),
                Some(a) => all[a].prompts[i].greedy_ids[..new].to_vec(),
            };
            let id = (i * 3 + slot) as u64;
            requests.push((id, prompt.prompt_ids.clone(), params));
            expected.push((id, want));
        }
    }
    let outs = run_all(&mut engine, requests);
    for (id, want) in expected {
        assert_eq!(outs[&id].token_ids, want, "request {id}");
    }
}

/// Sharded 2 and 4 ways (4: llama's two KV heads replicated), every adapter's requests and
/// the base model's, in one batch, still decode as PEFT and transformers do: each rank
/// holds its rows of `B` for q/k/v and gate/up, its columns of `A` for o and down.
#[test]
fn adapters_shard_with_the_model() {
    let all = adapters();
    let new = 10;
    for (name, r) in &all {
        let base = reference(&r.base);
        for world in ["2", "4"] {
            let flags = with_adapters(&r.base, &[name], &["--tensor-parallel-size", world]);
            let (mut engine, _) = build_engine(&args(&flags)).unwrap();
            let mut requests = Vec::new();
            for (i, (p, b)) in r.prompts.iter().zip(&base.prompts).enumerate() {
                let mut adapted = greedy(new);
                adapted.lora_adapter = Some(0);
                requests.push((2 * i as u64, p.prompt_ids.clone(), adapted));
                requests.push((2 * i as u64 + 1, b.prompt_ids.clone(), greedy(new)));
            }
            let outs = run_all(&mut engine, requests);
            for (i, (p, b)) in r.prompts.iter().zip(&base.prompts).enumerate() {
                let what = format!("{name} TP={world} prompt {i}");
                assert_eq!(
                    outs[&(2 * i as u64)].token_ids,
                    p.greedy_ids[..new],
                    "{what}"
                );
                assert_eq!(
                    outs[&(2 * i as u64 + 1)].token_ids,
                    b.greedy_ids[..new],
                    "{what} base"
                );
            }
        }
    }
}

/// The same prompt under the base model and then an adapter: the adapter's request must not
/// reuse the base model's cached blocks (their keys and values differ).
#[test]
fn prefix_caching_keeps_adapters_apart() {
    let all = adapters();
    let flags = with_adapters("llama", &["llama_all"], &["--block-size", "4"]);
    let (mut engine, _) = build_engine(&args(&flags)).unwrap();
    let prompt = &all["llama_all"].prompts[2];
    let base = reference("llama");
    let first = run_all(&mut engine, vec![(1, prompt.prompt_ids.clone(), greedy(6))]);
    assert_eq!(first[&1].token_ids, base.prompts[2].greedy_ids[..6]);
    let mut params = greedy(6);
    params.lora_adapter = Some(0);
    let second = run_all(
        &mut engine,
        vec![(2, prompt.prompt_ids.clone(), params.clone())],
    );
    assert_eq!(
        second[&2].cached_tokens, 0,
        "nothing of the base model's cache is reused"
    );
    assert_eq!(second[&2].token_ids, prompt.greedy_ids[..6]);
    // A second adapter request does reuse the first's blocks, and still matches.
    let third = run_all(&mut engine, vec![(3, prompt.prompt_ids.clone(), params)]);
    assert_eq!(third[&3].token_ids, prompt.greedy_ids[..6]);
    assert!(
        third[&3].cached_tokens > 0,
        "the adapter's own prefix is cached"
    );
}

#[test]
fn adapters_the_engine_cannot_apply_are_refused() {
    // Over the rank limit.
    let flags = with_adapters("llama", &["llama_all"], &["--max-lora-rank", "2"]);
    let err = format!("{:#}", load_model(&args(&flags)).err().unwrap());
    assert!(err.contains("over --max-lora-rank 2"), "{err}");
    // An adapter for another shape of model.
    let flags = with_adapters("qwen3", &["llama_all"], &[]);
    let err = format!("{:#}", load_model(&args(&flags)).err().unwrap());
    assert!(err.contains("do not fit"), "{err}");
    // PEFT options kiln does not run (DoRA), and a missing directory.
    let dir = std::env::temp_dir().join(format!("kiln-dora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("lora").join("llama_all");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let dora = config.replace("\"use_dora\": false", "\"use_dora\": true");
    assert_ne!(config, dora);
    std::fs::write(dir.join("adapter_config.json"), dora).unwrap();
    let mut flags = base_flags("llama");
    flags.extend(["--lora-modules".into(), format!("dora={}", dir.display())]);
    let err = format!("{:#}", load_model(&args(&flags)).err().unwrap());
    assert!(err.contains("DoRA"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    let mut flags = base_flags("llama");
    flags.extend(["--lora-modules".into(), "gone=/nonexistent/adapter".into()]);
    assert!(load_model(&args(&flags)).is_err());
    // A request naming an adapter that is not loaded.
    let mut engine = common::engine("llama", &[]);
    let mut params = greedy(2);
    params.lora_adapter = Some(0);
    let err = engine.add_request(1, vec![3, 4], params).unwrap_err();
    assert!(
        format!("{err}").contains("no LoRA adapter is loaded"),
        "{err}"
    );
}

/// A generated adapter (`dummy:RANK`, for benchmarks on dummy weights) covers what kiln can
/// adapt: attention and dense MLPs, skipping experts and latent attention, and runs.
#[test]
fn generated_adapters_fit_every_architecture() {
    for arch in ["llama", "phi3", "qwen3_moe", "deepseek_v2", "gemma2"] {
        let mut flags = base_flags(arch);
        flags.extend(["--lora-modules".into(), "gen=dummy:4".into()]);
        let (mut engine, _) = build_engine(&args(&flags)).unwrap();
        let mut params = greedy(3);
        params.lora_adapter = Some(0);
        let outs = run_all(&mut engine, vec![(1, vec![5, 6, 7], params)]);
        assert_eq!(outs[&1].token_ids.len(), 3, "{arch}");
    }
}

/// Adapters loaded and freed while the engine runs (one rank and sharded): a loaded one
/// decodes as PEFT does, one in use cannot be freed, a freed slot is never reused.
#[test]
fn adapters_load_and_unload_at_run_time() {
    let all = adapters();
    let r = &all["llama_all"];
    let spec: kiln::model::lora::AdapterSpec = adapter_flag("llama_all").parse().unwrap();
    for world in ["1", "2"] {
        let mut flags = base_flags("llama");
        flags.extend(["--tensor-parallel-size".into(), world.into()]);
        let (mut engine, _) = build_engine(&args(&flags)).unwrap();
        let slot = engine.load_adapter(&spec, 64).unwrap();
        assert_eq!(slot, 0);
        let mut params = greedy(8);
        params.lora_adapter = Some(slot);
        let prompt = &r.prompts[1];
        // In use (queued): cannot be freed.
        engine
            .add_request(1, prompt.prompt_ids.clone(), params.clone())
            .unwrap();
        let err = engine.unload_adapter(slot).unwrap_err();
        assert!(format!("{err}").contains("using the adapter"), "{err}");
        let mut outs = std::collections::HashMap::new();
        while engine.has_work() {
            for (id, o) in engine.step().unwrap() {
                let all: &mut kiln::engine::RequestOutput = outs.entry(id).or_default();
                kiln::engine::handle::merge(all, o);
            }
        }
        assert_eq!(outs[&1].token_ids, prompt.greedy_ids[..8], "TP={world}");
        engine.unload_adapter(slot).unwrap();
        let err = engine
            .add_request(2, prompt.prompt_ids.clone(), params)
            .unwrap_err();
        assert!(format!("{err}").contains("no LoRA adapter"), "{err}");
        assert!(engine.unload_adapter(slot).is_err(), "freed twice");
        // A fresh load takes a new slot and still decodes as PEFT.
        let again = engine.load_adapter(&spec, 64).unwrap();
        assert_eq!(again, 1);
        let mut params = greedy(8);
        params.lora_adapter = Some(again);
        let outs = run_all(&mut engine, vec![(3, prompt.prompt_ids.clone(), params)]);
        assert_eq!(
            outs[&3].token_ids,
            prompt.greedy_ids[..8],
            "TP={world} reloaded"
        );
        // A load that fails leaves the engine serving.
        let bad: kiln::model::lora::AdapterSpec = "bad=/nonexistent".parse().unwrap();
        assert!(engine.load_adapter(&bad, 64).is_err());
        assert!(
            engine.load_adapter(&spec, 2).is_err(),
            "over the rank limit"
        );
        let outs = run_all(&mut engine, vec![(4, prompt.prompt_ids.clone(), greedy(3))]);
        assert_eq!(outs[&4].token_ids.len(), 3);
    }
}
