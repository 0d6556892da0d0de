//! CLIP's tokenizer, built from the `vocab.json` + `merges.txt` of a diffusers `tokenizer/`
//! folder (Stable Diffusion repositories ship no `tokenizer.json`): the same normalizer,
//! pre-tokenizer and BPE as HF's fast CLIP tokenizer, then `[start] ids [end] [pad]...`
//! truncated and padded to `model_max_length`.

use super::presets::PipelineFiles;
use crate::model::bpe_files::{added_token, parse_merges, token_text};
use anyhow::{anyhow, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Replace, Sequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Words, single digits and runs of punctuation, as CLIP splits text.
const CLIP_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

pub struct ClipTokenizer {
    inner: Tokenizer,
    start: u32,
    end: u32,
    pad: u32,
    max_length: usize,
}

impl ClipTokenizer {
    pub fn from_dir(dir: &Path) -> Result<ClipTokenizer> {
        let parent = dir.parent().unwrap_or(Path::new("")).to_path_buf();
        let component = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("non-UTF-8 tokenizer path")?;
        Self::from_files(&PipelineFiles::Dir(parent), component)
    }

    /// The tokenizer in `component/` (`tokenizer`, `tokenizer_2`) of a directory or preset.
    pub fn from_files(files: &PipelineFiles, component: &str) -> Result<ClipTokenizer> {
        let vocab_rel = format!("{component}/vocab.json");
        let vocab: HashMap<String, u32> = files.json(&vocab_rel)?;
        let vocab: Vocab = vocab.into_iter().collect();
        let merges = parse_merges(&files.text(&format!("{component}/merges.txt"))?)
            .with_context(|| files.describe(&format!("{component}/merges.txt")))?;
        let config: BTreeMap<String, serde_json::Value> =
            files.json(&format!("{component}/tokenizer_config.json"))?;
        let special = |key: &str, default: &str| {
            config
                .get(key)
                .and_then(token_text)
                .unwrap_or_else(|| default.to_string())
        };
        let unk = special("unk_token", "<|endoftext|>");
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".into())
            .unk_token(unk)
            .build()
            .map_err(|e| anyhow!("loading CLIP BPE from {}: {e}", files.describe(&vocab_rel)))?;
        let mut inner = Tokenizer::new(bpe);
        let normalizer = Sequence::new(vec![
            NormalizerWrapper::from(NFC),
            NormalizerWrapper::from(
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                    " ",
                )
                .map_err(|e| anyhow!("{e}"))?,
            ),
            NormalizerWrapper::from(Lowercase),
        ]);
        inner.with_normalizer(Some(normalizer));
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| anyhow!("{e}"))?;
        inner.with_pre_tokenizer(Some(PreSequence::new(vec![
            PreTokenizerWrapper::from(split),
            PreTokenizerWrapper::from(ByteLevel::new(false, true, true)),
        ])));
        // Added tokens (the specials; SDXL's second tokenizer pads with "!", which HF then
        // also splits out of the text) match before BPE, as in HF.
        let added: Vec<AddedToken> = config
            .get("added_tokens_decoder")
            .and_then(|v| v.as_object())
            .map(|tokens| tokens.values().filter_map(added_token).collect())
            .unwrap_or_default();
        inner.add_special_tokens(&added);
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .with_context(|| format!("CLIP vocabulary has no '{token}'"))
        };
        let start = id(&special("bos_token", "<|startoftext|>"))?;
        let end = id(&special("eos_token", "<|endoftext|>"))?;
        let pad = id(&special("pad_token", "<|endoftext|>"))?;
        let max_length = config
            .get("model_max_length")
            .and_then(|v| v.as_u64())
            .filter(|&n| (2..=4096).contains(&n))
            .unwrap_or(77) as usize;
        Ok(ClipTokenizer {
            inner,
            start,
            end,
            pad,
            max_length,
        })
    }

    /// `[start] tokens [end]`, the tokens truncated to fit, padded to `max_length`.
    pub fn encode_padded(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        let body = encoding.get_ids();
        let keep = body.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.start);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.end);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }
}
