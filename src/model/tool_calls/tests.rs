use super::*;

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments: arguments.into(),
    }
}

#[test]
fn blocks_become_calls_and_the_rest_is_content() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>{\"name\": \"now\", \"arguments\": \"{}\"}</tool_call>";
    let parsed = parse(ToolCallFormat::Hermes, text);
    assert_eq!(parsed.content.as_deref(), Some("Let me check."));
    assert_eq!(
        parsed.calls,
        [call("get_weather", r#"{"city":"Oslo"}"#), call("now", "{}")]
    );
    let only = parse(
        ToolCallFormat::Hermes,
        "<tool_call>{\"name\": \"f\", \"parameters\": {\"x\": 1}}</tool_call>",
    );
    assert_eq!(only.content, None);
    assert_eq!(only.calls, [call("f", r#"{"x":1}"#)]);
}

#[test]
fn text_without_a_valid_closed_block_stays_text() {
    for text in [
        "no calls here",
        "<tool_call>{\"name\": \"f\", \"arguments\": {}",
        "<tool_call>not json</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",
    ] {
        let parsed = parse(ToolCallFormat::Hermes, text);
        assert_eq!(parsed.content.as_deref(), Some(text));
        assert!(parsed.calls.is_empty());
    }
}

#[test]
fn templates_that_document_the_tags_are_detected() {
    assert_eq!(
        ToolCallFormat::detect("... within <tool_call></tool_call> XML tags ..."),
        Some(ToolCallFormat::Hermes)
    );
    assert_eq!(ToolCallFormat::detect("{{ messages[0].content }}"), None);
}

/// Feeds `text` in pieces of `size` bytes (on char boundaries) and collects the stream.
fn stream(text: &str, size: usize) -> (String, Vec<ToolCall>) {
    stream_as(ToolCallFormat::Hermes, text, size)
}

/// [`stream`] in `format`.
fn stream_as(format: ToolCallFormat, text: &str, size: usize) -> (String, Vec<ToolCall>) {
    let mut s = ToolCallStream::new(format);
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut take = |pieces: Vec<StreamPiece>| {
        for p in pieces {
            match p {
                StreamPiece::Text(t) => {
                    assert!(!t.is_empty());
                    content.push_str(&t)
                }
                StreamPiece::Call(c) => calls.push(c),
            }
        }
    };
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + size).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        take(s.push(&text[start..end]));
        start = end;
    }
    take(s.finish());
    assert_eq!(s.calls(), calls.len());
    (content, calls)
}

#[test]
fn a_stream_in_any_pieces_gives_the_same_calls_and_text() {
    let text = "Sure — <tool_call>{\"name\": \"a\", \"arguments\": {\"q\": \"<x>\"}}</tool_call> and <tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call> done <tool";
    for size in [1, 2, 3, 5, 7, 16, 1000] {
        let (content, calls) = stream(text, size);
        assert_eq!(
            calls,
            [call("a", r#"{"q":"<x>"}"#), call("b", "{}")],
            "{size}"
        );
        assert_eq!(content, "Sure —  and  done <tool", "{size}");
    }
    // A block that is not a call comes out as its text; one cut off comes out at the end.
    let (content, calls) = stream("x<tool_call>oops</tool_call>y<tool_call>{\"na", 3);
    assert!(calls.is_empty());
    assert_eq!(content, "x<tool_call>oops</tool_call>y<tool_call>{\"na");
}

#[test]
fn plain_text_is_not_held_back_except_a_possible_tag_start() {
    let mut s = ToolCallStream::new(ToolCallFormat::Hermes);
    assert_eq!(s.push("Hello"), [StreamPiece::Text("Hello".into())]);
    assert_eq!(
        s.push(" world <tool"),
        [StreamPiece::Text(" world ".into())]
    );
    assert_eq!(
        s.push("s are great"),
        [StreamPiece::Text("<tools are great".into())]
    );
    assert_eq!(s.finish(), vec![]);
}

#[test]
fn llama3_answers_that_are_objects_become_calls_streamed_or_not() {
    let answer = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
    let parsed = parse(ToolCallFormat::Llama3Json, answer);
    assert_eq!(parsed.content, None);
    assert_eq!(parsed.calls, [call("get_weather", r#"{"city":"Oslo"}"#)]);
    let text = parse(ToolCallFormat::Llama3Json, "It is sunny {not a call}");
    assert_eq!(text.content.as_deref(), Some("It is sunny {not a call}"));

    for size in [1, 4, 100] {
        let mut s = ToolCallStream::new(ToolCallFormat::Llama3Json);
        let mut pieces = Vec::new();
        let chars: Vec<char> = format!(" {answer}").chars().collect();
        for chunk in chars.chunks(size) {
            let got = s.push(&chunk.iter().collect::<String>());
            assert!(got.is_empty(), "an object answer is held until the end");
        }
        pieces.extend(s.finish());
        assert_eq!(
            pieces,
            [StreamPiece::Call(call("get_weather", r#"{"city":"Oslo"}"#))]
        );
        assert_eq!(s.calls(), 1);
    }
    // Text answers pass through as they come.
    let mut s = ToolCallStream::new(ToolCallFormat::Llama3Json);
    assert_eq!(s.push("  "), vec![]);
    assert_eq!(s.push("It is"), [StreamPiece::Text("  It is".into())]);
    assert_eq!(s.push(" {sunny}"), [StreamPiece::Text(" {sunny}".into())]);
    assert_eq!(s.finish(), vec![]);
    assert_eq!(
        ToolCallFormat::detect(
            r#"Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}."#
        ),
        Some(ToolCallFormat::Llama3Json)
    );
}

#[test]
fn mistral_text_streams_until_the_marker_and_the_calls_come_at_the_end() {
    let text =
        "Let me look.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}[TOOL_CALLS]now[ARGS]{}";
    for size in [1, 3, 7, 200] {
        let mut s = ToolCallStream::new(ToolCallFormat::Mistral);
        let (mut content, mut calls) = (String::new(), Vec::new());
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        for chunk in chars.chunks(size) {
            pieces.extend(s.push(&chunk.iter().collect::<String>()));
        }
        pieces.extend(s.finish());
        for piece in pieces {
            match piece {
                StreamPiece::Text(t) => content.push_str(&t),
                StreamPiece::Call(c) => calls.push(c),
            }
        }
        assert_eq!(content, "Let me look.", "{size}");
        assert_eq!(
            calls,
            [call("get_weather", r#"{"city":"Oslo"}"#), call("now", "{}")]
        );
    }
    // A marker followed by something that is not calls comes back as text.
    let mut s = ToolCallStream::new(ToolCallFormat::Mistral);
    let mut out = s.push("Hi [TOOL_CALLS] oops");
    out.extend(s.finish());
    assert_eq!(
        out,
        [
            StreamPiece::Text("Hi ".into()),
            StreamPiece::Text("[TOOL_CALLS] oops".into())
        ]
    );
    assert_eq!(
        ToolCallFormat::detect("{{- '[TOOL_CALLS][' }}"),
        Some(ToolCallFormat::Mistral)
    );
    // Ids as Mistral's templates accept them when the call comes back.
    let id = ToolCallFormat::Mistral.call_id("f", 0);
    assert!(
        id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    assert!(ToolCallFormat::Hermes.call_id("f", 0).starts_with("call_"));
}

/// DeepSeek (both call layouts) and Kimi K2: the section markers are not content, whole or
/// streamed in any pieces; text before the section is.
#[test]
fn sectioned_calls_parse_whole_and_streamed() {
    let cases = [
        (
            ToolCallFormat::DeepSeekV3,
            "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Oslo\"}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>now\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        ),
        (
            ToolCallFormat::DeepSeekV31,
            "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>now<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        ),
        (
            ToolCallFormat::KimiK2,
            "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Oslo\"}<|tool_call_end|><|tool_call_begin|>functions.now:1<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
        ),
    ];
    let want = [call("get_weather", r#"{"city":"Oslo"}"#), call("now", "{}")];
    for (format, text) in cases {
        let parsed = parse(format, text);
        assert_eq!(
            parsed.content.as_deref(),
            Some("Let me check."),
            "{format:?}"
        );
        assert_eq!(parsed.calls, want, "{format:?}");
        for size in [1, 2, 3, 5, 7, 16, 200] {
            let (content, calls) = stream_as(format, text, size);
            assert_eq!(content, "Let me check.", "{format:?} {size}");
            assert_eq!(calls, want, "{format:?} {size}");
        }
        // A section cut off before its call closes stays text.
        let cut = &text[..text.len() - 40];
        assert_eq!(
            parse(format, cut).content.as_deref(),
            Some(cut),
            "{format:?}"
        );
    }
    // The templates that teach them.
    assert_eq!(
        ToolCallFormat::detect(
            "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' }}"
        ),
        Some(ToolCallFormat::DeepSeekV3)
    );
    assert_eq!(
        ToolCallFormat::detect(
            "{{'<｜tool▁call▁begin｜>'+ tool['function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments'] }}"
        ),
        Some(ToolCallFormat::DeepSeekV31)
    );
    assert_eq!(
        ToolCallFormat::detect(
            "<|tool_call_begin|>{{ formatted_id }}<|tool_call_argument_begin|>{{ args }}"
        ),
        Some(ToolCallFormat::KimiK2)
    );
    assert_eq!(
        ToolCallFormat::KimiK2.call_id("get_weather", 2),
        "functions.get_weather:2"
    );
}
