//! GBNF grammars (llama.cpp's, and the EBNF vLLM's xgrammar backend takes for
//! `guided_grammar`: `root ::= "a" rule-name ...`) rewritten in llguidance's Lark dialect,
//! which reads the same literals, groups and repetitions: `::=` becomes `:`, rule names
//! lose their hyphens, `root` becomes `start`, `#` comments go, and each character class
//! becomes a regex of that class (`[a-z]` as `/[a-z]/`). String literals are copied
//! untouched.

/// Whether `grammar` is written in GBNF (a `::=` outside literals).
pub fn is_gbnf(grammar: &str) -> bool {
    let mut found = false;
    scan(grammar, |piece| {
        if let Piece::Code(code) = piece {
            found |= code.contains("::=");
        }
    });
    found
}

/// `grammar` in Lark.
pub fn to_lark(grammar: &str) -> String {
    let mut out = String::with_capacity(grammar.len());
    scan(grammar, |piece| match piece {
        Piece::Verbatim(text) if text.starts_with('[') => {
            // Lark has no bare character classes: each becomes a one-class regex.
            out.push('/');
            out.push_str(&text.replace('/', "\\/"));
            out.push('/');
        }
        Piece::Verbatim(text) => out.push_str(text),
        Piece::Comment => {}
        Piece::Code(code) => out.push_str(&rewrite_code(code)),
    });
    out
}

enum Piece<'a> {
    /// Outside literals and comments.
    Code(&'a str),
    /// A string literal or a character class, quotes and brackets included.
    Verbatim(&'a str),
    /// A `#` comment up to (not including) its line end.
    Comment,
}

/// Splits `grammar` into code, literals and comments.
fn scan<'a>(grammar: &'a str, mut visit: impl FnMut(Piece<'a>)) {
    let bytes = grammar.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let close = match bytes[i] {
            b'"' => Some(b'"'),
            b'[' => Some(b']'),
            b'#' => None,
            _ => {
                i += 1;
                continue;
            }
        };
        visit(Piece::Code(&grammar[start..i]));
        let begin = i;
        match close {
            Some(close) => {
                i += 1;
                while i < bytes.len() && bytes[i] != close {
                    // A backslash escapes the next character, whatever it is.
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(bytes.len());
                visit(Piece::Verbatim(&grammar[begin..i]));
            }
            None => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                visit(Piece::Comment);
            }
        }
        start = i;
    }
    visit(Piece::Code(&grammar[start..]));
}

/// Rule definitions and references in a stretch of code: `::=` to `:`, names with `_` for
/// `-`, `root` as `start`.
fn rewrite_code(code: &str) -> String {
    let code = code.replace("::=", ":");
    let mut out = String::with_capacity(code.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word == "root" {
            out.push_str("start");
        } else {
            out.push_str(&word.replace('-', "_"));
        }
        word.clear();
    };
    for c in code.chars() {
        let continues_word =
            c.is_ascii_alphanumeric() || c == '_' || (c == '-' && !word.is_empty());
        if continues_word {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_renamed_and_literals_kept() {
        let gbnf = r#"root ::= select-stmt # a query
select-stmt ::= "SELECT " col ( ", " col )* " FROM t-1"
col ::= [a-z\]-]+ | "root"
"#;
        assert!(is_gbnf(gbnf));
        let lark = to_lark(gbnf);
        assert_eq!(
            lark,
            r#"start : select_stmt 
select_stmt : "SELECT " col ( ", " col )* " FROM t-1"
col : /[a-z\]-]/+ | "root"
"#
        );
        assert!(!is_gbnf(r#"start: "a ::= b""#));
    }
}
