//! Whole-pipeline checks on resolved steps: dependency cycles, topological
//! order, and the shape of paths.

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::model::{InputRef, Step, StepId};
use crate::source::Span;
use petgraph::graph::{DiGraph, NodeIndex};

/// `step` reads an output of `dep`; `span` is the `in` that does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    pub step: StepId,
    pub dep: StepId,
    pub span: Span,
}

/// The edges from a step to the steps it reads from.
pub(crate) fn dep_edges(id: StepId, step: &Step) -> impl Iterator<Item = Edge> + '_ {
    step.inputs.iter().filter_map(move |i| match i.source {
        InputRef::Output { step: dep, .. } => Some(Edge {
            step: id,
            dep,
            span: i.span,
        }),
        _ => None,
    })
}

/// A topological order of the `names.len()` steps, lowest index first among the
/// ready ones (so the order is stable), or `None` after reporting every cycle.
pub(crate) fn topo_order(
    edges: &mut [Edge],
    names: &[&str],
    name_spans: &[Span],
    diags: &mut Diagnostics,
) -> Option<Vec<StepId>> {
    let n = names.len();
    // Kahn's algorithm over distinct (dep, step) pairs, in compressed rows.
    edges.sort_unstable_by_key(|e| (e.dep, e.step));
    let mut row_start = vec![0u32; n + 1];
    let mut targets: Vec<u32> = Vec::with_capacity(edges.len());
    let mut indegree = vec![0u32; n];
    let mut last = None;
    for e in edges.iter() {
        if last == Some((e.dep, e.step)) {
            continue;
        }
        last = Some((e.dep, e.step));
        row_start[e.dep.index() + 1] += 1;
        targets.push(e.step.0);
        indegree[e.step.index()] += 1;
    }
    for i in 0..n {
        row_start[i + 1] += row_start[i];
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<u32>> = (0..n)
        .filter(|&i| indegree[i] == 0)
        .map(|i| std::cmp::Reverse(i as u32))
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(StepId(i));
        let i = i as usize;
        for &t in &targets[row_start[i] as usize..row_start[i + 1] as usize] {
            indegree[t as usize] -= 1;
            if indegree[t as usize] == 0 {
                ready.push(std::cmp::Reverse(t));
            }
        }
    }
    if order.len() == n {
        return Some(order);
    }
    report_cycles(edges, names, name_spans, diags);
    None
}

/// Reports each dependency cycle once, with the references that form it.
fn report_cycles(edges: &[Edge], names: &[&str], name_spans: &[Span], diags: &mut Diagnostics) {
    let mut graph: DiGraph<(), Span> = DiGraph::with_capacity(names.len(), edges.len());
    for _ in 0..names.len() {
        graph.add_node(());
    }
    for e in edges {
        graph.add_edge(
            NodeIndex::new(e.step.index()),
            NodeIndex::new(e.dep.index()),
            e.span,
        );
    }
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let cycle = find_cycle(&graph, &scc);
        let Some(&(first, _)) = cycle.first() else {
            continue;
        };
        let mut shown: Vec<&str> = cycle.iter().map(|&(s, _)| names[s.index()]).collect();
        shown.push(names[first.index()]);
        let mut d = Diagnostic::error(
            name_spans[first.index()],
            format!("dependency cycle: {}", shown.join(" → ")),
        )
        .label("this step depends on itself")
        .hint("each arrow reads an output of the next step; one of these references must go");
        for &(s, span) in &cycle {
            let next = graph
                .edges(NodeIndex::new(s.index()))
                .find(|e| e.weight() == &span)
                .map_or("?", |e| names[e.target().index()]);
            d = d.related(
                span,
                format!("`{}` reads from `{next}` here", names[s.index()]),
            );
        }
        diags.push(d);
    }
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

/// Whether a value put into a path could take it out of the pipeline folder.
pub fn escapes(value: &str) -> bool {
    value.starts_with('/') || value.starts_with('~') || value.split('/').any(|c| c == "..")
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
