//! The command of a derivation: its `run` text with placeholders filled in.
//!
//! Paths are workspace-relative (the step runs in a scratch folder that mirrors
//! the workspace) and shell-quoted when they need it; a list input becomes its
//! paths separated by spaces, in order. Parameters and fan-out values are put in
//! as written in the file; `{cpus}` is the step's declared CPU count.

use crate::instantiate::{FileRef, InstanceId, Instances};
use mustbuild_lang::model::{Domain, Part, Workflow};

/// A path as the command sees it.
pub fn workspace_path<'a>(instances: &'a Instances, f: &'a FileRef) -> &'a str {
    match f {
        FileRef::Source(p) => p,
        FileRef::Output { instance, output } => &instances.get(*instance).outputs[*output],
    }
}

/// `text` as one shell word: unchanged when it is made of safe characters only.
pub fn shell_quote(text: &str) -> String {
    // The same characters the local executor starts a command without bash
    // for: a path left unquoted never sends its command to bash.
    if !text.is_empty() && text.chars().all(mustbuild_executors::bash_literal) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The command an instance runs.
pub fn render_command(wf: &Workflow, instances: &Instances, id: InstanceId) -> String {
    let inst = instances.get(id);
    let step = wf.step(inst.step);
    let mut out = String::with_capacity(step.run.text.len() + 64);
    for part in &step.run.parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::In(i) => {
                let words: Vec<String> = inst.inputs[*i]
                    .iter()
                    .map(|f| shell_quote(workspace_path(instances, f)))
                    .collect();
                out.push_str(&words.join(" "));
            }
            Part::Out(i) => out.push_str(&shell_quote(&inst.outputs[*i])),
            Part::Param(p) => out.push_str(&wf.param(*p).value),
            Part::Var { var, field } => {
                let value = field.apply(&inst.values[*var]);
                match step.foreach[*var].domain {
                    Domain::Files(_) => out.push_str(&shell_quote(value)),
                    Domain::Values(_) => out.push_str(value),
                }
            }
            Part::Cpus => out.push_str(&step.resources.cpus.to_string()),
            Part::Log => out.push_str(&shell_quote(inst.log.as_deref().unwrap_or_default())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instantiate::instantiate;
    use mustbuild_lang::{Diagnostics, MemoryFiles, expand, load_with};
    use std::path::Path;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("data/a.fq"), "data/a.fq");
        assert_eq!(shell_quote("my file.txt"), "'my file.txt'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn placeholders_become_paths_values_and_counts() {
        let text = r#"
pipeline "t"
param threshold 0.001
param col "GC content"
input reads glob="data/*.fq"
step count {
    foreach r from=reads
    in fq=r
    out n="counts/{r.stem}.txt"
    log "logs/{r.stem}.log"
    resources cpus=4
    run "count -t {cpus} --min {param.threshold} --col '{param.col}' {in.fq} > {out.n} 2> {log}; awk '{print $1}' {r.name}"
}
step all {
    in ns=count.n
    out t="total.txt"
    run "cat {in.ns} > {out.t}"
}
"#;
        let mut fs = MemoryFiles::new();
        fs.insert("p/pipeline.kdl", text);
        fs.insert("p/data/x y.fq", "x");
        fs.insert("p/data/a.fq", "x");
        let loaded = load_with(&fs, Path::new("p/pipeline.kdl"));
        let wf = loaded.workflow.unwrap();
        let e = expand(&wf, &fs, &mut Diagnostics::default());
        let inst = instantiate(&wf, &e);
        assert_eq!(
            render_command(&wf, &inst, InstanceId(1)),
            "count -t 4 --min 0.001 --col 'GC content' 'data/x y.fq' > 'counts/x y.txt' 2> 'logs/x y.log'; awk '{print $1}' 'x y.fq'"
        );
        assert_eq!(
            render_command(&wf, &inst, InstanceId(2)),
            "cat counts/a.txt 'counts/x y.txt' > total.txt"
        );
    }
}
