//! Diagnostics: what is wrong, where, and what to do about it.
//!
//! The checker never stops at the first problem: every pass pushes into a
//! [`Diagnostics`] list and the caller gets them all, sorted by position.

use crate::source::{SourceMap, Span};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A secondary location that explains the primary one ("first declared here").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Related {
    pub span: Span,
    pub label: String,
}

/// One problem found in a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Diagnostic {
    pub severity: Severity,
    /// A lowercase sentence fragment: "unknown step `clean`".
    pub message: String,
    /// Where: absent only for problems with a whole file (unreadable, not found).
    pub span: Option<Span>,
    /// The file, when there is no span (a span already names its file).
    pub path: Option<std::path::PathBuf>,
    /// A short text shown under the underlined source.
    pub label: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
    pub related: Vec<Related>,
}

impl Diagnostic {
    pub fn error(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: Some(span),
            path: None,
            label: None,
            hint: None,
            related: Vec::new(),
        }
    }

    pub fn warning(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, message)
        }
    }

    /// A problem with a whole file, which has no position.
    pub fn file_error(path: impl Into<std::path::PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            path: Some(path.into()),
            label: None,
            hint: None,
            related: Vec::new(),
        }
    }

    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    #[must_use]
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }

    #[must_use]
    pub fn related(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push(Related {
            span,
            label: label.into(),
        });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// A plain one-line rendering, `file:line:column: severity: message`, for
    /// logs and tests; the binary renders the full report with source excerpts.
    pub fn one_line(&self, sources: &SourceMap) -> String {
        let place = match (self.span, &self.path) {
            (Some(span), _) => {
                let file = sources.file(span.file);
                let lc = file.line_col(span.start as usize);
                format!("{}:{}:{}", file.path.display(), lc.line, lc.column)
            }
            (None, Some(path)) => path.display().to_string(),
            (None, None) => "<pipeline>".to_string(),
        };
        format!("{place}: {}: {}", self.severity, self.message)
    }
}

/// After this many errors (or warnings), further ones are counted, not kept: a
/// file that wrong needs its first problems fixed, not a million messages.
pub const MAX_KEPT: usize = 1000;

/// The list every checking pass appends to.
#[derive(Debug, Default)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
    errors: usize,
    warnings: usize,
    dropped: usize,
    last_span: Option<Span>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        let count = if d.is_error() {
            &mut self.errors
        } else {
            &mut self.warnings
        };
        *count += 1;
        if *count > MAX_KEPT {
            self.dropped += 1;
            return;
        }
        if d.span.is_some() {
            self.last_span = d.span;
        }
        self.list.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    /// Errors reported so far (kept or not).
    pub fn error_count(&self) -> usize {
        self.errors
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Sorted by file and position (file-level problems first), then severity.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        if self.dropped > 0 {
            let note = format!(
                "{} more problems were found but not kept (the first {MAX_KEPT} are)",
                self.dropped
            );
            let mut d = match self.last_span {
                Some(span) => Diagnostic::error(span, note),
                None => Diagnostic {
                    span: None,
                    ..Diagnostic::file_error("", note)
                },
            };
            d.severity = if self.errors > MAX_KEPT {
                Severity::Error
            } else {
                Severity::Warning
            };
            self.list
                .push(d.hint("fix the first problems; the others often follow from them"));
        }
        self.list.sort_by(|a, b| {
            let key = |d: &Diagnostic| (d.span.map(|s| (s.file, s.start, s.end)), d.severity);
            key(a).cmp(&key(b))
        });
        self.list.dedup();
        self.list
    }
}

impl Extend<Diagnostic> for Diagnostics {
    fn extend<T: IntoIterator<Item = Diagnostic>>(&mut self, iter: T) {
        for d in iter {
            self.push(d);
        }
    }
}
