//! Placeholders in commands and paths: `{in.X}`, `{out.X}`, `{param.X}`, `{VAR}`,
//! `{VAR.stem}`, `{cpus}`, `{log}`.
//!
//! A placeholder is `{`, a name, an optional `.field`, and `}`. Braces around
//! anything else are plain text, so shell and awk code (`awk '{print $1}'`,
//! `{1..10}`, `{a,b}`) need no escaping; `{{` and `}}` always stand for `{` and `}`
//! (write `${{HOME}}` for the shell's `${HOME}`).

use compact_str::CompactString;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(CompactString),
    Placeholder {
        head: &'a str,
        field: Option<&'a str>,
        /// Byte range of the whole `{…}` in the text.
        range: Range<usize>,
    },
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The length of `name(.name)?}` at the start of `rest`, if that is what it holds.
fn placeholder_len(rest: &[u8]) -> Option<(usize, Option<usize>)> {
    let name_len = |s: &[u8]| {
        if s.first().is_some_and(|&b| is_name_start(b)) {
            s.iter().take_while(|&&b| is_name_byte(b)).count()
        } else {
            0
        }
    };
    let head = name_len(rest);
    if head == 0 {
        return None;
    }
    match rest.get(head) {
        Some(b'}') => Some((head + 1, None)),
        Some(b'.') => {
            let field = name_len(&rest[head + 1..]);
            (field > 0 && rest.get(head + 1 + field) == Some(&b'}'))
                .then_some((head + field + 2, Some(head)))
        }
        _ => None,
    }
}

/// Splits text into literal pieces and placeholders.
pub fn scan(text: &str) -> Vec<Piece<'_>> {
    let b = text.as_bytes();
    let mut pieces = Vec::with_capacity(4);
    let mut lit = CompactString::default();
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' if b.get(i + 1) == Some(&b'{') => {
                lit.push_str(&text[run..=i]);
                i += 2;
                run = i;
            }
            b'}' if b.get(i + 1) == Some(&b'}') => {
                lit.push_str(&text[run..=i]);
                i += 2;
                run = i;
            }
            b'{' => match placeholder_len(&b[i + 1..]) {
                Some((len, dot)) => {
                    lit.push_str(&text[run..i]);
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    let inner = &text[i + 1..i + len];
                    let (head, field) = match dot {
                        Some(d) => (&inner[..d], Some(&inner[d + 1..])),
                        None => (inner, None),
                    };
                    pieces.push(Piece::Placeholder {
                        head,
                        field,
                        range: i..i + 1 + len,
                    });
                    i += 1 + len;
                    run = i;
                }
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    lit.push_str(&text[run..]);
    if !lit.is_empty() {
        pieces.push(Piece::Text(lit));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(text: &str) -> Vec<String> {
        scan(text)
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => format!("T({t})"),
                Piece::Placeholder { head, field, range } => {
                    format!("P({head},{field:?},{range:?})")
                }
            })
            .collect()
    }

    #[test]
    fn placeholders_and_plain_braces() {
        assert_eq!(
            show("cat {in.raw} > {out.t}"),
            [
                "T(cat )",
                "P(in,Some(\"raw\"),4..12)",
                "T( > )",
                "P(out,Some(\"t\"),15..22)"
            ]
        );
        assert_eq!(
            show("awk '{print $1}' {f.stem}"),
            ["T(awk '{print $1}' )", "P(f,Some(\"stem\"),17..25)"]
        );
        assert_eq!(show("echo {1..3} {a,b} {}"), ["T(echo {1..3} {a,b} {})"]);
        assert_eq!(show("${{HOME}} {{x}}"), ["T(${HOME} {x})"]);
        assert_eq!(show("{col}"), ["P(col,None,0..5)"]);
        assert_eq!(show("{a.b.c}"), ["T({a.b.c})"]);
        assert_eq!(show("{"), ["T({)"]);
    }
}
