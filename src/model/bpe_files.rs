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

use super::tokenizer_json::{bos_eos_template, config_added_tokens, read_json, BpeParts};
pub use super::tokenizer_json::{token_text, ADDED_TOKENS_FILE, SPECIAL_TOKENS_FILE};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";
/// Whether `dir` holds a tokenizer in this form.
pub fn present(dir: &Path) -> bool {
    dir.join(VOCAB_FILE).is_file() && dir.join(MERGES_FILE).is_file()
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
    let mut added: BTreeMap<u64, Value> = BTreeMap::new();
    config_added_tokens(dir, &config, &mut vocab, &mut added)?;

    let flag = |name: &str| config.get(name).and_then(Value::as_bool).unwrap_or(false);
    let bos = if flag("add_bos_token") {
        let special_map = read_json(&dir.join(SPECIAL_TOKENS_FILE))?.unwrap_or(Value::Null);
        let bos = config
            .get("bos_token")
            .and_then(token_text)
            .or_else(|| special_map.get("bos_token").and_then(token_text))
            .context("tokenizer_config.json sets add_bos_token but names no bos_token")?;
        let bos_id = *vocab
            .get(&bos)
            .with_context(|| format!("the BOS token {bos:?} is not in the vocabulary"))?;
        Some((bos, bos_id))
    } else {
        None
    };
    let post_processor = bos_eos_template(bos.as_ref().map(|(t, id)| (t.as_str(), *id)), None);
    let parts = BpeParts {
        vocab,
        merges,
        added,
        normalizer: Value::Null,
        pre_tokenizer: json!({
            "type": "ByteLevel",
            "add_prefix_space": flag("add_prefix_space"),
            "trim_offsets": true,
            "use_regex": true
        }),
        post_processor,
        decoder: json!({
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": true,
            "use_regex": true
        }),
        unk_token: None,
        byte_fallback: false,
    };
    Ok(Some(parts.to_json()))
}
