//! `sandbox` (at the top of a pipeline or in a step) and `network` (in a
//! step): what a step's sandbox allows besides its own folder.
//!
//! ```kdl
//! sandbox { read "/cvmfs" }          // every step reads /cvmfs where it is
//! step fetch {
//!     network #true                  // may reach the network: impure
//!     sandbox #false                 // or: runs unsandboxed
//!     sandbox { read "/scratch/refs" }
//! }
//! ```

use super::{Lower, declared_twice};
use crate::diagnostic::Diagnostic;
use crate::model::{ReadFolder, SandboxDecl};
use crate::source::Span;
use crate::syntax::ast::{Literal, Node, Value};
use std::path::Path;

const USAGE: &str = "sandbox #false  or  sandbox { read \"/absolute/folder\"… }";

impl Lower<'_> {
    /// A `sandbox` line, added to `decl` (`seen`: where an earlier one of the
    /// same place was).
    pub(super) fn sandbox(&mut self, node: &Node, decl: &mut SandboxDecl, seen: &mut Option<Span>) {
        if let Some(first) = *seen {
            self.push(
                Diagnostic::error(node.name.span, "two `sandbox` lines in one place")
                    .related(first, "first here")
                    .hint("say it once: sandbox #true { read \"…\" }"),
            );
            return;
        }
        *seen = Some(node.name.span);
        self.no_props(node, USAGE);
        let mut args = node.args();
        if let Some(v) = args.next() {
            decl.enabled = self.flag(v, "`sandbox`", "sandbox #false");
        }
        if let Some(extra) = args.next() {
            self.push(
                Diagnostic::error(extra.full_span(), "unexpected argument to `sandbox`")
                    .hint(format!("usage: {USAGE}")),
            );
        }
        let Some(block) = node.children() else {
            if decl.enabled.is_none() && node.args().next().is_none() {
                self.push(
                    Diagnostic::error(node.span, "`sandbox` says nothing")
                        .hint(format!("usage: {USAGE}")),
                );
            }
            return;
        };
        for child in node.child_nodes() {
            if child.damaged {
                continue;
            }
            if child.name.value == "write" {
                self.push(
                    Diagnostic::error(child.name.span, "a sandbox has no `write`").hint(
                        "a step writes only in its own folder; what it makes there as \
                             declared outputs is kept",
                    ),
                );
                continue;
            }
            if child.name.value != "read" {
                self.unknown_node(child, &child.name.value, &["read"], "in `sandbox`");
                continue;
            }
            self.read_folders(child, &mut decl.read);
        }
        if decl.enabled == Some(false) && !decl.read.is_empty() {
            self.push(
                Diagnostic::warning(block.span, "an unsandboxed step reads anything")
                    .hint("drop `read`, or drop `#false` to keep the sandbox"),
            );
        }
    }

    /// `read "/a" "/b"…`: absolute, plain folders, each once.
    fn read_folders(&mut self, node: &Node, read: &mut Vec<ReadFolder>) {
        let usage = "read \"/absolute/folder\"…";
        self.no_props(node, usage);
        self.no_children(node, usage);
        if node.args().next().is_none() {
            self.push(
                Diagnostic::error(node.span, "`read` names no folder")
                    .hint(format!("usage: {usage}")),
            );
        }
        for v in node.args() {
            if !self.no_annotation(v, "a folder to read") {
                continue;
            }
            let Some(path) = self.string(v, "a folder to read") else {
                continue;
            };
            let problem = if !path.starts_with('/') {
                Some((
                    format!("`{path}` is not an absolute path"),
                    "files of the pipeline's folder are inputs (in x=(file)\"…\"); \
                     `read` is for folders outside it, such as \"/cvmfs\"",
                ))
            } else if path.trim_end_matches('/').is_empty() {
                Some((
                    "a sandbox that reads `/` reads everything".to_string(),
                    "name the folders the step reads, or write `sandbox #false`",
                ))
            } else if path.split('/').any(|c| c == "." || c == "..") {
                Some((
                    format!("`{path}` has `.` or `..` in it"),
                    "write the folder's plain absolute path",
                ))
            } else {
                None
            };
            if let Some((message, hint)) = problem {
                self.push(Diagnostic::error(v.span, message).hint(hint));
                continue;
            }
            // One spelling per folder (`/a//b/` is `/a/b`): the key holds it.
            let mut plain = compact_str::CompactString::default();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                plain.push('/');
                plain.push_str(part);
            }
            let path = plain;
            if let Some(first) = read.iter().find(|r| r.path == path) {
                let first = first.span;
                self.push(declared_twice("folder", &path, v.span, first));
                continue;
            }
            read.push(ReadFolder { path, span: v.span });
        }
    }

    /// A step's `network` line.
    pub(super) fn network(&mut self, node: &Node, network: &mut bool) {
        let usage = "network #true";
        self.no_props(node, usage);
        self.no_children(node, usage);
        if let Some([v]) = self.args::<1>(node, "network ALLOWED") {
            *network = self.flag(v, "`network`", usage).unwrap_or(false);
        }
    }

    /// `#true` or `#false`.
    fn flag(&mut self, v: &Value, what: &str, example: &str) -> Option<bool> {
        match v.lit {
            Literal::Bool(b) => Some(b),
            ref other => {
                self.push(
                    Diagnostic::error(
                        v.full_span(),
                        format!("{what} takes #true or #false, not {}", other.kind_name()),
                    )
                    .hint(format!("for example: {example}")),
                );
                None
            }
        }
    }

    /// Folders to read that hold the pipeline's folder (`root`, resolved), or
    /// lie in it, as written or where their links lead (the sandbox allows
    /// where a path leads): what a step reads there must be declared as
    /// inputs, so that their content is in the key.
    pub(super) fn reads_outside_workspace(&mut self, read: &[ReadFolder], root: &Path) {
        for r in read {
            let written = Path::new(r.path.as_str());
            let resolved = std::fs::canonicalize(written).ok();
            let leads = resolved.as_deref().filter(|&p| p != written);
            let found = [Some(written), leads]
                .into_iter()
                .flatten()
                .find_map(|folder| {
                    let what = match folder == written {
                        true => format!("`{}`", r.path),
                        false => format!("`{}` leads to `{}`, which", r.path, folder.display()),
                    };
                    if root.starts_with(folder) {
                        Some(format!("{what} holds the pipeline's folder"))
                    } else if folder.starts_with(root) {
                        Some(format!("{what} is in the pipeline's folder"))
                    } else {
                        None
                    }
                });
            let Some(message) = found else { continue };
            self.push(Diagnostic::error(r.span, message).hint(
                "declare the files a step reads there as inputs (in x=(file)\"…\" or \
                     (dir)\"…\"): their content then enters the key",
            ));
        }
    }
}
