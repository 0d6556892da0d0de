//! Small tokenizers of the two families real models use, built in code so tests need no
//! downloaded files:
//! - byte-level BPE (GPT-2 / Llama 3 / Qwen): trained here on a few sentences; most CJK
//!   characters and emoji stay split into several byte tokens, which is what makes
//!   incremental detokenization hard.
//! - SentencePiece-style BPE with byte fallback (Llama 2 / Mistral): `▁` marks spaces, the
//!   decoder drops the leading space of the text, unknown characters become `<0xNN>` tokens.

use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// Text with ASCII, accents, CJK and emoji (including a multi-codepoint ZWJ sequence).
pub const MIXED_TEXT: &str = "Hello world! Grüße aus Zürich. 你好，世界！今天天气很好。 \
     Emoji: 🦀🚀 and 👩‍💻 rock 🎉. 日本語のテキストも少し。 Done.";

const BYTE_LEVEL_CORPUS: &[&str] = &[
    "Hello world! Hello there, world.",
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界！你好，朋友。",
    "今天天气很好。",
    "Grüße aus Zürich.",
    "🦀 crabs and 🚀 rockets",
];

/// Special tokens of the byte-level fixture, in id order after training.
pub const BYTE_LEVEL_SPECIALS: [&str; 2] = ["<|endoftext|>", "<|im_end|>"];

/// A byte-level BPE tokenizer (ByteLevel pre-tokenizer and decoder) with a small vocabulary.
pub fn byte_level_bpe() -> tokenizers::Tokenizer {
    let specials = BYTE_LEVEL_SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let trainer = BpeTrainer::builder()
        .vocab_size(256 + 60)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(specials)
        .build();
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .train(
            &mut TrainerWrapper::BpeTrainer(trainer),
            BYTE_LEVEL_CORPUS.iter(),
        )
        .expect("training the fixture tokenizer");
    tokenizer
}

/// Merges of the SentencePiece-style fixture; the vocabulary is every piece they use.
const SP_MERGES: &[(&str, &str)] = &[
    ("l", "l"),
    ("▁", "H"),
    ("▁H", "e"),
    ("▁He", "ll"),
    ("▁Hell", "o"),
    ("▁", "w"),
    ("o", "r"),
    ("▁w", "or"),
    ("l", "d"),
    ("▁wor", "ld"),
    ("▁", "a"),
    ("r", "e"),
    ("▁a", "re"),
];
const SP_SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// The decoder style of a SentencePiece-style fixture.
#[derive(Debug, Clone, Copy)]
pub enum SentencePieceStyle {
    /// Llama 2: normalizer turns spaces into `▁`; decoder Replace + ByteFallback + Fuse + Strip.
    Llama2,
    /// Newer exports: Metaspace pre-tokenizer and decoder (`prepend_scheme: first`).
    Metaspace,
}

/// A SentencePiece-style BPE with byte fallback, `<s>` added as BOS by its post-processor.
pub fn sentencepiece_bpe(style: SentencePieceStyle) -> tokenizers::Tokenizer {
    let mut vocab = serde_json::Map::new();
    let mut add = |piece: String| {
        if !vocab.contains_key(&piece) {
            let id = vocab.len();
            vocab.insert(piece, json!(id));
        }
    };
    for special in SP_SPECIALS {
        add(special.to_string());
    }
    for byte in 0..=255u8 {
        add(format!("<0x{byte:02X}>"));
    }
    for c in "▁Hewlordash,.?!".chars() {
        add(c.to_string());
    }
    for (a, b) in SP_MERGES {
        add(format!("{a}{b}"));
    }
    let merges: Vec<String> = SP_MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let added_tokens: Vec<Value> = SP_SPECIALS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let (normalizer, pre_tokenizer, decoder) = match style {
        SentencePieceStyle::Llama2 => (
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
            ]}),
            Value::Null,
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]}),
        ),
        SentencePieceStyle::Metaspace => (
            Value::Null,
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}),
            json!({"type": "Sequence", "decoders": [
                {"type": "ByteFallback"},
                {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}
            ]}),
        ),
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    spec.to_string()
        .parse()
        .expect("the SentencePiece-style fixture is a valid tokenizer.json")
}
