//! `--chat-template` and `--chat-template-content-format`: the template a model's chat
//! requests go through, when the model's own is missing, wrong or reads content
//! differently than detected.

use crate::model::chat_template::{ChatTemplate, ContentFormat};
use crate::model::reasoning::ReasoningFormat;
use crate::model::tokenizer::Tokenizer;
use crate::model::tool_calls::ToolCallFormat;
use anyhow::{Context, Result};
use std::path::Path;

/// `--chat-template-content-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ContentFormatArg {
    /// `openai` when the template loops over a message's content, else `string`.
    Auto,
    /// Content is a string: text parts are joined with newlines.
    String,
    /// Content is OpenAI's list of parts.
    Openai,
}

/// `--tool-call-parser`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolCallParserArg {
    /// `mistral` when the chat template writes `[TOOL_CALLS]`, `glm45` when it documents
    /// `<arg_key>` pairs, `qwen3_coder` (or
    /// `seed_oss`, in `<seed:tool_call>` blocks) when it documents `<function=...>`
    /// elements, `hermes`
    /// when it documents `<tool_call>` blocks, `llama3_json` when it asks for
    /// `{"name": ..., "parameters": ...}`, else none.
    Auto,
    /// `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Qwen2.5, Qwen3, Hermes).
    Hermes,
    /// The answer is `{"name": ..., "parameters": ...}` (Llama 3.1 / 3.2 / 3.3).
    #[value(name = "llama3_json")]
    Llama3Json,
    /// `<tool_call><function=...><parameter=...>` XML (Qwen3-Coder, Qwen3.5, Nemotron 3).
    #[value(name = "qwen3_coder", alias = "qwen3_xml")]
    Qwen3Coder,
    /// The same XML in `<seed:tool_call>` blocks (Seed-OSS).
    #[value(name = "seed_oss")]
    SeedOss,
    /// `[TOOL_CALLS]` then a JSON list, or `NAME[ARGS]{...}` per call (Mistral, Devstral,
    /// Magistral).
    Mistral,
    /// `<tool_call>NAME` then `<arg_key>` / `<arg_value>` pairs (GLM-4.5, 4.6, 4.7).
    #[value(name = "glm45", alias = "glm4_moe")]
    Glm45,
    /// `<｜tool▁calls▁begin｜>` sections of fenced JSON calls (DeepSeek-V3, R1).
    #[value(name = "deepseek_v3")]
    DeepSeekV3,
    /// The same sections with `NAME<｜tool▁sep｜>{...}` calls (DeepSeek-V3.1).
    #[value(name = "deepseek_v31")]
    DeepSeekV31,
    /// `<|tool_calls_section_begin|>` sections with `functions.NAME:I` ids (Kimi K2).
    #[value(name = "kimi_k2")]
    KimiK2,
    /// Tool calls stay in the text.
    None,
}

/// `--reasoning-parser` (vLLM's names for the two `<think>` formats are accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasoningParserArg {
    /// Reasoning stays in the content.
    None,
    /// `<think>...</think>` before the answer (or only `</think>` when the chat template
    /// opens the block): Qwen3, QwQ, DeepSeek-R1 and its distills.
    #[value(alias = "qwen3", alias = "deepseek_r1", alias = "deepseek-r1")]
    Think,
    /// OpenAI's harmony channels (gpt-oss): `analysis` is reasoning, `final` the answer,
    /// `commentary` messages to `functions.*` tool calls. The output is decoded with its
    /// special tokens, which the markers are.
    #[value(alias = "openai_gptoss", alias = "gpt_oss", alias = "gpt-oss")]
    Harmony,
    /// `<seed:think>...</seed:think>` before the answer (Seed-OSS).
    #[value(name = "seed_oss")]
    SeedOss,
}

/// Installs the template `given` names (a file, or the Jinja text itself) in place of the
/// tokenizer's, then applies the content format and the tool-call parser.
pub fn configure(
    tokenizer: &mut Tokenizer,
    given: Option<&str>,
    format: ContentFormatArg,
    parser: ToolCallParserArg,
    reasoning: ReasoningParserArg,
) -> Result<()> {
    if let Some(given) = given {
        let source = template_source(given)?;
        let template = ChatTemplate::new(
            &source,
            tokenizer.bos_token().map(str::to_owned),
            tokenizer.eos_token().map(str::to_owned),
        )
        .context("--chat-template")?;
        tokenizer.set_chat_template(Some(template));
    }
    let forced = match format {
        ContentFormatArg::Auto => None,
        ContentFormatArg::String => Some(ContentFormat::String),
        ContentFormatArg::Openai => Some(ContentFormat::OpenAi),
    };
    if let Some(template) = tokenizer.take_chat_template() {
        let template = match forced {
            Some(format) => template.with_content_format(format),
            None => template,
        };
        let template = match parser {
            ToolCallParserArg::Auto => template,
            ToolCallParserArg::Hermes => {
                template.with_tool_call_format(Some(ToolCallFormat::Hermes))
            }
            ToolCallParserArg::Llama3Json => {
                template.with_tool_call_format(Some(ToolCallFormat::Llama3Json))
            }
            ToolCallParserArg::Qwen3Coder => {
                template.with_tool_call_format(Some(ToolCallFormat::Qwen3Xml))
            }
            ToolCallParserArg::SeedOss => {
                template.with_tool_call_format(Some(ToolCallFormat::SeedXml))
            }
            ToolCallParserArg::Mistral => {
                template.with_tool_call_format(Some(ToolCallFormat::Mistral))
            }
            ToolCallParserArg::Glm45 => template.with_tool_call_format(Some(ToolCallFormat::Glm45)),
            ToolCallParserArg::DeepSeekV3 => {
                template.with_tool_call_format(Some(ToolCallFormat::DeepSeekV3))
            }
            ToolCallParserArg::DeepSeekV31 => {
                template.with_tool_call_format(Some(ToolCallFormat::DeepSeekV31))
            }
            ToolCallParserArg::KimiK2 => {
                template.with_tool_call_format(Some(ToolCallFormat::KimiK2))
            }
            ToolCallParserArg::None => template.with_tool_call_format(None),
        };
        let template = template.with_reasoning(match reasoning {
            ReasoningParserArg::None => None,
            ReasoningParserArg::Think => Some(ReasoningFormat::Think),
            ReasoningParserArg::Harmony => Some(ReasoningFormat::Harmony),
            ReasoningParserArg::SeedOss => Some(ReasoningFormat::SeedThink),
        });
        if let Some(format) = template.tool_call_format() {
            tracing::info!("tool calls are parsed from the output ({format:?} format)");
        }
        tracing::info!(
            "chat template reads message content as {}",
            match template.content_format() {
                ContentFormat::String => "a string",
                ContentFormat::OpenAi => "a list of parts",
            }
        );
        tokenizer.set_chat_template(Some(template));
    }
    Ok(())
}

/// The Jinja text of `given`: the file it names, or itself when it is a template.
fn template_source(given: &str) -> Result<String> {
    let path = Path::new(given);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .with_context(|| format!("--chat-template: reading {}", path.display()));
    }
    anyhow::ensure!(
        given.contains("{{") || given.contains("{%"),
        "--chat-template {given:?} is neither a file nor a Jinja template"
    );
    Ok(given.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::chat_template::ChatMessage;
    use serde_json::json;
    use std::path::PathBuf;

    fn fixture_tokenizer() -> Tokenizer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
        Tokenizer::from_dir(&dir).unwrap()
    }

    fn render(tokenizer: &Tokenizer, messages: serde_json::Value) -> String {
        let messages: Vec<ChatMessage> = serde_json::from_value(messages).unwrap();
        tokenizer
            .chat_template()
            .unwrap()
            .render(&messages, false, json!(null))
            .unwrap()
    }

    #[test]
    fn an_inline_or_file_template_replaces_the_models() {
        let inline = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
        let mut tok = fixture_tokenizer();
        configure(
            &mut tok,
            Some(inline),
            ContentFormatArg::Auto,
            ToolCallParserArg::Auto,
            ReasoningParserArg::None,
        )
        .unwrap();
        let hi = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(render(&tok, hi.clone()), "[user] hi\n");

        let file = std::env::temp_dir().join(format!("kiln-template-{}.jinja", std::process::id()));
        std::fs::write(&file, "<{{ messages[0].content }}>").unwrap();
        let mut tok = fixture_tokenizer();
        configure(
            &mut tok,
            file.to_str(),
            ContentFormatArg::Auto,
            ToolCallParserArg::Auto,
            ReasoningParserArg::None,
        )
        .unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(render(&tok, hi), "<hi>");

        let err = configure(
            &mut fixture_tokenizer(),
            Some("no/such/file.jinja"),
            ContentFormatArg::Auto,
            ToolCallParserArg::Auto,
            ReasoningParserArg::None,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("neither a file nor"), "{err:#}");
    }

    #[test]
    fn the_content_format_can_be_forced() {
        let loops =
            "{% for m in messages %}{% for p in m.content %}{{ p.text }};{% endfor %}{% endfor %}";
        let parts = json!([{"role": "user", "content": [{"type": "text", "text": "a"}]}]);
        let mut tok = fixture_tokenizer();
        configure(
            &mut tok,
            Some(loops),
            ContentFormatArg::Auto,
            ToolCallParserArg::Auto,
            ReasoningParserArg::None,
        )
        .unwrap();
        assert_eq!(render(&tok, parts.clone()), "a;");
        // Forced to strings, the same template loops over the characters of "a".
        let mut tok = fixture_tokenizer();
        configure(
            &mut tok,
            Some(loops),
            ContentFormatArg::String,
            ToolCallParserArg::Auto,
            ReasoningParserArg::None,
        )
        .unwrap();
        assert_eq!(render(&tok, parts), ";");
    }
}
