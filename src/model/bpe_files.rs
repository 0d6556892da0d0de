//! Byte-level BPE tokenizers shipped only in GPT-2's "slow" form, `vocab.json` + `merges.txt`
//! with no `tokenizer.json` (OPT, GPT-2 fine-tunes, many older repositories). kiln builds the
//! tokenizer transformers builds from these files (its GPT-2 converter), so token ids match:
//! - BPE over the vocabulary and merges, without an unknown token (every byte is a token);
//! - GPT-2's pre-tokenization (the byte-level pre-tokenizer's own pattern), a leading space
//!   first when `add_prefix_space` is set;
//! - the BOS token before every prompt when `tokenizer_config.json` sets `add_bos_token`;
//! - the config's special and added tokens, matched before BPE.
//!
//! The file parsers are shared with the diffusion pipelines' CLIP tokenizer, which ships the
//! same two files.

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";
/// Older repositories keep the special tokens here instead of in `tokenizer_config.json`.
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";
/// Older repositories list tokens added after training here: `{"token": id}`.
pub const ADDED_TOKENS_FILE: &str = "added_tokens.json";

/// The special-token fields of `tokenizer_config.json` / `special_tokens_map.json`.
const SPECIAL_FIELDS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Whether `dir` holds a tokenizer in this form.
pub fn present(dir: &Path) -> bool {
    dir.join(VOCAB_FILE).is_file() && dir.join(MERGES_FILE).is_file()
}

/// A special token in a tokenizer config: a string or `{"content": ...}`.
pub fn token_text(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.get("content")?.as_str().map(str::to_string))
}

/// One entry of `added_tokens_decoder`, as tokenizers' `AddedToken`.
pub fn added_token(v: &Value) -> Option<tokenizers::AddedToken> {
    let flag = |name: &str| v.get(name).and_then(Value::as_bool).unwrap_or(false);
    Some(
        tokenizers::AddedToken::from(v.get("content")?.as_str()?, flag("special"))
            .lstrip(flag("lstrip"))
            .rstrip(flag("rstrip"))
            .single_word(flag("single_word"))
            .normalized(flag("normalized")),
    )
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line.
pub fn parse_merges(text: &str) -> Result<Vec<(String, String)>> {
    text.lines()
        .enumerate()
        .filter(|(i, line)| !(line.is_empty() || (*i == 0 && line.starts_with("#version"))))
        .map(|(i, line)| {
            let (a, b) = line
                .split_once(' ')
                .with_context(|| format!("line {} is not a merge: '{line}'", i + 1))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect()
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(_) => Ok(None),
    }
}

/// An added token in tokenizer.json's form.
fn added_entry(id: u64, content: &str, special: bool, flags: Option<&Value>) -> Value {
    let flag = |name: &str, default: bool| {
        flags
            .and_then(|f| f.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(default)
    };
    json!({
        "id": id,
        "content": content,
        "single_word": flag("single_word", false),
        "lstrip": flag("lstrip", false),
        "rstrip": flag("rstrip", false),
        // Special tokens match the raw text; others the normalized text (there is no
        // normalizer here, so the two agree).
        "normalized": flag("normalized", !special),
        "special": flag("special", special),
    })
}

fn has_content(added: &BTreeMap<u64, Value>, content: &str) -> bool {
    added.values().any(|t| t["content"] == content)
}

/// Adds `content` as the added token `id` unless a token of that content is already there.
fn add_once(
    added: &mut BTreeMap<u64, Value>,
    content: &str,
    id: u64,
    special: bool,
    flags: Option<&Value>,
) {
    if !has_content(added, content) {
        added.insert(id, added_entry(id, content, special, flags));
    }
}

/// The HF `tokenizer.json` equivalent of the `vocab.json` + `merges.txt` tokenizer in `dir`,
/// or None when `dir` has no such pair.
pub fn tokenizer_json(dir: &Path) -> Result<Option<String>> {
    if !present(dir) {
        return Ok(None);
    }
    let vocab_path = dir.join(VOCAB_FILE);
    let mut vocab: BTreeMap<String, u64> =
        serde_json::from_value(read_json(&vocab_path)?.context("vocab.json vanished")?)
            .with_context(|| format!("{}: expected {{\"token\": id}}", vocab_path.display()))?;
    let merges_path = dir.join(MERGES_FILE);
    let merges_text = std::fs::read_to_string(&merges_path)
        .with_context(|| format!("reading {}", merges_path.display()))?;
    let merges = parse_merges(&merges_text).with_context(|| merges_path.display().to_string())?;
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let special_map = read_json(&dir.join(SPECIAL_TOKENS_FILE))?.unwrap_or(Value::Null);
    let added_file = read_json(&dir.join(ADDED_TOKENS_FILE))?.unwrap_or(Value::Null);

    // Added tokens by content: those with ids first (the config's decoder, then
    // added_tokens.json), then the special-token fields, given the vocabulary's id or the
    // next free one, as the slow tokenizer does when it adds them.
    let mut added: BTreeMap<u64, Value> = BTreeMap::new();
    if let Some(decoder) = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    {
        for (id, token) in decoder {
            let id: u64 = id
                .parse()
                .with_context(|| format!("added_tokens_decoder key '{id}' is not an id"))?;
            if let Some(content) = token.get("content").and_then(Value::as_str) {
                add_once(&mut added, content, id, false, Some(token));
            }
        }
    }
    if let Some(file) = added_file.as_object() {
        for (content, id) in file {
            if let Some(id) = id.as_u64() {
                add_once(&mut added, content, id, false, None);
            }
        }
    }
    let mut specials: Vec<String> = Vec::new();
    for source in [&config, &special_map] {
        for field in SPECIAL_FIELDS {
            specials.extend(source.get(field).and_then(token_text));
        }
        if let Some(list) = source
            .get("additional_special_tokens")
            .and_then(Value::as_array)
        {
            specials.extend(list.iter().filter_map(token_text));
        }
    }
    for content in &specials {
        if has_content(&added, content) {
            continue;
        }
        let id = match vocab.get(content) {
            Some(&id) => id,
            None => {
                let next_vocab = vocab.values().max().map_or(0, |m| m + 1);
                let next_added = added.keys().max().map_or(0, |m| m + 1);
                next_vocab.max(next_added)
            }
        };
        add_once(&mut added, content, id, true, None);
    }
    // Tokens named by an added entry but missing from the vocabulary get their id there, so
    // the model's id space is the one transformers sees.
    for (id, token) in &added {
        let content = token["content"].as_str().unwrap_or_default();
        vocab.entry(content.to_string()).or_insert(*id);
    }

    let flag = |name: &str| config.get(name).and_then(Value::as_bool).unwrap_or(false);
    let post_processor = if flag("add_bos_token") {
        let bos = config
            .get("bos_token")
            .and_then(token_text)
            .or_else(|| special_map.get("bos_token").and_then(token_text))
            .context("tokenizer_config.json sets add_bos_token but names no bos_token")?;
        let bos_id = *vocab
            .get(&bos)
            .with_context(|| format!("the BOS token {bos:?} is not in the vocabulary"))?;
        let bos_piece = json!({"SpecialToken": {"id": bos, "type_id": 0}});
        json!({
            "type": "TemplateProcessing",
            "single": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos_piece,
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        })
    } else {
        Value::Null
    };
    let vocab: Map<String, Value> = vocab.into_iter().map(|(t, id)| (t, json!(id))).collect();
    let merges: Vec<Value> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added.into_values().collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": flag("add_prefix_space"),
            "trim_offsets": true,
            "use_regex": true
        },
        "post_processor": post_processor,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": true,
            "use_regex": true
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
        }
    });
    Ok(Some(tokenizer.to_string()))
}
