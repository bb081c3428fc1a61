//! The step graph as Graphviz DOT or Mermaid: one node per step (fan-out
//! collapsed, with its instance count), one per source input, and an edge per
//! dependency labelled with what flows along it.

use crate::model::{InputRef, InputSource, Workflow};
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum NodeRef {
    Input(usize),
    Step(usize),
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeRef::Input(i) => write!(f, "i{i}"),
            NodeRef::Step(i) => write!(f, "s{i}"),
        }
    }
}

struct Edge {
    from: NodeRef,
    to: NodeRef,
    labels: Vec<String>,
}

fn step_label(wf: &Workflow, i: usize, instances: &[usize]) -> String {
    let s = &wf.steps[i];
    if s.foreach.is_empty() {
        s.name.to_string()
    } else {
        let vars: Vec<&str> = s.foreach.iter().map(|f| f.var.as_str()).collect();
        format!("{} ×{} ({})", s.name, instances[i], vars.join(", "))
    }
}

/// One edge per (from, to) pair, labelled with what flows along it, in step order.
fn edges(wf: &Workflow) -> Vec<Edge> {
    let mut out: Vec<Edge> = Vec::new();
    let mut index: std::collections::HashMap<(NodeRef, NodeRef), usize> =
        std::collections::HashMap::new();
    for (i, s) in wf.steps.iter().enumerate() {
        for input in &s.inputs {
            let (from, label) = match &input.source {
                InputRef::Output { step, output } => {
                    let up = wf.step(*step);
                    let gathers = up.foreach.iter().any(|f| s.var(&f.var).is_none());
                    let name = &up.outputs[*output].name;
                    (
                        NodeRef::Step(step.index()),
                        if gathers {
                            format!("{name} (all)")
                        } else {
                            name.to_string()
                        },
                    )
                }
                InputRef::Input(id) => (NodeRef::Input(id.index()), String::new()),
                InputRef::Var(v) => match &s.foreach[*v].domain {
                    crate::model::Domain::Files(id) => {
                        (NodeRef::Input(id.index()), "each".to_string())
                    }
                    crate::model::Domain::Values(_) => continue,
                },
                InputRef::Path { .. } => continue,
            };
            let to = NodeRef::Step(i);
            let e = *index.entry((from, to)).or_insert_with(|| {
                out.push(Edge {
                    from,
                    to,
                    labels: Vec::new(),
                });
                out.len() - 1
            });
            let labels = &mut out[e].labels;
            if !label.is_empty() && !labels.contains(&label) {
                labels.push(label);
            }
        }
    }
    out
}

fn input_label(wf: &Workflow, i: usize) -> String {
    let input = &wf.inputs[i];
    match &input.source {
        InputSource::Path { path, .. } => format!("{}: {path}", input.name),
        InputSource::Glob { pattern } => format!("{}: {pattern}", input.name),
    }
}

/// Renders the step graph; `instances` gives the derivation count of each step.
pub fn render(wf: &Workflow, instances: &[usize], format: GraphFormat) -> String {
    let edges = edges(wf);
    let mut used = vec![false; wf.inputs.len()];
    for e in &edges {
        if let NodeRef::Input(i) = e.from {
            used[i] = true;
        }
    }
    let used_inputs: Vec<usize> = (0..wf.inputs.len()).filter(|&i| used[i]).collect();
    let mut out = String::new();
    match format {
        GraphFormat::Dot => {
            let _ = writeln!(out, "digraph {} {{", dot_quote(&wf.name));
            out.push_str("    rankdir=LR;\n    node [shape=box, style=rounded];\n");
            for &i in &used_inputs {
                let _ = writeln!(
                    out,
                    "    i{i} [label={}, shape=note, style=\"\"];",
                    dot_quote(&input_label(wf, i))
                );
            }
            for i in 0..wf.steps.len() {
                let peripheries = if wf.steps[i].foreach.is_empty() {
                    ""
                } else {
                    ", peripheries=2"
                };
                let _ = writeln!(
                    out,
                    "    s{i} [label={}{peripheries}];",
                    dot_quote(&step_label(wf, i, instances))
                );
            }
            for e in &edges {
                if e.labels.is_empty() {
                    let _ = writeln!(out, "    {} -> {};", e.from, e.to);
                } else {
                    let _ = writeln!(
                        out,
                        "    {} -> {} [label={}];",
                        e.from,
                        e.to,
                        dot_quote(&e.labels.join(", "))
                    );
                }
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for &i in &used_inputs {
                let _ = writeln!(out, "    i{i}[/{}/]", mermaid_quote(&input_label(wf, i)));
            }
            for i in 0..wf.steps.len() {
                let label = mermaid_quote(&step_label(wf, i, instances));
                if wf.steps[i].foreach.is_empty() {
                    let _ = writeln!(out, "    s{i}({label})");
                } else {
                    let _ = writeln!(out, "    s{i}[[{label}]]");
                }
            }
            for e in &edges {
                if e.labels.is_empty() {
                    let _ = writeln!(out, "    {} --> {}", e.from, e.to);
                } else {
                    let _ = writeln!(
                        out,
                        "    {} -->|{}| {}",
                        e.from,
                        mermaid_quote(&e.labels.join(", ")),
                        e.to
                    );
                }
            }
        }
    }
    out
}

fn dot_quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn mermaid_quote(s: &str) -> String {
    let escaped: String = s
        .chars()
        .map(|c| match c {
            '"' => "#quot;".to_string(),
            '|' => "#124;".to_string(),
            '\n' => " ".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!("\"{escaped}\"")
}
