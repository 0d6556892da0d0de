use super::*;
use std::path::PathBuf;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer"))
        .unwrap()
}

/// Walks the grammar taking, at every step, the allowed token that `choose` prefers (as a
/// model would with its logits), until only end-of-sequence is left; returns the text.
fn walk(tok: &Tokenizer, c: &mut Constraint, choose: impl Fn(&[u32]) -> u32) -> String {
    walk_until(tok, c, choose, false)
}

/// `walk`, ending as soon as end-of-sequence is allowed when `end_early` (a grammar that
/// could go on forever, like any number of tool calls).
fn walk_until(
    tok: &Tokenizer,
    c: &mut Constraint,
    choose: impl Fn(&[u32]) -> u32,
    end_early: bool,
) -> String {
    let eos = tok.eos_token_ids();
    let mut ids = Vec::new();
    for _ in 0..200 {
        let mask = c.mask().unwrap();
        let allowed: Vec<u32> = (0..mask.len() as u32)
            .filter(|&t| mask.is_allowed(t) && !eos.contains(&t))
            .collect();
        let may_end = eos.iter().any(|&e| mask.is_allowed(e));
        if allowed.is_empty() || c.finished() || (end_early && may_end) {
            assert!(
                eos.iter().any(|&e| mask.is_allowed(e)),
                "EOS allowed at the end"
            );
            return tok.decode(&ids, true).unwrap();
        }
        let t = choose(&allowed);
        c.advance(t).unwrap();
        ids.push(t);
    }
    panic!("the grammar never finished: {:?}", tok.decode(&ids, true));
}

#[test]
fn every_walk_through_a_schema_is_valid_json_of_it() {
    let tok = tokenizer();
    let compiler = GrammarCompiler::new(&tok, 448).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green"]}, "n": {"type": "integer", "maximum": 99, "minimum": 0}},
        "required": ["colour", "n"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    });
    let pickers: [fn(&[u32]) -> u32; 3] = [|a| a[0], |a| a[a.len() - 1], |a| a[a.len() / 2]];
    for choose in pickers {
        let mut c = compiler
            .compile(&Structure::JsonSchema(schema.clone()))
            .unwrap();
        let text = walk(&tok, &mut c, choose);
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(
            ["red", "green"].contains(&value["colour"].as_str().unwrap()),
            "{text}"
        );
        assert!(value["n"].as_i64().unwrap() <= 99, "{text}");
    }
}

#[test]
fn choices_regexes_and_json_objects_constrain_the_text() {
    let tok = tokenizer();
    let compiler = GrammarCompiler::new(&tok, 500).unwrap();
    let options = vec!["yes (sure)".to_string(), "no".to_string()];
    for choose in [|a: &[u32]| a[0], |a: &[u32]| a[a.len() - 1]] {
        let mut c = compiler
            .compile(&Structure::Choice(options.clone()))
            .unwrap();
        let text = walk(&tok, &mut c, choose);
        assert!(options.contains(&text), "{text:?}");
        let mut c = compiler
            .compile(&Structure::Regex("[0-9]{3}-[a-c]".into()))
            .unwrap();
        let text = walk(&tok, &mut c, choose);
        assert!(
            text.len() == 5 && text[..3].chars().all(|c| c.is_ascii_digit()) && &text[3..4] == "-",
            "{text:?}"
        );
    }
    // Ids past the tokenizer's vocabulary (the model's padding) are never allowed.
    let mut c = compiler.compile(&Structure::JsonObject).unwrap();
    let mask = c.mask().unwrap();
    assert!((448..500).all(|t| !mask.is_allowed(t)));
    assert!(mask.is_allowed(tok.token_to_id("{").unwrap()));
    assert!(
        !mask.is_allowed(tok.token_to_id("a").unwrap()),
        "an object starts with {{"
    );
}

#[test]
fn a_bad_grammar_is_an_error_naming_it() {
    let compiler = GrammarCompiler::new(&tokenizer(), 448).unwrap();
    for bad in [
        Structure::JsonSchema(serde_json::json!({"type": "no-such-type"})),
        Structure::Regex("(unclosed".into()),
    ] {
        assert!(compiler.compile(&bad).is_err(), "{bad:?}");
    }
    assert_eq!(escape_regex("a.b(c)"), r"a\.b\(c\)");
}

#[test]
fn a_forced_tool_call_grammar_yields_calls_the_parser_finds() {
    use crate::model::tool_calls::{forcing_grammar, parse, ToolCallFormat, ToolParser};
    let tok = tokenizer();
    let compiler = GrammarCompiler::new(&tok, 448).unwrap();
    let tools = word_and_clock_tools();
    let options = serde_json::json!({"whitespace_flexible": false});
    for (format, parallel) in [
        (ToolCallFormat::Hermes, false),
        (ToolCallFormat::Hermes, true),
        (ToolCallFormat::Llama3Json, false),
        (ToolCallFormat::Llama3Json, true),
        (ToolCallFormat::Qwen3Xml, false),
        (ToolCallFormat::Qwen3Xml, true),
        (ToolCallFormat::SeedXml, false),
        (ToolCallFormat::SeedXml, true),
        (ToolCallFormat::Glm45, false),
        (ToolCallFormat::Glm45, true),
        // Parallel sectioned calls may go on until the section closes, which a walk by
        // lowest or highest token need not choose: `forced_section_calls_use_the_marker_tokens`
        // checks two calls instead.
        (ToolCallFormat::DeepSeekV3, false),
        (ToolCallFormat::DeepSeekV31, false),
        (ToolCallFormat::KimiK2, false),
    ] {
        let grammar = forcing_grammar(format, &tools, parallel, &options, &|_| None).unwrap();
        for choose in [|a: &[u32]| a[0], |a: &[u32]| a[a.len() - 1]] {
            let mut c = compiler.compile(&Structure::Lark(grammar.clone())).unwrap();
            let text = walk_until(&tok, &mut c, choose, true);
            let parsed = parse(ToolParser::new(format, tools.clone()), &text);
            assert_eq!(parsed.content, None, "{text:?}");
            assert!(!parsed.calls.is_empty(), "{text:?}");
            for call in &parsed.calls {
                let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
                match call.name.as_str() {
                    "look_up" => {
                        assert!(["kiln", "clay"].contains(&args["word"].as_str().unwrap()))
                    }
                    "now" => assert_eq!(args, serde_json::json!({})),
                    other => panic!("{other}"),
                }
            }
        }
    }
}

/// Two tools: `look_up` a word of an enum, and `now` without arguments.
fn word_and_clock_tools() -> Vec<(String, serde_json::Value)> {
    vec![
        (
            "look_up".to_string(),
            serde_json::json!({"type": "object", "properties": {"word": {"enum": ["kiln", "clay"]}},
                               "required": ["word"], "additionalProperties": false}),
        ),
        (
            "now".to_string(),
            serde_json::json!({"type": "object", "additionalProperties": false}),
        ),
    ]
}

/// The token ids of a walk (as `walk`) up to where end-of-sequence is allowed, for output
/// whose special tokens the caller decodes itself.
fn walk_ids(tok: &Tokenizer, c: &mut Constraint, choose: impl Fn(&[u32]) -> u32) -> Vec<u32> {
    let mut ids = Vec::new();
    loop {
        let mask = c.mask().unwrap();
        if tok.eos_token_ids().iter().any(|&e| mask.is_allowed(e)) {
            return ids;
        }
        let allowed: Vec<u32> = (0..mask.len() as u32)
            .filter(|&t| mask.is_allowed(t))
            .collect();
        let t = choose(&allowed);
        c.advance(t).unwrap();
        ids.push(t);
        assert!(ids.len() < 200, "{:?}", tok.decode(&ids, false));
    }
}

/// Whether `c` takes `text`'s tokens one by one and may end after them.
fn accepts(tok: &Tokenizer, c: &mut Constraint, text: &str) -> bool {
    for t in tok.encode(text, false).unwrap() {
        if !c.mask().unwrap().is_allowed(t) {
            return false;
        }
        c.advance(t).unwrap();
    }
    let mask = c.mask().unwrap();
    tok.eos_token_ids().iter().any(|&e| mask.is_allowed(e))
}

#[test]
fn the_forced_xml_call_grammar_takes_free_text_strings_and_typed_values() {
    use crate::model::tool_calls::{forcing_grammar, ToolCallFormat};
    let tok = tokenizer();
    let compiler = GrammarCompiler::new(&tok, 448).unwrap();
    let tools = vec![(
        "note_down".to_string(),
        serde_json::json!({"type": "object", "properties": {
            "text": {"type": "string"},
            "count": {"type": "integer"},
            "level": {"enum": ["lo", "hi"]}
        }, "required": ["text", "count"]}),
    )];
    let options = serde_json::json!({"whitespace_flexible": false});
    // Qwen3-Coder's layout (a line break around each value) and Seed-OSS's (none).
    for (format, tag, br) in [
        (ToolCallFormat::Qwen3Xml, "tool_call", "\n"),
        (ToolCallFormat::SeedXml, "seed:tool_call", ""),
    ] {
        let grammar = forcing_grammar(format, &tools, false, &options, &|_| None).unwrap();
        let parameter =
            |key: &str, value: &str| format!("<parameter={key}>{br}{value}{br}</parameter>\n");
        let call = |parameters: &str| {
            format!("<{tag}>\n<function=note_down>\n{parameters}</function>\n</{tag}>")
        };
        let check = |text: &str| {
            let mut c = compiler.compile(&Structure::Lark(grammar.clone())).unwrap();
            accepts(&tok, &mut c, text)
        };
        let text = parameter("text", "line one\n<b>bold</b> & more");
        let count = parameter("count", "3");
        // Free text may hold newlines and markup; the optional enum parameter may follow.
        assert!(check(&call(&format!("{text}{count}"))), "{format:?}");
        let level = parameter("level", "hi");
        assert!(check(&call(&format!(
            "{text}{}{level}",
            parameter("count", "-12")
        ))));
        // Not an integer, not one of the enum's values, a required parameter left out.
        assert!(!check(&call(&format!(
            "{text}{}",
            parameter("count", "three")
        ))));
        let bad_level = parameter("level", "medium");
        assert!(!check(&call(&format!("{text}{count}{bad_level}"))));
        assert!(!check(&call(&count)));
    }
}

/// The fixture tokenizer with `markers` added as special tokens.
fn tokenizer_with_specials(markers: &[&str]) -> Tokenizer {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.json");
    let mut inner = tokenizers::Tokenizer::from_file(path).unwrap();
    let markers: Vec<_> = markers
        .iter()
        .map(|m| tokenizers::AddedToken::from(*m, true))
        .collect();
    inner.add_special_tokens(&markers);
    let mut tok = Tokenizer::new(inner);
    let eos = tok
        .token_to_id("<|im_end|>")
        .or_else(|| tok.token_to_id("</s>"));
    tok.add_eos_token_ids(eos);
    tok
}

#[test]
fn forced_mistral_calls_start_with_the_special_token_in_either_layout() {
    use crate::model::tool_calls::{forcing_grammar, parse, ToolCallFormat};
    let tools = word_and_clock_tools()[..1].to_vec();
    let options = serde_json::json!({"whitespace_flexible": false});
    for with_args in [false, true] {
        let tok = mistral_tokenizer(with_args);
        assert!(!tok.eos_token_ids().is_empty());
        let compiler = GrammarCompiler::new(&tok, tok.vocab_size()).unwrap();
        let id = |t: &str| tok.token_to_id(t);
        let first: fn(&[u32]) -> u32 = |a| a[0];
        let last: fn(&[u32]) -> u32 = |a| a[a.len() - 1];
        for choose in [first, last] {
            let grammar =
                forcing_grammar(ToolCallFormat::Mistral, &tools, false, &options, &id).unwrap();
            let mut c = compiler.compile(&Structure::Lark(grammar.clone())).unwrap();
            let ids = walk_ids(&tok, &mut c, choose);
            assert_eq!(
                ids[0],
                id("[TOOL_CALLS]").unwrap(),
                "the marker is the special token"
            );
            let text = tok.decode(&ids, false).unwrap();
            assert_eq!(text.contains("[ARGS]"), with_args, "{text}");
            let parsed = parse(ToolCallFormat::Mistral, &text);
            assert_eq!(parsed.content, None, "{text}");
            assert_eq!(parsed.calls[0].name, "look_up", "{text}");
        }
    }
    // Two calls where parallel calls are allowed, in each layout.
    for (with_args, text) in [
        (
            false,
            r#"[TOOL_CALLS][{"name":"look_up","arguments":{"word":"kiln"}}, {"name":"look_up","arguments":{"word":"clay"}}]"#,
        ),
        (
            true,
            r#"[TOOL_CALLS]look_up[ARGS]{"word":"kiln"}[TOOL_CALLS]look_up[ARGS]{"word":"clay"}"#,
        ),
    ] {
        let tok = mistral_tokenizer(with_args);
        let compiler = GrammarCompiler::new(&tok, tok.vocab_size()).unwrap();
        let id = |t: &str| tok.token_to_id(t);
        let grammar =
            forcing_grammar(ToolCallFormat::Mistral, &tools, true, &options, &id).unwrap();
        let mut c = compiler.compile(&Structure::Lark(grammar)).unwrap();
        assert!(accepts(&tok, &mut c, text), "{text}");
        assert_eq!(parse(ToolCallFormat::Mistral, text).calls.len(), 2);
    }
    // Without the token there is nothing to force with.
    let err = forcing_grammar(ToolCallFormat::Mistral, &tools, false, &options, &|_| None);
    assert!(err.unwrap_err().contains("[TOOL_CALLS]"));
}

/// DeepSeek's and Kimi's markers as special tokens: the forced output starts with the
/// section's token, keeps each marker a single token, and parses back (decoded with its
/// special tokens, as the server does when such a parser is on).
#[test]
fn forced_section_calls_use_the_marker_tokens() {
    use crate::model::tool_calls::{forcing_grammar, parse, ToolCallFormat, ToolParser};
    let tools = word_and_clock_tools();
    let options = serde_json::json!({"whitespace_flexible": false});
    let deepseek = [
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁sep｜>",
    ];
    let kimi = [
        "<|tool_calls_section_begin|>",
        "<|tool_calls_section_end|>",
        "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>",
        "<|tool_call_end|>",
    ];
    let two_calls = [
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>look_up\n```json\n{\"word\":\"kiln\"}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>now\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>look_up<｜tool▁sep｜>{\"word\":\"kiln\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>now<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.look_up:0<|tool_call_argument_begin|>{\"word\":\"kiln\"}<|tool_call_end|><|tool_call_begin|>functions.now:1<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
    ];
    for ((format, markers), two) in [
        (ToolCallFormat::DeepSeekV3, &deepseek),
        (ToolCallFormat::DeepSeekV31, &deepseek),
        (ToolCallFormat::KimiK2, &kimi),
    ]
    .into_iter()
    .zip(two_calls)
    {
        let tok = tokenizer_with_specials(markers);
        let compiler = GrammarCompiler::new(&tok, tok.vocab_size()).unwrap();
        let id = |t: &str| tok.token_to_id(t);
        let first: fn(&[u32]) -> u32 = |a| a[0];
        let last: fn(&[u32]) -> u32 = |a| a[a.len() - 1];
        for choose in [first, last] {
            let grammar = forcing_grammar(format, &tools, false, &options, &id).unwrap();
            let mut c = compiler.compile(&Structure::Lark(grammar)).unwrap();
            let ids = walk_ids(&tok, &mut c, choose);
            assert_eq!(ids[0], id(markers[0]).unwrap(), "{format:?}");
            let text = tok.decode(&ids, false).unwrap();
            let parsed = parse(ToolParser::new(format, tools.clone()), &text);
            assert_eq!(parsed.content, None, "{text}");
            assert_eq!(parsed.calls.len(), 1, "{text}");
        }
        // Two calls where parallel calls are allowed, one where they are not.
        for (parallel, accepted) in [(true, true), (false, false)] {
            let grammar = forcing_grammar(format, &tools, parallel, &options, &id).unwrap();
            let mut c = compiler.compile(&Structure::Lark(grammar)).unwrap();
            assert_eq!(
                accepts(&tok, &mut c, two),
                accepted,
                "{format:?} {parallel}"
            );
        }
        assert_eq!(
            parse(ToolParser::new(format, tools.clone()), two)
                .calls
                .len(),
            2
        );
    }
}

/// Mistral's call markers as special tokens (and `[ARGS]` only for the newer layout).
fn mistral_tokenizer(with_args: bool) -> Tokenizer {
    if with_args {
        tokenizer_with_specials(&["[TOOL_CALLS]", "[ARGS]"])
    } else {
        tokenizer_with_specials(&["[TOOL_CALLS]"])
    }
}

#[test]
fn a_forced_harmony_call_is_one_commentary_message_the_splitter_reads() {
    use crate::model::harmony::forcing_grammar;
    use crate::model::reasoning::{split, Reasoning, ReasoningFormat};
    let tools = word_and_clock_tools();
    let options = serde_json::json!({"whitespace_flexible": false});
    let tok = tokenizer_with_specials(&["<|channel|>", "<|constrain|>", "<|message|>", "<|call|>"]);
    let compiler = GrammarCompiler::new(&tok, tok.vocab_size()).unwrap();
    let id = |t: &str| tok.token_to_id(t);
    let grammar = forcing_grammar(&tools, &options, &id).unwrap();
    let first: fn(&[u32]) -> u32 = |a| a[0];
    let last: fn(&[u32]) -> u32 = |a| a[a.len() - 1];
    let mut names = Vec::new();
    for choose in [first, last] {
        let mut c = compiler.compile(&Structure::Lark(grammar.clone())).unwrap();
        let ids = walk_ids(&tok, &mut c, choose);
        assert_eq!(ids[0], id("<|channel|>").unwrap());
        let text = tok.decode(&ids, false).unwrap();
        let reasoning = Reasoning {
            format: ReasoningFormat::Harmony,
            prompt: "<|start|>assistant".into(),
        };
        let parsed = split(&reasoning, &text);
        assert_eq!(parsed.calls.len(), 1, "{text}");
        assert_eq!((parsed.content, parsed.reasoning), (None, None), "{text}");
        let args: serde_json::Value = serde_json::from_str(&parsed.calls[0].arguments).unwrap();
        match parsed.calls[0].name.as_str() {
            "look_up" => assert!(["kiln", "clay"].contains(&args["word"].as_str().unwrap())),
            "now" => assert_eq!(args, serde_json::json!({})),
            other => panic!("{other}"),
        }
        names.push(parsed.calls[0].name.clone());
    }
    assert_eq!(names.len(), 2);
    assert!(forcing_grammar(&tools, &options, &|_| None).is_err());
    // Without a `<|constrain|>` token the content type follows the recipient.
    let tok = tokenizer_with_specials(&["<|channel|>", "<|message|>"]);
    let compiler = GrammarCompiler::new(&tok, tok.vocab_size()).unwrap();
    let id = |t: &str| tok.token_to_id(t);
    let grammar = forcing_grammar(&tools[1..], &options, &id).unwrap();
    let mut c = compiler.compile(&Structure::Lark(grammar)).unwrap();
    let text = "<|channel|>commentary to=functions.now json<|message|>{}";
    assert!(accepts(&tok, &mut c, text), "{text}");
}

#[test]
fn the_forced_glm45_call_grammar_takes_free_text_strings_and_typed_values() {
    use crate::model::tool_calls::{forcing_grammar, parse, ToolCallFormat, ToolParser};
    let tok = tokenizer();
    let compiler = GrammarCompiler::new(&tok, 448).unwrap();
    let tools = vec![(
        "note_down".to_string(),
        serde_json::json!({"type": "object", "properties": {
            "text": {"type": "string"}, "count": {"type": "integer"}
        }, "required": ["text", "count"]}),
    )];
    let options = serde_json::json!({"whitespace_flexible": false});
    let grammar =
        forcing_grammar(ToolCallFormat::Glm45, &tools, false, &options, &|_| None).unwrap();
    let call = |count: &str| {
        format!(
            "<tool_call>note_down\n<arg_key>text</arg_key>\n<arg_value>two\nlines <b></arg_value>\n\
             <arg_key>count</arg_key>\n<arg_value>{count}</arg_value>\n</tool_call>"
        )
    };
    let check = |text: &str| {
        let mut c = compiler.compile(&Structure::Lark(grammar.clone())).unwrap();
        accepts(&tok, &mut c, text)
    };
    assert!(check(&call("7")));
    assert!(!check(&call("seven")));
    let parsed = parse(
        ToolParser::new(ToolCallFormat::Glm45, tools.clone()),
        &call("7"),
    );
    assert_eq!(
        parsed.calls[0].arguments,
        r#"{"text":"two\nlines <b>","count":7}"#
    );
}

#[test]
fn gbnf_grammars_compile_and_constrain_as_lark_ones_do() {
    let tok = tokenizer();
    let compiler = GrammarCompiler::new(&tok, 448).unwrap();
    let gbnf = "root ::= \"kiln \" heat-word [0-9]{2}\nheat-word ::= (\"hot\" | \"cold\") \" \"";
    let pickers: [fn(&[u32]) -> u32; 2] = [|a| a[0], |a| a[a.len() - 1]];
    for choose in pickers {
        let mut c = compiler.compile(&Structure::Lark(gbnf.into())).unwrap();
        let text = walk(&tok, &mut c, choose);
        let rest = text
            .strip_prefix("kiln ")
            .unwrap_or_else(|| panic!("{text:?}"));
        let (word, digits) = rest.split_once(' ').unwrap();
        assert!(["hot", "cold"].contains(&word), "{text:?}");
        assert!(
            digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_digit()),
            "{text:?}"
        );
    }
}
