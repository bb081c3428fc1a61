//! Checked workflow → derivation instances: fan-out expanded (globs already
//! matched by `lang::expand`), every input resolved to concrete files, every
//! output and log path rendered, and the instances each one reads from.
//!
//! Matching across fan-out: an input `in x=up.out` of an instance takes, from
//! step `up`, the instances whose shared variables (same name) have this
//! instance's values, and all values of the variables it does not share (a
//! gather), in `up`'s instance order.

use mustbuild_lang::Expansion;
use mustbuild_lang::expand::{domains, for_each_instance, render_path};
use mustbuild_lang::model::{InputRef, InputSource, StepId, Workflow};
use std::collections::HashMap;
use std::ops::Range;

/// Index into [`Instances::all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub u32);

impl InstanceId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A file a derivation reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRef {
    /// A source file or folder: root-relative, or absolute.
    Source(String),
    /// Output `output` of another instance.
    Output { instance: InstanceId, output: usize },
}

/// One derivation: a step with one value per fan-out variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub step: StepId,
    /// The value of each of the step's fan-out variables (files: root-relative paths).
    pub values: Vec<String>,
    /// Per declared input, in order: the files it names (one, or a list).
    pub inputs: Vec<Vec<FileRef>>,
    /// Per declared output, its root-relative path.
    pub outputs: Vec<String>,
    pub log: Option<String>,
    /// The instances this one reads from, sorted, each once.
    pub deps: Vec<InstanceId>,
}

/// All instances, grouped by step; steps come in topological order, so every
/// instance comes after those it reads from.
#[derive(Debug, Clone, Default)]
pub struct Instances {
    pub all: Vec<Instance>,
    /// The instances of each step.
    pub by_step: Vec<Range<u32>>,
}

impl Instances {
    pub fn get(&self, id: InstanceId) -> &Instance {
        &self.all[id.index()]
    }

    pub fn of_step(&self, step: StepId) -> impl Iterator<Item = InstanceId> + '_ {
        self.by_step[step.index()].clone().map(InstanceId)
    }
}

/// Expands every step of a checked workflow into its instances.
pub fn instantiate(wf: &Workflow, expansion: &Expansion) -> Instances {
    let mut out = Instances {
        all: Vec::with_capacity(expansion.derivations),
        by_step: vec![0..0; wf.steps.len()],
    };
    // The position of each value in each step's domains, to find matching instances.
    let positions: Vec<Vec<HashMap<&str, usize>>> = wf
        .steps
        .iter()
        .map(|s| {
            domains(s, &expansion.glob_files)
                .into_iter()
                .map(|d| d.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect())
                .collect()
        })
        .collect();
    for &id in &wf.topo_order {
        let (si, step) = (id.index(), wf.step(id));
        let first = out.all.len() as u32;
        let doms = domains(step, &expansion.glob_files);
        for_each_instance(&doms, |values| {
            let inputs: Vec<Vec<FileRef>> = step
                .inputs
                .iter()
                .map(|input| match &input.source {
                    InputRef::Input(id) => match &wf.input(*id).source {
                        InputSource::Path { path, .. } => vec![FileRef::Source(path.clone())],
                        InputSource::Glob { .. } => expansion.glob_files[id.index()]
                            .iter()
                            .map(|f| FileRef::Source(f.clone()))
                            .collect(),
                    },
                    InputRef::Var(v) => vec![FileRef::Source(values[*v].to_string())],
                    InputRef::Path { path, .. } => {
                        vec![FileRef::Source(render_path(wf, path, values))]
                    }
                    InputRef::Output { step: up, output } => {
                        matching(wf, &out.by_step, &positions, *up, step, values)
                            .into_iter()
                            .map(|instance| FileRef::Output {
                                instance,
                                output: *output,
                            })
                            .collect()
                    }
                })
                .collect();
            let mut deps: Vec<InstanceId> = inputs
                .iter()
                .flatten()
                .filter_map(|f| match f {
                    FileRef::Output { instance, .. } => Some(*instance),
                    FileRef::Source(_) => None,
                })
                .collect();
            deps.sort_unstable();
            deps.dedup();
            out.all.push(Instance {
                step: StepId(si as u32),
                values: values.iter().map(|v| v.to_string()).collect(),
                inputs,
                outputs: step
                    .outputs
                    .iter()
                    .map(|o| render_path(wf, &o.path, values))
                    .collect(),
                log: step.log.as_ref().map(|l| render_path(wf, l, values)),
                deps,
            });
        });
        out.by_step[si] = first..out.all.len() as u32;
    }
    out
}

/// The instances of `up` that an instance of `down` with `values` reads: shared
/// variables fixed to this instance's values, the others gathered in order.
fn matching(
    wf: &Workflow,
    by_step: &[Range<u32>],
    positions: &[Vec<HashMap<&str, usize>>],
    up: StepId,
    down: &mustbuild_lang::model::Step,
    values: &[&str],
) -> Vec<InstanceId> {
    let up_step = wf.step(up);
    let range = &by_step[up.index()];
    let sizes: Vec<usize> = positions[up.index()].iter().map(HashMap::len).collect();
    // For each upstream variable: the positions to take.
    let mut choices: Vec<Vec<usize>> = Vec::with_capacity(sizes.len());
    for (k, f) in up_step.foreach.iter().enumerate() {
        match down.var(&f.var) {
            Some(mine) => match positions[up.index()][k].get(values[mine]) {
                Some(&p) => choices.push(vec![p]),
                // The checker makes shared values agree; a glob may still differ.
                None => return Vec::new(),
            },
            None => choices.push((0..sizes[k]).collect()),
        }
    }
    let mut out = Vec::new();
    let mut idx = vec![0usize; choices.len()];
    if choices.iter().any(Vec::is_empty) {
        return out;
    }
    loop {
        // Mixed-radix position of this combination among `up`'s instances.
        let mut flat = 0usize;
        for (k, c) in choices.iter().enumerate() {
            flat = flat * sizes[k] + c[idx[k]];
        }
        out.push(InstanceId(range.start + flat as u32));
        let mut k = choices.len();
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < choices[k].len() {
                break;
            }
            idx[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mustbuild_lang::{Diagnostics, MemoryFiles, expand, load_with};
    use std::path::Path;

    fn plan(text: &str, files: &[&str]) -> (Workflow, Instances) {
        let mut fs = MemoryFiles::new();
        fs.insert("p/pipeline.kdl", text);
        for f in files {
            fs.insert(format!("p/{f}"), "x");
        }
        let loaded = load_with(&fs, Path::new("p/pipeline.kdl"));
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.one_line(&loaded.sources))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let wf = loaded.workflow.unwrap();
        let mut d = Diagnostics::default();
        let e = expand(&wf, &fs, &mut d);
        let inst = instantiate(&wf, &e);
        (wf, inst)
    }

    const PIPELINE: &str = r#"
pipeline "t"
input samples glob="data/*.fq"
step map {
    foreach sample from=samples
    in reads=sample
    out bam="mapped/{sample.stem}.bam"
    run "map {in.reads} > {out.bam}"
}
step sort {
    foreach sample from=samples
    in bam=map.bam
    out bam="sorted/{sample.stem}.bam"
    run "sort {in.bam} > {out.bam}"
}
step hist {
    foreach sample from=samples
    foreach col "a" "b"
    in bam=sort.bam
    out h="hist/{sample.stem}-{col}.txt"
    run "hist {col} {in.bam} > {out.h}"
}
step report {
    foreach col "a" "b"
    in hs=hist.h
    out r="report-{col}.md"
    run "cat {in.hs} > {out.r}"
}
"#;

    #[test]
    fn shared_variables_match_and_others_gather() {
        let (wf, inst) = plan(PIPELINE, &["data/A.fq", "data/B.fq"]);
        let step = |n: &str| wf.step_by_name(n).unwrap();
        assert_eq!(inst.of_step(step("map")).count(), 2);
        assert_eq!(inst.of_step(step("hist")).count(), 4);
        // sort of B reads map of B.
        let sort_b = inst.get(inst.of_step(step("sort")).nth(1).unwrap());
        assert_eq!(sort_b.values, ["data/B.fq"]);
        let FileRef::Output {
            instance,
            output: 0,
        } = sort_b.inputs[0][0]
        else {
            panic!()
        };
        assert_eq!(inst.get(instance).outputs, ["mapped/B.bam"]);
        // report of col=b gathers hist of (A, b) and (B, b), in order.
        let report_b = inst.get(inst.of_step(step("report")).nth(1).unwrap());
        let read: Vec<&str> = report_b.inputs[0]
            .iter()
            .map(|f| match f {
                FileRef::Output { instance, output } => {
                    inst.get(*instance).outputs[*output].as_str()
                }
                FileRef::Source(_) => panic!(),
            })
            .collect();
        assert_eq!(read, ["hist/A-b.txt", "hist/B-b.txt"]);
        assert_eq!(report_b.deps.len(), 2);
        assert_eq!(report_b.outputs, ["report-b.md"]);
    }

    #[test]
    fn a_step_may_read_one_declared_after_it() {
        let text = r#"
pipeline "t"
step late {
    in x=early.o
    out o="late.txt"
    run "cp {in.x} {out.o}"
}
step early {
    out o="early.txt"
    run "echo > {out.o}"
}
"#;
        let (wf, inst) = plan(text, &[]);
        let late = inst.get(
            inst.of_step(wf.step_by_name("late").unwrap())
                .next()
                .unwrap(),
        );
        let FileRef::Output { instance, .. } = late.inputs[0][0] else {
            panic!()
        };
        assert_eq!(inst.get(instance).outputs, ["early.txt"]);
        assert!(
            instance
                < inst
                    .of_step(wf.step_by_name("late").unwrap())
                    .next()
                    .unwrap()
        );
    }

    #[test]
    fn sources_globs_and_literal_files() {
        let text = r#"
pipeline "t"
input genome "ref/genome.fa"
input reads glob="data/*.fq"
step s {
    foreach k "1" "2"
    in g=genome
    in all=reads
    in cfg=(file)"conf/{k}.yaml"
    out o="o{k}.txt"
    run "true > {out.o}"
}
"#;
        let (_, inst) = plan(text, &["data/b.fq", "data/a.fq", "ref/genome.fa"]);
        let second = &inst.all[1];
        assert_eq!(second.inputs[0], [FileRef::Source("ref/genome.fa".into())]);
        assert_eq!(
            second.inputs[1],
            [
                FileRef::Source("data/a.fq".into()),
                FileRef::Source("data/b.fq".into())
            ]
        );
        assert_eq!(second.inputs[2], [FileRef::Source("conf/2.yaml".into())]);
        assert!(second.deps.is_empty());
    }
}
