//! Tokenizers shipped only as a SentencePiece model (`tokenizer.model`), as Llama-family
//! repositories were before tokenizer.json (Llama 2 fine-tunes, Vicuna, early Mistral and
//! Yi derivatives). kiln reads the model's protobuf itself and builds the tokenizer
//! transformers builds from it for the Llama tokenizer classes, so ids match:
//! - BPE over the pieces, byte fallback, unknown pieces fused; the merges are every split of
//!   a piece into two pieces, highest-scoring merged piece first (SentencePiece merges the
//!   adjacent pair whose union scores highest, which is this BPE);
//! - spaces as `▁`, with a leading one by `add_prefix_space` (default: the model's
//!   `add_dummy_prefix`): before every text segment under `legacy` (transformers' default),
//!   before the first only when a config sets `legacy: false`;
//! - BOS / EOS around the text by `add_bos_token` (default on) / `add_eos_token`;
//! - control and user-defined pieces, and the config's special tokens, matched before BPE.
//!
//! Unigram models (T5-style) and other tokenizer classes are refused with what they are.

use super::tokenizer_json::{
    add_once, bos_eos_template, config_added_tokens, read_json, token_text, BpeParts,
};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const MODEL_FILE: &str = "tokenizer.model";

/// SentencePiece's `ModelProto.SentencePiece.Type` values kiln treats specially.
const PIECE_UNKNOWN: u64 = 2;
const PIECE_CONTROL: u64 = 3;
const PIECE_USER_DEFINED: u64 = 4;
/// `TrainerSpec.ModelType`: 1 is unigram (the proto's default), 2 is BPE.
const MODEL_BPE: u64 = 2;

/// Tokenizer classes whose conversion is the Llama one.
const LLAMA_CLASSES: [&str; 4] = [
    "LlamaTokenizer",
    "LlamaTokenizerFast",
    "CodeLlamaTokenizer",
    "CodeLlamaTokenizerFast",
];

struct Piece {
    text: String,
    score: f32,
    kind: u64,
}

/// What kiln needs of a `ModelProto`.
struct SpmModel {
    pieces: Vec<Piece>,
    model_type: u64,
    unk_piece: String,
    add_dummy_prefix: bool,
}

/// A protobuf message's fields in order: (field number, value).
enum FieldValue<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).context("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    anyhow::bail!("varint longer than 64 bits")
}

/// The next `n` bytes of `bytes` from `at`, which moves past them.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize, field: u64) -> Result<&'a [u8]> {
    let end = at.checked_add(n).filter(|&e| e <= bytes.len());
    let end = end.with_context(|| format!("field {field} runs past the message"))?;
    let slice = &bytes[*at..end];
    *at = end;
    Ok(slice)
}

fn fields(bytes: &[u8]) -> Result<Vec<(u64, FieldValue<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => FieldValue::Varint(read_varint(bytes, &mut at)?),
            1 => {
                take(bytes, &mut at, 8, field)?;
                continue;
            }
            2 => {
                let len = read_varint(bytes, &mut at)? as usize;
                FieldValue::Bytes(take(bytes, &mut at, len, field)?)
            }
            5 => {
                let b = take(bytes, &mut at, 4, field)?;
                FieldValue::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => anyhow::bail!("unsupported protobuf wire type {other} (field {field})"),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).with_context(|| format!("{what} is not UTF-8"))
}

impl SpmModel {
    /// Parses `ModelProto`: pieces (1: piece, 2: score, 3: type), trainer spec (3:
    /// model_type, 45: unk_piece), normalizer spec (3: add_dummy_prefix).
    fn parse(bytes: &[u8]) -> Result<SpmModel> {
        let mut model = SpmModel {
            pieces: Vec::new(),
            model_type: 1,
            unk_piece: "<unk>".into(),
            add_dummy_prefix: true,
        };
        for (field, value) in fields(bytes)? {
            match (field, value) {
                (1, FieldValue::Bytes(piece)) => {
                    let mut p = Piece {
                        text: String::new(),
                        score: 0.0,
                        kind: 1,
                    };
                    for (f, v) in fields(piece)? {
                        match (f, v) {
                            (1, FieldValue::Bytes(t)) => p.text = utf8(t, "a piece")?,
                            (2, FieldValue::Fixed32(s)) => p.score = f32::from_bits(s),
                            (3, FieldValue::Varint(k)) => p.kind = k,
                            _ => {}
                        }
                    }
                    model.pieces.push(p);
                }
                (2, FieldValue::Bytes(trainer)) => {
                    for (f, v) in fields(trainer)? {
                        match (f, v) {
                            (3, FieldValue::Varint(t)) => model.model_type = t,
                            (45, FieldValue::Bytes(u)) => model.unk_piece = utf8(u, "unk_piece")?,
                            _ => {}
                        }
                    }
                }
                (3, FieldValue::Bytes(normalizer)) => {
                    for (f, v) in fields(normalizer)? {
                        if let (3, FieldValue::Varint(d)) = (f, v) {
                            model.add_dummy_prefix = d != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        anyhow::ensure!(!model.pieces.is_empty(), "the model has no pieces");
        Ok(model)
    }

    /// Every split of a piece into two pieces, as BPE merges: highest-scoring merged piece
    /// first; among a piece's splits, by the parts' ids; ties between pieces of equal score
    /// by the parts' lengths, longer first, then in vocabulary order.
    fn merges(&self, ids: &HashMap<&str, usize>) -> Vec<(String, String)> {
        let mut merges: Vec<(&str, &str, f32)> = Vec::new();
        for piece in &self.pieces {
            let mut splits: Vec<(&str, &str)> = piece
                .text
                .char_indices()
                .skip(1)
                .map(|(at, _)| piece.text.split_at(at))
                .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
                .collect();
            splits.sort_by_key(|(l, r)| (ids[l], ids[r]));
            merges.extend(splits.into_iter().map(|(l, r)| (l, r, piece.score)));
        }
        // Stable, so equal keys keep the order above.
        merges.sort_by(|a, b| {
            let key = |m: &(&str, &str, f32)| (m.0.chars().count(), m.1.chars().count());
            b.2.total_cmp(&a.2).then_with(|| key(b).cmp(&key(a)))
        });
        merges
            .into_iter()
            .map(|(l, r, _)| (l.to_string(), r.to_string()))
            .collect()
    }
}

/// `▁`, SentencePiece's stand-in for a space.
const SPACE: &str = "\u{2581}";

/// The HF `tokenizer.json` equivalent of the SentencePiece tokenizer in `dir`, or None when
/// `dir` has no `tokenizer.model`.
pub fn tokenizer_json(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(MODEL_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let class = config
        .get("tokenizer_class")
        .and_then(Value::as_str)
        .unwrap_or("LlamaTokenizer");
    anyhow::ensure!(
        LLAMA_CLASSES.contains(&class),
        "{}: a SentencePiece tokenizer of class '{class}': kiln converts the Llama classes \
         ({}) only; a tokenizer.json saved by transformers works for any",
        path.display(),
        LLAMA_CLASSES.join(", ")
    );
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let model = SpmModel::parse(&bytes)
        .with_context(|| format!("{} is not a SentencePiece model", path.display()))?;
    anyhow::ensure!(
        model.model_type == MODEL_BPE,
        "{}: a SentencePiece {} model; kiln converts BPE models (Llama's) only",
        path.display(),
        if model.model_type == 1 {
            "unigram".to_string()
        } else {
            format!("type-{}", model.model_type)
        }
    );

    let ids: HashMap<&str, usize> = model
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.text.as_str(), i))
        .collect();
    let merges = model.merges(&ids);
    let mut vocab: BTreeMap<String, u64> = BTreeMap::new();
    for (i, p) in model.pieces.iter().enumerate() {
        vocab.entry(p.text.clone()).or_insert(i as u64);
    }
    // Control and unknown pieces are special; user-defined ones are matched whole but are
    // text. Then what the config adds.
    let mut added: BTreeMap<u64, Value> = BTreeMap::new();
    for (i, p) in model.pieces.iter().enumerate() {
        if matches!(p.kind, PIECE_UNKNOWN | PIECE_CONTROL | PIECE_USER_DEFINED) {
            let special = p.kind != PIECE_USER_DEFINED;
            let flags = json!({"normalized": false, "special": special});
            add_once(&mut added, &p.text, i as u64, special, Some(&flags));
        }
    }
    config_added_tokens(dir, &config, &mut vocab, &mut added)?;

    let flag =
        |name: &str, default: bool| config.get(name).and_then(Value::as_bool).unwrap_or(default);
    let legacy = flag("legacy", true);
    let prefix_space = flag("add_prefix_space", model.add_dummy_prefix);
    let special_id = |field: &str, default: &str| -> Result<(String, u64)> {
        let token = config
            .get(field)
            .and_then(token_text)
            .unwrap_or_else(|| default.to_string());
        let id = *vocab
            .get(&token)
            .with_context(|| format!("{field} {token:?} is not among the pieces"))?;
        Ok((token, id))
    };
    let bos = flag("add_bos_token", true)
        .then(|| special_id("bos_token", "<s>"))
        .transpose()?;
    let eos = flag("add_eos_token", false)
        .then(|| special_id("eos_token", "</s>"))
        .transpose()?;
    let post_processor = bos_eos_template(
        bos.as_ref().map(|(t, id)| (t.as_str(), *id)),
        eos.as_ref().map(|(t, id)| (t.as_str(), *id)),
    );

    // Legacy: a normalizer turns spaces into ▁ and prefixes every segment between special
    // tokens; otherwise a pre-tokenizer does, prefixing only the text's start.
    let replace_spaces = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
    let (normalizer, pre_tokenizer) = if legacy {
        let mut steps = Vec::new();
        if prefix_space {
            steps.push(json!({"type": "Prepend", "prepend": SPACE}));
        }
        steps.push(replace_spaces);
        (
            json!({"type": "Sequence", "normalizers": steps}),
            Value::Null,
        )
    } else {
        let scheme = if prefix_space { "first" } else { "never" };
        let metaspace = json!({
            "type": "Metaspace",
            "replacement": SPACE,
            "prepend_scheme": scheme,
            "split": false
        });
        (Value::Null, metaspace)
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix_space {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }

    let parts = BpeParts {
        vocab,
        merges,
        added,
        normalizer,
        pre_tokenizer,
        post_processor,
        decoder: json!({"type": "Sequence", "decoders": decoders}),
        unk_token: Some(model.unk_piece),
        byte_fallback: true,
    };
    Ok(Some(parts.to_json()))
}
