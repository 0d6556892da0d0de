use super::test_fixtures::*;
use super::*;
use crate::model::chat_template::{ChatMessage, ChatTemplateError};
use serde_json::json;
use std::fs;
use std::path::Path;
use tempfile::TempDir;

/// A model directory holding the byte-level fixture's tokenizer.json and the given files.
fn model_dir(files: &[(&str, String)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let json = byte_level_bpe().to_string(false).unwrap();
    fs::write(dir.path().join(TOKENIZER_FILE), json).unwrap();
    for (name, content) in files {
        fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

fn error_text(result: Result<Tokenizer>) -> String {
    format!("{:#}", result.expect_err("loading should fail"))
}

#[test]
fn tokenizer_json_alone_loads_without_config() {
    let dir = model_dir(&[]);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(tok.eos_token_ids().is_empty());
    assert_eq!(tok.bos_token(), None);
    assert!(tok.chat_template().is_none());
    let ids = tok.encode(MIXED_TEXT, false).unwrap();
    assert!(ids.len() > 20);
    assert_eq!(tok.decode(&ids, false).unwrap(), MIXED_TEXT);
    assert_eq!(tok.vocab_size(), byte_level_bpe().get_vocab_size(true));
}

#[test]
fn config_gives_bos_eos_and_chat_template() {
    let config = json!({
        "bos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false,
                      "normalized": false, "rstrip": false, "single_word": false},
        "eos_token": "<|im_end|>",
        "model_max_length": 32768,
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"
    });
    let dir = model_dir(&[(CONFIG_FILE, config.to_string())]);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(tok.eos_token_ids(), vec![im_end]);
    assert_eq!(tok.id_to_token(im_end).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.bos_token(), Some("<|endoftext|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    let prompt = tok
        .chat_template()
        .unwrap()
        .render(&[ChatMessage::new("user", "hi")], false, json!(null))
        .unwrap();
    assert_eq!(prompt, "<|endoftext|>user: hi<|im_end|>");
    // The rendered prompt holds its special tokens; they encode as single ids.
    let ids = tok.encode(&prompt, false).unwrap();
    assert_eq!(ids.last(), Some(&im_end));
}

#[test]
fn named_templates_render_tools_with_tool_use_and_the_rest_with_default() {
    // Hermes 2 Pro / 3's layout: the default template knows nothing of tools.
    let config = json!({
        "chat_template": [
            {"name": "tool_use", "template":
                "{% for t in tools %}<tool_call>{{ t.function.name }}</tool_call>{% endfor %}"},
            {"name": "default", "template": "plain"}
        ]
    });
    let dir = model_dir(&[(CONFIG_FILE, config.to_string())]);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let template = tok.chat_template().unwrap();
    let out = template.render(&[], false, json!(null));
    assert_eq!(out.unwrap(), "plain");
    let out = template.render(&[], false, json!({"tools": null}));
    assert_eq!(out.unwrap(), "plain");
    let tools = json!({"tools": [{"type": "function", "function": {"name": "get"}}]});
    let out = template.render(&[], false, tools);
    assert_eq!(out.unwrap(), "<tool_call>get</tool_call>");
    // The tool-call format comes from the template that teaches it.
    assert_eq!(
        template.tool_call_format(),
        Some(crate::model::tool_calls::ToolCallFormat::Hermes)
    );
}

#[test]
fn a_named_list_without_a_default_gives_no_template() {
    let config = json!({"chat_template": [{"name": "tool_use", "template": "tools"}]});
    let dir = model_dir(&[(CONFIG_FILE, config.to_string())]);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(tok.chat_template().is_none());
}

#[test]
fn chat_template_jinja_file_wins_over_config_and_json_file_is_a_fallback() {
    let config = json!({"chat_template": "from config"});
    let dir = model_dir(&[
        (CONFIG_FILE, config.to_string()),
        (TEMPLATE_FILE, "from jinja file\n".to_string()),
    ]);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let out = tok.chat_template().unwrap().render(&[], false, json!(null));
    assert_eq!(out.unwrap(), "from jinja file");

    let dir = model_dir(&[(
        TEMPLATE_JSON_FILE,
        json!({"chat_template": "from json file"}).to_string(),
    )]);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let out = tok.chat_template().unwrap().render(&[], false, json!(null));
    assert_eq!(out.unwrap(), "from json file");
}

#[test]
fn a_template_that_does_not_compile_is_left_out() {
    let dir = model_dir(&[(
        CONFIG_FILE,
        json!({"chat_template": "{% if %}"}).to_string(),
    )]);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(tok.chat_template().is_none());
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let empty = tempfile::tempdir().unwrap();
    let msg = error_text(Tokenizer::from_dir(empty.path()));
    assert!(
        msg.contains("tokenizer.json") && msg.contains("missing"),
        "{msg}"
    );

    let dir = model_dir(&[(CONFIG_FILE, "{\"eos_token\": ".to_string())]);
    let msg = error_text(Tokenizer::from_dir(dir.path()));
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("corrupt"),
        "{msg}"
    );

    let dir = model_dir(&[]);
    fs::write(dir.path().join(TOKENIZER_FILE), "{\"model\": 3}").unwrap();
    let msg = error_text(Tokenizer::from_dir(dir.path()));
    assert!(
        msg.contains("tokenizer.json") && msg.contains("not a valid tokenizer"),
        "{msg}"
    );
}

#[test]
fn extra_eos_ids_are_added_once_in_order() {
    let dir = model_dir(&[(CONFIG_FILE, json!({"eos_token": "<|im_end|>"}).to_string())]);
    let mut tok = Tokenizer::from_dir(dir.path()).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    tok.add_eos_token_ids([eot, im_end, eot]);
    assert_eq!(tok.eos_token_ids(), vec![im_end, eot]);
}

#[test]
fn sentencepiece_fixture_adds_bos_and_falls_back_to_bytes() {
    for style in [SentencePieceStyle::Llama2, SentencePieceStyle::Metaspace] {
        let tok = Tokenizer::new(sentencepiece_bpe(style));
        let ids = tok.encode("Hello world", true).unwrap();
        let hello = tok.token_to_id("▁Hello").unwrap();
        let world = tok.token_to_id("▁world").unwrap();
        assert_eq!(ids, vec![1, hello, world], "{style:?}");
        assert_eq!(tok.decode(&ids, true).unwrap(), "Hello world", "{style:?}");
        // As in HF: only the very first space of the text is dropped, and "<s>" comes first.
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "<s> Hello world",
            "{style:?}"
        );

        let text = "Hello 🦀 world";
        let ids = tok.encode(text, false).unwrap();
        let crab_bytes = ids.iter().filter(|&&id| (3..259).contains(&id)).count();
        assert_eq!(crab_bytes, 4, "{style:?}: the crab is four byte tokens");
        assert_eq!(tok.decode(&ids, true).unwrap(), text, "{style:?}");
    }
}

/// HF's own outputs for the shared fixture tokenizer (tests/fixtures/README.md), when the
/// fixtures are present: encoding, decoding, chat template rendering and its errors.
#[test]
fn matches_hf_reference_cases_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
    let Ok(text) = fs::read_to_string(dir.join("cases.json")) else {
        return;
    };
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        tok.vocab_size() as u64,
        cases["vocab_size"].as_u64().unwrap()
    );
    for (token, id) in cases["special_tokens"].as_object().unwrap() {
        assert_eq!(tok.token_to_id(token), Some(id.as_u64().unwrap() as u32));
    }
    assert_eq!(
        tok.eos_token_ids(),
        vec![tok.token_to_id("<|im_end|>").unwrap()]
    );

    let ids_of = |v: &serde_json::Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
    for case in cases["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, ids_of(&case["ids"]), "{text:?}");
        let tokens: Vec<String> = ids.iter().map(|&id| tok.id_to_token(id).unwrap()).collect();
        assert_eq!(json!(tokens), case["tokens"], "{text:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }

    let template = tok
        .chat_template()
        .expect("the fixture has a chat template");
    for case in cases["chat_template"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = template
            .render(&messages, add_generation_prompt, json!(null))
            .unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        assert_eq!(tok.encode(&rendered, false).unwrap(), ids_of(&case["ids"]));
    }
    for case in cases["chat_template_errors"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        match template.render(&messages, true, json!(null)) {
            Err(ChatTemplateError::Raised(msg)) => assert_eq!(msg, case["error"].as_str().unwrap()),
            other => panic!("expected the template to raise, got {other:?}"),
        }
    }
}
