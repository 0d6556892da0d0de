//! The bytes of every token of a byte-level BPE tokenizer (GPT-2's scheme, used by Llama 3,
//! Qwen2 and most recent models), so the detokenizer can append a generated token's bytes
//! instead of running the tokenizer's decoder over a window of tokens per step (that was
//! three quarters of the engine's own host time per decode step).
//!
//! Byte-level BPE writes each byte as one printable character; decoding maps the
//! characters back and reads the bytes as UTF-8. Only tokenizers whose decoder is exactly
//! that get a table, and the table is checked against the tokenizer's own decoding of
//! sampled tokens before it is used.

use tokenizers::DecoderWrapper;

/// Token ids to their bytes, and which are special (skipped on request).
#[derive(Debug)]
pub struct BytePieces {
    pieces: Vec<Box<[u8]>>,
    special: Vec<bool>,
}

/// How many tokens, spread over the vocabulary, are checked against the decoder.
const CHECKED_TOKENS: usize = 4096;

impl BytePieces {
    /// The table of `tokenizer`, or `None` when its decoder is not plain byte-level or
    /// the table disagrees with it anywhere it is checked.
    pub fn build(tokenizer: &tokenizers::Tokenizer) -> Option<BytePieces> {
        if !matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return None;
        }
        let to_byte = char_to_byte();
        let size = tokenizer.get_vocab_size(true);
        let added = tokenizer.get_added_tokens_decoder();
        let mut pieces = Vec::with_capacity(size);
        let mut special = Vec::with_capacity(size);
        for id in 0..size as u32 {
            let token = tokenizer.id_to_token(id).unwrap_or_default();
            let mut bytes = Vec::with_capacity(token.len());
            for c in token.chars() {
                match to_byte.get(c as usize).copied().flatten() {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            pieces.push(bytes.into_boxed_slice());
            special.push(added.get(&id).is_some_and(|t| t.special));
        }
        let table = BytePieces { pieces, special };
        let step = (size / CHECKED_TOKENS).max(1);
        let agrees = (0..size as u32).step_by(step).all(|id| {
            tokenizer
                .decode(&[id], false)
                .is_ok_and(|text| text == String::from_utf8_lossy(&table.pieces[id as usize]))
        });
        if !agrees {
            tracing::debug!("byte-level token table disagrees with the decoder; not used");
        }
        agrees.then_some(table)
    }

    /// The bytes `id` adds to the text: empty for a skipped special token, `None` for an
    /// id outside the vocabulary.
    pub fn piece(&self, id: u32, skip_special: bool) -> Option<&[u8]> {
        let piece = self.pieces.get(id as usize)?;
        Some(if skip_special && self.special[id as usize] {
            &[]
        } else {
            piece
        })
    }
}

/// GPT-2's byte-to-character map, inverted and indexed by character: printable Latin-1
/// bytes stand for themselves, the other 68 bytes for the characters from U+0100 on, in
/// byte order.
fn char_to_byte() -> Vec<Option<u8>> {
    let mut table = vec![None; 512];
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256;
    for b in 0..=255u8 {
        if printable(b) {
            table[b as usize] = Some(b);
        } else {
            table[next] = Some(b);
            next += 1;
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture() -> tokenizers::Tokenizer {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizer/tokenizer.json");
        tokenizers::Tokenizer::from_file(path).unwrap()
    }

    #[test]
    fn every_token_and_any_sequence_decodes_as_the_tokenizer_does() {
        let tok = fixture();
        let table = BytePieces::build(&tok).expect("the fixture is byte-level BPE");
        let size = tok.get_vocab_size(true) as u32;
        for id in 0..size {
            assert_eq!(
                String::from_utf8_lossy(table.piece(id, false).unwrap()),
                tok.decode(&[id], false).unwrap(),
                "token {id}"
            );
        }
        // Sequences, special tokens kept and skipped.
        let mut state = 12345u64;
        for _ in 0..200 {
            let ids: Vec<u32> = (0..24)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % size as u64) as u32
                })
                .collect();
            for skip in [false, true] {
                let bytes: Vec<u8> = ids
                    .iter()
                    .flat_map(|&id| table.piece(id, skip).unwrap().to_vec())
                    .collect();
                assert_eq!(
                    String::from_utf8_lossy(&bytes),
                    tok.decode(&ids, skip).unwrap(),
                    "{ids:?} skip {skip}"
                );
            }
        }
        assert!(table.piece(size, false).is_none());
    }

    #[test]
    fn the_byte_map_is_a_bijection_onto_all_bytes() {
        let table = char_to_byte();
        let mut seen: Vec<u8> = table.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..=255).collect::<Vec<u8>>());
        assert_eq!(table['Ġ' as usize], Some(b' '));
        assert_eq!(table['Ċ' as usize], Some(b'\n'));
        assert_eq!(table['a' as usize], Some(b'a'));
    }

    #[test]
    fn a_tokenizer_with_another_decoder_gets_no_table() {
        let mut tok = fixture();
        tok.with_decoder(Some(DecoderWrapper::Fuse(
            tokenizers::decoders::fuse::Fuse::new(),
        )));
        assert!(BytePieces::build(&tok).is_none());
    }
}
