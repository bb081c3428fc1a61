//! mustbuild-lang: the workflow language. It owns KDL pipeline files: parsing
//! (a KDL 2.0 parser of our own, KDL 1.0 through the `kdl` crate), formatting,
//! and the checks that turn a file set into a [`Workflow`] whose every name is
//! resolved, or into a complete list of [`Diagnostic`]s with spans and hints.
//!
//! It must not know about the store, executors or hashing: it says what a
//! pipeline means, never how it is run. It is synchronous and reads files only
//! through [`Files`] (pipeline files, and directory listings for globs).
//!
//! Key design decision: checking never stops at the first problem. Every pass
//! appends to one [`Diagnostics`] list; a node with a syntax error is kept as a
//! "damaged" stub so that later passes neither trip over it nor report what is
//! merely missing because of it.

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod checks;
pub mod diagnostic;
pub mod expand;
pub mod files;
pub mod graph;
mod load;
mod lower;
pub mod model;
pub mod names;
pub mod source;
pub mod syntax;
pub mod template;
pub mod units;

pub use diagnostic::{Diagnostic, Diagnostics, Related, Severity};
pub use expand::{Expansion, expand};
pub use files::{Files, MemoryFiles, RealFiles};
pub use load::{Loaded, load, load_with};
pub use model::Workflow;
pub use source::{FileId, LineCol, SourceFile, SourceMap, Span};

/// Formats a pipeline file's text canonically (comments kept). `None` when it
/// does not parse; KDL 1.0 text comes out as KDL 2.0.
pub fn format_source(text: &str) -> Option<String> {
    let parsed = syntax::parse_any(FileId(0), text.to_string());
    parsed
        .errors
        .is_empty()
        .then(|| syntax::format::format(&parsed.doc, &parsed.text))
}

/// What `fmt` made of one file.
#[derive(Debug)]
pub struct Formatted {
    pub sources: SourceMap,
    /// Problems that stop formatting (unreadable file, syntax errors).
    pub diagnostics: Vec<Diagnostic>,
    pub original: String,
    /// The canonical text, when the file parses.
    pub formatted: Option<String>,
}

/// Reads and formats one file (its includes are not followed).
pub fn format_file(files: &dyn Files, path: &std::path::Path) -> Formatted {
    let mut sources = SourceMap::default();
    let bytes = match files.read(path) {
        Ok(b) => b,
        Err(reason) => {
            return Formatted {
                sources,
                diagnostics: vec![Diagnostic::file_error(
                    path,
                    format!("cannot read `{}`: {reason}", path.display()),
                )],
                original: String::new(),
                formatted: None,
            };
        }
    };
    let original = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let id = sources.add(
                path.to_path_buf(),
                String::from_utf8_lossy(e.as_bytes()).into_owned(),
            );
            return Formatted {
                sources,
                diagnostics: vec![
                    Diagnostic::error(
                        Span::new(id, at, at + 1),
                        format!("`{}` is not a text file", path.display()),
                    )
                    .label("invalid UTF-8 byte"),
                ],
                original: String::new(),
                formatted: None,
            };
        }
    };
    let parsed = syntax::parse_any(FileId(0), original.clone());
    let formatted = parsed
        .errors
        .is_empty()
        .then(|| syntax::format::format(&parsed.doc, &parsed.text));
    sources.add(path.to_path_buf(), parsed.text);
    Formatted {
        sources,
        diagnostics: parsed.errors,
        original,
        formatted,
    }
}
