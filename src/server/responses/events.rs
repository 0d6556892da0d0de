//! A streamed response: OpenAI's event sequence, built from the chat choice stream's
//! deltas. `response.created`, then for each output item `output_item.added`, its content
//! part and text deltas (or a call's arguments), `output_item.done`; finally
//! `response.completed` (or `response.incomplete` at the token limit) with the whole
//! response. Each event goes out with its SSE `event:` name and a `sequence_number`.

use super::{finished, item_status, message_item, new_id, output_text, reasoning_item};
use crate::server::chat::Prepared;
use crate::server::chat_tools::ChoiceStream;
use crate::server::generate::{self, finish_reason};
use crate::server::logprobs;
use crate::server::sse::{self, SseSender};
use crate::server::state::SharedState;
use crate::server::types::chat::{ChatDelta, TokenLogprobEntry, ToolCall};
use crate::server::types::responses::{OutputItem, ResponseEvent, ResponseObject, SequencedEvent};
use axum::response::Response;
use serde_json::json;

pub fn stream(state: SharedState, response: ResponseObject, prepared: Prepared) -> Response {
    let Prepared {
        submitted,
        want_logprobs,
        tool_parser,
        reasoning,
        ..
    } = prepared;
    sse::response(move |tx| async move {
        let Some(served) = state.served() else { return };
        let tokenizer = served.engine.tokenizer().clone();
        let mut events = Emitter { tx, sequence: 0 };
        events.send(ResponseEvent::Created {
            response: Box::new(response.clone()),
        });
        events.send(ResponseEvent::InProgress {
            response: Box::new(response.clone()),
        });
        let mut choice = ChoiceStream::new(tool_parser);
        if let Some(r) = &reasoning {
            choice = choice.with_reasoning(r);
        }
        let mut output = OutputBuilder::default();
        let mut outputs = generate::interleave(submitted, state.clone());
        let last = loop {
            let out = match generate::next_output(&mut outputs, &events.tx).await {
                generate::Next::Output(_, out) => out,
                generate::Next::End => return,
                generate::Next::Stop => return,
            };
            let done = finish_reason(&out).is_some();
            if want_logprobs {
                output.pending_logprobs.extend(
                    logprobs::chat(logprobs::TokenNames::new(&tokenizer, false), &out.logprobs)
                        .content,
                );
            }
            for delta in choice.deltas(&out.text, done) {
                output.apply(delta, &mut events);
            }
            if done {
                break out;
            }
        };
        let status = item_status(&last);
        if output.items.is_empty() && output.open.is_none() {
            // Nothing was said: an empty message, as the whole response would have.
            output.open_message(&mut events);
        }
        output.close(status, &mut events);
        let response = finished(response, output.items, &last, &tokenizer);
        events.send(if response.status == "incomplete" {
            ResponseEvent::Incomplete {
                response: Box::new(response),
            }
        } else {
            ResponseEvent::Completed {
                response: Box::new(response),
            }
        });
    })
}

/// Sends events in order, numbering them.
struct Emitter {
    tx: SseSender,
    sequence: usize,
}

impl Emitter {
    fn send(&mut self, event: ResponseEvent) {
        self.tx.send_event(
            event.name(),
            &SequencedEvent {
                event: &event,
                sequence_number: self.sequence,
            },
        );
        self.sequence += 1;
    }
}

/// The item being streamed: text arrives in deltas until something else starts.
enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
        logprobs: Vec<TokenLogprobEntry>,
    },
}

/// The output items so far, and the one still open.
#[derive(Default)]
struct OutputBuilder {
    items: Vec<OutputItem>,
    open: Option<Open>,
    /// Logprobs of tokens whose text has not been sent yet (a tool-call parser may hold
    /// text back); they go with the next text delta.
    pending_logprobs: Vec<TokenLogprobEntry>,
}

impl OutputBuilder {
    /// The index the open item has, or the next item will have.
    fn index(&self) -> usize {
        self.items.len()
    }

    fn apply(&mut self, delta: ChatDelta, events: &mut Emitter) {
        if let Some(text) = delta.reasoning_content.filter(|t| !t.is_empty()) {
            self.reasoning(text, events);
        }
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            self.text(text, events);
        }
        for call in delta.tool_calls.into_iter().flatten() {
            self.call(call.call, events);
        }
    }

    fn reasoning(&mut self, delta: String, events: &mut Emitter) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close("completed", events);
            let id = new_id("rs");
            self.open_item(
                id.clone(),
                reasoning_item(id.clone(), String::new(), "in_progress"),
                json!({"type": "reasoning_text", "text": ""}),
                events,
            );
            self.open = Some(Open::Reasoning {
                id,
                text: String::new(),
            });
        }
        let output_index = self.index();
        if let Some(Open::Reasoning { id, text }) = &mut self.open {
            text.push_str(&delta);
            events.send(ResponseEvent::ReasoningTextDelta {
                item_id: id.clone(),
                output_index,
                content_index: 0,
                delta,
            });
        }
    }

    /// Opens a message item (and its text part).
    fn open_message(&mut self, events: &mut Emitter) {
        let id = new_id("msg");
        let item = message_item(id.clone(), String::new(), Vec::new(), "in_progress");
        let part = serde_json::to_value(output_text(String::new(), Vec::new())).unwrap_or_default();
        self.open_item(id.clone(), item, part, events);
        self.open = Some(Open::Message {
            id,
            text: String::new(),
            logprobs: Vec::new(),
        });
    }

    fn text(&mut self, delta: String, events: &mut Emitter) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close("completed", events);
            self.open_message(events);
        }
        let output_index = self.index();
        let new_logprobs = std::mem::take(&mut self.pending_logprobs);
        if let Some(Open::Message { id, text, logprobs }) = &mut self.open {
            text.push_str(&delta);
            logprobs.extend(new_logprobs.iter().cloned());
            events.send(ResponseEvent::OutputTextDelta {
                item_id: id.clone(),
                output_index,
                content_index: 0,
                delta,
                logprobs: new_logprobs,
            });
        }
    }

    /// A call arrives whole: its item opens, carries its arguments in one delta and closes.
    fn call(&mut self, call: ToolCall, events: &mut Emitter) {
        self.close("completed", events);
        let output_index = self.index();
        let id = new_id("fc");
        let (call_id, name, arguments) = (call.id, call.function.name, call.function.arguments);
        let item = |arguments: String, status| OutputItem::FunctionCall {
            id: id.clone(),
            call_id: call_id.clone(),
            name: name.clone(),
            arguments,
            status,
        };
        events.send(ResponseEvent::OutputItemAdded {
            output_index,
            item: item(String::new(), "in_progress"),
        });
        events.send(ResponseEvent::FunctionCallArgumentsDelta {
            item_id: id.clone(),
            output_index,
            delta: arguments.clone(),
        });
        events.send(ResponseEvent::FunctionCallArgumentsDone {
            item_id: id.clone(),
            output_index,
            name: name.clone(),
            arguments: arguments.clone(),
        });
        let done = item(arguments, "completed");
        events.send(ResponseEvent::OutputItemDone {
            output_index,
            item: done.clone(),
        });
        self.items.push(done);
    }

    fn open_item(
        &mut self,
        id: String,
        item: OutputItem,
        part: serde_json::Value,
        events: &mut Emitter,
    ) {
        let output_index = self.index();
        events.send(ResponseEvent::OutputItemAdded { output_index, item });
        events.send(ResponseEvent::ContentPartAdded {
            item_id: id,
            output_index,
            content_index: 0,
            part,
        });
    }

    /// Finishes the open item (if any) with `status`.
    fn close(&mut self, status: &'static str, events: &mut Emitter) {
        let output_index = self.index();
        let item = match self.open.take() {
            None => return,
            Some(Open::Reasoning { id, text }) => {
                events.send(ResponseEvent::ReasoningTextDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    text: text.clone(),
                });
                events.send(ResponseEvent::ContentPartDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    part: json!({"type": "reasoning_text", "text": text}),
                });
                reasoning_item(id, text, status)
            }
            Some(Open::Message { id, text, logprobs }) => {
                events.send(ResponseEvent::OutputTextDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    text: text.clone(),
                    logprobs: logprobs.clone(),
                });
                let part = output_text(text.clone(), logprobs.clone());
                events.send(ResponseEvent::ContentPartDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    part: serde_json::to_value(&part).unwrap_or_default(),
                });
                message_item(id, text, logprobs, status)
            }
        };
        events.send(ResponseEvent::OutputItemDone {
            output_index,
            item: item.clone(),
        });
        self.items.push(item);
    }
}
