//! Tool calls in a model's output text, and how to find them.
//!
//! Models trained on the Hermes format (Qwen2.5, Qwen3, Hermes, and others whose chat
//! template documents it) answer a tool request with blocks of
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` around or instead of plain text.
//! Llama 3.x answers with bare JSON objects instead (`llama3_json.rs`); Qwen3-Coder, Qwen3.5
//! and Nemotron 3 write XML elements inside the same blocks (`qwen3_xml.rs`); DeepSeek and
//! Kimi K2 put blocks of their own inside a section (`deepseek.rs`, `kimi.rs`). The server
//! turns each into OpenAI `tool_calls`, both for a finished text and for a stream (where a
//! block, or an answer that opens with `{`, is held back until it can be read).

mod argument_grammar;
mod deepseek;
mod glm45;
mod kimi;
mod llama3_json;
mod mistral;
mod qwen3_xml;

use serde_json::Value;
use std::sync::Arc;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const SEED_OPEN: &str = "<seed:tool_call>";
const SEED_CLOSE: &str = "</seed:tool_call>";

/// A tool-call output format a model may be trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// `<tool_call>{"name": "f", "arguments": {...}}</tool_call>` blocks.
    Hermes,
    /// The whole answer is `{"name": "f", "parameters": {...}}` (`;`-separated for several).
    Llama3Json,
    /// `<tool_call><function=f><parameter=k>value</parameter></function></tool_call>` blocks.
    Qwen3Xml,
    /// The same elements in `<seed:tool_call>` blocks, values without line breaks around
    /// them (Seed-OSS).
    SeedXml,
    /// `[TOOL_CALLS]` then a JSON list of calls, or `NAME[ARGS]{...}` per call (Mistral).
    Mistral,
    /// `<tool_call>NAME<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>` (GLM-4.5).
    Glm45,
    /// `<｜tool▁calls▁begin｜>` then per call `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`
    /// and the arguments fenced as JSON (DeepSeek-V3, R1).
    DeepSeekV3,
    /// The same section with `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}` calls (V3.1).
    DeepSeekV31,
    /// `<|tool_calls_section_begin|>` then per call `<|tool_call_begin|>functions.NAME:I`
    /// and `<|tool_call_argument_begin|>{...}` (Kimi K2).
    KimiK2,
}

impl ToolCallFormat {
    /// Whether the format's tags may be special tokens, which decoding must then keep
    /// (Seed-OSS's `<seed:tool_call>` is an added token).
    pub fn marks_may_be_special_tokens(self) -> bool {
        !matches!(
            self,
            ToolCallFormat::Hermes
                | ToolCallFormat::Llama3Json
                | ToolCallFormat::Qwen3Xml
                | ToolCallFormat::Glm45
        )
    }

    /// A new id for the `index`-th call of a message, to `name`: OpenAI's `call_...` shape;
    /// for Mistral the 9 alphanumerics its templates check when the call comes back in the
    /// conversation; for Kimi K2 the `functions.NAME:INDEX` its template writes.
    pub fn call_id(self, name: &str, index: usize) -> String {
        match self {
            ToolCallFormat::Mistral => mistral::call_id(),
            ToolCallFormat::KimiK2 => kimi::call_id(name, index),
            _ => format!("call_{:024x}", rand::random::<u128>() >> 32),
        }
    }

    /// The format a chat template teaches its model, if it names one.
    pub fn detect(template_source: &str) -> Option<ToolCallFormat> {
        if let Some(fenced) = deepseek::taught_by(template_source) {
            Some(if fenced {
                ToolCallFormat::DeepSeekV3
            } else {
                ToolCallFormat::DeepSeekV31
            })
        } else if kimi::taught_by(template_source) {
            Some(ToolCallFormat::KimiK2)
        } else if mistral::taught_by(template_source) {
            Some(ToolCallFormat::Mistral)
        } else if glm45::taught_by(template_source) {
            Some(ToolCallFormat::Glm45)
        } else if qwen3_xml::taught_by(template_source) && template_source.contains(SEED_OPEN) {
            Some(ToolCallFormat::SeedXml)
        } else if qwen3_xml::taught_by(template_source) {
            Some(ToolCallFormat::Qwen3Xml)
        } else if template_source.contains(OPEN) {
            Some(ToolCallFormat::Hermes)
        } else if template_source.contains(llama3_json::TEMPLATE_MARK) {
            Some(ToolCallFormat::Llama3Json)
        } else {
            None
        }
    }
}

/// How to read one request's calls: the format, and the request's tools (name, parameters
/// schema), whose schemas give XML-style arguments their JSON types.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolParser {
    pub format: ToolCallFormat,
    pub tools: Arc<[(String, Value)]>,
}

impl ToolParser {
    pub fn new(format: ToolCallFormat, tools: Vec<(String, Value)>) -> Self {
        ToolParser {
            format,
            tools: tools.into(),
        }
    }

    /// The call in one block's body, if it holds one.
    fn call_in_block(&self, body: &str) -> Option<ToolCall> {
        match self.format {
            ToolCallFormat::Qwen3Xml | ToolCallFormat::SeedXml => {
                qwen3_xml::parse_call(body, &self.tools)
            }
            ToolCallFormat::Glm45 => glm45::parse_call(body, &self.tools),
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => deepseek::parse_call(body),
            ToolCallFormat::KimiK2 => kimi::parse_call(body),
            _ => call_from_json(body),
        }
    }

    /// The tags around each call.
    fn block_tags(&self) -> (&'static str, &'static str) {
        match self.format {
            ToolCallFormat::SeedXml => (SEED_OPEN, SEED_CLOSE),
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => {
                (deepseek::CALL_BEGIN, deepseek::CALL_END)
            }
            ToolCallFormat::KimiK2 => (kimi::CALL_BEGIN, kimi::CALL_END),
            _ => (OPEN, CLOSE),
        }
    }

    /// The markers of the section around a message's calls, which are not content.
    fn section_marks(&self) -> &'static [&'static str] {
        match self.format {
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => {
                &[deepseek::CALLS_BEGIN, deepseek::CALLS_END]
            }
            ToolCallFormat::KimiK2 => &[kimi::SECTION_BEGIN, kimi::SECTION_END],
            _ => &[],
        }
    }
}

/// A marker in a Lark rule: by token id where the tokenizer has it as a special token
/// (literal text cannot match those), else as its text.
fn lark_mark(text: &str, special_token_id: &dyn Fn(&str) -> Option<u32>) -> String {
    match special_token_id(text) {
        Some(id) => format!("<[{id}]>"),
        None => Value::from(text).to_string(),
    }
}

/// A call to `name` (one word) whose arguments are a JSON object, as a sectioned format
/// writes them; `None` otherwise.
fn json_object_call(name: &str, arguments: &str) -> Option<ToolCall> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let arguments: Value = serde_json::from_str(arguments.trim()).ok()?;
    arguments.is_object().then(|| ToolCall {
        name: name.to_string(),
        arguments: arguments.to_string(),
    })
}

/// The Lark of a section (`begin`, its calls, `end`) holding one call (or, when
/// `parallel`, several), each one of `rules` (`f0`, `f1`, ... for the tools in order).
fn section_grammar(begin: &str, end: &str, rules: &[String], parallel: bool) -> String {
    let alternatives: Vec<String> = (0..rules.len()).map(|i| format!("f{i}")).collect();
    let calls = if parallel { "call+" } else { "call" };
    format!(
        "start: {begin} {calls} {end}\ncall: {}\n{}\n",
        alternatives.join(" | "),
        rules.join("\n")
    )
}

/// A tool's parameters schema with llguidance's JSON options attached.
fn guided_schema(parameters: &Value, json_options: &Value) -> Value {
    let mut schema = parameters.clone();
    if let Some(map) = schema.as_object_mut() {
        map.insert("x-guidance".into(), json_options.clone());
    }
    schema
}

/// A format without tools: arguments are read as the model wrote them.
impl From<ToolCallFormat> for ToolParser {
    fn from(format: ToolCallFormat) -> Self {
        ToolParser::new(format, Vec::new())
    }
}

/// A Lark grammar (llguidance's dialect) for output that is nothing but calls in `format`:
/// each a block whose JSON names one of `tools` (name, parameters schema) and gives
/// arguments valid under its schema; several blocks, one per line, when `parallel`.
/// `special_token_id` finds the ids of the special tokens a format's markers are
/// (Mistral's); without them the format cannot be forced, and the error says why.
pub fn forcing_grammar(
    format: ToolCallFormat,
    tools: &[(String, Value)],
    parallel: bool,
    json_options: &Value,
    special_token_id: &dyn Fn(&str) -> Option<u32>,
) -> Result<String, String> {
    let grammar = match format {
        ToolCallFormat::Llama3Json => llama3_json::forcing_grammar(tools, parallel, json_options),
        ToolCallFormat::Qwen3Xml => {
            let layout = qwen3_xml::Layout::qwen3();
            qwen3_xml::forcing_grammar(&layout, tools, parallel, json_options)
        }
        ToolCallFormat::SeedXml => {
            let layout = qwen3_xml::Layout::seed();
            qwen3_xml::forcing_grammar(&layout, tools, parallel, json_options)
        }
        ToolCallFormat::Mistral => {
            let marker = special_token_id(mistral::TOOL_CALLS).ok_or_else(|| {
                format!(
                    "the tokenizer has no {} token to force calls with",
                    mistral::TOOL_CALLS
                )
            })?;
            let args = special_token_id(mistral::ARGS);
            mistral::forcing_grammar(tools, parallel, json_options, marker, args)
        }
        ToolCallFormat::Glm45 => glm45::forcing_grammar(tools, parallel, json_options),
        ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => {
            let fenced = format == ToolCallFormat::DeepSeekV3;
            deepseek::forcing_grammar(tools, parallel, json_options, fenced, special_token_id)
        }
        ToolCallFormat::KimiK2 => {
            kimi::forcing_grammar(tools, parallel, json_options, special_token_id)
        }
        ToolCallFormat::Hermes => {
            let schema = call_schema(tools, "arguments", json_options);
            let repeat = if parallel { r#" ("\n" call)*"# } else { "" };
            // Lark string literals take the same escapes as JSON strings.
            format!("start: call{repeat}\ncall: \"{OPEN}\\n\" %json {schema} \"\\n{CLOSE}\"\n")
        }
    };
    Ok(grammar)
}

/// The JSON schema of one call object naming one of `tools` (name, parameters schema),
/// its arguments under `arguments_key` and valid under that tool's schema.
fn call_schema(tools: &[(String, Value)], arguments_key: &str, json_options: &Value) -> Value {
    let alternatives: Vec<Value> = tools
        .iter()
        .map(|(name, parameters)| {
            serde_json::json!({
                "type": "object",
                "properties": {"name": {"const": name}, arguments_key: parameters},
                "required": ["name", arguments_key],
                "additionalProperties": false,
            })
        })
        .collect();
    serde_json::json!({"anyOf": alternatives, "x-guidance": json_options})
}

/// One call: the function's name and its arguments as JSON text (OpenAI sends a string).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// A finished text split into its plain text and its calls.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedOutput {
    /// The text outside the call blocks, trimmed; `None` when nothing is left.
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

/// Splits a finished output. A block whose body is not a call (bad JSON, no name) or that
/// never closes leaves the whole text as plain content: the model did not make a call
/// the client could act on, and dropping its text would lose it.
pub fn parse(parser: impl Into<ToolParser>, text: &str) -> ParsedOutput {
    let parser = parser.into();
    let as_text = || ParsedOutput {
        content: Some(text.to_string()),
        calls: Vec::new(),
    };
    if parser.format == ToolCallFormat::Llama3Json {
        return match llama3_json::parse_calls(text) {
            Some(calls) => ParsedOutput {
                content: None,
                calls,
            },
            None => as_text(),
        };
    }
    if parser.format == ToolCallFormat::Mistral {
        return match mistral::parse(text) {
            Some((before, calls)) => ParsedOutput {
                content: Some(before.trim().to_string()).filter(|c| !c.is_empty()),
                calls,
            },
            None => as_text(),
        };
    }
    let (open_tag, close_tag) = parser.block_tags();
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    while let Some(open) = rest.find(open_tag) {
        content.push_str(&rest[..open]);
        let body_start = &rest[open + open_tag.len()..];
        let Some(close) = body_start.find(close_tag) else {
            return as_text();
        };
        match parser.call_in_block(&body_start[..close]) {
            Some(call) => calls.push(call),
            None => return as_text(),
        }
        rest = &body_start[close + close_tag.len()..];
    }
    if calls.is_empty() {
        return as_text();
    }
    content.push_str(rest);
    for mark in parser.section_marks() {
        content = content.replace(mark, "");
    }
    let content = content.trim();
    ParsedOutput {
        content: (!content.is_empty()).then(|| content.to_string()),
        calls,
    }
}

/// `{"name": "f", "arguments": {...}}` (arguments may also be given as a JSON string, or
/// under `parameters`) as a call.
fn call_from_json(body: &str) -> Option<ToolCall> {
    call_from_value(&serde_json::from_str(body.trim()).ok()?)
}

fn call_from_value(value: &Value) -> Option<ToolCall> {
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// What a stream's next piece of text amounts to.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamPiece {
    Text(String),
    Call(ToolCall),
}

/// Finds calls in a streamed output: plain text passes through at once, except a tail
/// that may be the start of `<tool_call>`; a block is held until it closes and then comes
/// out as one call (or as its raw text, if it is not a call).
#[derive(Debug)]
pub struct ToolCallStream {
    parser: ToolParser,
    held: String,
    calls: usize,
    /// Llama 3 JSON: whether the answer is calls, once its first text tells.
    json_answer: Option<bool>,
}

impl ToolCallStream {
    pub fn new(parser: impl Into<ToolParser>) -> Self {
        ToolCallStream {
            parser: parser.into(),
            held: String::new(),
            calls: 0,
            json_answer: None,
        }
    }

    /// How many calls came out so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Adds newly generated text; returns what can be sent now.
    pub fn push(&mut self, text: &str) -> Vec<StreamPiece> {
        self.held.push_str(text);
        if self.parser.format == ToolCallFormat::Llama3Json {
            return self.push_llama3();
        }
        if self.parser.format == ToolCallFormat::Mistral {
            return self.push_mistral();
        }
        let (open_tag, close_tag) = self.parser.block_tags();
        let marks = self.parser.section_marks();
        for mark in marks {
            if self.held.contains(mark) {
                self.held = self.held.replace(mark, "");
            }
        }
        let mut out = Vec::new();
        loop {
            match self.held.find(open_tag) {
                Some(open) => {
                    let before = &self.held[..open];
                    if !before.is_empty() {
                        out.push(StreamPiece::Text(before.to_string()));
                    }
                    let body = &self.held[open + open_tag.len()..];
                    let Some(close) = body.find(close_tag) else {
                        self.held.drain(..open);
                        return out;
                    };
                    let raw_end = open + open_tag.len() + close + close_tag.len();
                    match self.parser.call_in_block(&body[..close]) {
                        Some(call) => {
                            self.calls += 1;
                            out.push(StreamPiece::Call(call));
                        }
                        None => out.push(StreamPiece::Text(self.held[open..raw_end].to_string())),
                    }
                    self.held.drain(..raw_end);
                }
                None => {
                    // Keep a tail that could still grow into the opening tag (or a
                    // section marker).
                    let keep = marks
                        .iter()
                        .chain([&open_tag])
                        .map(|tag| partial_prefix_len(&self.held, tag))
                        .max()
                        .unwrap_or(0);
                    let send = self.held.len() - keep;
                    if send > 0 {
                        out.push(StreamPiece::Text(self.held[..send].to_string()));
                        self.held.drain(..send);
                    }
                    return out;
                }
            }
        }
    }

    /// Llama 3 JSON: text passes through once the answer starts as text; an answer that
    /// starts as an object is held whole until `finish`.
    fn push_llama3(&mut self) -> Vec<StreamPiece> {
        if self.json_answer.is_none() {
            self.json_answer = match llama3_json::start(&self.held) {
                llama3_json::Start::Undecided => return Vec::new(),
                llama3_json::Start::Call => Some(true),
                llama3_json::Start::Text => Some(false),
            };
        }
        if self.json_answer == Some(true) || self.held.is_empty() {
            return Vec::new();
        }
        vec![StreamPiece::Text(std::mem::take(&mut self.held))]
    }

    /// Mistral: text passes through until `[TOOL_CALLS]`; from there the rest is held
    /// until `finish` reads it.
    fn push_mistral(&mut self) -> Vec<StreamPiece> {
        if self.json_answer == Some(true) {
            return Vec::new();
        }
        let send = match self.held.find(mistral::TOOL_CALLS) {
            Some(at) => {
                self.json_answer = Some(true);
                at
            }
            None => self.held.len() - partial_prefix_len(&self.held, mistral::TOOL_CALLS),
        };
        if send == 0 {
            return Vec::new();
        }
        let text: String = self.held.drain(..send).collect();
        vec![StreamPiece::Text(text)]
    }

    /// The end of the output: what is still held is calls (a held Llama 3 or Mistral answer
    /// that reads as calls) or plain text.
    pub fn finish(&mut self) -> Vec<StreamPiece> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Vec::new();
        }
        if self.json_answer == Some(true) && self.parser.format == ToolCallFormat::Mistral {
            if let Some((_, calls)) = mistral::parse(&held) {
                self.calls += calls.len();
                return calls.into_iter().map(StreamPiece::Call).collect();
            }
            return vec![StreamPiece::Text(held)];
        }
        if self.json_answer == Some(true) {
            if let Some(calls) = llama3_json::parse_calls(&held) {
                self.calls += calls.len();
                return calls.into_iter().map(StreamPiece::Call).collect();
            }
        }
        vec![StreamPiece::Text(held)]
    }
}

/// The length of the longest tail of `text` that is a proper prefix of `tag` (text held
/// back in a stream because it may still become the tag).
pub(crate) fn partial_prefix_len(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
