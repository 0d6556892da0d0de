//! Chat templates: the Jinja programs shipped in `tokenizer_config.json` that turn a list
//! of messages into the model's prompt text.
//!
//! The environment mirrors the one HuggingFace `transformers` renders with, so that a
//! prompt built here matches `apply_chat_template(..., tokenize=False)` byte for byte:
//! `trim_blocks` + `lstrip_blocks`, no trailing newline kept, Python string/dict methods
//! (`.strip()`, `.items()`, ... through minijinja-contrib's pycompat), `raise_exception`,
//! `strftime_now`, and a `tojson` that writes like Python's `json.dumps`.
//!
//! The rendered prompt already holds the special tokens the template writes (e.g.
//! `bos_token`), so encode it with `add_special_tokens = false`, as HF does.

mod pyjson;
mod pyrepr;
mod strftime;

use super::reasoning::ReasoningFormat;
use super::tool_calls::ToolCallFormat;
use minijinja::value::ValueKind;
use minijinja::{Environment, Error, ErrorKind, Output, State, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The template's name inside its environment. No file extension, so no HTML autoescape.
const TEMPLATE_NAME: &str = "chat_template";
/// The name of the template for requests with tools, where the model ships one apart
/// (tokenizer_config.json's list form: `[{"name": "default", ...}, {"name": "tool_use", ...}]`).
const TOOL_USE_TEMPLATE_NAME: &str = "tool_use";

/// One chat message as the template sees it: `message.role`, `message.content`, plus any
/// other fields the request carried (`tool_calls`, `tool_call_id`, `name`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: MessageContent,
    /// Fields other than role and content, passed through to the template unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// A message whose content is plain text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: MessageContent::Text(content.into()),
            extra: serde_json::Map::new(),
        }
    }
}

/// Message content in either OpenAI form. The template sees a string as a string and
/// parts as a list of maps (`{"type": "text", "text": ...}`), exactly as sent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<serde_json::Map<String, serde_json::Value>>),
    /// `"content": null` (an assistant turn that only calls tools) or no content at all.
    #[default]
    Null,
}

impl MessageContent {
    /// The text of the content: the string itself, or the `text` of every text part, one
    /// per line (as vLLM joins them for templates that take strings).
    pub fn joined_text(&self) -> String {
        match self {
            MessageContent::Text(text) => text.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter(|part| part_type(part) == Some("text"))
                .filter_map(|part| part.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join("\n"),
            MessageContent::Null => String::new(),
        }
    }
}

fn part_type(part: &serde_json::Map<String, serde_json::Value>) -> Option<&str> {
    part.get("type").and_then(|t| t.as_str())
}

/// How a template reads `message.content`. Most templates concatenate it as a string and
/// break on OpenAI's list of parts; multimodal ones loop over the parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// Content is a string: text parts are joined, a null content is empty.
    String,
    /// Content is OpenAI's list of parts: a string stays a string, null is an empty list.
    OpenAi,
}

impl ContentFormat {
    /// The format a template's source expects: parts if it loops over a message's content.
    pub fn detect(source: &str) -> ContentFormat {
        let mut rest = source;
        while let Some(at) = rest.find("{%") {
            let tag = &rest[at + 2..];
            let end = tag.find("%}").unwrap_or(tag.len());
            let inner =
                tag[..end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
            if let Some(iterable) = inner
                .strip_prefix("for ")
                .and_then(|head| head.split_once(" in ").map(|(_, it)| it))
            {
                let iterable = iterable.split('|').next().unwrap_or("").trim();
                if iterable.ends_with("content")
                    || iterable.ends_with("content']")
                    || iterable.ends_with("content\"]")
                {
                    return ContentFormat::OpenAi;
                }
            }
            rest = &tag[end..];
        }
        ContentFormat::String
    }
}

impl std::str::FromStr for ContentFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "string" => Ok(ContentFormat::String),
            "openai" => Ok(ContentFormat::OpenAi),
            other => Err(format!(
                "unknown chat template content format {other:?} (string or openai)"
            )),
        }
    }
}

/// OpenAI sends a call's arguments as JSON text; templates (Qwen's, Llama 3.1's) write them
/// with `tojson` or iterate over them, which needs the object itself, as transformers users
/// pass it. Text that is not a JSON object stays text.
fn arguments_as_object(call: &mut serde_json::Value) {
    let Some(arguments) = call
        .get_mut("function")
        .and_then(|f| f.get_mut("arguments"))
    else {
        return;
    };
    if let Some(parsed) = arguments
        .as_str()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .filter(serde_json::Value::is_object)
    {
        *arguments = parsed;
    }
}

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("chat template does not compile: {0}")]
    Compile(#[source] Error),
    /// The template called `raise_exception(message)`: the request does not fit the
    /// model's conversation rules (e.g. roles must alternate). A client error.
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    #[error("chat template failed to render: {0}")]
    Render(#[source] Error),
    #[error("chat template extra arguments must be a JSON object or null, got {0}")]
    ExtraNotAnObject(String),
    /// A message the model cannot take (an image part for a text-only model).
    #[error("{0}")]
    Unsupported(String),
}

/// The message a template passed to `raise_exception`, carried as the source of the
/// minijinja error so rendering can tell it apart from bugs in the template.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TemplateException(String);

/// A chat template compiled once, rendered per request. Cheap to share across threads.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    content_format: ContentFormat,
    /// Whether the template has a `developer` role of its own; if not, OpenAI's developer
    /// messages (the newer name of system messages) reach it as `system`.
    knows_developer: bool,
    /// How the model writes tool calls, as the template teaches it.
    tool_call_format: Option<ToolCallFormat>,
    /// Split reasoning off the answer, in this format (`--reasoning-parser`).
    reasoning: Option<ReasoningFormat>,
    /// Whether the environment also holds a template for requests with tools.
    has_tool_use: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token` / `eos_token` are the strings templates see under
    /// those names (from `tokenizer_config.json`).
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = hf_environment();
        env.add_template_owned(TEMPLATE_NAME, neutralize_generation_tags(source))
            .map_err(ChatTemplateError::Compile)?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            content_format: ContentFormat::detect(source),
            knows_developer: source.contains("developer"),
            tool_call_format: ToolCallFormat::detect(source),
            reasoning: None,
            has_tool_use: false,
        })
    }

    /// Adds the template that renders requests with tools, as transformers picks it: the
    /// `tool_use` entry of a named list when `tools` is given, `default` otherwise. The
    /// tool-call format is then read from it where the default template teaches none.
    pub fn with_tool_use_template(mut self, source: &str) -> Result<Self, ChatTemplateError> {
        self.env
            .add_template_owned(TOOL_USE_TEMPLATE_NAME, neutralize_generation_tags(source))
            .map_err(ChatTemplateError::Compile)?;
        self.has_tool_use = true;
        self.knows_developer |= source.contains("developer");
        if self.tool_call_format.is_none() {
            self.tool_call_format = ToolCallFormat::detect(source);
        }
        Ok(self)
    }

    /// Overrides the detected tool-call format (`--tool-call-parser`).
    pub fn with_tool_call_format(mut self, format: Option<ToolCallFormat>) -> Self {
        self.tool_call_format = format;
        self
    }

    pub fn tool_call_format(&self) -> Option<ToolCallFormat> {
        self.tool_call_format
    }

    /// Splits reasoning in `format` off chat answers (`--reasoning-parser`).
    pub fn with_reasoning(mut self, format: Option<ReasoningFormat>) -> Self {
        self.reasoning = format;
        self
    }

    pub fn reasoning_format(&self) -> Option<ReasoningFormat> {
        self.reasoning
    }

    /// Overrides the detected content format (`--chat-template-content-format`).
    pub fn with_content_format(mut self, format: ContentFormat) -> Self {
        self.content_format = format;
        self
    }

    pub fn content_format(&self) -> ContentFormat {
        self.content_format
    }

    /// Renders `messages` with the last one left open for the model to continue: rendered
    /// without a generation prompt, then cut right after the final message's content (its
    /// end-of-turn marks dropped), as transformers' `continue_final_message` does.
    pub fn render_continuing(
        &self,
        messages: &[ChatMessage],
        extra: serde_json::Value,
    ) -> Result<String, ChatTemplateError> {
        let last = messages
            .last()
            .map(|m| m.content.joined_text())
            .unwrap_or_default();
        if last.trim().is_empty() {
            return Err(ChatTemplateError::Unsupported(
                "continuing the final message needs one with text".into(),
            ));
        }
        let text = self.render(messages, false, extra)?;
        // Templates often trim content, so the trimmed text is looked for too.
        let end = [last.as_str(), last.trim()]
            .iter()
            .find_map(|c| text.rfind(c).map(|at| at + c.len()))
            .ok_or_else(|| {
                ChatTemplateError::Unsupported(
                    "the chat template does not write the final message's text as given, so it \
                     cannot be continued"
                        .into(),
                )
            })?;
        Ok(text[..end].to_string())
    }

    /// The messages as this template reads them: content in its format, developer
    /// messages as system messages where it has no developer role. Parts other than text
    /// are refused: every model kiln serves takes text only.
    fn prepare(&self, messages: &[ChatMessage]) -> Result<Vec<ChatMessage>, ChatTemplateError> {
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if let MessageContent::Parts(parts) = &m.content {
                    if let Some(other) = parts.iter().find(|p| part_type(p) != Some("text")) {
                        return Err(ChatTemplateError::Unsupported(format!(
                            "messages[{i}]: content part of type {} is not supported: this \
                             model takes text only",
                            part_type(other)
                                .map(|t| format!("{t:?}"))
                                .unwrap_or_else(|| "(none)".into())
                        )));
                    }
                }
                let content = match (self.content_format, &m.content) {
                    (ContentFormat::String, c) => MessageContent::Text(c.joined_text()),
                    (ContentFormat::OpenAi, MessageContent::Null) => MessageContent::Parts(vec![]),
                    (ContentFormat::OpenAi, c) => c.clone(),
                };
                let role = if m.role == "developer" && !self.knows_developer {
                    "system".to_string()
                } else {
                    m.role.clone()
                };
                let mut extra = m.extra.clone();
                if let Some(serde_json::Value::Array(calls)) = extra.get_mut("tool_calls") {
                    calls.iter_mut().for_each(arguments_as_object);
                }
                Ok(ChatMessage {
                    role,
                    content,
                    extra,
                })
            })
            .collect()
    }

    /// Renders the prompt for `messages` (prepared for the template's content format
    /// first, see [`ContentFormat`]). `extra` (a JSON object, or null) adds template
    /// variables such as `tools`, `documents` or `date_string`; it may override
    /// `bos_token`/`eos_token` but not `messages` or `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: serde_json::Value,
    ) -> Result<String, ChatTemplateError> {
        let mut context: BTreeMap<String, Value> = BTreeMap::new();
        // transformers always passes these two, as None when the request has none, and
        // templates test them with `is not none` (undefined would pass that test).
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        if let Some(bos) = &self.bos_token {
            context.insert("bos_token".into(), Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            context.insert("eos_token".into(), Value::from(eos.as_str()));
        }
        match extra {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    context.insert(key, Value::from_serialize(&value));
                }
            }
            other => return Err(ChatTemplateError::ExtraNotAnObject(other.to_string())),
        }
        context.insert(
            "messages".into(),
            Value::from_serialize(self.prepare(messages)?),
        );
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );

        let wants_tools = context.get("tools").is_some_and(|tools| !tools.is_none());
        let name = if self.has_tool_use && wants_tools {
            TOOL_USE_TEMPLATE_NAME
        } else {
            TEMPLATE_NAME
        };
        let template = self
            .env
            .get_template(name)
            .map_err(ChatTemplateError::Render)?;
        template.render(context).map_err(classify_render_error)
    }
}

/// The environment HF's `_compile_jinja_template` builds, rebuilt on minijinja.
fn hf_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", |format: String| {
        strftime::format(&strftime::DateTime::now_utc(), &format)
    });
    env.add_filter("tojson", pyjson::tojson);
    env.add_filter("string", pyrepr::string_filter);
    env.add_filter("length", python_length);
    env.add_filter("count", python_length);
    env.add_test("iterable", python_iterable);
    env.set_formatter(python_formatter);
    env
}

/// Prints `{{ value }}` as Jinja2 under Python does for the values where minijinja differs:
/// booleans as `True`/`False`, none as `None`, lists and dicts as their Python reprs.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Map | ValueKind::Seq => {
            Ok(out.write_str(&pyrepr::str(value)?)?)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Jinja2's `length`: Python's `len()`, which is 0 for an undefined value (a message
/// without `tool_calls`, say) and an error for none, numbers and booleans.
fn python_length(value: &Value) -> Result<usize, Error> {
    if value.is_undefined() {
        return Ok(0);
    }
    value.len().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("object of type {} has no len()", value.kind()),
        )
    })
}

/// Jinja2's `is iterable`: true for strings, lists, dicts and undefined values, false for
/// none. Templates guard `tools | length` with it, and `tools` is none without tools.
fn python_iterable(value: &Value) -> bool {
    !matches!(
        value.kind(),
        ValueKind::None | ValueKind::Bool | ValueKind::Number
    ) && (value.is_undefined() || value.try_iter().is_ok())
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(TemplateException(message)))
}

/// Separates the template's own `raise_exception` from other failures.
fn classify_render_error(err: Error) -> ChatTemplateError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&err);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<TemplateException>() {
            return ChatTemplateError::Raised(raised.0.clone());
        }
        cause = e.source();
    }
    ChatTemplateError::Render(err)
}

/// Some templates mark assistant turns with `{% generation %}...{% endgeneration %}`, a
/// transformers-only extension for training masks. It has no effect on the rendered text,
/// so it becomes `{% if true %}...{% endif %}`, which keeps the tags' whitespace control.
fn neutralize_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}").map(|end| end + 2) else {
            break;
        };
        let tag = &rest[start..start + len];
        let inner =
            tag[2..len - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        match inner {
            "generation" => out.push_str(&tag.replacen("generation", "if true", 1)),
            "endgeneration" => out.push_str(&tag.replacen("endgeneration", "endif", 1)),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
