//! Reading a pipeline: the main file, its includes (recursively, with cycle
//! detection), parsing, then [`lower`](crate::lower) into a checked workflow.

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::files::{Files, RealFiles};
use crate::model::Workflow;
use crate::source::{FileId, SourceMap, Span};
use crate::syntax::ast::{Document, Item, Node};
use crate::syntax::{self, Parsed};
use std::path::{Path, PathBuf};

/// Includes may nest this deep.
const MAX_INCLUDE_DEPTH: usize = 32;

/// Everything learned from loading a pipeline.
#[derive(Debug)]
pub struct Loaded {
    pub sources: SourceMap,
    /// Errors and warnings, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
    /// Present when there is no error.
    pub workflow: Option<Workflow>,
    /// Files that were KDL v1 (their text in `sources` is the v2 translation).
    pub v1_files: Vec<FileId>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads and checks the pipeline at `path` from the real file system.
pub fn load(path: &Path) -> Loaded {
    load_with(&RealFiles, path)
}

/// Loads and checks the pipeline at `path` from `files`.
pub fn load_with(files: &dyn Files, path: &Path) -> Loaded {
    let mut loader = Loader {
        files,
        sources: SourceMap::default(),
        diags: Diagnostics::default(),
        documents: Vec::new(),
        v1_files: Vec::new(),
        order: Vec::new(),
        included: Vec::new(),
    };
    let main = loader.read(path, None);
    let mut workflow = None;
    if let Some(main) = main {
        let identity = files.identity(path);
        loader.walk(main, &mut vec![(identity, None)]);
        {
            let root = path.parent().map_or_else(
                || PathBuf::from("."),
                |p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                },
            );
            // Each top-level node is taken out of its file's tree and dropped once
            // declared: the trees never stand beside the whole workflow.
            let mut documents = std::mem::take(&mut loader.documents);
            let nodes = loader.order.iter().filter_map(|&(file, i)| {
                match std::mem::replace(&mut documents[file.0 as usize].items[i], Item::Blank) {
                    Item::Node(n) => Some(n),
                    _ => None,
                }
            });
            let declared = crate::lower::declare(&loader.sources, main, nodes, &mut loader.diags);
            drop(documents);
            let lowered = crate::lower::resolve(&loader.sources, root, declared, &mut loader.diags);
            if !loader.diags.has_errors() {
                workflow = lowered;
            }
        }
    }
    Loaded {
        sources: loader.sources,
        diagnostics: loader.diags.into_sorted(),
        workflow,
        v1_files: loader.v1_files,
    }
}

struct Loader<'f> {
    files: &'f dyn Files,
    sources: SourceMap,
    diags: Diagnostics,
    documents: Vec<Document>,
    v1_files: Vec<FileId>,
    /// Top-level nodes of all files, includes spliced in: (file, item index).
    order: Vec<(FileId, usize)>,
    /// Every included file, with where it was included (to report repeats).
    included: Vec<(PathBuf, Span)>,
}

impl Loader<'_> {
    /// Reads and parses one file. `from` is the `include` that names it.
    fn read(&mut self, path: &Path, from: Option<Span>) -> Option<FileId> {
        let bytes = match self.files.read(path) {
            Ok(b) => b,
            Err(reason) => {
                let d = match from {
                    Some(span) => Diagnostic::error(
                        span,
                        format!("cannot read included file `{}`: {reason}", path.display()),
                    )
                    .hint("include paths are relative to the file that includes them"),
                    None => Diagnostic::file_error(
                        path,
                        format!("cannot read `{}`: {reason}", path.display()),
                    ),
                };
                self.diags.push(d);
                return None;
            }
        };
        let id = FileId(u32::try_from(self.documents.len()).unwrap_or(u32::MAX));
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let bad = e.as_bytes()[at];
                let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                // The lossy text has the same bytes up to `at`.
                let id = self.sources.add(path.to_path_buf(), lossy);
                self.documents.push(Document::default());
                self.diags.push(
                    Diagnostic::error(
                        Span::new(id, at, at + 1),
                        format!(
                            "`{}` is not a text file: byte 0x{bad:02X} is not UTF-8",
                            path.display()
                        ),
                    )
                    .label("invalid byte")
                    .hint("pipeline files are UTF-8 text; is this the right file?"),
                );
                return None;
            }
        };
        let Parsed {
            doc,
            errors,
            text,
            was_v1,
        } = syntax::parse_any(id, text);
        self.sources.add(path.to_path_buf(), text);
        self.documents.push(doc);
        if was_v1 {
            self.v1_files.push(id);
            self.diags.push(
                Diagnostic::warning(Span::new(id, 0, 0), "this file is KDL 1.0; it was read through its KDL 2.0 translation")
                    .hint("`mustbuild fmt` rewrites it as KDL 2.0; positions in messages refer to that form"),
            );
        }
        self.diags.extend(errors);
        Some(id)
    }

    /// Records the top-level nodes of `file` in order, following includes.
    fn walk(&mut self, file: FileId, stack: &mut Vec<(PathBuf, Option<Span>)>) {
        let count = self.documents[file.0 as usize].items.len();
        for i in 0..count {
            let include = match &self.documents[file.0 as usize].items[i] {
                Item::Node(n) if !n.slashdash && n.name.value == "include" && !n.damaged => {
                    Some(include_target(n))
                }
                Item::Node(n) if !n.slashdash => None,
                _ => continue,
            };
            match include {
                None => self.order.push((file, i)),
                Some(Err(d)) => self.diags.push(*d),
                Some(Ok((rel, span))) => self.include(file, &rel, span, stack),
            }
        }
    }

    fn include(
        &mut self,
        from: FileId,
        rel: &str,
        span: Span,
        stack: &mut Vec<(PathBuf, Option<Span>)>,
    ) {
        let base = self
            .sources
            .file(from)
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = crate::files::normalize(&base.join(rel));
        let identity = self.files.identity(&path);
        if let Some(pos) = stack.iter().position(|(p, _)| *p == identity) {
            let mut chain: Vec<String> = stack[pos..]
                .iter()
                .map(|(p, _)| {
                    p.file_name().map_or_else(
                        || p.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    )
                })
                .collect();
            chain.push(
                path.file_name()
                    .map_or_else(|| rel.to_string(), |n| n.to_string_lossy().into_owned()),
            );
            let mut d = Diagnostic::error(span, format!("include cycle: {}", chain.join(" → ")))
                .label("this include closes the cycle")
                .hint("a file may not include itself, directly or through others");
            for (_, s) in stack[pos + 1..].iter() {
                if let Some(s) = s {
                    d = d.related(*s, "included here");
                }
            }
            self.diags.push(d);
            return;
        }
        if let Some((_, first)) = self.included.iter().find(|(p, _)| *p == identity) {
            let first = *first;
            self.diags.push(
                Diagnostic::error(span, format!("`{rel}` is included twice"))
                    .related(first, "first included here")
                    .hint("include each file once; its steps would be declared twice"),
            );
            return;
        }
        if stack.len() >= MAX_INCLUDE_DEPTH {
            self.diags.push(Diagnostic::error(
                span,
                format!("includes nested too deeply (more than {MAX_INCLUDE_DEPTH})"),
            ));
            return;
        }
        self.included.push((identity.clone(), span));
        if let Some(id) = self.read(&path, Some(span)) {
            stack.push((identity, Some(span)));
            self.walk(id, stack);
            stack.pop();
        }
    }
}

/// The path an `include` node names, or why it is malformed.
fn include_target(n: &Node) -> Result<(String, Span), Box<Diagnostic>> {
    let usage = "usage: include \"other.kdl\"";
    if let Some((k, _)) = n.props().next() {
        return Err(Box::new(
            Diagnostic::error(k.span, format!("`include` takes no property `{}`", k.value))
                .hint(usage),
        ));
    }
    if let Some(b) = n.children() {
        return Err(Box::new(
            Diagnostic::error(b.span, "`include` takes no block").hint(usage),
        ));
    }
    let mut args = n.args();
    let Some(first) = args.next() else {
        return Err(Box::new(
            Diagnostic::error(n.name.span, "`include` needs a file name").hint(usage),
        ));
    };
    if let Some(extra) = args.next() {
        return Err(Box::new(
            Diagnostic::error(extra.full_span(), "`include` takes one file name")
                .hint("write one `include` line per file"),
        ));
    }
    match first.as_str() {
        Some(s) if !s.trim().is_empty() => Ok((s.to_string(), first.span)),
        Some(_) => Err(Box::new(
            Diagnostic::error(first.span, "the include path is empty").hint(usage),
        )),
        None => Err(Box::new(
            Diagnostic::error(
                first.span,
                format!(
                    "the include path must be a string, not {}",
                    first.lit.kind_name()
                ),
            )
            .hint(usage),
        )),
    }
}
