//! Syntax tree → checked [`Workflow`]. Two passes: the first reads every
//! declaration (so that order in the file never matters), the second resolves
//! references and placeholders. Every problem is reported; a workflow is built
//! only when there is none.

use crate::checks;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::model::{
    Domain, EnvVar, FanOut, Input, InputId, InputRef, InputSource, Param, ParamId, ParamKind, Part,
    PathKind, Resources, SandboxDecl, Step, StepId, StepInput, StepOutput, Template, Tool,
    VarField, Workflow,
};
use crate::names::{NAME_RULE, did_you_mean, is_valid_name, list};
use crate::source::{FileId, SourceMap, Span};
use crate::syntax::ast::{Literal, Node, Str, Value};
use crate::template::{self, Piece};
use crate::units;

mod sandbox;
use compact_str::CompactString;
use rustc_hash::FxHashMap as HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::path::PathBuf;

const TOP_LEVEL: [&str; 8] = [
    "pipeline", "param", "input", "tool", "env", "sandbox", "include", "step",
];
const STEP_LEVEL: [&str; 11] = [
    "foreach",
    "in",
    "out",
    "log",
    "run",
    "resources",
    "retry",
    "env",
    "tool",
    "sandbox",
    "network",
];
const RESOURCES: [&str; 5] = ["cpus", "memory", "gpus", "time", "disk"];
const RESERVED_VARS: [&str; 5] = ["in", "out", "param", "cpus", "log"];

/// Reads every declaration of `nodes` (the top-level nodes of all files, in
/// order). What it keeps owns its parts, and each node is dropped once read: at
/// 100,000 steps the syntax trees would be the larger half of the peak memory.
pub(crate) fn declare(
    sources: &SourceMap,
    main: FileId,
    nodes: impl Iterator<Item = Node>,
    diags: &mut Diagnostics,
) -> Declared {
    let mut cx = Lower {
        sources,
        diags,
        params: Vec::new(),
        inputs: Vec::new(),
        param_names: HashMap::default(),
        input_names: HashMap::default(),
        step_names: HashMap::default(),
        used_params: Vec::new(),
        used_inputs: Vec::new(),
    };
    let mut name: Option<(String, Span)> = None;
    let mut tools = Vec::new();
    let mut env = Vec::new();
    let mut sandbox = SandboxDecl::default();
    let mut seen_sandbox = None;
    // Room for every node: growing a vector of large drafts by doubling would
    // leave up to half of it unused at the peak (100,000 steps: 20 MB).
    let mut drafts: Vec<StepDraft> = Vec::with_capacity(nodes.size_hint().1.unwrap_or(0));
    let mut any_damaged = false;
    let mut any_pipeline = false;
    for node in nodes {
        any_damaged |= node.damaged;
        any_pipeline |= node.name.value == "pipeline";
        // A node with a syntax error has had it reported; only a damaged step that
        // kept its name is worth keeping, so that references to it stay quiet.
        if node.damaged && (node.name.value != "step" || node.args().next().is_none()) {
            continue;
        }
        match node.name.value.as_str() {
            "pipeline" => cx.pipeline(&node, main, &mut name),
            "param" => cx.param(&node),
            "input" => cx.input(&node),
            "tool" => cx.tool(&node, &mut tools),
            "env" => cx.env(&node, &mut env),
            "sandbox" => cx.sandbox(&node, &mut sandbox, &mut seen_sandbox),
            "step" => {
                if let Some(d) = cx.step_draft(&node) {
                    drafts.push(d);
                }
            }
            other => cx.unknown_node(&node, other, &TOP_LEVEL, "at the top of a pipeline"),
        }
    }
    // A file with syntax errors may well have lost its `pipeline` line to them.
    if name.is_none() && !any_pipeline && !any_damaged {
        cx.diags.push(
            Diagnostic::error(Span::new(main, 0, 0), "the pipeline has no name")
                .hint("start the file with `pipeline \"my-analysis\"`"),
        );
    }
    drafts.shrink_to_fit();
    Declared {
        name,
        tools,
        env,
        sandbox,
        drafts,
        params: cx.params,
        inputs: cx.inputs,
        param_names: cx.param_names,
        input_names: cx.input_names,
    }
}

/// What [`declare`] read, owning its parts.
pub(crate) struct Declared {
    name: Option<(String, Span)>,
    tools: Vec<Tool>,
    env: Vec<EnvVar>,
    sandbox: SandboxDecl,
    drafts: Vec<StepDraft>,
    params: Vec<Param>,
    inputs: Vec<Input>,
    param_names: HashMap<CompactString, ParamId>,
    input_names: HashMap<CompactString, InputId>,
}

/// Resolves references and placeholders: the workflow, when nothing is wrong.
pub(crate) fn resolve(
    sources: &SourceMap,
    root: PathBuf,
    declared: Declared,
    diags: &mut Diagnostics,
) -> Option<Workflow> {
    let Declared {
        name,
        tools,
        env,
        sandbox,
        mut drafts,
        params,
        inputs,
        param_names,
        input_names,
    } = declared;
    let mut cx = Lower {
        sources,
        diags,
        params,
        inputs,
        param_names,
        input_names,
        step_names: HashMap::default(),
        used_params: Vec::new(),
        used_inputs: Vec::new(),
    };
    cx.used_params = vec![false; cx.params.len()];
    cx.used_inputs = vec![false; cx.inputs.len()];

    // Steps are numbered in declaration order; damaged ones keep their number so that
    // references to them are not reported as unknown.
    for (i, d) in drafts.iter().enumerate() {
        match cx.step_names.entry(d.name.value.clone()) {
            MapEntry::Occupied(first) => {
                let first_span = drafts[*first.get() as usize].name.span;
                cx.diags.push(
                    declared_twice("step", &d.name.value, d.name.span, first_span)
                        .hint("give each step its own name"),
                );
            }
            MapEntry::Vacant(v) => {
                v.insert(i as u32);
            }
        }
    }
    let mut steps: Vec<Option<Step>> = Vec::with_capacity(drafts.len());
    for i in 0..drafts.len() {
        steps.push(cx.resolve_step(&mut drafts, i));
        drafts[i].resolved();
    }
    for (i, used) in cx.used_params.iter().enumerate() {
        if !used {
            let p = &cx.params[i];
            cx.diags.push(
                Diagnostic::warning(p.span, format!("param `{}` is never used", p.name))
                    .hint(format!("use it as {{param.{}}}, or remove it", p.name)),
            );
        }
    }
    for (i, used) in cx.used_inputs.iter().enumerate() {
        if !used {
            let inp = &cx.inputs[i];
            cx.diags.push(
                Diagnostic::warning(inp.span, format!("input `{}` is never used", inp.name)).hint(
                    format!(
                        "reference it from a step, as `in x={}`, or remove it",
                        inp.name
                    ),
                ),
            );
        }
    }
    // What a sandbox reads must not hold the workspace, nor lie in it.
    let workspace = std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
    cx.reads_outside_workspace(&sandbox.read, &workspace);
    for s in steps.iter().flatten() {
        if let Some(own) = &s.sandbox {
            cx.reads_outside_workspace(&own.read, &workspace);
        }
    }
    let damaged = drafts.iter().any(|d| d.damaged);
    let mut edges: Vec<checks::Edge> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
        .flat_map(|(i, s)| checks::dep_edges(StepId::from_index(i), s))
        .collect();
    let names: Vec<&str> = drafts.iter().map(|d| d.name.value.as_str()).collect();
    let name_spans: Vec<Span> = drafts.iter().map(|d| d.name.span).collect();
    let topo = checks::topo_order(&mut edges, &names, &name_spans, cx.diags);
    if cx.diags.has_errors() || damaged {
        return None;
    }
    let steps: Vec<Step> = steps.into_iter().collect::<Option<_>>()?;
    let (name, _) = name?;
    Some(Workflow {
        name,
        root,
        params: cx.params,
        inputs: cx.inputs,
        tools,
        env,
        sandbox,
        steps,
        topo_order: topo?,
    })
}

struct Lower<'a> {
    sources: &'a SourceMap,
    diags: &'a mut Diagnostics,
    params: Vec<Param>,
    inputs: Vec<Input>,
    param_names: HashMap<CompactString, ParamId>,
    input_names: HashMap<CompactString, InputId>,
    step_names: HashMap<CompactString, u32>,
    used_params: Vec<bool>,
    used_inputs: Vec<bool>,
}

/// A step read but not yet resolved.
struct StepDraft {
    /// The whole `step` node.
    span: Span,
    name: Str,
    damaged: bool,
    foreach: Vec<(Str, DomainDraft)>,
    ins: Vec<(Str, Value)>,
    outs: Vec<(Str, Value, PathKind)>,
    /// `ins` and `outs` by name, once they are many.
    in_names: ByName,
    out_names: ByName,
    log: Option<Value>,
    run: Option<Value>,
    resources: Resources,
    retry: u32,
    env: Vec<EnvVar>,
    tools: Vec<Tool>,
    sandbox: Option<Box<SandboxDecl>>,
    network: bool,
}

/// Finds a step's inputs or outputs by name: by a scan while they are few, by a
/// map from [`ByName::FROM`] on (a gather may declare thousands, each of them
/// looked up for the check of names and for each placeholder).
#[derive(Debug, Default)]
#[expect(
    clippy::box_collection,
    reason = "8 bytes in each of 100,000 drafts where a map takes 48; few steps need one"
)]
struct ByName(Option<Box<std::collections::HashMap<String, usize>>>);

impl ByName {
    const FROM: usize = 16;

    /// `names` (all of them, in order) has just grown by one.
    fn added<'s>(
        &mut self,
        mut names: impl DoubleEndedIterator<Item = &'s str> + ExactSizeIterator,
    ) {
        let len = names.len();
        if len == Self::FROM {
            let all = names.enumerate().map(|(i, n)| (n.to_string(), i)).collect();
            self.0 = Some(Box::new(all));
        } else if let (Some(map), Some(last)) = (self.0.as_mut(), names.next_back()) {
            map.entry(last.to_string()).or_insert(len - 1);
        }
    }

    /// The position of `name` in `names` (all of them, in order).
    fn find<'s>(&self, mut names: impl Iterator<Item = &'s str>, name: &str) -> Option<usize> {
        match &self.0 {
            None => names.position(|n| n == name),
            Some(map) => map.get(name).copied(),
        }
    }
}

impl StepDraft {
    /// Its step is built: drop what only that needed (later steps look at its
    /// name, outputs and fan-out only).
    fn resolved(&mut self) {
        self.ins = Vec::new();
        self.in_names = ByName::default();
        self.log = None;
        self.run = None;
    }
}

enum DomainDraft {
    Values(Vec<String>),
    From(Value),
}

impl<'a> Lower<'a> {
    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// "did you mean" for the first hundred errors; past that, finding the closest
    /// of many names for each of many errors would cost more than it helps.
    fn suggest<'c>(
        &self,
        name: &str,
        candidates: impl IntoIterator<Item = &'c str>,
    ) -> Option<String> {
        if self.diags.error_count() > 100 {
            return None;
        }
        did_you_mean(name, candidates)
    }

    // ---- shapes shared by all nodes ----------------------------------------------------

    fn unknown_node(&mut self, node: &Node, name: &str, known: &[&str], place: &str) {
        let mut d = Diagnostic::error(node.name.span, format!("unknown node `{name}` {place}"));
        let hint = if let Some(h) = self.suggest(name, known.iter().copied()) {
            h
        } else if STEP_LEVEL.contains(&name) && known == TOP_LEVEL {
            format!("`{name}` belongs inside a `step name {{ … }}` block")
        } else if TOP_LEVEL.contains(&name) && known == STEP_LEVEL {
            format!("`{name}` belongs at the top of the pipeline, not inside a step")
        } else {
            format!("expected one of {}", list(known))
        };
        d = d.hint(hint);
        self.push(d);
    }

    /// Exactly the `N` positional arguments named in `usage` (`NAME VALUE`…).
    fn args<'n, const N: usize>(&mut self, node: &'n Node, usage: &str) -> Option<[&'n Value; N]> {
        let mut found: [Option<&'n Value>; N] = [None; N];
        let mut count = 0;
        let mut extra = None;
        for v in node.args() {
            if count < N {
                found[count] = Some(v);
                count += 1;
            } else {
                extra = Some(v);
                break;
            }
        }
        let what = &node.name.value;
        if count < N {
            let missing: Vec<&str> = usage
                .split_whitespace()
                .skip(1 + count)
                .take(N - count)
                .collect();
            self.push(
                Diagnostic::error(
                    node.span,
                    format!("`{what}` is missing its {}", missing.join(" ")),
                )
                .hint(format!("usage: {usage}")),
            );
            return None;
        }
        if let Some(extra) = extra {
            self.push(
                Diagnostic::error(
                    extra.full_span(),
                    format!("unexpected argument to `{what}`"),
                )
                .hint(format!("usage: {usage}")),
            );
            return None;
        }
        let mut out = [found[0]?; N];
        for (o, f) in out.iter_mut().zip(found) {
            *o = f?;
        }
        Some(out)
    }

    fn no_props(&mut self, node: &Node, usage: &str) -> bool {
        let mut ok = true;
        for (k, _) in node.props() {
            self.push(
                Diagnostic::error(
                    k.span,
                    format!("unknown property `{}` of `{}`", k.value, node.name.value),
                )
                .hint(format!("usage: {usage}")),
            );
            ok = false;
        }
        ok
    }

    fn no_children(&mut self, node: &Node, usage: &str) -> bool {
        match node.children() {
            Some(b) => {
                self.push(
                    Diagnostic::error(b.span, format!("`{}` takes no block", node.name.value))
                        .hint(format!("usage: {usage}")),
                );
                false
            }
            None => true,
        }
    }

    fn no_annotation(&mut self, v: &Value, what: &str) -> bool {
        match &v.ty {
            Some(t) => {
                self.push(
                    Diagnostic::error(t.span, format!("{what} takes no type annotation"))
                        .hint("`(file)` and `(dir)` mark literal paths in `in`, `out` and `input`"),
                );
                false
            }
            None => true,
        }
    }

    /// `NODE NAME [VALUE…] [PROP=VALUE]`: the checked name, the other arguments and
    /// the one property the node allows; `None` after reporting what is wrong.
    fn named_node<'n>(
        &mut self,
        node: &'n Node,
        usage: &str,
        what: &str,
        prop: &str,
    ) -> Option<(Str, Vec<&'n Value>, Option<&'n Value>)> {
        self.no_children(node, usage);
        let mut args = node.args();
        let Some(first) = args.next() else {
            self.push(
                Diagnostic::error(node.span, format!("`{}` needs a {what}", node.name.value))
                    .hint(format!("usage: {usage}")),
            );
            return None;
        };
        let name = self.name(first, what)?;
        let mut value = None;
        for (k, v) in node.props() {
            if k.value == prop && value.is_none() {
                value = Some(v);
            } else {
                let hint = self
                    .suggest(&k.value, [prop])
                    .unwrap_or_else(|| format!("usage: {usage}"));
                self.push(
                    Diagnostic::error(
                        k.span,
                        format!("unknown property `{}` of `{}`", k.value, node.name.value),
                    )
                    .hint(hint),
                );
                return None;
            }
        }
        Some((name, args.collect(), value))
    }

    fn string(&mut self, v: &Value, what: impl std::fmt::Display) -> Option<CompactString> {
        match &v.lit {
            Literal::String(s) => Some(s.clone()),
            other => {
                let text = self.sources.slice(v.span).to_string();
                self.push(
                    Diagnostic::error(
                        v.span,
                        format!("{what} must be a string, not {}", other.kind_name()),
                    )
                    .hint(format!("quote it: \"{}\"", text.trim_start_matches('#'))),
                );
                None
            }
        }
    }

    /// A name for something placeholders and references can name.
    fn name(&mut self, v: &Value, what: &str) -> Option<Str> {
        let s = self.string(v, what)?;
        if !is_valid_name(&s) {
            self.push(
                Diagnostic::error(v.span, format!("`{s}` is not a valid {what}")).hint(NAME_RULE),
            );
            return None;
        }
        Some(Str {
            value: s,
            span: v.span,
        })
    }

    /// A scalar written as text: strings as they are, numbers as written.
    fn scalar_text(&mut self, v: &Value, what: &str) -> Option<(String, ParamKind)> {
        let raw = || self.sources.slice(v.span).to_string();
        match &v.lit {
            Literal::String(s) => Some((s.to_string(), ParamKind::String)),
            Literal::Integer(_) => Some((raw(), ParamKind::Integer)),
            Literal::Float(f) if f.is_finite() => Some((raw(), ParamKind::Float)),
            Literal::Bool(b) => Some((b.to_string(), ParamKind::Bool)),
            Literal::Float(_) | Literal::Null => {
                let text = raw();
                self.push(
                    Diagnostic::error(v.span, format!("{what} cannot be `{text}`"))
                        .hint("use a string, a number or #true / #false"),
                );
                None
            }
        }
    }

    /// A non-negative integer that fits `u32`.
    fn count(&mut self, v: &Value, what: &str, min: i64) -> Option<u32> {
        match v.lit {
            Literal::Integer(n) if n >= min && n <= i64::from(u32::MAX) => u32::try_from(n).ok(),
            Literal::Integer(n) if n < min => {
                let need = if min == 0 {
                    "zero or more"
                } else {
                    "at least 1"
                };
                self.push(Diagnostic::error(
                    v.span,
                    format!("{what} must be {need}, not {n}"),
                ));
                None
            }
            Literal::Integer(_) => {
                self.push(Diagnostic::error(v.span, format!("{what} is too large")));
                None
            }
            ref other => {
                self.push(
                    Diagnostic::error(
                        v.span,
                        format!("{what} must be a whole number, not {}", other.kind_name()),
                    )
                    .hint(format!(
                        "for example: {} 2",
                        what.split_whitespace().next().unwrap_or(what)
                    )),
                );
                None
            }
        }
    }

    // ---- top level -----------------------------------------------------------------------

    fn pipeline(&mut self, node: &Node, main: FileId, name: &mut Option<(String, Span)>) {
        let usage = "pipeline \"NAME\"";
        if node.name.span.file != main {
            self.push(
                Diagnostic::error(
                    node.name.span,
                    "only the main pipeline file may name the pipeline",
                )
                .hint("remove `pipeline` from the included file"),
            );
            return;
        }
        if let Some((_, first)) = name {
            let first = *first;
            self.push(
                Diagnostic::error(node.name.span, "the pipeline is named twice")
                    .related(first, "first named here")
                    .hint("keep one `pipeline` line"),
            );
            return;
        }
        self.no_props(node, usage);
        self.no_children(node, usage);
        let Some(args) = self.args::<1>(node, "pipeline NAME") else {
            return;
        };
        if let Some(s) = self.string(args[0], "the pipeline name") {
            if s.trim().is_empty() {
                self.push(
                    Diagnostic::error(args[0].span, "the pipeline name is empty")
                        .hint(format!("usage: {usage}")),
                );
            } else {
                *name = Some((s.to_string(), node.name.span));
            }
        }
    }

    fn param(&mut self, node: &Node) {
        let usage = "param NAME VALUE";
        self.no_props(node, usage);
        self.no_children(node, usage);
        let first = node.args().next();
        let args = self.args::<2>(node, usage);
        let Some(name) = first.and_then(|f| self.name(f, "param name")) else {
            return;
        };
        // A wrong value is reported; the name is still declared, so that its uses
        // are not reported too.
        let (value, kind) = args
            .and_then(|a| {
                self.no_annotation(a[1], "a param value");
                self.scalar_text(a[1], "a param value")
            })
            .unwrap_or((String::new(), ParamKind::String));
        match self.param_names.entry(name.value.clone()) {
            MapEntry::Occupied(first) => {
                let first = self.params[first.get().index()].span;
                self.diags.push(
                    declared_twice("param", &name.value, name.span, first)
                        .hint("`--param NAME=VALUE` overrides a value at run time"),
                );
            }
            MapEntry::Vacant(v) => {
                v.insert(ParamId::from_index(self.params.len()));
                self.params.push(Param {
                    name: name.value.clone(),
                    value,
                    kind,
                    span: name.span,
                });
            }
        }
    }

    fn input(&mut self, node: &Node) {
        let usage = "input NAME \"path\"  or  input NAME glob=\"pattern\"";
        let Some((name, args, glob)) = self.named_node(node, usage, "input name", "glob") else {
            return;
        };
        if let Some(first) = node.args().next() {
            self.no_annotation(first, "an input name");
        }
        // A wrong source is reported; the name is still declared, so that its uses
        // are not reported too.
        let source = self
            .input_source(node, &name, &args, glob, usage)
            .unwrap_or(InputSource::Path {
                path: String::new(),
                kind: PathKind::Any,
            });
        match self.input_names.entry(name.value.clone()) {
            MapEntry::Occupied(first) => {
                let first = self.inputs[first.get().index()].span;
                self.diags
                    .push(declared_twice("input", &name.value, name.span, first));
            }
            MapEntry::Vacant(v) => {
                v.insert(InputId::from_index(self.inputs.len()));
                self.inputs.push(Input {
                    name: name.value.clone(),
                    source,
                    span: name.span,
                });
            }
        }
    }

    /// Where an input's content comes from; `None` after reporting why it is wrong.
    fn input_source(
        &mut self,
        node: &Node,
        name: &Str,
        args: &[&Value],
        glob: Option<&Value>,
        usage: &str,
    ) -> Option<InputSource> {
        Some(match (args.first().copied(), glob, args.get(1)) {
            (_, _, Some(extra)) => {
                self.push(
                    Diagnostic::error(extra.full_span(), "unexpected argument to `input`")
                        .hint(format!("usage: {usage}")),
                );
                return None;
            }
            (Some(path), None, None) => {
                let kind = self.path_kind(path)?;
                let p = self.string(path, "an input path")?;
                if p.trim().is_empty() {
                    self.push(Diagnostic::error(path.span, "the input path is empty"));
                    return None;
                }
                if template::scan(&p)
                    .iter()
                    .any(|piece| matches!(piece, Piece::Placeholder { .. }))
                {
                    self.push(
                        Diagnostic::error(path.span, "placeholders are not expanded in `input` paths")
                            .hint("an input names files on disk as they are; use a literal (file)\"…\" in the step for per-instance files"),
                    );
                    return None;
                }
                let kind = if kind == PathKind::Any && p.ends_with('/') {
                    PathKind::Dir
                } else {
                    kind
                };
                InputSource::Path {
                    path: p.to_string(),
                    kind,
                }
            }
            (None, Some(g), None) => {
                self.no_annotation(g, "a glob");
                let p = self.string(g, "a glob pattern")?;
                if let Err(e) = checks::compile_glob(&p) {
                    self.push(
                        Diagnostic::error(g.span, format!("invalid glob `{p}`: {e}"))
                            .hint("globs use *, **, ?, [abc] and {a,b}"),
                    );
                    return None;
                }
                InputSource::Glob {
                    pattern: p.to_string(),
                }
            }
            (Some(path), Some(g), None) => {
                self.push(
                    Diagnostic::error(
                        path.span.to(g.span),
                        "an input has a path or a glob, not both",
                    )
                    .hint(format!("usage: {usage}")),
                );
                return None;
            }
            (None, None, None) => {
                self.push(
                    Diagnostic::error(node.span, format!("input `{}` has no path", name.value))
                        .hint(format!("usage: {usage}")),
                );
                return None;
            }
        })
    }

    /// `(file)`, `(dir)` or nothing; other annotations are errors.
    fn path_kind(&mut self, v: &Value) -> Option<PathKind> {
        match v.ty.as_ref().map(|t| t.value.as_str()) {
            None => Some(PathKind::Any),
            Some("file") => Some(PathKind::File),
            Some("dir") => Some(PathKind::Dir),
            Some(other) => {
                let hint = self
                    .suggest(other, ["file", "dir"])
                    .unwrap_or_else(|| "the annotations are (file) and (dir)".to_string());
                let span = v.ty.as_ref().map_or(v.span, |t| t.span);
                self.push(
                    Diagnostic::error(span, format!("unknown annotation `({other})`")).hint(hint),
                );
                None
            }
        }
    }

    fn tool(&mut self, node: &Node, tools: &mut Vec<Tool>) {
        let usage = "tool NAME [NAME…]";
        self.no_props(node, usage);
        self.no_children(node, usage);
        let args: Vec<&Value> = node.args().collect();
        if args.is_empty() {
            self.push(
                Diagnostic::error(node.span, "`tool` needs a command name")
                    .hint(format!("usage: {usage}")),
            );
        }
        for v in args {
            let Some(name) = self.string(v, "a tool name") else {
                continue;
            };
            if name.trim().is_empty()
                || name.contains(char::is_whitespace)
                || (name.contains('/') && !name.starts_with('/'))
            {
                self.push(
                    Diagnostic::error(v.span, format!("`{name}` is not a tool name"))
                        .hint("name a command found on PATH (`python3`) or give an absolute path"),
                );
                continue;
            }
            if let Some(first) = tools.iter().find(|t| t.name == name) {
                let first = first.span;
                self.push(declared_twice("tool", &name, v.span, first));
                continue;
            }
            tools.push(Tool { name, span: v.span });
        }
    }

    fn env(&mut self, node: &Node, env: &mut Vec<EnvVar>) {
        let usage = "env NAME \"value\"";
        self.no_props(node, usage);
        self.no_children(node, usage);
        let Some(args) = self.args::<2>(node, usage) else {
            return;
        };
        let Some(name) = self.string(args[0], "an environment variable name") else {
            return;
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            self.push(
                Diagnostic::error(
                    args[0].span,
                    format!("`{name}` is not an environment variable name"),
                )
                .hint("use letters, digits and `_`, not starting with a digit"),
            );
            return;
        }
        if matches!(name.as_str(), "HOME" | "TMPDIR") {
            self.push(
                Diagnostic::error(args[0].span, format!("`{name}` is set by mustbuild"))
                    .hint("each step gets its own HOME and TMPDIR inside its scratch folder"),
            );
            return;
        }
        let Some((value, _)) = self.scalar_text(args[1], "an environment value") else {
            return;
        };
        if let Some(first) = env.iter().find(|e| e.name == name) {
            let first = first.span;
            self.push(
                Diagnostic::error(args[0].span, format!("`{name}` is set twice"))
                    .related(first, "first set here"),
            );
            return;
        }
        env.push(EnvVar {
            name,
            value,
            span: args[0].span,
        });
    }

    // ---- steps: first pass ---------------------------------------------------------------

    fn step_draft(&mut self, node: &Node) -> Option<StepDraft> {
        let usage = "step NAME { … }";
        self.no_props(node, usage);
        let mut args = node.args();
        let Some(first) = args.next() else {
            self.push(
                Diagnostic::error(node.name.span, "a step needs a name")
                    .hint(format!("usage: {usage}")),
            );
            return None;
        };
        let name = self.name(first, "step name")?;
        if let Some(extra) = args.next() {
            self.push(
                Diagnostic::error(
                    extra.full_span(),
                    format!("unexpected argument to step `{}`", name.value),
                )
                .hint("a step's parts go inside its `{ … }` block"),
            );
        }
        let mut d = StepDraft {
            span: node.span,
            name,
            damaged: node.damaged,
            foreach: Vec::new(),
            ins: Vec::new(),
            outs: Vec::new(),
            in_names: ByName::default(),
            out_names: ByName::default(),
            log: None,
            run: None,
            resources: Resources::default(),
            retry: 0,
            env: Vec::new(),
            tools: Vec::new(),
            sandbox: None,
            network: false,
        };
        if node.children().is_none() && !node.damaged {
            self.push(
                Diagnostic::error(node.span, format!("step `{}` has no block", d.name.value))
                    .hint("add its parts: step name { in …; out …; run \"…\" }"),
            );
            return Some(d);
        }
        let mut seen_resources = None;
        let mut seen_retry = None;
        let mut seen_log: Option<Span> = None;
        let mut seen_run: Option<Span> = None;
        let (mut seen_sandbox, mut seen_network) = (None, None);
        for child in node.child_nodes() {
            d.damaged |= child.damaged;
            if child.damaged {
                continue;
            }
            let once = |this: &mut Self, seen: &mut Option<Span>| -> bool {
                if let Some(first) = *seen {
                    this.push(
                        Diagnostic::error(
                            child.name.span,
                            format!(
                                "step `{}` has two `{}` lines",
                                d.name.value, child.name.value
                            ),
                        )
                        .related(first, "first here")
                        .hint("keep one"),
                    );
                    return false;
                }
                *seen = Some(child.name.span);
                true
            };
            match child.name.value.as_str() {
                "foreach" => self.foreach(child, &mut d),
                "in" => self.props_node(
                    child,
                    "in NAME=REFERENCE [NAME=REFERENCE…]",
                    &mut |this, k, v| {
                        let names = d.ins.iter().map(|(n, _)| n.value.as_str());
                        let first = d.in_names.find(names, &k.value).map(|i| d.ins[i].0.span);
                        if this.unique(first, k, "input", &d.name.value) {
                            d.ins.push((k.clone(), v.clone()));
                            d.in_names
                                .added(d.ins.iter().map(|(n, _)| n.value.as_str()));
                        }
                    },
                ),
                "out" => self.props_node(
                    child,
                    "out NAME=\"path\" [NAME=(dir)\"path/\"…]",
                    &mut |this, k, v| {
                        // A bad annotation is reported; the output still exists for the
                        // rest of the step, so that its uses are not reported too.
                        let kind = this.path_kind(v).unwrap_or(PathKind::File);
                        let names = d.outs.iter().map(|(n, _, _)| n.value.as_str());
                        let first = d.out_names.find(names, &k.value).map(|i| d.outs[i].0.span);
                        if this.unique(first, k, "output", &d.name.value) {
                            let slash = v.as_str().is_some_and(|s| s.ends_with('/'));
                            if kind == PathKind::File && slash {
                                this.push(
                                    Diagnostic::error(
                                        v.full_span(),
                                        "a `(file)` output cannot end with `/`",
                                    )
                                    .hint("write (dir)\"path/\" for a folder, or drop the `/`"),
                                );
                            }
                            let kind = match kind {
                                PathKind::Any if slash => PathKind::Dir,
                                PathKind::Any => PathKind::File,
                                k => k,
                            };
                            d.outs.push((k.clone(), v.clone(), kind));
                            d.out_names
                                .added(d.outs.iter().map(|(n, _, _)| n.value.as_str()));
                        }
                    },
                ),
                "log" => {
                    if once(self, &mut seen_log) {
                        self.no_props(child, "log \"path\"");
                        self.no_children(child, "log \"path\"");
                        if let Some(args) = self.args::<1>(child, "log PATH") {
                            d.log = Some(args[0].clone());
                        }
                    }
                }
                "run" => {
                    if once(self, &mut seen_run) {
                        let usage = "run \"command\"";
                        self.no_props(child, usage);
                        self.no_children(child, usage);
                        if let Some(args) = self.args::<1>(child, "run COMMAND") {
                            d.run = Some(args[0].clone());
                        }
                    }
                }
                "resources" => {
                    if once(self, &mut seen_resources) {
                        self.resources(child, &mut d.resources);
                    }
                }
                "retry" => {
                    if once(self, &mut seen_retry) {
                        let usage = "retry COUNT";
                        self.no_props(child, usage);
                        self.no_children(child, usage);
                        if let Some(args) = self.args::<1>(child, usage)
                            && let Some(n) = self.count(args[0], "retry count", 0)
                        {
                            if n > 100 {
                                self.push(
                                    Diagnostic::error(
                                        args[0].span,
                                        format!("retry {n} is more than 100"),
                                    )
                                    .hint(
                                        "a step that fails that often needs fixing, not retrying",
                                    ),
                                );
                            }
                            d.retry = n;
                        }
                    }
                }
                "env" => self.env(child, &mut d.env),
                "tool" => self.tool(child, &mut d.tools),
                "sandbox" => {
                    let decl = d.sandbox.get_or_insert_default();
                    self.sandbox(child, decl, &mut seen_sandbox);
                }
                "network" => {
                    if once(self, &mut seen_network) {
                        self.network(child, &mut d.network);
                    }
                }
                other => self.unknown_node(
                    child,
                    other,
                    &STEP_LEVEL,
                    &format!("in step `{}`", d.name.value),
                ),
            }
        }
        if seen_run.is_none() && !d.damaged {
            self.push(
                Diagnostic::error(d.name.span, format!("step `{}` has no `run`", d.name.value))
                    .hint("add the command it runs: run \"…\""),
            );
        }
        // Kept until every step is resolved: without the room left by growing.
        d.ins.shrink_to_fit();
        d.outs.shrink_to_fit();
        Some(d)
    }

    /// Whether `k` is a new name (`first`: where it was declared before).
    fn unique(&mut self, first: Option<Span>, k: &Str, what: &str, step: &str) -> bool {
        match first {
            Some(first) => {
                self.push(
                    Diagnostic::error(
                        k.span,
                        format!("step `{step}` has two {what}s named `{}`", k.value),
                    )
                    .related(first, "first declared here"),
                );
                false
            }
            None => true,
        }
    }

    /// A node of `NAME=VALUE` properties (`in`, `out`).
    fn props_node<'n>(
        &mut self,
        node: &'n Node,
        usage: &str,
        each: &mut dyn FnMut(&mut Self, &Str, &'n Value),
    ) {
        self.no_children(node, usage);
        let mut any = false;
        for e in node.entries.iter().filter(|e| !e.slashdash) {
            match &e.key {
                Some(k) => {
                    any = true;
                    if !is_valid_name(&k.value) {
                        self.push(
                            Diagnostic::error(k.span, format!("`{}` is not a valid name", k.value))
                                .hint(NAME_RULE),
                        );
                        continue;
                    }
                    each(self, k, &e.value);
                }
                None => {
                    let shown = self.sources.slice(e.value.full_span()).to_string();
                    self.push(
                        Diagnostic::error(
                            e.value.full_span(),
                            format!("`{}` needs a name for `{shown}`", node.name.value),
                        )
                        .hint(format!(
                            "usage: {usage}; for example {} data={shown}",
                            node.name.value
                        )),
                    );
                    any = true;
                }
            }
        }
        if !any {
            self.push(
                Diagnostic::error(node.span, format!("`{}` declares nothing", node.name.value))
                    .hint(format!("usage: {usage}")),
            );
        }
    }

    fn foreach(&mut self, node: &Node, d: &mut StepDraft) {
        let usage = "foreach VAR \"value\"…  or  foreach VAR from=GLOB_INPUT";
        let Some((var, values, from)) =
            self.named_node(node, usage, "fan-out variable name", "from")
        else {
            return;
        };
        if RESERVED_VARS.contains(&var.value.as_str()) {
            self.push(
                Diagnostic::error(
                    var.span,
                    format!("`{}` cannot name a fan-out variable", var.value),
                )
                .hint(format!("{} are placeholders already", list(&RESERVED_VARS))),
            );
            return;
        }
        if let Some((first, _)) = d.foreach.iter().find(|(v, _)| v.value == var.value) {
            let first = first.span;
            self.push(declared_twice(
                "fan-out variable",
                &var.value,
                var.span,
                first,
            ));
            return;
        }
        let domain = match from {
            Some(f) => {
                if let Some(v) = values.first() {
                    self.push(
                        Diagnostic::error(
                            v.full_span(),
                            "`foreach` takes values or `from=`, not both",
                        )
                        .hint(format!("usage: {usage}")),
                    );
                    return;
                }
                DomainDraft::From(f.clone())
            }
            None => {
                if values.is_empty() {
                    self.push(
                        Diagnostic::error(node.span, format!("`foreach {}` has nothing to range over", var.value))
                            .label("an empty list makes no derivation")
                            .hint(format!("list values (foreach {} \"a\" \"b\") or a glob input (foreach {} from=INPUT)", var.value, var.value)),
                    );
                    return;
                }
                let mut out: Vec<String> = Vec::with_capacity(values.len());
                let mut seen: std::collections::HashSet<String> =
                    std::collections::HashSet::with_capacity(values.len());
                for v in values {
                    let Some((text, _)) = self.scalar_text(v, "a fan-out value") else {
                        continue;
                    };
                    if !seen.insert(text.clone()) {
                        self.push(
                            Diagnostic::error(v.span, format!("value `{text}` is listed twice"))
                                .hint("each value makes one derivation; list it once"),
                        );
                        continue;
                    }
                    if text.is_empty() {
                        self.push(Diagnostic::error(v.span, "a fan-out value is empty"));
                        continue;
                    }
                    out.push(text);
                }
                DomainDraft::Values(out)
            }
        };
        d.foreach.push((var, domain));
    }

    fn resources(&mut self, node: &Node, r: &mut Resources) {
        let usage = "resources cpus=4 memory=\"8GiB\" gpus=1 time=\"2h\" disk=\"20GiB\"";
        self.no_children(node, usage);
        for v in node.args() {
            self.push(
                Diagnostic::error(v.full_span(), "`resources` takes properties, not arguments")
                    .hint(format!("usage: {usage}")),
            );
        }
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in node.props() {
            if let Some(dup) = seen.iter().find(|s| **s == k.value) {
                self.push(Diagnostic::error(k.span, format!("`{dup}` is given twice")));
                continue;
            }
            seen.push(&k.value);
            self.no_annotation(v, "a resource");
            match k.value.as_str() {
                "cpus" => {
                    if let Some(n) = self.count(v, "cpus", 1) {
                        r.cpus = n;
                    }
                }
                "gpus" => {
                    if let Some(n) = self.count(v, "gpus", 0) {
                        r.gpus = n;
                    }
                }
                "memory" | "disk" => {
                    if let Some(b) = self.unit_value(v, &k.value, units::parse_size) {
                        if k.value == "memory" {
                            r.memory_bytes = Some(b)
                        } else {
                            r.disk_bytes = Some(b)
                        }
                    }
                }
                "time" => {
                    if let Some(s) = self.unit_value(v, "time", units::parse_duration) {
                        r.time_seconds = Some(s);
                    }
                }
                other => {
                    let hint = self
                        .suggest(other, RESOURCES)
                        .unwrap_or_else(|| format!("the resources are {}", list(&RESOURCES)));
                    self.push(
                        Diagnostic::error(k.span, format!("unknown resource `{other}`")).hint(hint),
                    );
                }
            }
        }
    }

    fn unit_value(
        &mut self,
        v: &Value,
        what: &str,
        parse: fn(&str) -> Result<u64, units::UnitError>,
    ) -> Option<u64> {
        let text = match &v.lit {
            Literal::String(s) => s.clone(),
            other => {
                let raw = self.sources.slice(v.span).to_string();
                let (_, hint) = parse("").err().unwrap_or_default();
                self.push(
                    Diagnostic::error(
                        v.span,
                        format!(
                            "{what} must be a string with a unit, not {}",
                            other.kind_name()
                        ),
                    )
                    .hint(format!("{hint}; `{raw}` alone says too little")),
                );
                return None;
            }
        };
        match parse(&text) {
            Ok(n) => Some(n),
            Err((message, hint)) => {
                self.push(
                    Diagnostic::error(v.span, format!("invalid {what}: {message}")).hint(hint),
                );
                None
            }
        }
    }

    // ---- steps: second pass --------------------------------------------------------------

    /// Builds step `index`, taking from its draft what only the step needs.
    fn resolve_step(&mut self, drafts: &mut [StepDraft], index: usize) -> Option<Step> {
        let d = &drafts[index];
        let mut ok = !d.damaged;
        let mut foreach = Vec::with_capacity(d.foreach.len());
        for (var, dom) in &d.foreach {
            let domain = match dom {
                DomainDraft::Values(v) => Domain::Values(v.clone()),
                DomainDraft::From(v) => match self.glob_input(v) {
                    Some(id) => Domain::Files(id),
                    None => {
                        ok = false;
                        continue;
                    }
                },
            };
            foreach.push(FanOut {
                var: var.value.clone(),
                domain,
                span: var.span,
            });
        }
        for f in &foreach {
            if let Some(&id) = self.input_names.get(f.var.as_str()) {
                let decl = self.inputs[id.index()].span;
                self.push(
                    Diagnostic::error(
                        f.span,
                        format!("fan-out variable `{}` has the name of an input", f.var),
                    )
                    .related(decl, "the input is declared here")
                    .hint("references to it would be ambiguous; rename the variable"),
                );
                ok = false;
            }
        }
        if foreach.len() != d.foreach.len() {
            // Placeholders naming a variable that failed would give false errors.
            return None;
        }
        let scope = Scope {
            d,
            foreach: &foreach,
        };
        let mut inputs = Vec::with_capacity(d.ins.len());
        let mut deps = Vec::new();
        for (name, v) in &d.ins {
            match self.reference(drafts, &scope, v) {
                Some(source) => {
                    if let InputRef::Output { step, .. } = source {
                        deps.push(step);
                    }
                    inputs.push(StepInput {
                        name: name.value.clone(),
                        source,
                        span: name.span,
                    });
                }
                None => ok = false,
            }
        }
        let mut outputs = Vec::with_capacity(d.outs.len());
        for (name, v, kind) in &d.outs {
            let what = Named("output", &name.value);
            match self.template(v, &scope, Context::Path, &what) {
                Some(path) => {
                    ok &= self.output_path_ok(&path, v, &scope, &what);
                    outputs.push(StepOutput {
                        name: name.value.clone(),
                        path,
                        kind: *kind,
                        span: name.span,
                    });
                }
                None => ok = false,
            }
        }
        let log = match &d.log {
            Some(v) => match self.template(v, &scope, Context::Path, &"the log path") {
                Some(t) => {
                    ok &= self.output_path_ok(&t, v, &scope, &"the log");
                    Some(t)
                }
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let run = match &d.run {
            Some(v) => {
                let t = self.template(v, &scope, Context::Command, &"the command");
                if let Some(t) = &t
                    && t.text.trim().is_empty()
                {
                    self.push(
                        Diagnostic::error(
                            v.span,
                            format!("the command of step `{}` is empty", d.name.value),
                        )
                        .hint("write the shell command the step runs"),
                    );
                    ok = false;
                }
                t
            }
            None => None,
        };
        deps.sort_unstable();
        deps.dedup();
        let run = run?;
        let d = &mut drafts[index];
        ok.then(|| Step {
            name: d.name.value.clone(),
            foreach,
            inputs,
            outputs,
            log,
            run,
            resources: d.resources.clone(),
            retry: d.retry,
            env: std::mem::take(&mut d.env),
            tools: std::mem::take(&mut d.tools),
            sandbox: d.sandbox.take(),
            network: d.network,
            deps,
            span: d.span,
            name_span: d.name.span,
        })
    }

    fn glob_input(&mut self, v: &Value) -> Option<InputId> {
        let name = self.string(v, "`from=`")?;
        match self.input_names.get(name.as_str()).copied() {
            Some(id) => {
                self.used_inputs[id.index()] = true;
                match &self.inputs[id.index()].source {
                    InputSource::Glob { .. } => Some(id),
                    InputSource::Path { .. } => {
                        let decl = self.inputs[id.index()].span;
                        self.push(
                            Diagnostic::error(
                                v.span,
                                format!("input `{name}` is one path, not a glob"),
                            )
                            .related(decl, "declared here")
                            .hint(format!(
                                "fan out over a glob input: input {name} glob=\"dir/*.ext\""
                            )),
                        );
                        None
                    }
                }
            }
            None => {
                let hint = self
                    .suggest(&name, self.input_names.keys().map(CompactString::as_str))
                    .unwrap_or_else(|| {
                        "`from=` names a glob input: input NAME glob=\"dir/*.ext\"".to_string()
                    });
                self.push(Diagnostic::error(v.span, format!("unknown input `{name}`")).hint(hint));
                None
            }
        }
    }

    /// What an `in NAME=…` value refers to.
    fn reference(
        &mut self,
        drafts: &[StepDraft],
        scope: &Scope<'_>,
        v: &Value,
    ) -> Option<InputRef> {
        let kind = self.path_kind(v)?;
        if v.ty.is_some() {
            let path = self.template(v, scope, Context::Path, &"a literal input path")?;
            if path.text.trim().is_empty() {
                self.push(Diagnostic::error(v.span, "the path is empty"));
                return None;
            }
            for part in &path.parts {
                if let Part::Param(p) = part {
                    self.used_params[p.index()] = true;
                }
            }
            return Some(InputRef::Path { path, kind });
        }
        let text = self.string(v, "a reference")?;
        let step_here = &scope.d.name.value;
        if let Some((head, field)) = text.split_once('.') {
            let Some(&target) = self.step_names.get(head) else {
                let mut hint =
                    self.suggest(head, self.step_names.keys().map(CompactString::as_str));
                if hint.is_none() && (text.contains('/') || self.input_names.contains_key(head)) {
                    hint = Some(format!(
                        "for a file in the pipeline folder write (file)\"{text}\""
                    ));
                }
                let d = Diagnostic::error(v.span, format!("unknown step `{head}`"))
                    .maybe_hint(hint.or_else(|| {
                    Some(format!(
                        "`{text}` reads as STEP.OUTPUT; for a literal file write (file)\"{text}\""
                    ))
                }));
                self.push(d);
                return None;
            };
            let up = &drafts[target as usize];
            if up.damaged {
                return None;
            }
            match up.outs.iter().position(|(n, _, _)| n.value == field) {
                Some(output) => {
                    self.check_shared_vars(scope, up, v);
                    Some(InputRef::Output {
                        step: StepId(target),
                        output,
                    })
                }
                None => {
                    let names: Vec<&str> =
                        up.outs.iter().map(|(n, _, _)| n.value.as_str()).collect();
                    let hint = self
                        .suggest(field, names.iter().copied())
                        .unwrap_or_else(|| {
                            format!(
                                "step `{head}` has {}",
                                if names.is_empty() {
                                    "no outputs".to_string()
                                } else {
                                    format!("outputs {}", list(&names))
                                }
                            )
                        });
                    self.push(
                        Diagnostic::error(v.span, format!("step `{head}` has no output `{field}`"))
                            .related(up.name.span, "step declared here")
                            .hint(hint),
                    );
                    None
                }
            }
        } else if let Some(var) = scope.foreach.iter().position(|f| f.var == text) {
            match scope.foreach[var].domain {
                Domain::Files(_) => Some(InputRef::Var(var)),
                Domain::Values(_) => {
                    self.push(
                        Diagnostic::error(v.span, format!("`{text}` ranges over values, not files"))
                            .hint(format!("to read a file per value, write a literal path: (file)\"data/{{{text}}}.csv\"")),
                    );
                    None
                }
            }
        } else if let Some(&id) = self.input_names.get(text.as_str()) {
            self.used_inputs[id.index()] = true;
            Some(InputRef::Input(id))
        } else if let Some(&target) = self.step_names.get(text.as_str()) {
            let up = &drafts[target as usize];
            let names: Vec<&str> = up.outs.iter().map(|(n, _, _)| n.value.as_str()).collect();
            let hint = match names.as_slice() {
                [one] => format!("write `{text}.{one}`"),
                [] => format!("step `{text}` has no outputs"),
                many => format!(
                    "name one of its outputs: {}",
                    many.iter()
                        .map(|o| format!("`{text}.{o}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.push(
                Diagnostic::error(
                    v.span,
                    format!("`{text}` is a step; name which output of it"),
                )
                .hint(hint),
            );
            None
        } else {
            let candidates = self
                .input_names
                .keys()
                .map(CompactString::as_str)
                .chain(scope.foreach.iter().map(|f| f.var.as_str()))
                .chain(self.step_names.keys().map(CompactString::as_str));
            let hint = self.suggest(&text, candidates).or_else(|| {
                Some(if text.contains('/') || text.contains('.') {
                    format!("for a file in the pipeline folder write (file)\"{text}\"")
                } else {
                    "a reference names an `input`, a fan-out variable over files, or STEP.OUTPUT"
                        .to_string()
                })
            });
            self.push(
                Diagnostic::error(
                    v.span,
                    format!("`{text}` names nothing in step `{step_here}`"),
                )
                .maybe_hint(hint),
            );
            None
        }
    }

    /// Shared fan-out variables pick the matching upstream instance: their values must agree.
    fn check_shared_vars(&mut self, scope: &Scope<'_>, up: &StepDraft, at: &Value) {
        for (mine, dom) in scope.foreach.iter().map(|f| (f, &f.domain)) {
            let Some((_, theirs)) = up.foreach.iter().find(|(v, _)| v.value == mine.var) else {
                continue;
            };
            match (dom, theirs) {
                (Domain::Values(a), DomainDraft::Values(b)) => {
                    let theirs: std::collections::HashSet<&String> = b.iter().collect();
                    if let Some(missing) = a.iter().find(|x| !theirs.contains(x)) {
                        self.push(
                            Diagnostic::error(at.span, format!("step `{}` has no instance with {}=\"{missing}\"", up.name.value, mine.var))
                                .related(mine.span, format!("`{}` takes \"{missing}\" here", mine.var))
                                .hint(format!("a shared fan-out variable picks the upstream instance with the same value; add \"{missing}\" to `{}` there, or rename the variable here", mine.var)),
                        );
                    }
                }
                (Domain::Files(a), DomainDraft::From(b)) => {
                    let same = b
                        .as_str()
                        .and_then(|n| self.input_names.get(n))
                        .is_some_and(|id| id == a);
                    if !same {
                        self.push(
                            Diagnostic::error(at.span, format!("`{}` ranges over different inputs here and in step `{}`", mine.var, up.name.value))
                                .hint("a shared fan-out variable must range over the same glob input in both steps"),
                        );
                    }
                }
                _ => {
                    self.push(
                        Diagnostic::error(at.span, format!("`{}` ranges over values in one step and over files in step `{}`", mine.var, up.name.value))
                            .related(mine.span, "declared here")
                            .hint("a shared fan-out variable must range over the same kind of thing; rename one of them"),
                    );
                }
            }
        }
    }

    /// Output and log paths: relative, inside the pipeline folder, one per instance.
    fn output_path_ok(
        &mut self,
        t: &Template,
        v: &Value,
        scope: &Scope<'_>,
        what: &dyn std::fmt::Display,
    ) -> bool {
        let problem = if t.is_literal() {
            checks::normalize_output(&t.text).err()
        } else {
            checks::literal_path_problem(&t.text).err()
        };
        if let Some(problem) = problem {
            self.push(Diagnostic::error(v.span, format!("{what} {problem}")).hint("outputs are written inside the pipeline folder: use a relative path such as \"results/x.csv\""));
            return false;
        }
        // Values put into the path must not take it outside either (checked here once
        // per value, whatever the number of instances).
        for part in &t.parts {
            let bad = match part {
                Part::Param(p) => {
                    let p = &self.params[p.index()];
                    checks::escapes(&p.value)
                        .then(|| (format!("param `{}`", p.name), p.value.clone(), p.span))
                }
                Part::Var {
                    var,
                    field: VarField::Value,
                } => match &scope.foreach[*var].domain {
                    Domain::Values(values) => values.iter().find(|x| checks::escapes(x)).map(|x| {
                        (
                            format!("fan-out variable `{}`", scope.foreach[*var].var),
                            x.clone(),
                            scope.foreach[*var].span,
                        )
                    }),
                    Domain::Files(_) => None,
                },
                _ => None,
            };
            if let Some((who, value, at)) = bad {
                self.push(
                    Diagnostic::error(
                        v.span,
                        format!("{what} would leave the pipeline folder: {who} is `{value}`"),
                    )
                    .related(at, "the value comes from here")
                    .hint("values used in output paths must be relative and without `..`"),
                );
                return false;
            }
        }
        let used: Vec<usize> = t.vars().collect();
        let missing: Vec<&str> = scope
            .foreach
            .iter()
            .enumerate()
            .filter(|(i, _)| !used.contains(i))
            .map(|(_, f)| f.var.as_str())
            .collect();
        if let Some(first) = missing.first() {
            let over_files = scope
                .foreach
                .iter()
                .any(|f| f.var == *first && matches!(f.domain, Domain::Files(_)));
            let example = if over_files {
                format!("{{{first}.stem}}")
            } else {
                format!("{{{first}}}")
            };
            self.push(
                Diagnostic::error(
                    v.span,
                    format!("{what} is the same path for every value of `{first}`"),
                )
                .label("every instance would write here")
                .hint(format!(
                    "put {example} in the path, e.g. \"results/{example}.txt\""
                )),
            );
            return false;
        }
        true
    }

    /// Parses placeholders and resolves them for a context.
    fn template(
        &mut self,
        v: &Value,
        scope: &Scope<'_>,
        cx: Context,
        what: &dyn std::fmt::Display,
    ) -> Option<Template> {
        let text = self.string(v, what)?;
        if !matches!(cx, Context::Command) || v.ty.is_some() {
            // `path_kind` already reported a bad annotation on paths.
        }
        if matches!(cx, Context::Command) {
            self.no_annotation(v, "the command");
        }
        let pieces = template::scan(&text);
        let mut parts = Vec::with_capacity(pieces.len());
        let mut ok = true;
        let mut origin = None;
        for piece in pieces {
            match piece {
                Piece::Text(t) => {
                    if let Some(bad) = ["{in.}", "{out.}", "{param.}"]
                        .into_iter()
                        .find(|b| t.contains(b))
                    {
                        self.push(
                            Diagnostic::error(
                                v.span,
                                format!("`{bad}` has no name after the point"),
                            )
                            .hint(format!("write {}NAME}}", &bad[..bad.len() - 1])),
                        );
                        ok = false;
                    }
                    parts.push(Part::Text(t));
                }
                Piece::Placeholder { head, field, range } => {
                    let at = *origin.get_or_insert_with(|| self.text_origin(v, &text));
                    let span = match at {
                        Some(start) => {
                            Span::new(v.span.file, start + range.start, start + range.end)
                        }
                        None => v.span,
                    };
                    match self.placeholder(head, field, scope, cx, what, span) {
                        Some(p) => parts.push(p),
                        None => ok = false,
                    }
                }
            }
        }
        ok.then_some(Template {
            text,
            parts,
            span: v.span,
        })
    }

    fn placeholder(
        &mut self,
        head: &str,
        field: Option<&str>,
        scope: &Scope<'_>,
        cx: Context,
        what: &dyn std::fmt::Display,
        span: Span,
    ) -> Option<Part> {
        let shown = match field {
            Some(f) => format!("{{{head}.{f}}}"),
            None => format!("{{{head}}}"),
        };
        let io_only = |this: &mut Self| {
            this.push(
                Diagnostic::error(span, format!("`{shown}` cannot be used in {what}"))
                    .hint("paths may use {param.NAME} and fan-out variables; {in.…}, {out.…}, {cpus} and {log} belong in `run`"),
            );
        };
        let step = &scope.d;
        match (head, field) {
            ("in", Some(f)) | ("out", Some(f)) => {
                if cx != Context::Command {
                    io_only(self);
                    return None;
                }
                let found = if head == "in" {
                    let names = step.ins.iter().map(|(n, _)| n.value.as_str());
                    step.in_names.find(names, f)
                } else {
                    let names = step.outs.iter().map(|(n, _, _)| n.value.as_str());
                    step.out_names.find(names, f)
                };
                let names = || -> Vec<&str> {
                    if head == "in" {
                        step.ins.iter().map(|(n, _)| n.value.as_str()).collect()
                    } else {
                        step.outs.iter().map(|(n, _, _)| n.value.as_str()).collect()
                    }
                };
                match found {
                    Some(i) => Some(if head == "in" {
                        Part::In(i)
                    } else {
                        Part::Out(i)
                    }),
                    None => {
                        let names = names();
                        let kind = if head == "in" { "input" } else { "output" };
                        let hint = self.suggest(f, names.iter().copied()).unwrap_or_else(|| {
                            if names.is_empty() {
                                format!(
                                    "step `{}` declares no {kind}s; add `{head} {f}=…`",
                                    step.name.value
                                )
                            } else {
                                format!("its {kind}s are {}", list(&names))
                            }
                        });
                        self.push(
                            Diagnostic::error(
                                span,
                                format!("step `{}` has no {kind} `{f}`", step.name.value),
                            )
                            .hint(hint),
                        );
                        None
                    }
                }
            }
            ("param", Some(f)) => match self.param_names.get(f).copied() {
                Some(id) => {
                    self.used_params[id.index()] = true;
                    Some(Part::Param(id))
                }
                None => {
                    let hint = self
                        .suggest(f, self.param_names.keys().map(CompactString::as_str))
                        .unwrap_or_else(|| format!("declare it: param {f} VALUE"));
                    self.push(Diagnostic::error(span, format!("unknown param `{f}`")).hint(hint));
                    None
                }
            },
            ("in" | "out" | "param", None) => {
                self.push(
                    Diagnostic::error(span, format!("`{shown}` needs a name"))
                        .hint(format!("write {{{head}.NAME}}")),
                );
                None
            }
            ("cpus", None) | ("log", None) => {
                if cx != Context::Command {
                    io_only(self);
                    return None;
                }
                if head == "log" && step.log.is_none() {
                    self.push(
                        Diagnostic::error(
                            span,
                            format!("step `{}` declares no log", step.name.value),
                        )
                        .hint("declare one: log \"logs/name.log\""),
                    );
                    return None;
                }
                Some(if head == "cpus" {
                    Part::Cpus
                } else {
                    Part::Log
                })
            }
            _ => {
                if let Some(var) = scope.foreach.iter().position(|f| f.var == head) {
                    let fan = &scope.foreach[var];
                    let Some(f) = field else {
                        return Some(Part::Var {
                            var,
                            field: VarField::Value,
                        });
                    };
                    return match (
                        &fan.domain,
                        VarField::FILE_FIELDS.iter().find(|(n, _)| *n == f),
                    ) {
                        (Domain::Files(_), Some((_, field))) => {
                            Some(Part::Var { var, field: *field })
                        }
                        (Domain::Files(_), None) => {
                            let fields: Vec<&str> =
                                VarField::FILE_FIELDS.iter().map(|(n, _)| *n).collect();
                            let hint =
                                self.suggest(f, fields.iter().copied()).unwrap_or_else(|| {
                                    format!("the parts of a file are {}", list(&fields))
                                });
                            self.push(
                                Diagnostic::error(span, format!("unknown part `.{f}` of `{head}`"))
                                    .hint(hint),
                            );
                            None
                        }
                        (Domain::Values(_), _) => {
                            self.push(
                                Diagnostic::error(
                                    span,
                                    format!("`{head}` ranges over values; `.{f}` applies to files"),
                                )
                                .hint(format!("write {{{head}}}")),
                            );
                            None
                        }
                    };
                }
                let mut candidates: Vec<String> =
                    scope.foreach.iter().map(|f| f.var.to_string()).collect();
                if cx == Context::Command {
                    candidates.push("cpus".into());
                    candidates.extend(step.ins.iter().map(|(n, _)| format!("in.{}", n.value)));
                    candidates.extend(step.outs.iter().map(|(n, _, _)| format!("out.{}", n.value)));
                }
                candidates.extend(self.param_names.keys().map(|p| format!("param.{p}")));
                let wanted = shown.trim_matches(|c| c == '{' || c == '}');
                let mut hint = match self.suggest(wanted, candidates.iter().map(String::as_str)) {
                    Some(h) => h.replacen('`', "`{", 1).replacen("`?", "}`?", 1),
                    None => String::new(),
                };
                if !hint.is_empty() {
                    hint.push(' ');
                }
                hint.push_str(&format!(
                    "to keep the braces for the shell, double them: {{{shown}}}"
                ));
                self.push(
                    Diagnostic::error(span, format!("placeholder `{shown}` names nothing"))
                        .hint(hint),
                );
                None
            }
        }
    }

    /// Where a string value's decoded text starts in its source, when the source
    /// spells it verbatim (a placeholder's span is then its own; else the
    /// value's). Computed once per value: it compares the whole text.
    fn text_origin(&self, v: &Value, decoded: &str) -> Option<usize> {
        let src = self.sources.slice(v.span);
        let hashes = src.bytes().take_while(|&b| b == b'#').count();
        let open = hashes + 1;
        if src.len() >= open * 2 && !src[hashes..].starts_with("\"\"\"") {
            let inner = &src[open..src.len() - open];
            (inner == decoded).then_some(v.span.start as usize + open)
        } else {
            (src == decoded).then_some(v.span.start as usize)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// `run`: everything may be used.
    Command,
    /// Output, log and literal input paths: params and fan-out variables only.
    Path,
}

struct Scope<'s> {
    d: &'s StepDraft,
    foreach: &'s [FanOut],
}

/// "output `name`", written only when a message needs it.
struct Named<'a>(&'a str, &'a str);

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.0, self.1)
    }
}

/// "`what` `name` is declared twice", pointing at both places.
fn declared_twice(what: &str, name: &str, here: Span, first: Span) -> Diagnostic {
    Diagnostic::error(here, format!("{what} `{name}` is declared twice"))
        .related(first, "first declared here")
}
