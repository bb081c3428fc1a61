//! A KDL 2.0 parser written for pipeline files: linear time, no recursion
//! deeper than [`MAX_DEPTH`], errors that say what was expected, and recovery
//! at the next line so that one pass reports every syntax error.
//!
//! We do not use the `kdl` crate's parser for v2: it took 0.7 s for a
//! 10,000-step pipeline (we need 100,000 steps in well under a second) and
//! recurses without a limit. It still reads KDL v1 files (see `super::v1`).

use super::ast::{Block, Comment, Document, Entry, Item, Literal, Node, Str, Trivia, Value};
use crate::diagnostic::Diagnostic;
use crate::source::{FileId, Span};
use compact_str::CompactString;
use thin_vec::ThinVec;

/// Deepest nesting of children blocks (pipelines need two).
pub const MAX_DEPTH: usize = 64;
/// After this many syntax errors in one file the parser stops.
pub const MAX_ERRORS: usize = 50;
/// A file with more nodes than this is not a pipeline (a 400,000-step pipeline has
/// fewer): the parser stops rather than fill the memory.
pub const MAX_NODES: usize = 3_000_000;

#[derive(Debug)]
pub struct ParseOutput {
    pub doc: Document,
    pub errors: Vec<Diagnostic>,
    /// Parsing stopped early (nesting too deep, too many errors): a v1
    /// fallback is pointless.
    pub gave_up: bool,
}

pub fn parse(file: FileId, text: &str) -> ParseOutput {
    let mut p = Parser::new(text, file, 0);
    if text.starts_with('\u{feff}') {
        p.pos = 3;
    }
    let items = p.items(0);
    ParseOutput {
        doc: Document { items },
        errors: p.errors,
        gave_up: p.gave_up,
    }
}

/// A syntax error; the node being read is abandoned up to the next line.
struct SyntaxError;

type PResult<T> = Result<T, SyntaxError>;

struct Parser<'a> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    file: FileId,
    errors: Vec<Diagnostic>,
    gave_up: bool,
    /// Reused buffers, one per nesting level in use: nodes keep exact-size vectors
    /// (a pipeline has hundreds of thousands of small nodes).
    item_pool: Vec<Vec<Item>>,
    entry_pool: Vec<Vec<Entry>>,
    nodes: usize,
}

/// What ended a run of whitespace inside a node.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Stop {
    /// A newline, `;` or end of input: the node ends.
    Terminator,
    /// Something else: more of the node follows.
    More,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str, file: FileId, pos: usize) -> Self {
        Parser {
            src,
            b: src.as_bytes(),
            pos,
            file,
            errors: Vec::new(),
            gave_up: false,
            item_pool: Vec::new(),
            entry_pool: Vec::new(),
            nodes: 0,
        }
    }

    fn span(&self, start: usize, end: usize) -> Span {
        Span::new(self.file, start, end)
    }

    /// The byte at the cursor; `None` at the end and once parsing gave up, so that
    /// every loop ends.
    fn peek(&self) -> Option<u8> {
        if self.gave_up {
            return None;
        }
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        if self.gave_up {
            return None;
        }
        self.b.get(self.pos + n).copied()
    }

    fn peek_char(&self) -> Option<char> {
        if self.gave_up {
            return None;
        }
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn eof(&self) -> bool {
        self.pos >= self.b.len() || self.gave_up
    }

    fn starts_with(&self, s: &str) -> bool {
        !self.gave_up && self.b[self.pos.min(self.b.len())..].starts_with(s.as_bytes())
    }

    fn error(&mut self, d: Diagnostic) -> SyntaxError {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(d);
        } else if !self.gave_up {
            let here = self.span(self.pos, self.pos);
            self.errors.push(
                Diagnostic::error(
                    here,
                    format!(
                        "too many syntax errors (more than {MAX_ERRORS}); stopped reading this file"
                    ),
                )
                .hint("fix the errors above first; is this really a KDL pipeline file?"),
            );
            self.gave_up = true;
        }
        SyntaxError
    }

    // ---- whitespace, newlines, comments -------------------------------------------------

    /// The length of a newline at the cursor, if there is one.
    fn newline_len(&self) -> usize {
        match self.peek() {
            Some(b'\n') | Some(0x0C) => 1,
            Some(b'\r') => {
                if self.peek_at(1) == Some(b'\n') {
                    2
                } else {
                    1
                }
            }
            Some(0xC2) if self.peek_at(1) == Some(0x85) => 2,
            Some(0xE2)
                if self.peek_at(1) == Some(0x80)
                    && matches!(self.peek_at(2), Some(0xA8 | 0xA9)) =>
            {
                3
            }
            _ => 0,
        }
    }

    /// The length of a unicode space (not a newline) at the cursor.
    fn space_len(&self) -> usize {
        match self.peek() {
            Some(b' ' | b'\t' | 0x0B) => 1,
            Some(b) if b >= 0x80 => match self.peek_char() {
                Some(c) if is_unicode_space(c) => c.len_utf8(),
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Skips a `/* … */` comment (nested ones too) at the cursor.
    fn block_comment(&mut self) -> PResult<Comment> {
        let start = self.pos;
        self.pos += 2;
        let mut depth = 1usize;
        while depth > 0 {
            match self.peek() {
                None => {
                    return Err(self.error(
                        Diagnostic::error(self.span(start, start + 2), "unclosed comment")
                            .label("this `/*` has no matching `*/`"),
                    ));
                }
                Some(b'/') if self.peek_at(1) == Some(b'*') => {
                    depth += 1;
                    self.pos += 2;
                }
                Some(b'*') if self.peek_at(1) == Some(b'/') => {
                    depth -= 1;
                    self.pos += 2;
                }
                _ if self.forbidden_here() => self.pos = self.char_end(self.pos),
                _ => self.pos += 1,
            }
        }
        Ok(Comment {
            span: self.span(start, self.pos),
            trailing: false,
        })
    }

    /// Skips a `// …` comment up to (not including) the newline.
    /// Reports a character KDL forbids everywhere (control characters, invisible
    /// direction marks) at the cursor, if there is one. Cheap for printable ASCII.
    fn forbidden_here(&mut self) -> bool {
        let Some(b) = self.peek() else { return false };
        if (0x20..0x7f).contains(&b)
            || b == b'\t'
            || b == b'\n'
            || b == b'\r'
            || b == 0x0B
            || b == 0x0C
        {
            return false;
        }
        if self.peek_char().is_some_and(is_disallowed) {
            let _ = self.disallowed_char();
            return true;
        }
        false
    }

    fn line_comment(&mut self) -> Comment {
        let start = self.pos;
        while !self.eof() && self.newline_len() == 0 {
            if self.forbidden_here() {
                self.pos = self.char_end(self.pos);
                continue;
            }
            self.pos += 1;
        }
        // Never end inside a multi-byte character.
        while !self.src.is_char_boundary(self.pos) {
            self.pos += 1;
        }
        Comment {
            span: self.span(start, self.pos),
            trailing: false,
        }
    }

    /// Between nodes: spaces, newlines, comments and stray `;`. Returns whether an empty
    /// line was seen; comments become items.
    fn line_space(&mut self, items: &mut Vec<Item>, mut at_line_start: bool) -> PResult<()> {
        let mut newlines = 0usize;
        loop {
            let n = self.newline_len();
            if n > 0 {
                self.pos += n;
                newlines += 1;
                at_line_start = true;
                continue;
            }
            let s = self.space_len();
            if s > 0 {
                self.pos += s;
                continue;
            }
            match self.peek() {
                Some(b';') => self.pos += 1,
                // A line continuation between nodes is only layout (its comment is kept).
                Some(b'\\') => {
                    if let Some(mut c) = self.escline()? {
                        c.trailing = !at_line_start;
                        items.push(Item::Comment(c));
                    }
                    at_line_start = true;
                }
                Some(b'/') if self.peek_at(1) == Some(b'/') => {
                    if newlines >= 2 && !items.is_empty() {
                        items.push(Item::Blank);
                    }
                    newlines = 0;
                    let mut c = self.line_comment();
                    c.trailing = !at_line_start;
                    items.push(Item::Comment(c));
                }
                Some(b'/') if self.peek_at(1) == Some(b'*') => {
                    if newlines >= 2 && !items.is_empty() {
                        items.push(Item::Blank);
                    }
                    newlines = 0;
                    let mut c = self.block_comment()?;
                    c.trailing = !at_line_start;
                    at_line_start = false;
                    items.push(Item::Comment(c));
                }
                _ => {
                    if newlines >= 2 && !items.is_empty() && self.peek().is_some_and(|b| b != b'}')
                    {
                        items.push(Item::Blank);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// A `\` line continuation at the cursor, with the `//` comment that may follow.
    fn escline(&mut self) -> PResult<Option<Comment>> {
        let bs = self.pos;
        self.pos += 1;
        while self.space_len() > 0 {
            self.pos += self.space_len();
        }
        let mut comment = None;
        if self.starts_with("//") {
            let mut c = self.line_comment();
            c.trailing = true;
            comment = Some(c);
        }
        let n = self.newline_len();
        if n == 0 && !self.eof() {
            return Err(self.error(
                Diagnostic::error(self.span(bs, bs + 1), "unexpected `\\`")
                    .label("a line continuation must end its line")
                    .hint("to put a backslash in a string, quote it: \"a\\\\b\" or #\"a\\b\"#"),
            ));
        }
        self.pos += n;
        Ok(comment)
    }

    /// Spaces, block comments and `\` continuations inside a node. Returns whether
    /// anything was skipped.
    fn node_space(&mut self, trivia: &mut Vec<Trivia>) -> PResult<bool> {
        let start = self.pos;
        loop {
            let s = self.space_len();
            if s > 0 {
                self.pos += s;
                continue;
            }
            match self.peek() {
                Some(b'/') if self.peek_at(1) == Some(b'*') => {
                    let mut c = self.block_comment()?;
                    c.trailing = true;
                    trivia.push(Trivia::Comment(c));
                }
                Some(b'\\') => {
                    let comment = self.escline()?;
                    trivia.push(Trivia::Continuation(comment));
                }
                _ => return Ok(self.pos > start),
            }
        }
    }

    // ---- nodes --------------------------------------------------------------------------

    /// Nodes up to the end of input (depth 0) or to a `}` (inside a block).
    fn items(&mut self, depth: usize) -> Vec<Item> {
        let mut buf = self.item_pool.pop().unwrap_or_default();
        let items = self.items_into(depth, &mut buf);
        self.item_pool.push(buf);
        items
    }

    fn items_into(&mut self, depth: usize, items: &mut Vec<Item>) -> Vec<Item> {
        // Inside a block, the first comment may share the line of the `{`.
        let mut at_line_start = depth == 0;
        loop {
            if self.line_space(items, at_line_start).is_err() {
                self.recover();
            }
            if self.eof() {
                return items.split_off(0);
            }
            if self.peek() == Some(b'}') {
                if depth > 0 {
                    return items.split_off(0);
                }
                let _ = self.error(
                    Diagnostic::error(self.span(self.pos, self.pos + 1), "unexpected `}`")
                        .label("no block is open here")
                        .hint("remove it, or look for a `{` missing above"),
                );
                self.pos += 1;
                continue;
            }
            let start = self.pos;
            self.nodes += 1;
            if self.nodes > MAX_NODES {
                let here = self.span(self.pos, self.pos);
                self.errors.push(
                    Diagnostic::error(
                        here,
                        format!("more than {MAX_NODES} nodes; stopped reading this file"),
                    )
                    .hint("a pipeline of 400,000 steps has fewer; is this the right file?"),
                );
                self.gave_up = true;
                return items.split_off(0);
            }
            match self.node(depth) {
                Ok(node) => items.push(Item::Node(node)),
                Err(SyntaxError) => {
                    self.recover();
                    // Keep what can be kept of a damaged node: its name, so that later
                    // checks know it exists and say nothing misleading about it.
                    if let Some(n) = self.damaged_stub(start) {
                        items.push(Item::Node(n));
                    }
                }
            }
            at_line_start = false;
            if self.gave_up {
                return items.split_off(0);
            }
        }
    }

    /// A node whose parsing failed, re-read as far as its name.
    fn damaged_stub(&self, start: usize) -> Option<Node> {
        let mut p = Parser::new(self.src, self.file, start);
        let slashdash = if p.starts_with("/-") {
            p.pos += 2;
            true
        } else {
            false
        };
        let mut junk = Vec::new();
        p.node_space(&mut junk).ok()?;
        let name = p.string().ok()?;
        // Its first argument too, when it is a plain string: a step's name.
        let mut entries = Vec::new();
        if p.node_space(&mut junk).unwrap_or(false) {
            let at = p.pos;
            if let Ok((lit @ Literal::String(_), span)) = p.value_literal() {
                let mut after = Vec::new();
                let _ = p.node_space(&mut after);
                if p.peek() != Some(b'=') {
                    let value = Value {
                        ty: None,
                        lit,
                        span,
                    };
                    entries.push(Entry {
                        span: self.span(at, span.end as usize),
                        slashdash: false,
                        key: None,
                        value,
                        leading: ThinVec::new(),
                    });
                }
            }
        }
        Some(Node {
            span: self.span(start, self.pos.max(start)),
            slashdash,
            ty: None,
            name,
            entries,
            blocks: ThinVec::new(),
            trailing_comment: None,
            trailing: ThinVec::new(),
            damaged: true,
        })
    }

    /// After an error: skip to the end of the line, stepping over strings and whole
    /// `{ … }` blocks, stopping before a `}` that closes an enclosing block.
    fn recover(&mut self) {
        let mut depth = 0usize;
        while !self.eof() {
            if self.newline_len() > 0 && depth == 0 {
                return;
            }
            match self.peek() {
                Some(b'{') => depth += 1,
                Some(b'}') => {
                    if depth == 0 {
                        return;
                    }
                    depth -= 1;
                }
                Some(b';') if depth == 0 => return,
                // Step over a whole string (raw and multi-line ones too), so that its
                // braces, quotes and new lines are not taken for syntax.
                Some(b'"') | Some(b'#')
                    if self.peek() == Some(b'"')
                        || matches!(self.peek_at(1), Some(b'"' | b'#')) =>
                {
                    let mut sub = Parser::new(self.src, self.file, self.pos);
                    if sub.string().is_ok() && sub.pos > self.pos {
                        self.pos = sub.pos;
                        continue;
                    }
                }
                _ => {}
            }
            self.pos = self.char_end(self.pos);
        }
        self.pos = self.pos.min(self.b.len());
        while !self.src.is_char_boundary(self.pos) {
            self.pos += 1;
        }
    }

    fn node(&mut self, depth: usize) -> PResult<Node> {
        let mut entries = self.entry_pool.pop().unwrap_or_default();
        let node = self.node_into(depth, &mut entries);
        entries.clear();
        self.entry_pool.push(entries);
        node
    }

    fn node_into(&mut self, depth: usize, entries: &mut Vec<Entry>) -> PResult<Node> {
        let start = self.pos;
        let mut slashdash = false;
        if self.starts_with("/-") {
            slashdash = true;
            self.pos += 2;
            let mut skipped = Vec::new();
            self.line_space(&mut skipped, false)?;
        }
        let ty = self.type_annotation()?;
        if ty.is_some() {
            let mut junk = Vec::new();
            self.node_space(&mut junk)?;
        }
        let name = match self.peek() {
            Some(b'{') => {
                return Err(self.error(
                    Diagnostic::error(
                        self.span(self.pos, self.pos + 1),
                        "expected a node name before `{`",
                    )
                    .hint("a block belongs to a node, as in `step name { … }`"),
                ));
            }
            _ => self.string()?,
        };
        let mut node = Node {
            span: self.span(start, self.pos),
            slashdash,
            ty,
            name,
            entries: Vec::new(),
            blocks: ThinVec::new(),
            trailing_comment: None,
            trailing: ThinVec::new(),
            damaged: false,
        };
        let mut trivia = Vec::new();
        loop {
            let spaced = self.node_space(&mut trivia)?;
            let at_end = self.node_end(&mut node)? == Stop::Terminator;
            if at_end || matches!(self.peek(), Some(b'{' | b'}') | None) || self.starts_with("/-{")
            {
                // Comments after the last entry belong to the node, not to an entry.
                node.trailing.extend(trivia.drain(..));
            }
            if at_end {
                break;
            }
            match self.peek() {
                Some(b'}') => break,
                Some(b'{') => {
                    if node.entries.is_empty() {
                        node.entries = entries.split_off(0);
                    }
                    let block = self.block(depth, false)?;
                    // Nearly always the only one: no room for three more.
                    node.blocks.reserve_exact(1);
                    node.blocks.push(block);
                }
                Some(b'/') if self.peek_at(1) == Some(b'-') => {
                    if !spaced {
                        let at = self.pos;
                        return Err(self.error(
                            Diagnostic::error(self.span(at, at + 2), "expected a space before `/-`")
                                .hint("`/-` disables the entry or block after it; separate it from what comes before"),
                        ));
                    }
                    let sd = self.pos;
                    self.pos += 2;
                    let mut ignored = Vec::new();
                    self.line_space(&mut ignored, false)?;
                    if self.peek() == Some(b'{') {
                        if node.entries.is_empty() {
                            node.entries = entries.split_off(0);
                        }
                        let block = self.block(depth, true)?;
                        node.blocks.push(block);
                    } else {
                        if node.blocks.iter().any(|b| !b.slashdash) {
                            return Err(self.entry_after_block(node.name.value.clone()));
                        }
                        let mut entry = self.entry()?;
                        entry.slashdash = true;
                        entry.span = self.span(sd, entry.span.end as usize);
                        entry.leading = trivia.drain(..).collect();
                        entries.push(entry);
                    }
                }
                Some(_) => {
                    if !node.blocks.is_empty() {
                        return Err(self.entry_after_block(node.name.value.clone()));
                    }
                    if !spaced {
                        let at = self.pos;
                        let end = self.char_end(at);
                        return Err(self.error(
                            Diagnostic::error(
                                self.span(at, end),
                                format!("unexpected {}", describe(self.peek_char())),
                            )
                            .label("expected a space, a new line or `;` here"),
                        ));
                    }
                    let mut entry = self.entry()?;
                    entry.leading = trivia.drain(..).collect();
                    entries.push(entry);
                }
                None => break,
            }
            node.span = self.span(start, self.pos);
        }
        node.span = self.span(start, self.last_non_space_before(self.pos).max(start));
        if node.blocks.iter().filter(|b| !b.slashdash).count() > 1 {
            let second = node
                .blocks
                .iter()
                .filter(|b| !b.slashdash)
                .nth(1)
                .map(|b| b.span);
            if let Some(span) = second {
                self.errors.push(
                    Diagnostic::error(
                        span,
                        format!("node `{}` has two children blocks", node.name.value),
                    )
                    .hint("merge them into one `{ … }`"),
                );
            }
        }
        // Pipelines have hundreds of thousands of small nodes: keep them tight.
        if node.entries.is_empty() {
            node.entries = entries.split_off(0);
        }
        Ok(node)
    }

    /// Consumes a node terminator if one is at the cursor (a trailing `//` comment
    /// becomes the node's).
    fn node_end(&mut self, node: &mut Node) -> PResult<Stop> {
        if self.eof() {
            return Ok(Stop::Terminator);
        }
        if self.starts_with("//") {
            let mut c = self.line_comment();
            c.trailing = true;
            node.trailing_comment = Some(c);
            return Ok(Stop::Terminator);
        }
        let n = self.newline_len();
        if n > 0 {
            return Ok(Stop::Terminator);
        }
        if self.peek() == Some(b';') {
            self.pos += 1;
            return Ok(Stop::Terminator);
        }
        Ok(Stop::More)
    }

    fn entry_after_block(&mut self, name: CompactString) -> SyntaxError {
        let at = self.pos;
        let end = self.char_end(at);
        self.error(
            Diagnostic::error(
                self.span(at, end),
                format!(
                    "unexpected {} after the block of `{name}`",
                    describe(self.peek_char())
                ),
            )
            .label("a node ends with its `{ … }` block")
            .hint("put arguments and properties before the `{`, or start a new line"),
        )
    }

    fn block(&mut self, depth: usize, slashdash: bool) -> PResult<Block> {
        let open = self.pos;
        if depth + 1 > MAX_DEPTH {
            let err = self.error(
                Diagnostic::error(
                    self.span(open, open + 1),
                    format!("blocks nested too deeply (more than {MAX_DEPTH} levels)"),
                )
                .hint("a pipeline needs two levels: `step name { … }`"),
            );
            self.gave_up = true;
            return Err(err);
        }
        self.pos += 1;
        let items = self.items(depth + 1);
        if self.peek() != Some(b'}') {
            if self.gave_up {
                return Err(SyntaxError);
            }
            return Err(self.error(
                Diagnostic::error(self.span(open, open + 1), "unclosed `{`")
                    .label("this block is never closed")
                    .hint("add the matching `}`"),
            ));
        }
        self.pos += 1;
        let mut items = items;
        items.shrink_to_fit();
        Ok(Block {
            slashdash,
            span: self.span(open, self.pos),
            items,
        })
    }

    fn entry(&mut self) -> PResult<Entry> {
        let start = self.pos;
        let ty = self.type_annotation()?;
        if ty.is_some() {
            let mut junk = Vec::new();
            self.node_space(&mut junk)?;
        }
        let first = self.value_literal()?;
        // A property: a string, then `=`.
        let save = self.pos;
        let mut junk = Vec::new();
        self.node_space(&mut junk)?;
        if self.peek() == Some(b'=') {
            let key = match (&ty, &first.0) {
                (None, Literal::String(s)) => Str {
                    value: s.clone(),
                    span: first.1,
                },
                (Some(t), _) => {
                    return Err(self.error(
                        Diagnostic::error(t.span, "a property name cannot have a type annotation")
                            .hint("annotate the value instead: key=(file)\"path\""),
                    ));
                }
                (None, lit) => {
                    return Err(self.error(Diagnostic::error(
                        first.1,
                        format!("a property name must be a string, not {}", lit.kind_name()),
                    )));
                }
            };
            self.pos += 1;
            self.node_space(&mut junk)?;
            if matches!(self.newline_len(), 1..)
                || self.eof()
                || matches!(self.peek(), Some(b';' | b'}'))
            {
                return Err(self.error(
                    Diagnostic::error(
                        self.span(key.span.start as usize, self.pos),
                        format!("property `{}` has no value", key.value),
                    )
                    .label("expected a value after `=`"),
                ));
            }
            let vty = self.type_annotation()?;
            if vty.is_some() {
                self.node_space(&mut junk)?;
            }
            let (lit, span) = self.value_literal()?;
            return Ok(Entry {
                span: self.span(start, self.pos),
                slashdash: false,
                key: Some(key),
                value: Value { ty: vty, lit, span },
                leading: ThinVec::new(),
            });
        }
        self.pos = save;
        let (lit, span) = first;
        Ok(Entry {
            span: self.span(start, self.pos),
            slashdash: false,
            key: None,
            value: Value { ty, lit, span },
            leading: ThinVec::new(),
        })
    }

    fn type_annotation(&mut self) -> PResult<Option<Box<Str>>> {
        if self.peek() != Some(b'(') {
            return Ok(None);
        }
        let open = self.pos;
        self.pos += 1;
        let mut junk = Vec::new();
        self.node_space(&mut junk)?;
        let mut name = self.string()?;
        self.node_space(&mut junk)?;
        if self.peek() != Some(b')') {
            return Err(self.error(
                Diagnostic::error(self.span(open, self.pos), "unclosed type annotation")
                    .label("expected `)`"),
            ));
        }
        self.pos += 1;
        name.span = self.span(open, self.pos);
        Ok(Some(Box::new(name)))
    }

    // ---- values -------------------------------------------------------------------------

    /// A string, number or keyword; returns the literal and its span.
    fn value_literal(&mut self) -> PResult<(Literal, Span)> {
        let start = self.pos;
        match self.peek() {
            Some(b'#') if matches!(self.peek_at(1), Some(b'"' | b'#')) => {
                let s = self.raw_string()?;
                Ok((Literal::String(s.value), s.span))
            }
            Some(b'#') => self.keyword(),
            Some(b'0'..=b'9') => self.number(),
            Some(b'+' | b'-') if self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) => {
                self.number()
            }
            // `.5`, `+.5`, `-.5`: KDL needs a digit before the point.
            Some(b'.') if self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) => {
                Err(self.leading_point())
            }
            Some(b'+' | b'-')
                if self.peek_at(1) == Some(b'.')
                    && self.peek_at(2).is_some_and(|b| b.is_ascii_digit()) =>
            {
                Err(self.leading_point())
            }
            _ => {
                let s = self.string()?;
                let _ = start;
                Ok((Literal::String(s.value), s.span))
            }
        }
    }

    fn leading_point(&mut self) -> SyntaxError {
        let start = self.pos;
        while self.peek().is_some_and(is_ascii_ident_byte) {
            self.pos += 1;
        }
        let text = self.src[start..self.pos].to_string();
        let fixed = text.replacen('.', "0.", 1);
        self.error(
            Diagnostic::error(
                self.span(start, self.pos),
                format!("invalid number `{text}`"),
            )
            .hint(format!(
                "write a digit before the point, `{fixed}`, or quote it if it is text"
            )),
        )
    }

    fn keyword(&mut self) -> PResult<(Literal, Span)> {
        let start = self.pos;
        self.pos += 1;
        let word_start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            self.pos += 1;
        }
        let word = &self.src[word_start..self.pos];
        let span = self.span(start, self.pos);
        let lit = match word {
            "true" => Literal::Bool(true),
            "false" => Literal::Bool(false),
            "null" => Literal::Null,
            "inf" => Literal::Float(f64::INFINITY),
            "-inf" => Literal::Float(f64::NEG_INFINITY),
            "nan" => Literal::Float(f64::NAN),
            _ => {
                return Err(self.error(
                    Diagnostic::error(span, format!("unknown keyword `#{word}`"))
                        .hint("keywords are #true, #false, #null, #inf, #-inf and #nan; a raw string is #\"…\"#"),
                ));
            }
        };
        self.expect_value_end(start)?;
        Ok((lit, span))
    }

    fn number(&mut self) -> PResult<(Literal, Span)> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.pos += 1;
        }
        let radix = match (self.peek(), self.peek_at(1)) {
            (Some(b'0'), Some(b'x')) => 16,
            (Some(b'0'), Some(b'o')) => 8,
            (Some(b'0'), Some(b'b')) => 2,
            _ => 10,
        };
        let lit = if radix != 10 {
            self.pos += 2;
            let digits_start = self.pos;
            while self
                .peek()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                self.pos += 1;
            }
            let digits: String = self.src[digits_start..self.pos]
                .chars()
                .filter(|&c| c != '_')
                .collect();
            let bad = digits.is_empty() || self.src[digits_start..].starts_with('_');
            match i64::from_str_radix(&digits, radix) {
                Ok(v) if !bad => Literal::Integer(if negative { -v } else { v }),
                Err(e) if !bad && overflowed(&e) => return Err(self.too_large(start)),
                _ => return Err(self.bad_number(start)),
            }
        } else {
            let int_start = self.pos;
            self.digits();
            if self.pos == int_start {
                return Err(self.bad_number(start));
            }
            let mut float = false;
            if self.peek() == Some(b'.') && self.peek_at(1).is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
                self.digits();
                float = true;
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.pos += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.pos += 1;
                }
                let exp_start = self.pos;
                self.digits();
                if self.pos == exp_start {
                    return Err(self.bad_number(start));
                }
                float = true;
            }
            let raw = &self.src[start..self.pos];
            let cleaned: String;
            let text = if raw.contains('_') {
                cleaned = raw.chars().filter(|&c| c != '_').collect();
                cleaned.as_str()
            } else {
                raw
            };
            if float {
                match text.parse::<f64>() {
                    Ok(v) => Literal::Float(v),
                    Err(_) => return Err(self.bad_number(start)),
                }
            } else {
                match text.parse::<i64>() {
                    Ok(v) => Literal::Integer(v),
                    Err(e) if overflowed(&e) => return Err(self.too_large(start)),
                    Err(_) => return Err(self.bad_number(start)),
                }
            }
        };
        self.expect_value_end(start).map_err(|_| SyntaxError)?;
        Ok((lit, self.span(start, self.pos)))
    }

    fn digits(&mut self) {
        if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            while self.peek().is_some_and(|b| b.is_ascii_digit() || b == b'_') {
                self.pos += 1;
            }
        }
    }

    fn too_large(&mut self, start: usize) -> SyntaxError {
        let text = self.src[start..self.pos].to_string();
        self.error(
            Diagnostic::error(self.span(start, self.pos), format!("number `{text}` is too large"))
                .hint("integers go from -9223372036854775808 to 9223372036854775807; quote it if it is text"),
        )
    }

    fn bad_number(&mut self, start: usize) -> SyntaxError {
        while self.peek().is_some_and(is_ascii_ident_byte) {
            self.pos += 1;
        }
        let end = self.pos.max(start + 1);
        let text = self.src.get(start..end).unwrap_or("").to_string();
        self.error(
            Diagnostic::error(self.span(start, end), format!("invalid number `{text}`"))
                .hint("a string that starts with a digit must be quoted: \"2h\""),
        )
    }

    /// After a number or keyword there must be a separator.
    fn expect_value_end(&mut self, start: usize) -> PResult<()> {
        match self.peek() {
            None
            | Some(b' ' | b'\t' | b'\n' | b'\r' | b';' | b'}' | b')' | b'=' | b'\\' | 0x0C) => {
                Ok(())
            }
            Some(b'/') if matches!(self.peek_at(1), Some(b'/' | b'*' | b'-')) => Ok(()),
            Some(_) if self.space_len() > 0 || self.newline_len() > 0 => Ok(()),
            Some(_) => {
                while !self.eof() && is_ident_char_at(self) {
                    self.pos += self.char_end(self.pos) - self.pos;
                }
                let text = self.src.get(start..self.pos).unwrap_or("").to_string();
                Err(self.error(
                    Diagnostic::error(
                        self.span(start, self.pos),
                        format!("invalid value `{text}`"),
                    )
                    .hint(format!("if this is text, quote it: \"{text}\"")),
                ))
            }
        }
    }

    /// Any string form: identifier, quoted or raw.
    fn string(&mut self) -> PResult<Str> {
        match self.peek() {
            Some(b'"') => self.quoted_string(),
            Some(b'#') if matches!(self.peek_at(1), Some(b'"' | b'#')) => self.raw_string(),
            _ => self.identifier(),
        }
    }

    fn identifier(&mut self) -> PResult<Str> {
        let start = self.pos;
        while !self.eof() {
            match self.peek() {
                Some(b) if b < 0x80 => {
                    if is_ascii_ident_byte(b) {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                _ => match self.peek_char() {
                    Some(c) if is_ident_char(c) => self.pos += c.len_utf8(),
                    _ => break,
                },
            }
        }
        if self.pos == start {
            let end = self.char_end(start);
            let what = describe(self.peek_char());
            let hint = match self.peek_char() {
                Some(c) if is_disallowed(c) => {
                    "remove it; invisible and control characters are not allowed in KDL".to_string()
                }
                Some('=') => "a property needs a name before `=`".to_string(),
                _ => "text with spaces or symbols must be quoted: \"…\"".to_string(),
            };
            return Err(self.error(
                Diagnostic::error(self.span(start, end), format!("unexpected {what}")).hint(hint),
            ));
        }
        let text = &self.src[start..self.pos];
        let span = self.span(start, self.pos);
        if matches!(text, "true" | "false" | "null" | "inf" | "-inf" | "nan") {
            return Err(self.error(
                Diagnostic::error(span, format!("`{text}` is not allowed as a bare word")).hint(
                    format!("write #{text} for the keyword, or \"{text}\" for the text"),
                ),
            ));
        }
        if text.as_bytes()[0].is_ascii_digit() {
            return Err(self.bad_number(start));
        }
        Ok(Str {
            value: CompactString::new(text),
            span,
        })
    }

    fn quoted_string(&mut self) -> PResult<Str> {
        let start = self.pos;
        if self.starts_with("\"\"\"") {
            return self.multiline_string(start, 0);
        }
        self.pos += 1;
        let mut out = CompactString::default();
        let mut run = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.unterminated(start)),
                Some(b'"') => {
                    out.push_str(&self.src[run..self.pos]);
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    out.push_str(&self.src[run..self.pos]);
                    self.escape(&mut out)?;
                    run = self.pos;
                }
                Some(_) if self.newline_len() > 0 => return Err(self.unterminated(start)),
                Some(b) if b < 0x80 => {
                    if is_disallowed(b as char) {
                        return Err(self.disallowed_char());
                    }
                    self.pos += 1;
                }
                Some(_) => {
                    let c = self.peek_char().unwrap_or('\u{fffd}');
                    if is_disallowed(c) {
                        return Err(self.disallowed_char());
                    }
                    self.pos += c.len_utf8();
                }
            }
        }
        Ok(Str {
            value: out,
            span: self.span(start, self.pos),
        })
    }

    fn unterminated(&mut self, start: usize) -> SyntaxError {
        self.error(
            Diagnostic::error(self.span(start, start + 1), "unterminated string")
                .label("this string has no closing `\"` on its line")
                .hint("close it on the same line, or use a multi-line string: \"\"\" on its own lines \"\"\""),
        )
    }

    fn disallowed_char(&mut self) -> SyntaxError {
        let c = self.peek_char().unwrap_or('\u{fffd}');
        let end = self.char_end(self.pos);
        self.error(
            Diagnostic::error(self.span(self.pos, end), format!("character U+{:04X} is not allowed here", c as u32))
                .hint("control characters and invisible direction marks must be written as escapes, e.g. \\u{9}"),
        )
    }

    /// An escape sequence at the cursor (a backslash), appended decoded.
    fn escape(&mut self, out: &mut CompactString) -> PResult<()> {
        let start = self.pos;
        self.pos += 1;
        let c = match self.peek() {
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'\\') => '\\',
            Some(b'"') => '"',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b's') => ' ',
            Some(b'u') => {
                self.pos += 1;
                if self.peek() != Some(b'{') {
                    return Err(self.bad_escape(start));
                }
                let hex_start = self.pos + 1;
                let mut end = hex_start;
                while self.b.get(end).is_some_and(u8::is_ascii_hexdigit) && end - hex_start < 7 {
                    end += 1;
                }
                if self.b.get(end) != Some(&b'}') || end == hex_start || end - hex_start > 6 {
                    self.pos = end;
                    return Err(self.bad_escape(start));
                }
                let code = u32::from_str_radix(&self.src[hex_start..end], 16).ok();
                self.pos = end + 1;
                match code.and_then(char::from_u32) {
                    Some(c) => {
                        out.push(c);
                        return Ok(());
                    }
                    None => return Err(self.bad_escape(start)),
                }
            }
            _ if self.space_len() > 0 || self.newline_len() > 0 => {
                // A whitespace escape: all whitespace (new lines too) vanishes.
                loop {
                    let n = self.space_len() + self.newline_len();
                    if n == 0 {
                        return Ok(());
                    }
                    self.pos += n;
                }
            }
            _ => return Err(self.bad_escape(start)),
        };
        self.pos += 1;
        out.push(c);
        Ok(())
    }

    fn bad_escape(&mut self, start: usize) -> SyntaxError {
        let end = self.char_end(self.pos.max(start + 1)).min(self.b.len());
        let text = self.src.get(start..end).unwrap_or("\\").to_string();
        self.error(
            Diagnostic::error(self.span(start, end), format!("invalid escape `{text}`"))
                .hint("escapes are \\n \\r \\t \\\\ \\\" \\b \\f \\s \\u{…}; for backslashes as written, use a raw string: #\"a\\b\"#"),
        )
    }

    fn raw_string(&mut self) -> PResult<Str> {
        let start = self.pos;
        let mut hashes = 0;
        while self.peek() == Some(b'#') {
            hashes += 1;
            self.pos += 1;
        }
        if self.peek() != Some(b'"') {
            let end = self.char_end(self.pos.min(self.b.len()));
            return Err(self.error(
                Diagnostic::error(
                    self.span(start, end),
                    "expected `\"` after `#` to start a raw string",
                )
                .hint("raw strings look like #\"text\"#; keywords like #true"),
            ));
        }
        if self.starts_with("\"\"\"") {
            self.pos = start;
            return self.multiline_string(start, hashes);
        }
        self.pos += 1;
        let body = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.unterminated(start)),
                Some(b'"')
                    if self.b[self.pos + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&b| b == b'#')
                        .count()
                        == hashes =>
                {
                    let value = CompactString::new(&self.src[body..self.pos]);
                    self.pos += 1 + hashes;
                    return Ok(Str {
                        value,
                        span: self.span(start, self.pos),
                    });
                }
                Some(_) if self.newline_len() > 0 => return Err(self.unterminated(start)),
                Some(_) => {
                    if self.forbidden_here() {
                        return Err(SyntaxError);
                    }
                    self.pos = self.char_end(self.pos);
                }
            }
        }
    }

    /// `"""` (or `#"""`) strings: the closing line's indentation is removed from every line.
    fn multiline_string(&mut self, start: usize, hashes: usize) -> PResult<Str> {
        self.pos = start + hashes + 3;
        let nl = self.newline_len();
        if nl == 0 {
            return Err(self.error(
                Diagnostic::error(
                    self.span(start, self.pos),
                    "a multi-line string must start a new line after `\"\"\"`",
                )
                .hint("for a one-line string use single quotes: \"text\""),
            ));
        }
        self.pos += nl;
        let body = self.pos;
        let closing: Vec<u8> = std::iter::once(b'"')
            .chain(std::iter::once(b'"'))
            .chain(std::iter::once(b'"'))
            .chain(std::iter::repeat_n(b'#', hashes))
            .collect();
        let end;
        loop {
            if self.pos >= self.b.len() {
                return Err(self.error(
                    Diagnostic::error(
                        self.span(start, start + hashes + 3),
                        "unterminated multi-line string",
                    )
                    .label("no closing `\"\"\"`"),
                ));
            }
            if hashes == 0 && self.peek() == Some(b'\\') {
                self.pos += 2;
                continue;
            }
            if self.b[self.pos..].starts_with(&closing) {
                end = self.pos;
                self.pos += closing.len();
                break;
            }
            if self.forbidden_here() {
                return Err(SyntaxError);
            }
            self.pos = self.char_end(self.pos);
        }
        // Whitespace escapes (`\` then spaces and new lines) go first, as KDL says:
        // they may join lines, even the closing one, before the indentation is removed.
        let joined;
        let text = if hashes == 0 && self.src[body..end].contains('\\') {
            joined = strip_whitespace_escapes(&self.src[body..end]);
            joined.as_str()
        } else {
            &self.src[body..end]
        };
        let (content, last) =
            match text.rfind(['\n', '\r', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}']) {
                Some(i) => {
                    let nl_len = text[i..].chars().next().map_or(1, char::len_utf8);
                    let before = if text[..i].ends_with('\r') && &text[i..i + 1] == "\n" {
                        &text[..i - 1]
                    } else {
                        &text[..i]
                    };
                    (Some(before), &text[i + nl_len..])
                }
                None => (None, text),
            };
        if !last.chars().all(is_unicode_space) {
            return Err(self.error(
                Diagnostic::error(self.span(end, end + 3), "the closing `\"\"\"` must be on a line of its own")
                    .hint("put `\"\"\"` on a new line; its indentation is removed from every line of the string"),
            ));
        }
        let mut out = CompactString::default();
        if let Some(content) = content {
            for (i, line) in split_lines(content).enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                if line.chars().all(is_unicode_space) {
                    continue;
                }
                match line.strip_prefix(last) {
                    Some(rest) => out.push_str(rest),
                    None => {
                        return Err(self.error(
                            Diagnostic::error(self.span(start, start + hashes + 3), "a line of this multi-line string is indented less than its closing `\"\"\"`")
                                .hint("every line must start with the closing line's indentation"),
                        ));
                    }
                }
            }
        }
        let value = if hashes == 0 {
            self.unescape_after_dedent(&out, start)?
        } else {
            out
        };
        Ok(Str {
            value,
            span: self.span(start, self.pos),
        })
    }

    fn unescape_after_dedent(&mut self, s: &str, start: usize) -> PResult<CompactString> {
        if !s.contains('\\') {
            return Ok(CompactString::new(s));
        }
        let mut sub = Parser::new(s, self.file, 0);
        let mut out = CompactString::default();
        let mut run = 0;
        while sub.pos < sub.b.len() {
            if sub.peek() == Some(b'\\') {
                out.push_str(&s[run..sub.pos]);
                if sub.escape(&mut out).is_err() {
                    return Err(self.error(
                        Diagnostic::error(self.span(start, start + 3), "invalid escape in this multi-line string")
                            .hint("escapes are \\n \\r \\t \\\\ \\\" \\b \\f \\s \\u{…}; for backslashes as written, use a raw string: #\"\"\"…\"\"\"#"),
                    ));
                }
                run = sub.pos;
            } else {
                sub.pos = sub.char_end(sub.pos);
            }
        }
        out.push_str(&s[run..]);
        Ok(out)
    }

    /// The byte offset just after the character at `at`.
    fn char_end(&self, at: usize) -> usize {
        match self.src.get(at..).and_then(|s| s.chars().next()) {
            Some(c) => at + c.len_utf8(),
            None => (at + 1).min(self.b.len()).max(at),
        }
    }

    fn last_non_space_before(&self, pos: usize) -> usize {
        let mut p = pos.min(self.b.len());
        while p > 0 && matches!(self.b[p - 1], b' ' | b'\t' | b'\n' | b'\r' | b';') {
            p -= 1;
        }
        p
    }
}

/// Removes whitespace escapes, keeping every other escape (`\\` too) for later.
fn strip_whitespace_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some(&n) if is_unicode_space(n) || is_newline(n) => {
                while chars
                    .peek()
                    .is_some_and(|&n| is_unicode_space(n) || is_newline(n))
                {
                    chars.next();
                }
            }
            Some(&n) => {
                out.push('\\');
                out.push(n);
                chars.next();
            }
            None => out.push('\\'),
        }
    }
    out
}

fn overflowed(e: &std::num::ParseIntError) -> bool {
    matches!(
        e.kind(),
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
    )
}

fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.find(['\n', '\r', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}']) {
            Some(i) => {
                let c = r[i..].chars().next().unwrap_or('\n');
                let mut next = i + c.len_utf8();
                if c == '\r' && r[next..].starts_with('\n') {
                    next += 1;
                }
                rest = Some(&r[next..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn is_unicode_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\u{b}' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

fn is_newline(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

pub(crate) fn is_disallowed(c: char) -> bool {
    (c <= '\u{8}' || ('\u{e}'..='\u{1f}').contains(&c) || c == '\u{7f}')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

fn is_ascii_ident_byte(b: u8) -> bool {
    b > 0x20
        && b < 0x7f
        && !matches!(
            b,
            b'\\' | b'/' | b'(' | b')' | b'{' | b'}' | b';' | b'[' | b']' | b'"' | b'#' | b'='
        )
}

pub(crate) fn is_ident_char(c: char) -> bool {
    if c.is_ascii() {
        return is_ascii_ident_byte(c as u8);
    }
    !is_unicode_space(c) && !is_newline(c) && !is_disallowed(c)
}

fn is_ident_char_at(p: &Parser<'_>) -> bool {
    p.peek_char().is_some_and(is_ident_char)
}

fn describe(c: Option<char>) -> String {
    match c {
        None => "end of file".to_string(),
        Some(c) if c.is_control() || is_disallowed(c) => format!("character U+{:04X}", c as u32),
        Some(c) => format!("`{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Document {
        let out = parse(FileId(0), text);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        out.doc
    }

    fn err(text: &str) -> Vec<String> {
        parse(FileId(0), text)
            .errors
            .into_iter()
            .map(|d| d.message)
            .collect()
    }

    fn nodes(doc: &Document) -> Vec<&Node> {
        doc.items
            .iter()
            .filter_map(|i| if let Item::Node(n) = i { Some(n) } else { None })
            .collect()
    }

    #[test]
    fn reads_nodes_args_props_and_children() {
        let doc = ok(
            "pipeline \"x\"\nstep a {\n  in raw=clean.table\n  out t=(file)\"a.csv\"\n  retry 2; run #\"awk -F'\\t'\"#\n}\n",
        );
        let ns = nodes(&doc);
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[0].name.value, "pipeline");
        let step = ns[1];
        let kids: Vec<_> = step.child_nodes().collect();
        assert_eq!(kids.len(), 4);
        let (k, v) = kids[0].props().next().unwrap();
        assert_eq!((k.value.as_str(), v.as_str()), ("raw", Some("clean.table")));
        let (_, v) = kids[1].props().next().unwrap();
        assert_eq!(v.ty.as_ref().unwrap().value, "file");
        assert_eq!(kids[2].args().next().unwrap().lit, Literal::Integer(2));
        assert_eq!(kids[3].args().next().unwrap().as_str(), Some("awk -F'\\t'"));
    }

    #[test]
    fn numbers_keep_their_kind() {
        let doc = ok("p 0.001 1e3 0x1F -7 1_000 #true #null #inf");
        let lits: Vec<_> = nodes(&doc)[0].args().map(|v| v.lit.clone()).collect();
        assert_eq!(lits[0], Literal::Float(0.001));
        assert_eq!(lits[1], Literal::Float(1000.0));
        assert_eq!(lits[2], Literal::Integer(31));
        assert_eq!(lits[3], Literal::Integer(-7));
        assert_eq!(lits[4], Literal::Integer(1000));
        assert_eq!(lits[5], Literal::Bool(true));
        assert_eq!(lits[6], Literal::Null);
        assert_eq!(lits[7], Literal::Float(f64::INFINITY));
    }

    #[test]
    fn escapes_and_multiline_strings() {
        let doc = ok(
            "a \"x\\ty\\u{e9}\\\n     z\"\nb \"\"\"\n    one\n      two\n\n    three\n    \"\"\"\n",
        );
        let ns = nodes(&doc);
        assert_eq!(ns[0].args().next().unwrap().as_str(), Some("x\tyéz"));
        assert_eq!(
            ns[1].args().next().unwrap().as_str(),
            Some("one\n  two\n\nthree")
        );
    }

    #[test]
    fn whitespace_escapes_join_lines_before_dedent() {
        // The KDL 2.0 test suite's multiline_string_escape_* cases.
        let value = |t: &str| {
            nodes(&ok(t))[0]
                .args()
                .next()
                .unwrap()
                .as_str()
                .map(str::to_string)
        };
        assert_eq!(
            value("node \"\"\"\n  foo \\\nbar\n  baz\n  \\   \"\"\"\n").as_deref(),
            Some("foo bar\nbaz")
        );
        assert_eq!(
            value("node \"\"\"\n  foo \\\nbar\n  baz\n\\   \"\"\"\n").as_deref(),
            Some("  foo bar\n  baz")
        );
        assert_eq!(
            value("node \"\"\"\n    a\n   \\\n\"\"\"\n").as_deref(),
            Some(" a")
        );
        assert!(
            !parse(FileId(0), "node \"\"\"\na\n   \\\n\"\"\"\n")
                .errors
                .is_empty()
        );
        assert_eq!(
            value("node \"\"\"\n  a\\\\ b\n  \"\"\"\n").as_deref(),
            Some("a\\ b"),
            "an escaped backslash is not a whitespace escape"
        );
    }

    #[test]
    fn slashdash_disables_nodes_entries_and_blocks() {
        let doc = ok("/- a 1\nb /-2 3 /-{ c } { d }\n");
        let ns = nodes(&doc);
        assert!(ns[0].slashdash);
        assert_eq!(ns[1].args().count(), 1);
        assert_eq!(ns[1].blocks.len(), 2);
        assert_eq!(ns[1].child_nodes().next().unwrap().name.value, "d");
    }

    #[test]
    fn comments_are_kept() {
        let doc = ok("// head\n\na 1 /* mid */ 2 // tail\n/* own */\nb\n");
        assert!(matches!(doc.items[0], Item::Comment(_)));
        assert!(matches!(doc.items[1], Item::Blank));
        let Item::Node(a) = &doc.items[2] else {
            panic!()
        };
        assert!(a.trailing_comment.is_some());
        assert_eq!(a.entries[1].leading.len(), 1);
    }

    #[test]
    fn line_continuations() {
        let doc = ok("a 1 \\ // why\n  2\n");
        let a = nodes(&doc)[0];
        assert_eq!(a.args().count(), 2);
        assert!(matches!(
            a.entries[1].leading[0],
            Trivia::Continuation(Some(_))
        ));
    }

    #[test]
    fn reports_errors_and_recovers_per_line() {
        let errs = err("a \"open\nb 1x\nc true\nd (x\ne }\n");
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(errs[0].contains("unterminated string"));
        assert!(errs[1].contains("invalid value `1x`"), "{errs:?}");
        assert!(errs[2].contains("bare word"));
        assert!(errs[3].contains("type annotation"));
    }

    #[test]
    fn unclosed_block_is_reported_at_its_brace() {
        let out = parse(FileId(0), "step a {\n  run \"x\"\n");
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].message, "unclosed `{`");
        assert_eq!(out.errors[0].span.unwrap().start, 7);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = "a {".repeat(100_000);
        let out = parse(FileId(0), &text);
        assert!(out.gave_up);
        assert!(
            out.errors
                .iter()
                .any(|e| e.message.contains("nested too deeply"))
        );
    }

    #[test]
    fn garbage_stops_after_many_errors() {
        let text = "=\n".repeat(10_000);
        let out = parse(FileId(0), &text);
        assert!(out.gave_up);
        assert_eq!(out.errors.len(), MAX_ERRORS + 1);
    }
}
