//! A tokenizer shipped as a tiktoken vocabulary with Kimi's tokenizer class (no
//! tokenizer.json): kiln's conversion gives tiktoken's own ids for text in several scripts,
//! numbers, contractions, whitespace runs and special tokens, and decodes them back.
//! The fixture and its ids come from tiktoken (scripts/tiktoken_fixture.py).

use kiln::model::tokenizer::Tokenizer;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Cases {
    ranks: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiktoken")
}

#[test]
fn kimi_style_tiktoken_vocabularies_encode_as_tiktoken_does() {
    let cases: Cases =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir()).unwrap();
    for case in &cases.cases {
        let ids = tokenizer.encode(&case.text, false).unwrap();
        assert_eq!(ids, case.ids, "{:?}", case.text);
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), case.text);
    }
    // Special tokens follow the ranks: the named ones from tokenizer_config.json, then the
    // reserved ones; the configured end of sequence is one of them.
    let n = cases.ranks as u32;
    assert_eq!(tokenizer.token_to_id("[BOS]"), Some(n));
    assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(n + 2));
    let last = format!("<|reserved_token_{}|>", n + 255);
    assert_eq!(tokenizer.token_to_id(&last), Some(n + 255));
    assert_eq!(tokenizer.eos_token_ids(), vec![n + 1]);
    assert_eq!(tokenizer.vocab_size(), cases.ranks + 256);
    // Structured output and streaming detokenization read the converted vocabulary too.
    assert!(tokenizer.grammar_compiler(tokenizer.vocab_size()).is_ok());
    assert!(tokenizer.byte_pieces().is_some());
    // Special tokens are skipped on request.
    let ids = tokenizer.encode("hi<|im_end|>", false).unwrap();
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "hi");
}
