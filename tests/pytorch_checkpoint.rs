//! A model shipped the older way, as `opt_pytorch` is (scripts/pytorch_checkpoint_fixture.py):
//! sharded `pytorch_model*.bin` archives written by transformers' `save_pretrained`, and
//! GPT-2's slow tokenizer files with no tokenizer.json. Its logits and greedy tokens are
//! checked with every other fixture (tests/common ARCHS); here, the parts that are its own.

mod common;

use common::{engine_args, fixture, reference, EncodingCase};
use kiln::backend::DType;
use kiln::launch::load_model;
use kiln::model::pytorch_weights::PytorchWeights;
use kiln::model::tokenizer::Tokenizer;
use kiln::model::weights::{SafetensorsWeights, WeightSource};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Cases {
    cases: Vec<EncodingCase>,
}

#[test]
fn slow_gpt2_tokenizer_files_encode_as_transformers_does() {
    let dir = fixture("opt_pytorch");
    assert!(!dir.join("tokenizer.json").exists());
    let text = std::fs::read_to_string(dir.join("tokenizer_cases.json")).unwrap();
    let cases: Cases = serde_json::from_str(&text).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    for case in &cases.cases {
        case.check(&tokenizer, "slow GPT-2 files");
        if !case.add_special_tokens {
            assert_eq!(tokenizer.decode(&case.ids, false).unwrap(), case.text);
        }
    }
    // The reference's prompts were tokenized by the slow tokenizer, BOS first.
    for p in reference("opt_pytorch").prompts {
        assert_eq!(tokenizer.encode(&p.text, true).unwrap(), p.prompt_ids);
    }
    assert_eq!(tokenizer.bos_token(), Some("<|endoftext|>"));
    assert_eq!(
        tokenizer.eos_token_ids(),
        vec![tokenizer.token_to_id("<|im_end|>").unwrap()]
    );
    // Specials from special_tokens_map.json are skipped on request, and streaming
    // detokenization reads the converted vocabulary.
    let ids = tokenizer.encode("hi<|im_start|>", false).unwrap();
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "hi");
    assert!(tokenizer.byte_pieces().is_some());
}

#[test]
fn pytorch_shards_hold_the_same_tensors_as_the_safetensors_checkpoint() {
    let bin_dir = fixture("opt_pytorch");
    let index = std::fs::read_to_string(bin_dir.join("pytorch_model.bin.index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut shards: Vec<PathBuf> = map
        .values()
        .map(|f| bin_dir.join(f.as_str().unwrap()))
        .collect();
    shards.sort();
    shards.dedup();
    assert_eq!(shards.len(), 2, "the fixture is sharded");
    let bin = PytorchWeights::open(&shards).unwrap();
    let st = SafetensorsWeights::open(&[fixture("opt").join("model.safetensors")]).unwrap();
    for name in map.keys() {
        let shape = st.shape_of(name).unwrap();
        assert_eq!(bin.shape_of(name).unwrap(), shape, "{name}");
        let a = bin.tensor(name, &shape, DType::F32).unwrap();
        let b = st.tensor(name, &shape, DType::F32).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
    assert!(!bin.contains("model.decoder.no_such_weight"));
    let err = format!(
        "{:#}",
        bin.tensor("model.decoder.final_layer_norm.weight", &[3], DType::F32)
            .unwrap_err()
    );
    assert!(err.contains("shape"), "{err}");
}

fn load_error(model: &std::path::Path, format: &str) -> String {
    let args = engine_args(&["--model", model.to_str().unwrap(), "--load-format", format]);
    match load_model(&args) {
        Ok(_) => panic!("{} loaded with --load-format {format}", model.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn load_format_picks_the_weight_files() {
    // pt reads the PyTorch shards; auto falls back to them (the ARCHS tests load it so).
    let args = engine_args(&[
        "--model",
        fixture("opt_pytorch").to_str().unwrap(),
        "--load-format",
        "pt",
    ]);
    assert!(load_model(&args).is_ok());
    // Asking for a format the model does not have is refused with what was looked for.
    let err = load_error(&fixture("opt_pytorch"), "safetensors");
    assert!(err.contains("no weights of the format"), "{err}");
    let err = load_error(&fixture("opt"), "pt");
    assert!(err.contains("pytorch_model.bin"), "{err}");
}

#[test]
fn a_file_that_is_not_a_torch_archive_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("opt").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not a zip archive").unwrap();
    let err = load_error(dir.path(), "auto");
    assert!(
        err.contains("pytorch_model.bin") && err.contains("PyTorch checkpoint"),
        "{err}"
    );
}
