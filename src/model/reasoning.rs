//! Reasoning in a model's output: models that think before they answer (Qwen3, QwQ,
//! DeepSeek-R1 and its distills) write `<think>...</think>` before the answer, or, when the
//! chat template opens the block itself, just the reasoning and `</think>`. With a
//! reasoning parser on, the server returns the two apart (`reasoning_content`, as vLLM
//! does), whole or streamed. gpt-oss writes harmony messages instead (`harmony.rs`), whose
//! channels also carry its tool calls.

use super::harmony::HarmonySplitter;
use super::tool_calls::{partial_prefix_len, ToolCall};

/// How a model marks its reasoning (`--reasoning-parser`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// `<think>...</think>` before the answer.
    Think,
    /// `<seed:think>...</seed:think>` before the answer (Seed-OSS).
    SeedThink,
    /// OpenAI's harmony channels (gpt-oss): `analysis`, `final`, calls on `commentary`.
    Harmony,
}

impl ReasoningFormat {
    /// Whether the format's markers may be special tokens, which decoding must then keep
    /// (harmony's channel markers are; Seed-OSS's think tags are added tokens).
    pub fn marks_may_be_special_tokens(self) -> bool {
        matches!(self, ReasoningFormat::Harmony | ReasoningFormat::SeedThink)
    }
}

/// What a request's output is split with: the format, and the rendered prompt (which may
/// have opened the thinking block).
#[derive(Clone, Debug)]
pub struct Reasoning {
    pub format: ReasoningFormat,
    pub prompt: String,
}

/// The tags of the `<think>` format and of Seed-OSS's.
const THINK_TAGS: (&str, &str) = ("<think>", "</think>");
const SEED_THINK_TAGS: (&str, &str) = ("<seed:think>", "</seed:think>");

/// Where the output starts, as the rendered prompt leaves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Not yet known: the output may open a block.
    Start,
    Reasoning,
    /// Right after `</think>`: the answer's leading line breaks are dropped.
    AfterReasoning,
    Content,
}

/// A piece of streamed output.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Reasoning(String),
    Content(String),
    /// A whole tool call (harmony's format carries them itself).
    Call(ToolCall),
}

/// Splits an output stream into reasoning and answer; feed it text as it comes.
#[derive(Debug)]
pub enum ReasoningSplitter {
    Think(ThinkSplitter),
    Harmony(HarmonySplitter),
}

impl ReasoningSplitter {
    pub fn new(reasoning: &Reasoning) -> Self {
        match reasoning.format {
            ReasoningFormat::Think => {
                Self::Think(ThinkSplitter::new(&reasoning.prompt, THINK_TAGS))
            }
            ReasoningFormat::SeedThink => {
                Self::Think(ThinkSplitter::new(&reasoning.prompt, SEED_THINK_TAGS))
            }
            ReasoningFormat::Harmony => Self::Harmony(HarmonySplitter::new()),
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        match self {
            Self::Think(s) => s.push(text),
            Self::Harmony(s) => s.push(text),
        }
    }

    /// The end of the output: whatever is still held back.
    pub fn finish(&mut self) -> Vec<Piece> {
        match self {
            Self::Think(s) => s.finish().into_iter().collect(),
            Self::Harmony(s) => s.finish(),
        }
    }
}

/// The `<think>` format's splitter (with its own tags or Seed-OSS's).
#[derive(Debug)]
pub struct ThinkSplitter {
    part: Part,
    held: String,
    open: &'static str,
    close: &'static str,
}

impl ThinkSplitter {
    /// `prompt_text` is the rendered prompt: when it ends inside an opened block (the
    /// template wrote `<think>`), the output starts as reasoning.
    pub fn new(prompt_text: &str, (open, close): (&'static str, &'static str)) -> Self {
        let inside = prompt_text.trim_end().ends_with(open);
        ThinkSplitter {
            part: if inside { Part::Reasoning } else { Part::Start },
            held: String::new(),
            open,
            close,
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.part {
                Part::Start => {
                    let trimmed = self.held.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(self.open) {
                        self.held = rest.to_string();
                        self.part = Part::Reasoning;
                    } else if self.open.starts_with(trimmed) {
                        return out; // could still become the opening tag
                    } else {
                        self.part = Part::Content;
                    }
                }
                Part::Reasoning => match self.held.find(self.close) {
                    Some(at) => {
                        let reasoning: String = self.held.drain(..at + self.close.len()).collect();
                        push_nonempty(&mut out, Piece::Reasoning(reasoning[..at].to_string()));
                        self.part = Part::AfterReasoning;
                    }
                    None => {
                        let keep = partial_prefix_len(&self.held, self.close);
                        let send: String = self.held.drain(..self.held.len() - keep).collect();
                        push_nonempty(&mut out, Piece::Reasoning(send));
                        return out;
                    }
                },
                Part::AfterReasoning => {
                    let rest = self.held.trim_start_matches(['\n', '\r']).to_string();
                    if rest.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = rest;
                    self.part = Part::Content;
                }
                Part::Content => {
                    let content = std::mem::take(&mut self.held);
                    push_nonempty(&mut out, Piece::Content(content));
                    return out;
                }
            }
        }
    }

    /// The end of the output: what is still held back (a partial tag) is what it was in.
    pub fn finish(&mut self) -> Option<Piece> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return None;
        }
        Some(match self.part {
            Part::Reasoning => Piece::Reasoning(held),
            _ => Piece::Content(held),
        })
    }
}

/// A finished output, split.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    /// `None` where there is none.
    pub reasoning: Option<String>,
    pub content: Option<String>,
    /// Calls the format itself carries (harmony).
    pub calls: Vec<ToolCall>,
}

/// A finished output's reasoning, answer and (harmony) calls.
pub fn split(reasoning: &Reasoning, text: &str) -> Split {
    let mut splitter = ReasoningSplitter::new(reasoning);
    let mut pieces = splitter.push(text);
    pieces.extend(splitter.finish());
    let (mut thought, mut content, mut calls) = (String::new(), String::new(), Vec::new());
    for piece in pieces {
        match piece {
            Piece::Reasoning(r) => thought.push_str(&r),
            Piece::Content(c) => content.push_str(&c),
            Piece::Call(c) => calls.push(c),
        }
    }
    let some = |s: String| (!s.is_empty()).then_some(s);
    Split {
        reasoning: some(thought),
        content: some(content),
        calls,
    }
}

fn push_nonempty(out: &mut Vec<Piece>, piece: Piece) {
    let empty = match &piece {
        Piece::Reasoning(s) | Piece::Content(s) => s.is_empty(),
        Piece::Call(_) => false,
    };
    if !empty {
        out.push(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn think(prompt: &str) -> Reasoning {
        Reasoning {
            format: ReasoningFormat::Think,
            prompt: prompt.to_string(),
        }
    }

    /// The old two-part view of `split` (the think format carries no calls).
    fn split(prompt: &str, text: &str) -> (Option<String>, Option<String>) {
        let s = super::split(&think(prompt), text);
        assert!(s.calls.is_empty());
        (s.reasoning, s.content)
    }

    fn streamed(prompt: &str, text: &str, size: usize) -> (String, String) {
        let mut s = ReasoningSplitter::new(&think(prompt));
        let (mut reasoning, mut content) = (String::new(), String::new());
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        for chunk in chars.chunks(size) {
            pieces.extend(s.push(&chunk.iter().collect::<String>()));
        }
        pieces.extend(s.finish());
        for p in pieces {
            match p {
                Piece::Reasoning(r) => reasoning.push_str(&r),
                Piece::Content(c) => content.push_str(&c),
                Piece::Call(c) => panic!("a call in the think format: {c:?}"),
            }
        }
        (reasoning, content)
    }

    #[test]
    fn an_opened_block_is_reasoning_and_the_rest_the_answer_in_any_pieces() {
        let text = "<think>\nThe kiln is hot; <b>clay</b> hardens.\n</think>\n\nA kiln fires clay.";
        for size in [1, 2, 3, 7, 100] {
            let (r, c) = streamed("<|im_start|>assistant\n", text, size);
            assert_eq!(r, "\nThe kiln is hot; <b>clay</b> hardens.\n", "{size}");
            assert_eq!(c, "A kiln fires clay.", "{size}");
        }
        assert_eq!(
            split("", text),
            (
                Some("\nThe kiln is hot; <b>clay</b> hardens.\n".into()),
                Some("A kiln fires clay.".into())
            )
        );
    }

    #[test]
    fn a_template_that_opens_the_block_starts_the_output_as_reasoning() {
        let prompt = "<｜Assistant｜><think>\n";
        for size in [1, 4, 50] {
            let (r, c) = streamed(prompt, "thinking...</think>Answer", size);
            assert_eq!((r.as_str(), c.as_str()), ("thinking...", "Answer"));
        }
        // Cut off while thinking: all of it is reasoning.
        assert_eq!(
            split(prompt, "still thinking </th"),
            (Some("still thinking </th".into()), None)
        );
    }

    #[test]
    fn output_without_a_block_is_all_answer() {
        for text in [
            "Just an answer.",
            "<thinking is not the tag>",
            "  <b>bold</b>",
        ] {
            assert_eq!(split("", text), (None, Some(text.to_string())), "{text}");
            let (r, c) = streamed("", text, 1);
            assert_eq!((r.as_str(), c.as_str()), ("", text));
        }
        // Thinking switched off by the template (an empty block in the prompt).
        assert_eq!(
            split("<think>\n\n</think>\n\n", "Answer"),
            (None, Some("Answer".into()))
        );
    }

    #[test]
    fn seed_oss_thinks_in_its_own_tags() {
        let seed = |prompt: &str| Reasoning {
            format: ReasoningFormat::SeedThink,
            prompt: prompt.to_string(),
        };
        let text =
            "<seed:think>Budget left: 500.<seed:cot_budget_reflect>ok</seed:cot_budget_reflect>\
                    </seed:think>\nIt is 4.";
        let s = super::split(&seed("<seed:bos>assistant\n"), text);
        assert_eq!(
            s.reasoning.as_deref(),
            Some("Budget left: 500.<seed:cot_budget_reflect>ok</seed:cot_budget_reflect>")
        );
        assert_eq!(s.content.as_deref(), Some("It is 4."));
        // `<think>` is not Seed's tag: it stays in the answer.
        let s = super::split(&seed(""), "<think>x</think>y");
        assert_eq!(
            (s.reasoning, s.content.as_deref()),
            (None, Some("<think>x</think>y"))
        );
    }
}
