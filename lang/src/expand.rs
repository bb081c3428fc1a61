//! What a workflow means on this file system: the files each glob input
//! matches, how many derivations each step makes, how many edges join them, and
//! the concrete output paths, which must not collide, nest in another step's
//! folder output, or overwrite source data.

use crate::checks::{compile_glob, glob_base, normalize_output};
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::files::Files;
use crate::model::{
    Domain, InputRef, InputSource, Part, PathKind, Step, StepId, Template, Workflow,
};
use crate::source::Span;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Past this many output paths the collision check is skipped (with a warning).
const MAX_EXPANDED_PATHS: usize = 5_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    /// For each input: the files a glob input matches (sorted); empty for path inputs.
    pub glob_files: Vec<Vec<String>>,
    /// Derivations per step.
    pub instances: Vec<usize>,
    pub derivations: usize,
    /// Derivation-level edges: one per (derivation, upstream derivation it reads).
    pub edges: usize,
}

/// Matches globs, counts derivations and checks concrete output paths.
pub fn expand(wf: &Workflow, files: &dyn Files, diags: &mut Diagnostics) -> Expansion {
    let glob_files = match_globs(wf, files, diags);
    let instances: Vec<usize> = wf
        .steps
        .iter()
        .map(|s| s.instance_count(|i| glob_files[i.index()].len()))
        .collect();
    let derivations = instances.iter().fold(0usize, |a, &b| a.saturating_add(b));
    let edges = wf
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.deps
                .iter()
                .map(|&u| instances[i].saturating_mul(gathered(wf.step(u), s, &glob_files)))
                .fold(0usize, usize::saturating_add)
        })
        .fold(0usize, usize::saturating_add);
    if derivations <= MAX_EXPANDED_PATHS {
        check_outputs(wf, &glob_files, diags);
    } else {
        diags.push(
            Diagnostic::warning(
                wf.steps[0].name_span,
                format!("{derivations} derivations: output paths were not checked for collisions"),
            )
            .hint("the check stops past 5,000,000 derivations"),
        );
    }
    Expansion {
        glob_files,
        instances,
        derivations,
        edges,
    }
}

fn match_globs(wf: &Workflow, files: &dyn Files, diags: &mut Diagnostics) -> Vec<Vec<String>> {
    wf.inputs
        .iter()
        .map(|input| {
            let InputSource::Glob { pattern } = &input.source else { return Vec::new() };
            match glob_files(&wf.root, pattern, files) {
                Ok(found) => {
                    if found.is_empty() {
                        diags.push(
                            Diagnostic::warning(input.span, format!("glob `{pattern}` matches no file"))
                                .hint(format!("patterns are relative to {}; steps fanning out over it make no derivation", wf.root.display())),
                        );
                    }
                    found
                }
                Err(e) => {
                    diags.push(Diagnostic::error(input.span, format!("cannot match glob `{pattern}`: {e}")));
                    Vec::new()
                }
            }
        })
        .collect()
}

/// The files a glob input's pattern matches, sorted: paths relative to `root`
/// (the pipeline's folder), or absolute for an absolute pattern.
pub fn glob_files(root: &Path, pattern: &str, files: &dyn Files) -> Result<Vec<String>, String> {
    let matcher = compile_glob(pattern)?;
    let (root, base) = if let Some(abs) = pattern.strip_prefix('/') {
        (Path::new("/"), glob_base(abs).to_string())
    } else {
        (root, glob_base(pattern).to_string())
    };
    let rel_matcher = match pattern.strip_prefix('/') {
        Some(abs) => compile_glob(abs).unwrap_or(matcher),
        None => matcher,
    };
    let mut found = files.glob(root, &base, &rel_matcher)?;
    if pattern.starts_with('/') {
        for f in &mut found {
            f.insert(0, '/');
        }
    }
    Ok(found)
}

/// How many instances of `up` each instance of `down` reads: the product of the
/// sizes of `up`'s fan-out variables that `down` does not share.
fn gathered(up: &Step, down: &Step, glob_files: &[Vec<String>]) -> usize {
    up.foreach
        .iter()
        .filter(|f| down.var(&f.var).is_none())
        .map(|f| match &f.domain {
            Domain::Values(v) => v.len(),
            Domain::Files(i) => glob_files[i.index()].len(),
        })
        .fold(1usize, usize::saturating_mul)
}

/// The values of each fan-out variable of `step`.
pub fn domains<'w>(step: &'w Step, glob_files: &'w [Vec<String>]) -> Vec<&'w [String]> {
    step.foreach
        .iter()
        .map(|f| match &f.domain {
            Domain::Values(v) => v.as_slice(),
            Domain::Files(i) => glob_files[i.index()].as_slice(),
        })
        .collect()
}

/// Calls `each` with the value of every fan-out variable, for every instance, in
/// order (the last variable changes fastest).
pub fn for_each_instance(domains: &[&[String]], mut each: impl FnMut(&[&str])) {
    if domains.iter().any(|d| d.is_empty()) {
        return;
    }
    let mut idx = vec![0usize; domains.len()];
    let mut values: Vec<&str> = domains.iter().map(|d| d[0].as_str()).collect();
    loop {
        each(&values);
        let mut k = domains.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < domains[k].len() {
                values[k] = domains[k][idx[k]].as_str();
                break;
            }
            idx[k] = 0;
            values[k] = domains[k][0].as_str();
        }
    }
}

/// A path template with params and fan-out values filled in.
pub fn render_path(wf: &Workflow, t: &Template, values: &[&str]) -> String {
    let mut out = String::with_capacity(t.text.len() + 16);
    for part in &t.parts {
        match part {
            Part::Text(s) => out.push_str(s),
            Part::Param(p) => out.push_str(&wf.param(*p).value),
            Part::Var { var, field } => out.push_str(field.apply(values[*var])),
            // Not allowed in paths by the checker.
            Part::In(_) | Part::Out(_) | Part::Cpus | Part::Log => {}
        }
    }
    out
}

struct Written {
    step: StepId,
    /// The output's index; `None` for a log.
    output: Option<usize>,
    span: Span,
    kind: PathKind,
}

fn check_outputs(wf: &Workflow, glob_files: &[Vec<String>], diags: &mut Diagnostics) {
    let mut written: HashMap<String, Written> = HashMap::new();
    let mut reported: HashSet<(Span, Span)> = HashSet::new();
    for (si, step) in wf.steps.iter().enumerate() {
        let doms = domains(step, glob_files);
        let mut paths: Vec<(&Template, Span, PathKind, Option<usize>)> = step
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| (&o.path, o.path.span, o.kind, Some(i)))
            .collect();
        if let Some(log) = &step.log {
            paths.push((log, log.span, PathKind::File, None));
        }
        for_each_instance(&doms, |values| {
            for &(t, span, kind, output) in &paths {
                let raw = render_path(wf, t, values);
                let path = match normalize_output(&raw) {
                    Ok(p) => p,
                    Err(problem) => {
                        if reported.insert((span, span)) {
                            diags.push(
                                Diagnostic::error(span, format!("output path `{raw}` {problem}"))
                                    .hint("a fan-out value or parameter made this path; outputs stay inside the pipeline folder"),
                            );
                        }
                        continue;
                    }
                };
                let this = Written {
                    output,
                    step: StepId::from_index(si),
                    span,
                    kind,
                };
                if let Some(first) = written.get(&path) {
                    if reported.insert((first.span, span)) {
                        let d = if first.step == this.step && first.span == span {
                            Diagnostic::error(span, format!("two instances of step `{}` write `{path}`", step.name))
                                .hint("the fan-out values give the same path twice (same file name in different folders?); use {VAR} rather than {VAR.stem}, or {VAR.dir}")
                        } else {
                            let other = &wf.step(first.step).name;
                            Diagnostic::error(
                                span,
                                format!("`{path}` is written by step `{other}` too"),
                            )
                            .related(first.span, format!("`{other}` writes it here"))
                            .hint("each output path belongs to one step; rename one of them")
                        };
                        diags.push(d);
                    }
                    continue;
                }
                written.insert(path, this);
            }
        });
    }
    check_nesting_and_sources(wf, &written, diags);
    check_literal_inputs(wf, glob_files, &written, diags);
}

/// A literal input (`(file)"…"`) naming what another step writes would read it
/// without waiting for it, or read a stale copy: it must be a reference.
fn check_literal_inputs(
    wf: &Workflow,
    glob_files: &[Vec<String>],
    written: &HashMap<String, Written>,
    diags: &mut Diagnostics,
) {
    let mut reported: HashSet<Span> = HashSet::new();
    for step in &wf.steps {
        let literals: Vec<&crate::model::StepInput> = step
            .inputs
            .iter()
            .filter(|i| matches!(i.source, InputRef::Path { .. }))
            .collect();
        if literals.is_empty() {
            continue;
        }
        let doms = domains(step, glob_files);
        for_each_instance(&doms, |values| {
            for input in &literals {
                let InputRef::Path { path, .. } = &input.source else {
                    continue;
                };
                let Ok(p) = normalize_output(&render_path(wf, path, values)) else {
                    continue;
                };
                let mut owner = written.get(&p);
                let mut end = p.len();
                while owner.is_none() {
                    let Some(slash) = p[..end].rfind('/') else {
                        break;
                    };
                    end = slash;
                    owner = written.get(&p[..end]).filter(|w| w.kind == PathKind::Dir);
                }
                let Some(w) = owner else { continue };
                if !reported.insert(path.span) {
                    continue;
                }
                let up = wf.step(w.step);
                let reference = match w.output {
                    Some(o) => format!("in {}={}.{}", input.name, up.name, up.outputs[o].name),
                    None => "a reference to one of its outputs".to_string(),
                };
                diags.push(
                    Diagnostic::error(path.span, format!("`{p}` is written by step `{}`", up.name))
                        .related(w.span, "it is declared here")
                        .hint(format!("read it through a reference, `{reference}`, so that this step runs after it")),
                );
            }
        });
    }
}

fn check_nesting_and_sources(
    wf: &Workflow,
    written: &HashMap<String, Written>,
    diags: &mut Diagnostics,
) {
    let mut reported: HashSet<(Span, Span)> = HashSet::new();
    let mut sorted: Vec<(&String, &Written)> = written.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (path, w) in &sorted {
        let mut prefix_end = 0;
        while let Some(slash) = path[prefix_end..].find('/') {
            let dir = &path[..prefix_end + slash];
            prefix_end += slash + 1;
            if let Some(owner) = written.get(dir)
                && reported.insert((owner.span, w.span))
            {
                let other = &wf.step(owner.step).name;
                let d = if owner.kind == PathKind::Dir {
                    Diagnostic::error(
                        w.span,
                        format!("`{path}` is inside `{dir}/`, the folder output of step `{other}`"),
                    )
                    .related(owner.span, "the folder is declared here")
                    .hint("a folder output belongs wholly to its step; write elsewhere")
                } else {
                    Diagnostic::error(w.span, format!("`{path}` would be inside `{dir}`, which step `{other}` writes as a file"))
                        .related(owner.span, "the file is declared here")
                        .hint("a path cannot be both a file and a folder; rename one of them")
                };
                diags.push(d);
            }
        }
    }
    // Outputs that would overwrite source data.
    for input in &wf.inputs {
        match &input.source {
            InputSource::Path { path, .. } => {
                let Ok(src) = normalize_output(path) else {
                    continue;
                };
                // The output is the input, lies inside it, or (a folder output)
                // holds it: looked up by prefix, not by scanning every output.
                let mut hits: Vec<(&String, &Written, bool)> = Vec::new();
                if let Some((out, w)) = written.get_key_value(&src) {
                    hits.push((out, w, false));
                }
                for (out, w) in under_prefix(&sorted, &src) {
                    hits.push((out, w, false));
                }
                for (end, _) in src.match_indices('/') {
                    if let Some((out, w)) = written.get_key_value(&src[..end])
                        && w.kind == PathKind::Dir
                    {
                        hits.push((out, w, true));
                    }
                }
                hits.sort_by(|a, b| a.0.cmp(b.0));
                for (out, w, holds) in hits {
                    let message = if holds {
                        format!(
                            "folder output `{out}/` would hold input `{}` (`{src}`)",
                            input.name
                        )
                    } else {
                        format!("output `{out}` would overwrite input `{}`", input.name)
                    };
                    diags.push(
                        Diagnostic::error(w.span, message)
                            .related(input.span, "the input is declared here")
                            .hint("write results to another path; sources are never overwritten"),
                    );
                }
            }
            InputSource::Glob { pattern } => {
                let Ok(m) = compile_glob(pattern) else {
                    continue;
                };
                // Only outputs under the pattern's fixed folder can match it.
                let base = glob_base(pattern);
                let candidates: &[(&String, &Written)] =
                    if base.is_empty() || base.starts_with('.') || base.contains("/.") {
                        &sorted
                    } else {
                        under_prefix(&sorted, base)
                    };
                for (out, w) in candidates {
                    if m.is_match(out.as_str()) {
                        diags.push(
                            Diagnostic::error(w.span, format!("output `{out}` matches the glob of input `{}`", input.name))
                                .related(input.span, "the glob is declared here")
                                .hint("the next run would read this result as source data; write it elsewhere"),
                        );
                    }
                }
            }
        }
    }
}

/// The entries of a path-sorted list that lie inside folder `dir`: a contiguous run.
fn under_prefix<'a, 'w>(
    sorted: &'a [(&'w String, &'w Written)],
    dir: &str,
) -> &'a [(&'w String, &'w Written)] {
    let inside =
        |p: &str| p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/';
    // Paths inside `dir` sort after `dir/` and before `dir0` ('0' follows '/').
    let start = sorted.partition_point(|(p, _)| p.as_str() < dir);
    let rest = &sorted[start..];
    let skip = rest
        .iter()
        .take_while(|(p, _)| !inside(p) && p.starts_with(dir))
        .count();
    let rest = &rest[skip..];
    let len = rest.iter().take_while(|(p, _)| inside(p)).count();
    &rest[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_in_order() {
        let a = vec!["1".to_string(), "2".to_string()];
        let b = vec!["x".to_string(), "y".to_string(), "z".to_string()];
        let mut seen = Vec::new();
        for_each_instance(&[&a, &b], |v| seen.push(v.join("")));
        assert_eq!(seen, ["1x", "1y", "1z", "2x", "2y", "2z"]);
        let mut n = 0;
        for_each_instance(&[], |_| n += 1);
        assert_eq!(n, 1);
        for_each_instance(&[&a, &[]], |_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn paths_under_a_folder_are_one_run_of_the_sorted_list() {
        let w = || Written {
            step: StepId::from_index(0),
            output: None,
            span: Span::new(crate::source::FileId(0), 0, 0),
            kind: PathKind::File,
        };
        let names = [
            "a", "d", "d-x/1", "d.txt", "d/1", "d/e/2", "d0", "dd/1", "e",
        ];
        let ws: Vec<(String, Written)> = names.iter().map(|n| (n.to_string(), w())).collect();
        let sorted: Vec<(&String, &Written)> = ws.iter().map(|(p, w)| (p, w)).collect();
        let got: Vec<&str> = under_prefix(&sorted, "d")
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(got, ["d/1", "d/e/2"]);
        assert!(under_prefix(&sorted, "zz").is_empty());
        assert_eq!(under_prefix(&sorted, "d/e").len(), 1);
    }
}
