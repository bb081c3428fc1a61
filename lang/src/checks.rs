//! Whole-pipeline checks on resolved steps: dependency cycles, topological
//! order, and the shape of paths.

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::model::{InputRef, Step, StepId};
use crate::source::Span;
use petgraph::graph::{DiGraph, NodeIndex};

/// The steps a step reads from, each with the span of the `in` that does.
pub(crate) fn dep_spans(step: &Step) -> Vec<(StepId, Span)> {
    step.inputs
        .iter()
        .filter_map(|i| match i.source {
            InputRef::Output { step, .. } => Some((step, i.span)),
            _ => None,
        })
        .collect()
}

/// A topological order of the steps (`deps[i]` lists what step `i` reads), or
/// `None` after reporting every dependency cycle.
pub(crate) fn topo_order(
    deps: &[Vec<(StepId, Span)>],
    names: &[&str],
    name_spans: &[Span],
    diags: &mut Diagnostics,
) -> Option<Vec<StepId>> {
    let n = deps.len();
    let mut graph: DiGraph<(), Span> = DiGraph::with_capacity(n, deps.iter().map(Vec::len).sum());
    for _ in 0..n {
        graph.add_node(());
    }
    for (i, ds) in deps.iter().enumerate() {
        for &(d, span) in ds {
            // Edge from a step to what it reads.
            graph.add_edge(NodeIndex::new(i), NodeIndex::new(d.index()), span);
        }
    }
    let mut acyclic = true;
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        acyclic = false;
        let cycle = find_cycle(&graph, &scc);
        let mut shown: Vec<&str> = cycle.iter().map(|&(s, _)| names[s.index()]).collect();
        shown.push(names[cycle[0].0.index()]);
        let start = cycle[0].0.index();
        let mut d = Diagnostic::error(
            name_spans[start],
            format!("dependency cycle: {}", shown.join(" → ")),
        )
        .label("this step depends on itself")
        .hint("each arrow reads an output of the next step; one of these references must go");
        for &(s, span) in &cycle {
            let next = graph
                .edges(NodeIndex::new(s.index()))
                .find(|e| e.weight() == &span)
                .map(|e| names[e.target().index()])
                .unwrap_or("?");
            d = d.related(
                span,
                format!("`{}` reads from `{next}` here", names[s.index()]),
            );
        }
        diags.push(d);
    }
    if !acyclic {
        return None;
    }
    // Kahn's algorithm, lowest index first, so that the order is stable.
    let mut remaining: Vec<usize> = deps
        .iter()
        .map(|d| {
            let mut v: Vec<usize> = d.iter().map(|(s, _)| s.index()).collect();
            v.sort_unstable();
            v.dedup();
            v.len()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        let mut v: Vec<usize> = ds.iter().map(|(s, _)| s.index()).collect();
        v.sort_unstable();
        v.dedup();
        for d in v {
            dependents[d].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
        .filter(|&i| remaining[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(StepId::from_index(i));
        for &j in &dependents[i] {
            remaining[j] -= 1;
            if remaining[j] == 0 {
                ready.push(std::cmp::Reverse(j));
            }
        }
    }
    Some(order)
}

use petgraph::visit::EdgeRef;

/// One cycle through the strongly connected component `scc`: each step with the
/// span of its reference to the next one.
fn find_cycle(graph: &DiGraph<(), Span>, scc: &[NodeIndex]) -> Vec<(StepId, Span)> {
    let start = *scc.iter().min().unwrap_or(&scc[0]);
    let in_scc = |n: NodeIndex| scc.contains(&n);
    // Breadth-first from `start` until an edge leads back to it.
    let mut parent: std::collections::HashMap<NodeIndex, (NodeIndex, Span)> =
        std::collections::HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        let mut edges: Vec<_> = graph.edges(node).collect();
        edges.sort_by_key(|e| e.target());
        for e in edges {
            let t = e.target();
            if t == start {
                let mut path = vec![(StepId::from_index(node.index()), *e.weight())];
                let mut cur = node;
                while cur != start {
                    let (p, span) = parent[&cur];
                    path.push((StepId::from_index(p.index()), span));
                    cur = p;
                }
                path.reverse();
                return path;
            }
            if in_scc(t) && !parent.contains_key(&t) && t != start {
                parent.insert(t, (node, *e.weight()));
                queue.push_back(t);
            }
        }
    }
    Vec::new()
}

/// A glob as inputs use it: `*` stays within a folder, `**` crosses folders.
pub fn compile_glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

/// The folder of a glob before its first wildcard (`raw/night1` for `raw/night1/*.fits`).
pub fn glob_base(pattern: &str) -> &str {
    let mut end = 0;
    for (i, comp) in pattern.split('/').enumerate() {
        if comp.contains(['*', '?', '[', '{', '\\']) {
            break;
        }
        let _ = i;
        end += comp.len() + 1;
    }
    let base = &pattern[..end.saturating_sub(1).min(pattern.len())];
    // The last component is a file name, not a folder, when nothing is wild.
    if end > pattern.len() {
        pattern.rsplit_once('/').map_or("", |(d, _)| d)
    } else {
        base
    }
}

/// Why a path written for an output is not acceptable, if it is not.
pub fn literal_path_problem(path: &str) -> Result<(), &'static str> {
    if path.trim().is_empty() {
        return Err("is empty");
    }
    if path.starts_with('/') || path.starts_with('~') {
        return Err("is an absolute path");
    }
    if path.split('/').any(|c| c == "..") {
        return Err("leaves the pipeline folder with `..`");
    }
    Ok(())
}

/// An output path made canonical (`./a//b/` → `a/b`), or why it is not acceptable.
pub fn normalize_output(path: &str) -> Result<String, &'static str> {
    literal_path_problem(path)?;
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() {
        return Err("names the pipeline folder itself");
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_bases() {
        assert_eq!(glob_base("raw/*.fits"), "raw");
        assert_eq!(glob_base("raw/n1/**/x?.fits"), "raw/n1");
        assert_eq!(glob_base("*.fits"), "");
        assert_eq!(glob_base("a/b.txt"), "a");
    }

    #[test]
    fn output_paths() {
        assert_eq!(normalize_output("./a//b/"), Ok("a/b".to_string()));
        assert!(normalize_output("/abs").is_err());
        assert!(normalize_output("a/../../b").is_err());
        assert!(normalize_output("./").is_err());
    }
}
