//! Tokenizers shipped as a tiktoken vocabulary (`tiktoken.model`: one `BASE64 RANK` line per
//! token) plus remote Python code instead of a `tokenizer.json`: Kimi K2, Kimi-Linear and
//! Moonlight. kiln turns them into the equivalent HF tokenizer:
//! - byte-level BPE whose vocabulary is the ranks, and whose merges are every split of each
//!   token into two tokens, ordered by the token's rank (tiktoken merges the adjacent pair
//!   whose joined bytes rank lowest, which is this BPE); a piece that is itself a token is
//!   taken whole (`ignore_merges`), as tiktoken looks pieces up before merging;
//! - the model's pre-tokenization pattern, split off before the byte mapping;
//! - special tokens after the ranks: `num_reserved_special_tokens` (256) ids, named by
//!   `tokenizer_config.json`'s `added_tokens_decoder` or `<|reserved_token_ID|>`.
//!
//! The pattern lives in the model's Python code, so kiln knows it per tokenizer: Kimi's
//! (`tokenization_kimi.py`). Others are refused with the class they name.

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

pub const TIKTOKEN_FILE: &str = "tiktoken.model";

/// Special-token ids Kimi reserves after its ranks.
const RESERVED_SPECIAL_TOKENS: usize = 256;

/// Kimi's pre-tokenization (`TikTokenTokenizer.pat_str` in `tokenization_kimi.py`): runs of
/// Han characters first, then o200k-style words with Han taken out of the letter classes,
/// numbers of up to 3 digits, punctuation runs, newlines and spaces.
const KIMI_PATTERN: &str = concat!(
    r"[\p{Han}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*",
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+",
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// The pre-tokenization pattern of the tokenizer `tokenizer_config.json` names.
fn pattern_for(config: &Value) -> Result<&'static str> {
    let class = config
        .get("tokenizer_class")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let auto_map = config
        .pointer("/auto_map/AutoTokenizer")
        .map(|v| v.to_string())
        .unwrap_or_default();
    if auto_map.contains("tokenization_kimi") || class == "TikTokenTokenizer" {
        return Ok(KIMI_PATTERN);
    }
    anyhow::bail!(
        "a tiktoken tokenizer of class '{class}' ({auto_map}): kiln knows the pattern of \
         Kimi's (tokenization_kimi.py) only; a tokenizer.json converted by transformers works"
    )
}

/// GPT-2's printable stand-ins for bytes, which byte-level BPE vocabularies are written in.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
    }
    table
}

/// `tiktoken.model`'s tokens by rank (the rank is the id).
fn read_ranks(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = || format!("{} line {}: expected 'BASE64 RANK'", path.display(), n + 1);
        let (token, rank) = line.split_once(' ').with_context(bad)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .with_context(bad)?;
        let rank: usize = rank.trim().parse().with_context(bad)?;
        if by_rank.len() <= rank {
            by_rank.resize(rank + 1, None);
        }
        anyhow::ensure!(
            by_rank[rank].is_none(),
            "{}: rank {rank} twice",
            path.display()
        );
        by_rank[rank] = Some(bytes);
    }
    by_rank
        .into_iter()
        .enumerate()
        .map(|(rank, t)| t.with_context(|| format!("{}: no token of rank {rank}", path.display())))
        .collect()
}

/// The HF `tokenizer.json` equivalent of the tiktoken tokenizer in `dir`, or None when `dir`
/// has no `tiktoken.model`.
pub fn tokenizer_json(dir: &Path) -> Result<Option<String>> {
    let model = dir.join(TIKTOKEN_FILE);
    if !model.exists() {
        return Ok(None);
    }
    let config_path = dir.join("tokenizer_config.json");
    let config: Value = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", config_path.display()))?,
        Err(_) => Value::Null,
    };
    let pattern = pattern_for(&config)?;
    let ranks = read_ranks(&model)?;
    let chars = byte_chars();
    let spell = |bytes: &[u8]| -> String { bytes.iter().map(|&b| chars[b as usize]).collect() };
    let ids: HashMap<&[u8], usize> = ranks
        .iter()
        .enumerate()
        .map(|(rank, t)| (t.as_slice(), rank))
        .collect();
    let mut vocab = Map::new();
    let mut merges = Vec::new();
    for (rank, token) in ranks.iter().enumerate() {
        vocab.insert(spell(token), json!(rank));
        // Every split into two tokens, those of lower-ranked halves first.
        let mut splits: Vec<(usize, usize, usize)> = (1..token.len())
            .filter_map(|at| {
                let (l, r) = token.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?, at))
            })
            .collect();
        splits.sort_unstable();
        merges.extend(
            splits
                .into_iter()
                .map(|(_, _, at)| json!([spell(&token[..at]), spell(&token[at..])])),
        );
    }
    let named: HashMap<usize, String> = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(id, t)| {
                    Some((id.parse().ok()?, t.get("content")?.as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    let added: Vec<Value> = (ranks.len()..ranks.len() + RESERVED_SPECIAL_TOKENS)
        .map(|id| {
            let content = named
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("<|reserved_token_{id}|>"));
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false},
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": merges},
    });
    Ok(Some(tokenizer.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_are_gpt2s() {
        let chars = byte_chars();
        assert_eq!(chars[b'A' as usize], 'A');
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        let distinct: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn other_tiktoken_classes_are_refused_by_name() {
        let kimi =
            json!({"auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", null]}});
        assert_eq!(pattern_for(&kimi).unwrap(), KIMI_PATTERN);
        let qwen = json!({"tokenizer_class": "QWenTokenizer"});
        let err = pattern_for(&qwen).unwrap_err().to_string();
        assert!(err.contains("QWenTokenizer"), "{err}");
    }
}
