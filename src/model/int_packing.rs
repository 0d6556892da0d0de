//! How integer-quantized checkpoints pack their small integers into 32-bit words.
//!
//! GPTQ and compressed-tensors pack densely: a line of values (a row, or a column) is one
//! little-endian bit stream over its words, value `k` at bits `k * bits ..`. At 2, 4 and 8
//! bits no value crosses a word; at 3 (and 5, 6, 7) some do, and the stream view reads those
//! like any other. AWQ packs eight 4-bit values per word in an interleaved order.

use anyhow::Result;

/// Value `k` of a bit stream whose `w`-th word is `word(w)`.
fn stream_value(word: impl Fn(usize) -> u32, bits: u32, k: usize) -> u32 {
    let bit = k * bits as usize;
    let (index, offset) = (bit / 32, (bit % 32) as u32);
    let mut value = word(index) >> offset;
    if offset + bits > 32 {
        value |= word(index + 1) << (32 - offset);
    }
    value & ((1u32 << bits) - 1)
}

/// Words a stream of `count` values of `bits` bits needs.
pub fn words_for(count: usize, bits: u32) -> usize {
    (count * bits as usize).div_ceil(32)
}

fn check_bits(bits: u32) -> Result<()> {
    anyhow::ensure!(
        (1..=8).contains(&bits),
        "{bits}-bit values cannot be unpacked"
    );
    Ok(())
}

/// A `[rows, word_cols]` word matrix whose rows are streams: `[rows, count]` values.
pub fn unpack_rows(
    words: &[u32],
    (rows, word_cols): (usize, usize),
    bits: u32,
    count: usize,
) -> Result<Vec<u8>> {
    check_bits(bits)?;
    anyhow::ensure!(
        words.len() == rows * word_cols && word_cols >= words_for(count, bits),
        "{rows} x {word_cols} words cannot hold rows of {count} {bits}-bit values"
    );
    Ok((0..rows)
        .flat_map(|r| {
            let row = &words[r * word_cols..][..word_cols];
            (0..count).map(move |k| stream_value(|w| row[w], bits, k) as u8)
        })
        .collect())
}

/// A `[word_rows, cols]` word matrix whose columns are streams: `[count, cols]` values.
pub fn unpack_columns(
    words: &[u32],
    (word_rows, cols): (usize, usize),
    bits: u32,
    count: usize,
) -> Result<Vec<u8>> {
    check_bits(bits)?;
    anyhow::ensure!(
        words.len() == word_rows * cols && word_rows >= words_for(count, bits),
        "{word_rows} x {cols} words cannot hold columns of {count} {bits}-bit values"
    );
    Ok((0..count)
        .flat_map(|k| (0..cols).map(move |c| stream_value(|w| words[w * cols + c], bits, k) as u8))
        .collect())
}

/// Which nibble of its word holds each of eight consecutive AWQ values: AutoAWQ stores
/// values 0, 2, 4, 6, 1, 3, 5, 7 in nibbles 0 to 7, so value `v` sits in nibble
/// `AWQ_NIBBLE[v]`.
const AWQ_NIBBLE: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// AWQ's `[rows, word_cols]` word matrix of 4-bit values, eight per word along each row:
/// `[rows, 8 * word_cols]` values.
pub fn unpack_awq_rows(words: &[u32], (rows, word_cols): (usize, usize)) -> Result<Vec<u8>> {
    anyhow::ensure!(
        words.len() == rows * word_cols,
        "{} words for {rows} x {word_cols}",
        words.len()
    );
    Ok(words
        .iter()
        .flat_map(|&word| AWQ_NIBBLE.map(|nibble| ((word >> (4 * nibble)) & 0xf) as u8))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs `values` as one dense stream (the layout's definition, written independently).
    fn pack_stream(values: &[u32], bits: u32) -> Vec<u32> {
        let mut words = vec![0u32; words_for(values.len(), bits)];
        for (k, &v) in values.iter().enumerate() {
            for b in 0..bits as usize {
                if v >> b & 1 == 1 {
                    let bit = k * bits as usize + b;
                    words[bit / 32] |= 1 << (bit % 32);
                }
            }
        }
        words
    }

    #[test]
    fn three_bit_values_cross_words_and_come_back() {
        let values: Vec<u32> = (0..45).map(|k| (k * 5 + 3) % 8).collect();
        let words = pack_stream(&values, 3);
        assert_eq!(words.len(), 5);
        let row = unpack_rows(&words, (1, 5), 3, 45).unwrap();
        assert_eq!(row, values.iter().map(|&v| v as u8).collect::<Vec<_>>());
        // Value 10 takes bits 30..33: two from word 0, one from word 1.
        assert_eq!(stream_value(|w| words[w], 3, 10), values[10]);
    }

    #[test]
    fn columns_are_streams_down_the_rows() {
        // Two columns of six 8-bit values: words [2, 2], column c's stream in words[_, c].
        let a = pack_stream(&[1, 2, 3, 4, 5, 6], 8);
        let b = pack_stream(&[9, 8, 7, 6, 5, 4], 8);
        let words = [a[0], b[0], a[1], b[1]];
        let values = unpack_columns(&words, (2, 2), 8, 6).unwrap();
        assert_eq!(values, [1, 9, 2, 8, 3, 7, 4, 6, 5, 5, 6, 4]);
        assert!(unpack_columns(&words, (2, 2), 8, 9).is_err());
    }

    #[test]
    fn awq_words_hold_their_values_interleaved() {
        // Value v (0..8) = v + 1, stored at nibble AWQ_NIBBLE[v]: nibbles read 1,3,5,7,2,4,6,8.
        let word = 0x8642_7531;
        let values = unpack_awq_rows(&[word], (1, 1)).unwrap();
        assert_eq!(values, [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
