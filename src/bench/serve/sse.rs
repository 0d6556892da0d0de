//! Incremental server-sent-events parsing: bytes arrive in arbitrary pieces; complete events
//! (ended by a blank line) come out as their `data:` payloads.

/// Buffers bytes until whole events are available.
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Adds bytes and returns the data payload of every event they complete. Comment lines
    /// and fields other than `data` are skipped; multi-line data is joined with newlines.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        while let Some((end, sep_len)) = event_end(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..end + sep_len).take(end).collect();
            if let Some(data) = data_of(&String::from_utf8_lossy(&event)) {
                payloads.push(data);
            }
        }
        payloads
    }

    /// Whatever is left unterminated when the body ends (a server that forgets the final
    /// blank line still had its last event read).
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        data_of(&String::from_utf8_lossy(&rest))
    }

    /// True when nothing but whitespace was received that is not yet parsed.
    pub fn has_pending_text(&self) -> bool {
        self.buffer.iter().any(|b| !b.is_ascii_whitespace())
    }
}

/// The end of the first event and the length of its separator (`\n\n` or `\r\n\r\n`).
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = find(buffer, b"\n\n").map(|i| (i, 2));
    let crlf = find(buffer, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn data_of(event: &str) -> Option<String> {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|rest| rest.strip_prefix(' ').unwrap_or(rest))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_pieces_come_out_whole() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(p.push(b":1}\n\ndata: [DO"), vec!["{\"a\":1}"]);
        assert_eq!(p.push(b"NE]\n\n"), vec!["[DONE]"]);
        assert!(!p.has_pending_text());
    }

    #[test]
    fn comments_crlf_and_unterminated_tails_are_handled() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b": keep-alive\n\ndata:x\r\n\r\ndata: y"), vec!["x"]);
        assert_eq!(p.finish().as_deref(), Some("y"));
    }

    #[test]
    fn plain_json_is_not_an_event() {
        let mut p = SseParser::default();
        assert!(p.push(b"{\"choices\":[]}").is_empty());
        assert!(p.has_pending_text());
        assert_eq!(p.finish(), None);
    }
}
