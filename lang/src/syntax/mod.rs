//! KDL text to syntax tree, and back (the formatter).

pub mod ast;
pub mod format;
pub mod parser;

use crate::diagnostic::Diagnostic;
use crate::source::FileId;

/// The result of reading one file's text.
#[derive(Debug)]
pub struct Parsed {
    pub doc: ast::Document,
    pub errors: Vec<Diagnostic>,
    /// The text the tree's spans point into: the file's own text, or, for a KDL v1
    /// file, its v2 translation (which keeps lines and comments where they were).
    pub text: String,
    pub was_v1: bool,
}

/// Parses KDL 2.0; when that fails and the text reads as KDL 1.0, parses its v2
/// translation instead.
pub fn parse_any(file: FileId, text: String) -> Parsed {
    let out = parser::parse(file, &text);
    if out.errors.is_empty() || out.gave_up {
        return Parsed {
            doc: out.doc,
            errors: out.errors,
            text,
            was_v1: false,
        };
    }
    if let Some(v2) = v1_to_v2(&text) {
        let again = parser::parse(file, &v2);
        if again.errors.is_empty() {
            return Parsed {
                doc: again.doc,
                errors: Vec::new(),
                text: v2,
                was_v1: true,
            };
        }
    }
    Parsed {
        doc: out.doc,
        errors: out.errors,
        text,
        was_v1: false,
    }
}

/// KDL v1 text rewritten as v2 by the `kdl` crate, for files small and tame
/// enough for its recursive parser.
fn v1_to_v2(text: &str) -> Option<String> {
    const MAX_V1_BYTES: usize = 1 << 20;
    // The kdl crate's v1 parser recurses on `/-`, nested comments and blocks: bound
    // what it can be given (our own parser already refused deep blocks).
    const MAX_NESTERS: usize = 100;
    if text.len() > MAX_V1_BYTES
        || text.matches("/-").count() > MAX_NESTERS
        || text.matches("/*").count() > MAX_NESTERS
    {
        return None;
    }
    // It also panics on some inputs (found by our fuzzer: `(true` followed by NUL
    // bytes). Contain it: a panic there means "not KDL 1.0", and must neither crash
    // mustbuild nor print a crash report. It runs on its own thread with a generous
    // stack, so that what recursion remains cannot overflow ours.
    let text = text.to_string();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let translated = std::thread::Builder::new()
        .name("kdl-v1".into())
        .stack_size(64 << 20)
        .spawn(move || kdl::KdlDocument::v1_to_v2(&text).ok())
        .ok()
        .and_then(|t| t.join().ok())
        .flatten();
    std::panic::set_hook(previous);
    translated
}
