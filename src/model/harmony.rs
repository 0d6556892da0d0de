//! OpenAI's harmony format, in which gpt-oss writes its output as messages:
//! `<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...`
//! with the chain of thought on the `analysis` channel, the answer on `final`, and a tool
//! call as a `commentary` message addressed `to=functions.NAME` and ended by `<|call|>`.
//! The splitter reads the decoded output (special tokens kept: the markers are special
//! tokens) as it streams and hands out reasoning, answer text and calls.

use super::reasoning::Piece;
use super::tool_calls::{partial_prefix_len, ToolCall};

const MESSAGE: &str = "<|message|>";
/// What ends a message: `<|end|>`, or the turn (`<|return|>` after the answer, `<|call|>`
/// after a tool call; both are also end-of-sequence tokens, so usually not in the text).
const ENDS: [&str; 3] = ["<|end|>", "<|return|>", "<|call|>"];
/// llguidance Lark for an answer that is one call to one of `tools` (name, parameters
/// schema), as gpt-oss writes it after the prompt's `<|start|>assistant`:
/// `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}`, the turn
/// then ending with `<|call|>` (an end-of-sequence token). The markers are special tokens,
/// referred to by the ids `special_token_id` finds. Harmony makes one call per turn, so
/// there is no parallel form.
pub fn forcing_grammar(
    tools: &[(String, serde_json::Value)],
    json_options: &serde_json::Value,
    special_token_id: &dyn Fn(&str) -> Option<u32>,
) -> Result<String, String> {
    let id = |marker: &str| {
        special_token_id(marker)
            .map(|id| format!("<[{id}]>"))
            .ok_or_else(|| format!("the tokenizer has no {marker} token to force calls with"))
    };
    let (channel, message) = (id("<|channel|>")?, id(MESSAGE)?);
    // Without `<|constrain|>` the content type follows the recipient's space directly.
    let constrain = id("<|constrain|>").map(|c| c + " ").unwrap_or_default();
    let functions: Vec<String> = tools
        .iter()
        .map(|(name, parameters)| {
            let mut schema = parameters.clone();
            if let Some(map) = schema.as_object_mut() {
                map.insert("x-guidance".into(), json_options.clone());
            }
            let name = serde_json::Value::String(format!("{name} "));
            format!("{name} {constrain}\"json\" {message} %json {schema}")
        })
        .collect();
    Ok(format!(
        "start: {channel} \"commentary to=functions.\" ({})\n",
        functions.join(" | ")
    ))
}

/// A new message's start also ends the one before it (should the model skip `<|end|>`); it
/// stays in the text, as the next header's opening.
const START: &str = "<|start|>";
const MARKER_START: &str = "<|";

/// Where a message's body goes.
#[derive(Clone, Debug, PartialEq)]
enum Body {
    Reasoning,
    Content,
    /// A call of `name`; the body is its arguments, handed out whole when it ends.
    Call(String),
}

#[derive(Debug)]
enum State {
    /// Between messages: `<|start|>assistant<|channel|>...` up to `<|message|>`.
    Header,
    Body(Body),
    /// The output is not harmony (it does not open with a header): all of it is answer.
    Plain,
}

#[derive(Debug)]
pub struct HarmonySplitter {
    state: State,
    held: String,
    /// The arguments of the call being read.
    arguments: String,
}

impl Default for HarmonySplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl HarmonySplitter {
    pub fn new() -> Self {
        HarmonySplitter {
            state: State::Header,
            held: String::new(),
            arguments: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match &self.state {
                State::Plain => {
                    push_text(&mut out, Body::Content, std::mem::take(&mut self.held));
                    return out;
                }
                State::Header => {
                    if let Some(at) = self.held.find(MESSAGE) {
                        let header: String = self.held.drain(..at + MESSAGE.len()).collect();
                        self.state = State::Body(body_of(&header[..at]));
                    } else {
                        // A header opens with a marker (or ` to=` before the channel); other
                        // text means the model is not speaking harmony.
                        let start = self.held.trim_start();
                        let opens = start.starts_with(MARKER_START)
                            || start.starts_with("to=")
                            || MARKER_START.starts_with(start)
                            || "to=".starts_with(start);
                        if !opens {
                            self.state = State::Plain;
                            continue;
                        }
                        return out;
                    }
                }
                State::Body(body) => {
                    let body = body.clone();
                    let end = ENDS
                        .iter()
                        .filter_map(|e| self.held.find(e).map(|at| (at, e.len())))
                        .chain(self.held.find(START).map(|at| (at, 0)))
                        .min();
                    match end {
                        Some((at, len)) => {
                            let text: String = self.held.drain(..at).collect();
                            self.held.drain(..len);
                            self.emit(&mut out, body, text, true);
                            self.state = State::Header;
                        }
                        None => {
                            let keep = ENDS
                                .iter()
                                .chain([&START])
                                .map(|e| partial_prefix_len(&self.held, e))
                                .max()
                                .unwrap_or(0);
                            let text: String = self.held.drain(..self.held.len() - keep).collect();
                            self.emit(&mut out, body, text, false);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// The end of the output: a message cut off (by the length limit, or by `<|call|>` or
    /// `<|return|>` as end-of-sequence tokens) ends here.
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        match std::mem::replace(&mut self.state, State::Header) {
            State::Body(body) => self.emit(&mut out, body, held, true),
            // A header cut short carries no text for the client.
            State::Header => {}
            State::Plain => push_text(&mut out, Body::Content, held),
        }
        out
    }

    fn emit(&mut self, out: &mut Vec<Piece>, body: Body, text: String, ended: bool) {
        match body {
            Body::Call(name) => {
                self.arguments.push_str(&text);
                if ended {
                    out.push(Piece::Call(ToolCall {
                        name,
                        arguments: std::mem::take(&mut self.arguments).trim().to_string(),
                    }));
                }
            }
            body => push_text(out, body, text),
        }
    }
}

fn push_text(out: &mut Vec<Piece>, body: Body, text: String) {
    if text.is_empty() {
        return;
    }
    out.push(match body {
        Body::Reasoning => Piece::Reasoning(text),
        _ => Piece::Content(text),
    });
}

/// A message's destination from its header (`<|start|>assistant to=functions.get
/// <|channel|>commentary json`, the recipient before or after the channel).
fn body_of(header: &str) -> Body {
    if let Some(at) = header.find("to=functions.") {
        let rest = &header[at + "to=functions.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '<')
            .collect();
        if !name.is_empty() {
            return Body::Call(name);
        }
    }
    match header.find("<|channel|>") {
        Some(at) if header[at + "<|channel|>".len()..].starts_with("analysis") => Body::Reasoning,
        // final, and commentary without a recipient (a preamble to the user).
        _ => Body::Content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` fed in pieces of `size` characters: (reasoning, content, calls).
    fn streamed(text: &str, size: usize) -> (String, String, Vec<ToolCall>) {
        let mut s = HarmonySplitter::new();
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        for chunk in chars.chunks(size) {
            pieces.extend(s.push(&chunk.iter().collect::<String>()));
        }
        pieces.extend(s.finish());
        let (mut reasoning, mut content, mut calls) = (String::new(), String::new(), Vec::new());
        for p in pieces {
            match p {
                Piece::Reasoning(r) => reasoning.push_str(&r),
                Piece::Content(c) => content.push_str(&c),
                Piece::Call(c) => calls.push(c),
            }
        }
        (reasoning, content, calls)
    }

    #[test]
    fn analysis_is_reasoning_and_final_the_answer_in_any_pieces() {
        let text = "<|channel|>analysis<|message|>User asks 2+2. Easy.<|end|>\
                    <|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>";
        for size in [1, 2, 5, 13, 1000] {
            let (r, c, calls) = streamed(text, size);
            assert_eq!(r, "User asks 2+2. Easy.", "{size}");
            assert_eq!(c, "2 + 2 = 4.", "{size}");
            assert!(calls.is_empty());
        }
        // `<|return|>` as an end-of-sequence token is not in the text: the answer still ends.
        let (_, c, _) = streamed(&text[..text.len() - "<|return|>".len()], 3);
        assert_eq!(c, "2 + 2 = 4.");
    }

    #[test]
    fn a_commentary_message_to_a_function_is_a_call() {
        for text in [
            "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Oslo\"}<|call|>",
            "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Oslo\"}",
        ] {
            for size in [1, 4, 1000] {
                let (r, c, calls) = streamed(text, size);
                assert_eq!(r, "Need weather.");
                assert_eq!(c, "");
                assert_eq!(
                    calls,
                    vec![ToolCall {
                        name: "get_weather".into(),
                        arguments: "{\"city\": \"Oslo\"}".into()
                    }],
                    "{text} / {size}"
                );
            }
        }
    }

    #[test]
    fn a_message_start_ends_the_message_before_it() {
        let text =
            "<|channel|>analysis<|message|>Quick.<|start|>assistant<|channel|>final<|message|>Done";
        for size in [1, 3, 100] {
            let (r, c, _) = streamed(text, size);
            assert_eq!((r.as_str(), c.as_str()), ("Quick.", "Done"), "{size}");
        }
    }

    #[test]
    fn text_that_is_not_harmony_is_all_answer() {
        for text in ["Just an answer.", "  4", "<b>bold</b> and <|end|> both"] {
            let (r, c, calls) = streamed(text, 2);
            assert_eq!((r.as_str(), calls.len()), ("", 0), "{text}");
            // Plain text keeps what it says, markers included: nothing is parsed out of it.
            assert_eq!(c, text, "{text}");
        }
    }

    #[test]
    fn cut_off_while_thinking_leaves_only_reasoning() {
        let (r, c, _) = streamed("<|channel|>analysis<|message|>Let me think ab", 4);
        assert_eq!((r.as_str(), c.as_str()), ("Let me think ab", ""));
        // A partial end marker at the cut is kept as text.
        let (r, _, _) = streamed("<|channel|>analysis<|message|>So x <|en", 4);
        assert_eq!(r, "So x <|en");
    }
}
