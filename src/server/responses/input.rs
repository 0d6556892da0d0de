//! A Responses request as the chat request it amounts to: `instructions` and `input` items
//! become chat messages, function tools and `tool_choice` take the chat shape, and
//! `text.format` becomes `response_format`. Everything after that (template, tool-call
//! parsing, grammars, sampling) is the chat endpoint's.

use crate::server::error::{ApiError, ApiResult};
use crate::server::types::chat::ChatCompletionRequest;
use crate::server::types::responses::ResponsesRequest;
use serde_json::{json, Map, Value};

/// The `include` entry that asks for the output text's logprobs.
pub const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";

/// The chat request `req` amounts to, or a 400 naming the field kiln cannot honour.
pub fn chat_request(req: &ResponsesRequest) -> ApiResult<ChatCompletionRequest> {
    refuse_stateful(req)?;
    let mut messages = Vec::new();
    if let Some(instructions) = &req.instructions {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    messages.extend(input_messages(&req.input)?);
    let want_logprobs = req.include.iter().flatten().any(|i| i == INCLUDE_LOGPROBS)
        || req.top_logprobs.is_some_and(|k| k > 0);
    let mut chat = json!({
        "model": req.model,
        "messages": messages,
        "stream": req.stream.unwrap_or(false),
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty,
        "parallel_tool_calls": req.parallel_tool_calls,
        "user": req.user,
    });
    let fields = chat.as_object_mut().expect("an object");
    if want_logprobs {
        fields.insert("logprobs".into(), json!(true));
        fields.insert("top_logprobs".into(), json!(req.top_logprobs.unwrap_or(0)));
    }
    if let Some(tools) = &req.tools {
        let tools = tools.iter().map(chat_tool).collect::<ApiResult<Vec<_>>>()?;
        fields.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &req.tool_choice {
        fields.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    if let Some(format) = response_format(req.text.as_ref())? {
        fields.insert("response_format".into(), format);
    }
    // `reasoning: {"effort": ...}` is the chat endpoint's `reasoning_effort`.
    if let Some(effort) = req.reasoning.as_ref().and_then(|r| r.get("effort")) {
        if !effort.is_null() {
            fields.insert("reasoning_effort".into(), effort.clone());
        }
    }
    serde_json::from_value(chat).map_err(|e| ApiError::invalid(None, e.to_string()))
}

/// Kiln keeps no responses or conversations, so nothing can continue one.
fn refuse_stateful(req: &ResponsesRequest) -> ApiResult<()> {
    let refuse = |param: &str, what: &str| {
        Err(ApiError::invalid(
            Some(param),
            format!("{what}: kiln does not store responses; send the whole conversation as input"),
        ))
    };
    if req.previous_response_id.is_some() {
        return refuse(
            "previous_response_id",
            "previous_response_id is not supported",
        );
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return refuse("conversation", "conversation is not supported");
    }
    if req.background == Some(true) {
        return refuse("background", "background responses are not supported");
    }
    if req.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(ApiError::invalid(
            Some("prompt"),
            "stored prompt templates are not supported; send input and instructions",
        ));
    }
    Ok(())
}

/// Chat messages of `input`: a string is one user message; a list holds messages and
/// function-call items, in order. Consecutive calls join the assistant turn before them,
/// as chat templates expect one assistant message with all its `tool_calls`.
fn input_messages(input: &Value) -> ApiResult<Vec<Value>> {
    let invalid = |message: String| ApiError::invalid(Some("input"), message);
    let items = match input {
        Value::String(text) => return Ok(vec![json!({"role": "user", "content": text})]),
        Value::Array(items) => items,
        other => {
            return Err(invalid(format!(
                "input must be a string or a list of items, got {other}"
            )))
        }
    };
    let mut messages: Vec<Value> = Vec::new();
    // Tool names by call id, for the tool messages of their outputs.
    let mut call_names: Map<String, Value> = Map::new();
    for (i, item) in items.iter().enumerate() {
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            None | Some("message") if item.get("role").is_some() => {
                messages.push(message(item).map_err(|e| invalid(format!("input[{i}]: {e}")))?);
            }
            Some("function_call") => {
                let (Some(call_id), Some(name)) = (
                    item.get("call_id").and_then(Value::as_str),
                    item.get("name").and_then(Value::as_str),
                ) else {
                    return Err(invalid(format!(
                        "input[{i}]: a function_call needs call_id and name"
                    )));
                };
                let arguments = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}");
                call_names.insert(call_id.into(), name.into());
                let call = json!({"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments}});
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        let calls = last
                            .as_object_mut()
                            .expect("an object")
                            .entry("tool_calls")
                            .or_insert_with(|| json!([]));
                        calls.as_array_mut().expect("a list").push(call);
                    }
                    _ => messages.push(json!({"role": "assistant", "content": null,
                        "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                    return Err(invalid(format!(
                        "input[{i}]: a function_call_output needs call_id"
                    )));
                };
                let output = match item.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(parts @ Value::Array(_)) => text_of_parts(parts)
                        .map_err(|e| invalid(format!("input[{i}].output: {e}")))?,
                    _ => {
                        return Err(invalid(format!(
                            "input[{i}]: a function_call_output needs output"
                        )))
                    }
                };
                let mut tool = json!({"role": "tool", "tool_call_id": call_id, "content": output});
                if let Some(name) = call_names.get(call_id) {
                    tool["name"] = name.clone();
                }
                messages.push(tool);
            }
            // Earlier reasoning is not shown to the model again (templates drop it too).
            Some("reasoning") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "input[{i}]: items of type {other:?} are not supported"
                )))
            }
            None => {
                return Err(invalid(format!(
                    "input[{i}]: an item needs a type or a role"
                )))
            }
        }
    }
    Ok(messages)
}

/// A message item in chat form: its role, and its content as text or as text parts.
fn message(item: &Value) -> Result<Value, String> {
    let role = item["role"].as_str().ok_or("role must be a string")?;
    if !matches!(role, "user" | "system" | "developer" | "assistant") {
        return Err(format!("unknown role {role:?}"));
    }
    let content = match item.get("content") {
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(parts @ Value::Array(_)) => Value::String(text_of_parts(parts)?),
        Some(Value::Null) | None => Value::Null,
        Some(other) => {
            return Err(format!(
                "content must be a string or a list of parts, got {other}"
            ))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// The text of `input_text` / `output_text` / `refusal` parts, joined; other parts (images,
/// files, audio) are refused, as this server runs text models.
fn text_of_parts(parts: &Value) -> Result<String, String> {
    let mut texts = Vec::new();
    for part in parts.as_array().into_iter().flatten() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        let field = match kind {
            "input_text" | "output_text" | "text" => "text",
            "refusal" => "refusal",
            other => {
                return Err(format!(
                    "content parts of type {other:?} are not supported (text models only)"
                ))
            }
        };
        texts.push(part.get(field).and_then(Value::as_str).unwrap_or_default());
    }
    Ok(texts.join("\n"))
}

/// A Responses function tool (`name` and `parameters` at the top) in chat form.
fn chat_tool(tool: &Value) -> ApiResult<Value> {
    let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "function" {
        return Err(ApiError::invalid(
            Some("tools"),
            format!("tools of type {kind:?} are not supported; only function tools are"),
        ));
    }
    let mut function = tool.as_object().cloned().unwrap_or_default();
    function.remove("type");
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` in chat form.
fn chat_tool_choice(choice: &Value) -> ApiResult<Value> {
    if choice.is_string() {
        return Ok(choice.clone());
    }
    match (choice.get("type").and_then(Value::as_str), choice.get("name")) {
        (Some("function"), Some(name)) => Ok(json!({"type": "function", "function": {"name": name}})),
        _ => Err(ApiError::invalid(
            Some("tool_choice"),
            format!("tool_choice must be \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"name\": ...}}, got {choice}"),
        )),
    }
}

/// `text.format` as a chat `response_format` (`None` for plain text).
fn response_format(text: Option<&Value>) -> ApiResult<Option<Value>> {
    let Some(format) = text.and_then(|t| t.get("format")) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = format.as_object().cloned().unwrap_or_default();
            schema.remove("type");
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(ApiError::invalid(
            Some("text.format"),
            format!("text.format type must be text, json_object or json_schema, got {format}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ResponsesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_string_input_is_one_user_message_after_the_instructions() {
        let chat = chat_request(&request(json!({"model": "m", "input": "hi",
            "instructions": "be brief", "max_output_tokens": 5})))
        .unwrap();
        let messages = serde_json::to_value(&chat.messages).unwrap();
        assert_eq!(
            messages,
            json!([{"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"}])
        );
        assert_eq!(chat.max_completion_tokens, Some(5));
    }

    #[test]
    fn calls_join_their_assistant_turn_and_outputs_become_tool_messages() {
        let chat = chat_request(&request(json!({"model": "m", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ]}))).unwrap();
        let messages = serde_json::to_value(&chat.messages).unwrap();
        assert_eq!(messages[0], json!({"role": "user", "content": "weather?"}));
        assert_eq!(messages[1]["content"], "checking");
        assert_eq!(
            messages[1]["tool_calls"][1]["function"]["arguments"],
            "{\"city\":\"Rome\"}"
        );
        assert_eq!(
            messages[2],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny", "name": "get"})
        );
        assert_eq!(messages.as_array().unwrap().len(), 3);
    }

    #[test]
    fn tools_choice_and_format_take_the_chat_shape() {
        let chat = chat_request(&request(json!({"model": "m", "input": "x",
            "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "include": [INCLUDE_LOGPROBS], "top_logprobs": 2})))
        .unwrap();
        assert_eq!(
            chat.tools.unwrap()[0],
            json!({"type": "function",
            "function": {"name": "get", "parameters": {"type": "object"}}})
        );
        assert_eq!(
            chat.tool_choice.unwrap(),
            json!({"type": "function", "function": {"name": "get"}})
        );
        assert_eq!(
            chat.response_format.unwrap(),
            json!({"type": "json_schema",
            "json_schema": {"name": "s", "schema": {"type": "object"}}})
        );
        assert_eq!((chat.logprobs, chat.top_logprobs), (Some(true), Some(2)));
    }

    #[test]
    fn what_kiln_cannot_honour_is_a_400_naming_the_field() {
        for (body, param) in [
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                "background",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}),
                "input",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input",
            ),
            (json!({"model": "m", "input": 3}), "input"),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}),
                "text.format",
            ),
        ] {
            let err = chat_request(&request(body.clone())).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
    }
}
