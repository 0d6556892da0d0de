use super::*;
use crate::model::tokenizer::test_fixtures::*;
use std::path::{Path, PathBuf};

/// Streams `ids` after `prompt`; returns every delta, the one from `finish` last.
fn stream(tok: &Arc<Tokenizer>, prompt: &[u32], ids: &[u32], skip: bool) -> Vec<String> {
    let mut detok = IncrementalDetokenizer::new(tok.clone(), prompt, skip);
    let mut deltas: Vec<String> = ids.iter().map(|&id| detok.push(id).unwrap()).collect();
    deltas.push(detok.finish().unwrap());
    deltas
}

/// The two properties every stream must have: no delta shows a broken character, and the
/// deltas add up to decoding everything at once.
fn assert_streams_exactly(tok: &Arc<Tokenizer>, prompt: &[u32], ids: &[u32], skip: bool) {
    let deltas = stream(tok, prompt, ids, skip);
    for (i, delta) in deltas.iter().enumerate() {
        assert!(
            !delta.contains(REPLACEMENT),
            "delta {i} {delta:?} has U+FFFD"
        );
    }
    let all: Vec<u32> = prompt.iter().chain(ids).copied().collect();
    let full = tok.decode(&all, skip).unwrap();
    let prompt_text = tok.decode(prompt, skip).unwrap();
    let expected = full
        .strip_prefix(&prompt_text)
        .expect("prompt text prefixes full text");
    assert_eq!(deltas.concat(), expected);
}

fn byte_level() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::new(byte_level_bpe()))
}

#[test]
fn byte_level_fixture_really_splits_characters_across_tokens() {
    // Guards the tests below: without split characters they would prove nothing.
    let tok = byte_level();
    let ids = tok.encode(MIXED_TEXT, false).unwrap();
    let broken = ids
        .iter()
        .filter(|&&id| tok.decode(&[id], false).unwrap().contains(REPLACEMENT))
        .count();
    assert!(
        broken >= 10,
        "only {broken} tokens decode to a partial character"
    );
}

#[test]
fn byte_level_stream_with_emoji_and_cjk_is_exact() {
    let tok = byte_level();
    let ids = tok.encode(MIXED_TEXT, false).unwrap();
    assert_streams_exactly(&tok, &[], &ids, false);
    let deltas = stream(&tok, &[], &ids, false);
    assert!(
        deltas.iter().filter(|d| d.is_empty()).count() > 0,
        "some text was held back"
    );
}

#[test]
fn byte_level_stream_after_a_prompt_is_exact() {
    let tok = byte_level();
    let prompt = tok.encode("你好，世界！Tell me: ", false).unwrap();
    let ids = tok.encode("🦀 今天 Grüße 👩‍💻.", false).unwrap();
    assert_streams_exactly(&tok, &prompt, &ids, false);
}

#[test]
fn prompt_context_skips_a_stray_continuation_byte() {
    let tok = byte_level();
    // "界" is E7 95 8C: start the prompt mid-character, then generate ASCII.
    let prompt: Vec<u32> = ["\u{95}", "\u{8C}", "a", "b"]
        .iter()
        .map(|b| byte_token(&tok, b))
        .collect();
    let ids = tok.encode(" cd", false).unwrap();
    let deltas = stream(&tok, &prompt, &ids, false);
    assert_eq!(deltas.concat(), " cd");
}

/// The id of the ByteLevel token for one raw byte, written as the char of the same value.
fn byte_token(tok: &Tokenizer, byte_as_char: &str) -> u32 {
    let byte = byte_as_char.chars().next().unwrap() as u32;
    // GPT-2's byte-to-unicode map: printable Latin-1 maps to itself, the rest to 256 + n.
    let printable = (0x21..=0x7E).contains(&byte)
        || (0xA1..=0xAC).contains(&byte)
        || (0xAE..=0xFF).contains(&byte);
    let c = if printable {
        char::from_u32(byte).unwrap()
    } else {
        let rank = (0..byte)
            .filter(|b| {
                !((0x21..=0x7E).contains(b)
                    || (0xA1..=0xAC).contains(b)
                    || (0xAE..=0xFF).contains(b))
            })
            .count() as u32;
        char::from_u32(256 + rank).unwrap()
    };
    tok.token_to_id(&c.to_string())
        .unwrap_or_else(|| panic!("no token for byte {byte:#x}"))
}

#[test]
fn invalid_bytes_come_out_once_text_moves_on_or_at_finish() {
    let tok = byte_level();
    let lead = byte_token(&tok, "\u{E4}");
    let a = tok.token_to_id("a").unwrap();
    let mut detok = IncrementalDetokenizer::new(tok.clone(), &[], false);
    assert_eq!(
        detok.push(lead).unwrap(),
        "",
        "a lead byte alone is held back"
    );
    assert_eq!(
        detok.push(a).unwrap(),
        "\u{FFFD}a",
        "an impossible sequence is shown"
    );
    assert_eq!(detok.push(lead).unwrap(), "");
    assert_eq!(detok.finish().unwrap(), "\u{FFFD}");
    assert_eq!(detok.finish().unwrap(), "", "finish is idempotent");
}

#[test]
fn special_tokens_are_skipped_or_kept() {
    let tok = byte_level();
    let mut ids = tok.encode("你好 there", false).unwrap();
    ids.push(tok.token_to_id("<|im_end|>").unwrap());
    ids.extend(tok.encode("🚀 after", false).unwrap());
    assert_streams_exactly(&tok, &[], &ids, true);
    assert_streams_exactly(&tok, &[], &ids, false);
    assert!(stream(&tok, &[], &ids, false)
        .concat()
        .contains("<|im_end|>"));
    assert!(!stream(&tok, &[], &ids, true)
        .concat()
        .contains("<|im_end|>"));
}

#[test]
fn window_stays_small_over_a_long_stream() {
    let tok = byte_level();
    let ids = tok.encode(&MIXED_TEXT.repeat(20), false).unwrap();
    let mut detok = IncrementalDetokenizer::windowed(tok.clone(), &[], false);
    let mut longest = 0;
    for &id in &ids {
        detok.push(id).unwrap();
        let Mode::Window { window, .. } = &detok.mode else {
            panic!("windowed")
        };
        longest = longest.max(window.len());
    }
    assert!(ids.len() > 1000);
    // A character is at most 4 byte tokens, plus the one-chunk context.
    assert!(longest <= 8, "window grew to {longest} tokens");
}

#[test]
fn sentencepiece_leading_spaces_are_right() {
    for style in [SentencePieceStyle::Llama2, SentencePieceStyle::Metaspace] {
        let tok = Arc::new(Tokenizer::new(sentencepiece_bpe(style)));
        let text = "Hello world are 🦀 Hello, 你好 world?!";
        let ids = tok.encode(text, true).unwrap();
        assert_streams_exactly(&tok, &[], &ids, true);
        assert_eq!(stream(&tok, &[], &ids, true).concat(), text, "{style:?}");
        let deltas: Vec<String> = stream(&tok, &[], &ids, true)
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect();
        assert_eq!(deltas[..3], ["Hello", " world", " are"], "{style:?}");

        // After a prompt, the first generated word keeps its leading space.
        let (prompt, generated) = ids.split_at(2);
        let deltas = stream(&tok, prompt, generated, true);
        assert_eq!(deltas[0], " world", "{style:?}");
        assert_streams_exactly(&tok, prompt, generated, true);
        assert_streams_exactly(&tok, prompt, generated, false);
    }
}

/// Tokenizers other engineers commit (the demo model, test fixtures), when present.
fn committed_tokenizer_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("models/demo")];
    if let Ok(entries) = std::fs::read_dir(root.join("tests/fixtures")) {
        dirs.extend(entries.flatten().map(|e| e.path()));
    }
    // Converted ones too (tiktoken, GPT-2's slow files, SentencePiece).
    dirs.retain(|d| crate::model::source::has_tokenizer(d));
    dirs
}

#[test]
fn committed_tokenizers_stream_exactly() {
    for dir in committed_tokenizer_dirs() {
        let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
        let ids = tok.encode(MIXED_TEXT, false).unwrap();
        assert_streams_exactly(&tok, &[], &ids, true);
        // A real prompt ends on a whole character: split where the first part decodes cleanly.
        let split = (1..ids.len() / 3)
            .rev()
            .find(|&i| !tok.decode(&ids[..i], false).unwrap().ends_with(REPLACEMENT))
            .unwrap();
        let (prompt, generated) = ids.split_at(split);
        assert_streams_exactly(&tok, prompt, generated, false);
    }
}

/// The byte-table path and the window path give the same deltas step by step.
#[test]
fn byte_level_tokenizers_take_the_byte_path_with_the_window_paths_deltas() {
    let tok = byte_level();
    assert!(tok.byte_pieces().is_some());
    assert!(matches!(
        IncrementalDetokenizer::new(tok.clone(), &[], false).mode,
        Mode::Bytes { .. }
    ));
    let mut ids = tok.encode(MIXED_TEXT, false).unwrap();
    ids.push(tok.token_to_id("<|im_end|>").unwrap());
    ids.extend(tok.encode("🚀 after", false).unwrap());
    let lead = byte_token(&tok, "\u{E4}");
    ids.extend([lead, tok.token_to_id("a").unwrap(), lead]);
    let prompt = tok.encode("Say 你好", false).unwrap();
    // A prompt that ends inside a character: the output finishes it.
    let cut = tok.encode("🚀", false).unwrap();
    for prompt in [&[][..], &prompt, &cut[..cut.len() - 1]] {
        for skip in [false, true] {
            let run = |mut d: IncrementalDetokenizer| {
                let mut deltas: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
                deltas.push(d.finish().unwrap());
                deltas
            };
            assert_eq!(
                run(IncrementalDetokenizer::new(tok.clone(), prompt, skip)),
                run(IncrementalDetokenizer::windowed(tok.clone(), prompt, skip)),
                "prompt {prompt:?} skip {skip}"
            );
        }
    }
}
