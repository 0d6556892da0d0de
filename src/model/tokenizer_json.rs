//! Pieces shared by the converters that build a HF `tokenizer.json` from the files older
//! repositories ship instead (GPT-2's `vocab.json` + `merges.txt`, SentencePiece's
//! `tokenizer.model`): the added and special tokens their configs name, and the BOS / EOS
//! post-processor.

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

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

/// A special token in a tokenizer config: a string or `{"content": ...}`.
pub fn token_text(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.get("content")?.as_str().map(str::to_string))
}

pub fn read_json(path: &Path) -> Result<Option<Value>> {
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
pub fn add_once(
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

/// Adds to `added` (keyed by id) the tokens the configs in `dir` name: those with ids first
/// (`config`'s `added_tokens_decoder`, then `added_tokens.json`), then the special-token
/// fields of `config` and `special_tokens_map.json`, given the vocabulary's id or the next
/// free one, as transformers does when it adds them. Tokens already in `added` keep their
/// entry.
pub fn config_added_tokens(
    dir: &Path,
    config: &Value,
    vocab: &mut BTreeMap<String, u64>,
    added: &mut BTreeMap<u64, Value>,
) -> Result<()> {
    let special_map = read_json(&dir.join(SPECIAL_TOKENS_FILE))?.unwrap_or(Value::Null);
    let added_file = read_json(&dir.join(ADDED_TOKENS_FILE))?.unwrap_or(Value::Null);
    if let Some(decoder) = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    {
        for (id, token) in decoder {
            let id: u64 = id
                .parse()
                .with_context(|| format!("added_tokens_decoder key '{id}' is not an id"))?;
            if let Some(content) = token.get("content").and_then(Value::as_str) {
                add_once(added, content, id, false, Some(token));
            }
        }
    }
    if let Some(file) = added_file.as_object() {
        for (content, id) in file {
            if let Some(id) = id.as_u64() {
                add_once(added, content, id, false, None);
            }
        }
    }
    let mut specials: Vec<String> = Vec::new();
    for source in [config, &special_map] {
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
        if has_content(added, content) {
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
        add_once(added, content, id, true, None);
    }
    // Tokens named by an added entry but missing from the vocabulary get their id there, so
    // the model's id space is the one transformers sees.
    for (id, token) in added.iter() {
        let content = token["content"].as_str().unwrap_or_default();
        vocab.entry(content.to_string()).or_insert(*id);
    }

    Ok(())
}

/// The `TemplateProcessing` post-processor putting `bos` / `eos` (token, id) around each
/// sequence, or null when neither is added.
pub fn bos_eos_template(bos: Option<(&str, u64)>, eos: Option<(&str, u64)>) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let sequence = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let around = |s: &str, type_id: u32| -> Vec<Value> {
        bos.map(|(t, _)| special(t, type_id))
            .into_iter()
            .chain([sequence(s, type_id)])
            .chain(eos.map(|(t, _)| special(t, type_id)))
            .collect()
    };
    let mut specials = Map::new();
    for (t, id) in bos.into_iter().chain(eos) {
        specials.insert(t.into(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    let mut pair = around("A", 0);
    pair.extend(around("B", 1));
    json!({
        "type": "TemplateProcessing",
        "single": around("A", 0),
        "pair": pair,
        "special_tokens": specials,
    })
}

/// A byte-level or byte-fallback BPE tokenizer's parts, which the converters fill in.
pub struct BpeParts {
    pub vocab: BTreeMap<String, u64>,
    pub merges: Vec<(String, String)>,
    /// Added tokens by id.
    pub added: BTreeMap<u64, Value>,
    pub normalizer: Value,
    pub pre_tokenizer: Value,
    pub post_processor: Value,
    pub decoder: Value,
    /// SentencePiece's: unknown text becomes byte pieces, unknown runs one token.
    pub unk_token: Option<String>,
    pub byte_fallback: bool,
}

impl BpeParts {
    /// The parts as HF `tokenizer.json` text.
    pub fn to_json(self) -> String {
        let vocab: Map<String, Value> = self
            .vocab
            .into_iter()
            .map(|(t, id)| (t, json!(id)))
            .collect();
        let merges: Vec<Value> = self
            .merges
            .into_iter()
            .map(|(a, b)| json!([a, b]))
            .collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added.into_values().collect::<Vec<_>>(),
            "normalizer": self.normalizer,
            "pre_tokenizer": self.pre_tokenizer,
            "post_processor": self.post_processor,
            "decoder": self.decoder,
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": self.unk_token,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": self.byte_fallback,
                "byte_fallback": self.byte_fallback,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges
            }
        })
        .to_string()
    }
}
