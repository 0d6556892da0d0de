//! The model's tokenizer: HuggingFace `tokenizer.json` (through the `tokenizers` crate) plus
//! what `tokenizer_config.json` adds on top: the BOS/EOS token strings and the chat template.

use crate::model::byte_pieces::BytePieces;
use crate::model::chat_template::ChatTemplate;
use crate::model::grammar::GrammarCompiler;
use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Where each piece lives inside a model directory (HF layout).
const TOKENIZER_FILE: &str = "tokenizer.json";
const CONFIG_FILE: &str = "tokenizer_config.json";
/// Newer `transformers` save the chat template as its own file; it wins over the config.
const TEMPLATE_FILE: &str = "chat_template.jinja";
/// Processor-style `{"chat_template": "..."}`, used when neither of the above has one.
const TEMPLATE_JSON_FILE: &str = "chat_template.json";

/// `bos_token` / `eos_token` in tokenizer_config: a plain string or a serialized AddedToken.
#[derive(Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    fn into_content(self) -> String {
        match self {
            SpecialToken::Text(s) | SpecialToken::Added { content: s } => s,
        }
    }
}

/// `chat_template`: one template, or a list of named ones (`"default"`, `"tool_use"`, ...).
#[derive(Deserialize)]
#[serde(untagged)]
enum ChatTemplateField {
    Single(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// The parts of tokenizer_config.json kiln uses; everything else is ignored.
#[derive(Deserialize, Default)]
struct TokenizerConfigFile {
    #[serde(default)]
    bos_token: Option<SpecialToken>,
    #[serde(default)]
    eos_token: Option<SpecialToken>,
    #[serde(default)]
    chat_template: Option<ChatTemplateField>,
}

#[derive(Deserialize)]
struct ChatTemplateJsonFile {
    chat_template: ChatTemplateField,
}

/// A loaded tokenizer. Immutable after loading, so one instance is shared by all requests.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_token_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    /// Every token's bytes, for byte-level BPE tokenizers (fast incremental decoding).
    byte_pieces: Option<BytePieces>,
    /// Built on the first structured-output request (a trie over the vocabulary).
    grammars: OnceLock<Result<Arc<GrammarCompiler>, String>>,
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer that has no config: no BOS/EOS, no chat template.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer {
            byte_pieces: BytePieces::build(&inner),
            inner,
            bos_token: None,
            eos_token: None,
            eos_token_ids: Vec::new(),
            chat_template: None,
            grammars: OnceLock::new(),
        }
    }

    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` and the chat
    /// template from `dir`. A chat template that does not compile is logged and left out,
    /// so the model still serves plain completions.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        // A tiktoken vocabulary (Kimi), GPT-2's slow files or a SentencePiece model stand in
        // for a missing tokenizer.json.
        let bytes = if tokenizer_path.exists() {
            read_existing(&tokenizer_path)?
        } else if let Some(json) = super::tiktoken::tokenizer_json(dir)? {
            json.into_bytes()
        } else if let Some(json) = super::bpe_files::tokenizer_json(dir)? {
            json.into_bytes()
        } else if let Some(json) = super::sentencepiece::tokenizer_json(dir)? {
            json.into_bytes()
        } else {
            read_existing(&tokenizer_path)?
        };
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| anyhow!("{}: not a valid tokenizer: {e}", tokenizer_path.display()))?;
        let mut tokenizer = Tokenizer::new(inner);

        let config_path = dir.join(CONFIG_FILE);
        let config: TokenizerConfigFile = if config_path.exists() {
            parse_json(&config_path)?
        } else {
            TokenizerConfigFile::default()
        };
        tokenizer.bos_token = config.bos_token.map(SpecialToken::into_content);
        tokenizer.eos_token = config.eos_token.map(SpecialToken::into_content);
        if let Some(eos) = &tokenizer.eos_token {
            match tokenizer.inner.token_to_id(eos) {
                Some(id) => tokenizer.eos_token_ids.push(id),
                None => tracing::warn!(
                    "{}: eos_token {eos:?} is not in the vocabulary",
                    config_path.display()
                ),
            }
        }

        if let Some((sources, origin)) = find_chat_template(dir, config.chat_template)? {
            let compiled = ChatTemplate::new(
                &sources.default,
                tokenizer.bos_token.clone(),
                tokenizer.eos_token.clone(),
            )
            .and_then(|template| match &sources.tool_use {
                Some(tool_use) => template.with_tool_use_template(tool_use),
                None => Ok(template),
            });
            match compiled {
                Ok(template) => tokenizer.chat_template = Some(template),
                Err(e) => tracing::warn!("{}: chat template left out: {e}", origin.display()),
            }
        }
        Ok(tokenizer)
    }

    /// Adds end-of-sequence ids from elsewhere (generation_config.json's `eos_token_id`,
    /// a request's stop tokens); duplicates are ignored, order is kept.
    pub fn add_eos_token_ids(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            if !self.eos_token_ids.contains(&id) {
                self.eos_token_ids.push(id);
            }
        }
    }

    /// Replaces the chat template (e.g. one given on the command line).
    pub fn set_chat_template(&mut self, template: Option<ChatTemplate>) {
        self.chat_template = template;
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, add_special_tokens).map_err(|e| {
            anyhow!(
                "tokenizer failed to encode {} bytes of text: {e}",
                text.len()
            )
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("tokenizer failed to decode {} token ids: {e}", ids.len()))
    }

    /// Number of token ids, added tokens included (the highest id + 1 for HF tokenizers).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids that end generation: the config's `eos_token` plus those added with
    /// [`Tokenizer::add_eos_token_ids`].
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_ids.clone()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Compiles structured-output grammars against this vocabulary, padded to the model's
    /// `vocab_size` (the same for every call of one model); built on first use.
    pub fn grammar_compiler(&self, vocab_size: usize) -> Result<Arc<GrammarCompiler>> {
        self.grammars
            .get_or_init(|| {
                GrammarCompiler::new(self, vocab_size)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow!("structured output is not available for this tokenizer: {e}"))
    }

    /// The token byte table, when this is a byte-level BPE tokenizer.
    pub fn byte_pieces(&self) -> Option<&BytePieces> {
        self.byte_pieces.as_ref()
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    pub fn take_chat_template(&mut self) -> Option<ChatTemplate> {
        self.chat_template.take()
    }

    /// The underlying `tokenizers` tokenizer, for what this wrapper does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn read_existing(path: &Path) -> Result<Vec<u8>> {
    if !path.exists() {
        return Err(anyhow!("{}: file is missing", path.display()));
    }
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn parse_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = read_existing(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("{}: corrupt or unexpected JSON: {e}", path.display()))
}

/// A model's chat templates: the one every request renders with, and the one for requests
/// with tools where the model ships that apart (Hermes 2 Pro / 3, Command R).
#[derive(Debug, PartialEq)]
struct TemplateSources {
    default: String,
    tool_use: Option<String>,
}

/// The chat template sources and the file they came from, in HF's order of precedence.
fn find_chat_template(
    dir: &Path,
    from_config: Option<ChatTemplateField>,
) -> Result<Option<(TemplateSources, std::path::PathBuf)>> {
    let jinja_path = dir.join(TEMPLATE_FILE);
    if jinja_path.exists() {
        let source = std::fs::read_to_string(&jinja_path)
            .with_context(|| format!("{}: cannot read as UTF-8 text", jinja_path.display()))?;
        let sources = TemplateSources {
            default: source,
            tool_use: None,
        };
        return Ok(Some((sources, jinja_path)));
    }
    let config_path = dir.join(CONFIG_FILE);
    if let Some(field) = from_config {
        return Ok(template_sources(field).map(|s| (s, config_path)));
    }
    let json_path = dir.join(TEMPLATE_JSON_FILE);
    if json_path.exists() {
        let file: ChatTemplateJsonFile = parse_json(&json_path)?;
        return Ok(template_sources(file.chat_template).map(|s| (s, json_path)));
    }
    Ok(None)
}

/// A single template, or from a named list the "default" one and the "tool_use" one
/// (transformers renders requests with tools with the latter).
fn template_sources(field: ChatTemplateField) -> Option<TemplateSources> {
    match field {
        ChatTemplateField::Single(source) => Some(TemplateSources {
            default: source,
            tool_use: None,
        }),
        ChatTemplateField::Named(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.name == name)
                    .map(|t| t.template.clone())
            };
            Some(TemplateSources {
                default: named("default")?,
                tool_use: named("tool_use"),
            })
        }
    }
}

/// Tiny tokenizers built in code, shared by the tokenizer and detokenizer tests.
#[cfg(test)]
pub(crate) mod test_fixtures;
#[cfg(test)]
mod tests;
