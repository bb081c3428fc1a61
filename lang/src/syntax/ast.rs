//! The syntax tree of a KDL document, with what the formatter needs to keep:
//! comments, blank lines, line continuations and disabled (`/-`) parts.

use crate::source::Span;
use compact_str::CompactString;
use thin_vec::ThinVec;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Node(Node),
    Comment(Comment),
    /// One or more empty lines between two items.
    Blank,
}

/// A `// line` or `/* block */` comment; its text is the source under `span`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comment {
    pub span: Span,
    /// It follows other code on the same line.
    pub trailing: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// From the first character of the node (its `/-` or type) to the end of its last part.
    pub span: Span,
    /// Disabled with `/-`: kept by the formatter, ignored by everything else.
    pub slashdash: bool,
    pub ty: Option<Box<Str>>,
    pub name: Str,
    pub entries: Vec<Entry>,
    /// Children blocks in source order; at most one is not slashdashed.
    pub blocks: ThinVec<Block>,
    /// Comments (and line continuations) after the last entry.
    pub trailing: ThinVec<Trivia>,
    /// A `//` comment at the end of the node's last line.
    pub trailing_comment: Option<Comment>,
    /// A syntax error was found inside this node: parts of it may be missing.
    pub damaged: bool,
}

impl Node {
    /// The live (not slashdashed) entries.
    pub fn args(&self) -> impl Iterator<Item = &Value> {
        self.entries
            .iter()
            .filter(|e| !e.slashdash && e.key.is_none())
            .map(|e| &e.value)
    }

    pub fn props(&self) -> impl Iterator<Item = (&Str, &Value)> {
        self.entries
            .iter()
            .filter(|e| !e.slashdash)
            .filter_map(|e| e.key.as_ref().map(|k| (k, &e.value)))
    }

    /// The live children block, if any.
    pub fn children(&self) -> Option<&Block> {
        self.blocks.iter().find(|b| !b.slashdash)
    }

    /// The live child nodes (empty without a children block).
    pub fn child_nodes(&self) -> impl Iterator<Item = &Node> {
        self.children()
            .into_iter()
            .flat_map(|b| b.items.iter())
            .filter_map(|i| match i {
                Item::Node(n) if !n.slashdash => Some(n),
                _ => None,
            })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub slashdash: bool,
    /// From `{` to `}`.
    pub span: Span,
    pub items: Vec<Item>,
}

/// What stands between two entries of a node, kept for the formatter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trivia {
    /// `/* … */`
    Comment(Comment),
    /// A `\` line continuation, with the `//` comment that may follow it.
    Continuation(Option<Comment>),
}

/// An argument (`key` is `None`) or a property `key=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub span: Span,
    pub slashdash: bool,
    pub key: Option<Str>,
    pub value: Value,
    pub leading: ThinVec<Trivia>,
}

/// A decoded string with the span of its source text (quotes included).
#[derive(Debug, Clone, PartialEq)]
pub struct Str {
    /// Inline up to 24 bytes: node names, keys and most values never allocate.
    pub value: CompactString,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// A type annotation such as `(file)`.
    pub ty: Option<Box<Str>>,
    pub lit: Literal,
    /// The literal's source text (without the annotation).
    pub span: Span,
}

impl Value {
    /// From the annotation (if any) to the end of the literal.
    pub fn full_span(&self) -> Span {
        self.ty.as_ref().map_or(self.span, |t| t.span.to(self.span))
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.lit {
            Literal::String(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    String(CompactString),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Null,
}

impl Literal {
    /// How the literal is named in messages: "a string", "an integer"…
    pub fn kind_name(&self) -> &'static str {
        match self {
            Literal::String(_) => "a string",
            Literal::Integer(_) => "an integer",
            Literal::Float(_) => "a decimal number",
            Literal::Bool(_) => "a boolean",
            Literal::Null => "#null",
        }
    }
}
