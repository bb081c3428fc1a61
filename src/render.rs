//! Diagnostics for people (miette's graphical reports on stderr) and for
//! programs (`--json`).

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use mustbuild_lang::{Diagnostic, Severity, SourceMap};
use std::collections::HashMap;
use std::fmt;
use std::io::IsTerminal;
use std::sync::Arc;

/// Renders diagnostics with source excerpts, one file's text shared by all.
pub struct Renderer<'a> {
    sources: &'a SourceMap,
    texts: HashMap<u32, Arc<str>>,
    handler: GraphicalReportHandler,
}

impl<'a> Renderer<'a> {
    pub fn new(sources: &'a SourceMap) -> Self {
        let color = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100);
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(width)
            .with_links(false);
        Renderer {
            sources,
            texts: HashMap::new(),
            handler,
        }
    }

    /// The full report of one diagnostic.
    pub fn render(&mut self, d: &Diagnostic) -> String {
        let report = self.report(d);
        let mut out = String::new();
        if self.handler.render_report(&mut out, &report).is_err() {
            out = report.message.clone();
        }
        out
    }

    fn text(&mut self, file: u32) -> Arc<str> {
        let sources = self.sources;
        self.texts
            .entry(file)
            .or_insert_with(|| Arc::from(sources.file(mustbuild_lang::FileId(file)).text.as_str()))
            .clone()
    }

    fn report(&mut self, d: &Diagnostic) -> Report {
        let mut labels = Vec::new();
        let mut notes = Vec::new();
        let mut source = None;
        let mut message = d.message.clone();
        if let Some(span) = d.span
            && !self.excerpt_fits(d)
        {
            // Lines this long (a minified or generated file) would flood the terminal:
            // name the place instead of showing it.
            message = format!("{}: {message}", self.place(span));
        } else if let Some(span) = d.span {
            let file = self.sources.file(span.file);
            source = Some(NamedSource::new(
                file.path.display().to_string(),
                self.text(span.file.0),
            ));
            labels.push(LabeledSpan::new_primary_with_span(
                d.label.clone(),
                to_miette(span),
            ));
            for r in &d.related {
                if r.span.file == span.file {
                    labels.push(LabeledSpan::new_with_span(
                        Some(r.label.clone()),
                        to_miette(r.span),
                    ));
                } else {
                    notes.push(format!("{}: {}", self.place(r.span), r.label));
                }
            }
        }
        if d.span.is_none()
            && let Some(path) = &d.path
            && !message.contains(&path.display().to_string())
        {
            message = format!("{}: {message}", path.display());
        }
        let mut help = d.hint.clone().unwrap_or_default();
        for n in notes {
            if !help.is_empty() {
                help.push('\n');
            }
            help.push_str(&format!("note: {n}"));
        }
        Report {
            message,
            severity: d.severity,
            help: (!help.is_empty()).then_some(help),
            source,
            labels,
        }
    }

    /// Whether the source lines a report would show are short enough to show.
    fn excerpt_fits(&self, d: &Diagnostic) -> bool {
        const MAX_LINE_BYTES: usize = 1000;
        let Some(span) = d.span else { return true };
        std::iter::once(span)
            .chain(
                d.related
                    .iter()
                    .map(|r| r.span)
                    .filter(|s| s.file == span.file),
            )
            .all(|s| {
                let file = self.sources.file(s.file);
                file.longest_line_near(s.start as usize, s.end as usize, 1) <= MAX_LINE_BYTES
            })
    }

    /// `file:line:column` of a span.
    pub fn place(&self, span: mustbuild_lang::Span) -> String {
        let file = self.sources.file(span.file);
        let lc = file.line_col(span.start as usize);
        format!("{}:{}:{}", file.path.display(), lc.line, lc.column)
    }
}

fn to_miette(span: mustbuild_lang::Span) -> SourceSpan {
    SourceSpan::new((span.start as usize).into(), span.len())
}

#[derive(Debug)]
struct Report {
    message: String,
    severity: Severity,
    help: Option<String>,
    source: Option<NamedSource<Arc<str>>>,
    labels: Vec<LabeledSpan>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }
}

/// One diagnostic as `--json` prints it.
#[derive(serde::Serialize)]
pub struct JsonDiagnostic {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub end_line: Option<usize>,
    pub end_column: Option<usize>,
    pub severity: Severity,
    pub message: String,
    pub label: Option<String>,
    pub hint: Option<String>,
    pub related: Vec<JsonRelated>,
}

#[derive(serde::Serialize)]
pub struct JsonRelated {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub label: String,
}

pub fn to_json(d: &Diagnostic, sources: &SourceMap) -> JsonDiagnostic {
    let (file, start, end) = match d.span {
        Some(span) => {
            let f = sources.file(span.file);
            (
                Some(f.path.display().to_string()),
                Some(f.line_col(span.start as usize)),
                Some(f.line_col(span.end as usize)),
            )
        }
        None => (d.path.as_ref().map(|p| p.display().to_string()), None, None),
    };
    JsonDiagnostic {
        file,
        line: start.map(|l| l.line),
        column: start.map(|l| l.column),
        end_line: end.map(|l| l.line),
        end_column: end.map(|l| l.column),
        severity: d.severity,
        message: d.message.clone(),
        label: d.label.clone(),
        hint: d.hint.clone(),
        related: d
            .related
            .iter()
            .map(|r| {
                let f = sources.file(r.span.file);
                let lc = f.line_col(r.span.start as usize);
                JsonRelated {
                    file: f.path.display().to_string(),
                    line: lc.line,
                    column: lc.column,
                    label: r.label.clone(),
                }
            })
            .collect(),
    }
}

/// "2 errors and 1 warning".
pub fn count_summary(diags: &[Diagnostic]) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    match (errors, warnings) {
        (0, w) => plural(w, "warning"),
        (e, 0) => plural(e, "error"),
        (e, w) => format!("{} and {}", plural(e, "error"), plural(w, "warning")),
    }
}

/// "1 step", "2 steps".
pub fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}
