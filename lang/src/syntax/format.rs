//! The canonical layout of a pipeline file: four-space indentation, one node a
//! line, single spaces between entries, at most one empty line in a row. Comments,
//! line continuations and disabled (`/-`) parts stay where they were; every value
//! keeps its source text, so formatting never changes what a file means.

use super::ast::{Block, Comment, Document, Entry, Item, Node, Str, Trivia};
use super::parser::{is_disallowed, is_ident_char};

const INDENT: &str = "    ";

/// Formats a parsed document; `src` is the text its spans point into.
pub fn format(doc: &Document, src: &str) -> String {
    let mut f = Formatter {
        src,
        out: String::with_capacity(src.len() + src.len() / 8),
    };
    f.items(&doc.items, 0);
    while f.out.ends_with("\n\n") {
        f.out.pop();
    }
    f.out
}

struct Formatter<'a> {
    src: &'a str,
    out: String,
}

impl Formatter<'_> {
    fn text(&self, span: crate::source::Span) -> &str {
        self.src.get(span.range()).unwrap_or("")
    }

    fn indent(&mut self, depth: usize) {
        for _ in 0..depth {
            self.out.push_str(INDENT);
        }
    }

    fn items(&mut self, items: &[Item], depth: usize) {
        let mut first = true;
        for (i, item) in items.iter().enumerate() {
            match item {
                Item::Blank => {
                    let next_is_content =
                        items[i + 1..].iter().any(|it| !matches!(it, Item::Blank));
                    if !first && next_is_content && !self.out.ends_with("\n\n") {
                        self.out.push('\n');
                    }
                }
                Item::Comment(c) => {
                    self.comment_item(*c, depth);
                    first = false;
                }
                Item::Node(n) => {
                    self.node(n, depth);
                    first = false;
                }
            }
        }
    }

    fn comment_item(&mut self, c: Comment, depth: usize) {
        let text = self.text(c.span).to_string();
        if c.trailing && self.out.ends_with('\n') && !self.out.is_empty() {
            self.out.pop();
            self.out.push(' ');
        } else {
            self.indent(depth);
        }
        self.out.push_str(&text);
        self.out.push('\n');
    }

    fn node(&mut self, n: &Node, depth: usize) {
        self.indent(depth);
        if n.slashdash {
            self.out.push_str("/-");
        }
        if let Some(ty) = &n.ty {
            self.annotation(ty);
        }
        push_identifier(&mut self.out, &n.name.value);
        for e in &n.entries {
            self.entry(e, depth);
        }
        // A bare `\` before the end or the block is only layout: drop it.
        let trailing: Vec<Trivia> = n
            .trailing
            .iter()
            .copied()
            .filter(|t| !matches!(t, Trivia::Continuation(None)))
            .collect();
        self.trivia(&trailing, depth);
        for b in &n.blocks {
            self.block(b, depth);
        }
        if let Some(c) = n.trailing_comment {
            self.out.push(' ');
            let text = self.text(c.span).to_string();
            self.out.push_str(&text);
        }
        self.out.push('\n');
    }

    fn annotation(&mut self, ty: &Str) {
        self.out.push('(');
        push_identifier(&mut self.out, &ty.value);
        self.out.push(')');
    }

    /// Writes comments and continuations between entries; returns whether the
    /// output is at the start of a continued line.
    fn trivia(&mut self, trivia: &[Trivia], depth: usize) -> bool {
        let mut at_line_start = false;
        for t in trivia {
            match t {
                Trivia::Comment(c) => {
                    if !at_line_start {
                        self.out.push(' ');
                    }
                    let text = self.text(c.span).to_string();
                    self.out.push_str(&text);
                    at_line_start = false;
                }
                Trivia::Continuation(comment) => {
                    self.out.push_str(" \\");
                    if let Some(c) = comment {
                        self.out.push(' ');
                        let text = self.text(c.span).to_string();
                        self.out.push_str(&text);
                    }
                    self.out.push('\n');
                    self.indent(depth + 1);
                    at_line_start = true;
                }
            }
        }
        at_line_start
    }

    fn entry(&mut self, e: &Entry, depth: usize) {
        if !self.trivia(&e.leading, depth) {
            self.out.push(' ');
        }
        if e.slashdash {
            self.out.push_str("/-");
        }
        if let Some(k) = &e.key {
            push_identifier(&mut self.out, &k.value);
            self.out.push('=');
        }
        if let Some(ty) = &e.value.ty {
            self.annotation(ty);
        }
        let text = self.text(e.value.span).to_string();
        self.out.push_str(&text);
    }

    fn block(&mut self, b: &Block, depth: usize) {
        self.out.push(' ');
        if b.slashdash {
            self.out.push_str("/-");
        }
        if b.items.is_empty() {
            self.out.push_str("{ }");
            return;
        }
        self.out.push_str("{\n");
        self.items(&b.items, depth + 1);
        while self.out.ends_with("\n\n") {
            self.out.pop();
        }
        self.indent(depth);
        self.out.push('}');
    }
}

/// Writes a node name, property key or type name: bare when KDL allows it, quoted otherwise.
pub fn push_identifier(out: &mut String, s: &str) {
    if is_bare_identifier(s) {
        out.push_str(s);
    } else {
        push_quoted(out, s);
    }
}

/// Whether `s` can be written without quotes.
pub fn is_bare_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if !s.chars().all(is_ident_char) || first.is_ascii_digit() {
        return false;
    }
    let second = s[first.len_utf8()..].chars().next();
    let third = second.and_then(|c| s[first.len_utf8() + c.len_utf8()..].chars().next());
    let looks_numeric = match (first, second) {
        ('+' | '-', Some(c)) if c.is_ascii_digit() => true,
        ('+' | '-', Some('.')) => third.is_some_and(|c| c.is_ascii_digit()),
        ('.', Some(c)) => c.is_ascii_digit(),
        _ => false,
    };
    !looks_numeric && !matches!(s, "true" | "false" | "null" | "inf" | "-inf" | "nan")
}

/// Writes `s` as a quoted KDL string.
pub fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if is_disallowed(c) || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FileId;
    use crate::syntax::parser::parse;

    fn fmt(text: &str) -> String {
        let out = parse(FileId(0), text);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        format(&out.doc, text)
    }

    #[test]
    fn canonical_layout_keeps_comments() {
        let src = "// head\n\n\n\npipeline   \"x\"   // name\nstep a {   // the first\n  in raw=m;out t=\"t.csv\"\n\n\n  /* note */ run \\ // long\n     \"cat\"\n}\n\n";
        let want = "// head\n\npipeline \"x\" // name\nstep a { // the first\n    in raw=m\n    out t=\"t.csv\"\n\n    /* note */\n    run \\ // long\n        \"cat\"\n}\n";
        assert_eq!(fmt(src), want);
        assert_eq!(fmt(want), want);
    }

    #[test]
    fn quotes_only_what_needs_quotes() {
        let mut s = String::new();
        for name in ["step", "a.b", "with space", "1x", "-1", "true", "-x", "é"] {
            push_identifier(&mut s, name);
            s.push(' ');
        }
        assert_eq!(s, "step a.b \"with space\" \"1x\" \"-1\" \"true\" -x é ");
    }

    #[test]
    fn slashdash_parts_survive() {
        let src = "/-a 1\nb /-2 3 /-{\nc\n} {\nd\n}\n";
        assert_eq!(fmt(src), "/-a 1\nb /-2 3 /-{\n    c\n} {\n    d\n}\n");
    }
}
