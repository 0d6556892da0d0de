//! A tokenizer shipped only as a SentencePiece model (`tokenizer.model`, class
//! `LlamaTokenizer`, no tokenizer.json): kiln's conversion gives the ids transformers gives
//! under each configuration it converts differently (legacy and not, no prefix space, EOS
//! added), for text with runs of spaces, newlines, tabs, scripts the vocabulary lacks (byte
//! fallback), and special and user-defined tokens written in the text.
//! The fixture and its ids come from sentencepiece and transformers
//! (scripts/sentencepiece_fixture.py).

mod common;

use common::EncodingCase;
use kiln::model::tokenizer::Tokenizer;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Fixture {
    vocab_size: usize,
    configs: BTreeMap<String, Config>,
}

#[derive(Deserialize)]
struct Config {
    tokenizer_config: serde_json::Value,
    cases: Vec<EncodingCase>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sentencepiece")
}

fn fixture() -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

/// The fixture's model with `config` as its tokenizer_config.json.
fn model_with(config: &serde_json::Value) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir().join("tokenizer.model"),
        tmp.path().join("tokenizer.model"),
    )
    .unwrap();
    write_config(tmp.path(), config);
    tmp
}

fn write_config(dir: &Path, config: &serde_json::Value) {
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string(config).unwrap(),
    )
    .unwrap();
}

#[test]
fn sentencepiece_models_encode_as_transformers_converts_them() {
    let fixture = fixture();
    assert_eq!(fixture.configs.len(), 5);
    for (name, config) in &fixture.configs {
        let tmp = model_with(&config.tokenizer_config);
        let tokenizer = Tokenizer::from_dir(tmp.path()).unwrap();
        assert_eq!(tokenizer.vocab_size(), fixture.vocab_size, "{name}");
        for case in &config.cases {
            case.check(&tokenizer, name);
        }
    }
}

#[test]
fn sentencepiece_ids_decode_back_to_the_text() {
    let tokenizer = Tokenizer::from_dir(&dir()).unwrap();
    for text in [
        "The river town",
        "Café crème at 東京 🙂 hello",
        "line1\n\nline2\r\n  indented\ttab",
    ] {
        let ids = tokenizer.encode(text, true).unwrap();
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), text);
    }
    assert_eq!(tokenizer.bos_token(), Some("<s>"));
    assert_eq!(tokenizer.eos_token_ids(), vec![2]);
    // Structured output builds its trie over this vocabulary too.
    assert!(tokenizer.grammar_compiler(tokenizer.vocab_size()).is_ok());
}

#[test]
fn other_sentencepiece_classes_are_refused_with_their_name() {
    let mut config = fixture().configs["legacy"].tokenizer_config.clone();
    config["tokenizer_class"] = "T5Tokenizer".into();
    let tmp = model_with(&config);
    let err = format!("{:#}", Tokenizer::from_dir(tmp.path()).unwrap_err());
    assert!(err.contains("T5Tokenizer"), "{err}");
    // A file that is not a SentencePiece model says so.
    std::fs::write(tmp.path().join("tokenizer.model"), [0xffu8, 0xff, 0xff]).unwrap();
    write_config(tmp.path(), &fixture().configs["legacy"].tokenizer_config);
    let err = format!("{:#}", Tokenizer::from_dir(tmp.path()).unwrap_err());
    assert!(err.contains("not a SentencePiece model"), "{err}");
}
