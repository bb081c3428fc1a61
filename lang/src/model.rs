//! The checked workflow: what a pipeline file means, with every name resolved
//! to an index. Built only from a file set without errors, so the engine may
//! rely on every invariant stated here.
//!
//! Spans point back into the [`SourceMap`](crate::SourceMap) for later messages;
//! they are left out of the serialized form, which is what "the same workflow"
//! means (a formatted file gives the same serialization).

use crate::source::Span;
use compact_str::CompactString;
use serde::Serialize;
use std::path::PathBuf;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub struct $name(pub u32);

        impl $name {
            pub fn index(self) -> usize {
                self.0 as usize
            }

            pub(crate) fn from_index(i: usize) -> Self {
                $name(u32::try_from(i).unwrap_or(u32::MAX))
            }
        }
    };
}

id_type!(
    /// Index into [`Workflow::steps`].
    StepId
);
id_type!(
    /// Index into [`Workflow::inputs`].
    InputId
);
id_type!(
    /// Index into [`Workflow::params`].
    ParamId
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workflow {
    pub name: String,
    /// The pipeline file's folder: relative paths (inputs, outputs, literal files)
    /// start here.
    pub root: PathBuf,
    pub params: Vec<Param>,
    pub inputs: Vec<Input>,
    /// Tools every step uses.
    pub tools: Vec<Tool>,
    /// Environment every step gets.
    pub env: Vec<EnvVar>,
    /// What every step's sandbox allows (`sandbox` at the top of the pipeline).
    #[serde(skip_serializing_if = "SandboxDecl::is_unsaid")]
    pub sandbox: SandboxDecl,
    pub steps: Vec<Step>,
    /// Every step after all the steps it depends on.
    pub topo_order: Vec<StepId>,
}

impl Workflow {
    pub fn step(&self, id: StepId) -> &Step {
        &self.steps[id.index()]
    }

    pub fn input(&self, id: InputId) -> &Input {
        &self.inputs[id.index()]
    }

    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.index()]
    }

    pub fn step_by_name(&self, name: &str) -> Option<StepId> {
        self.steps
            .iter()
            .position(|s| s.name == name)
            .map(StepId::from_index)
    }

    /// Replaces a param's value (`--param NAME=VALUE`): the text is substituted as
    /// given. The error carries the closest existing name, if any.
    pub fn override_param(&mut self, name: &str, value: &str) -> Result<(), Option<String>> {
        match self.params.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.value = value.to_string();
                Ok(())
            }
            None => Err(
                crate::names::closest(name, self.params.iter().map(|p| p.name.as_str()))
                    .map(str::to_string),
            ),
        }
    }

    /// Whether `step` runs sandboxed in a run that sandboxes: as its own
    /// `sandbox` says, else as the pipeline's does, else yes.
    pub fn sandboxed(&self, step: &Step) -> bool {
        (step.sandbox.as_ref().and_then(|s| s.enabled))
            .or(self.sandbox.enabled)
            .unwrap_or(true)
    }

    /// The folders `step`'s sandbox reads where they are (`sandbox { read … }`):
    /// the pipeline's, then the step's own.
    pub fn sandbox_reads<'a>(&'a self, step: &'a Step) -> impl Iterator<Item = &'a str> + 'a {
        (self.sandbox.read.iter())
            .chain(step.sandbox.iter().flat_map(|s| s.read.iter()))
            .map(|r| r.path.as_str())
    }

    /// Step-level edges `(upstream, downstream)`, each once, in step order.
    pub fn step_edges(&self) -> impl Iterator<Item = (StepId, StepId)> + '_ {
        self.steps
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.deps.iter().map(move |&d| (d, StepId::from_index(i))))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Param {
    pub name: CompactString,
    /// The value as written in the file (`0.001` stays `0.001`; a string without its
    /// quotes), which is what placeholders substitute.
    pub value: String,
    pub kind: ParamKind,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    String,
    Integer,
    Float,
    Bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    pub name: CompactString,
    pub source: InputSource,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputSource {
    /// One file or directory (relative to the root, or absolute).
    Path { path: String, kind: PathKind },
    /// The files matching a pattern, relative to the root, sorted.
    Glob { pattern: String },
}

/// What a path must name. `Any` is decided by what is there when the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Any,
    File,
    Dir,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tool {
    /// A command name looked up on `PATH`, or an absolute path.
    pub name: CompactString,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvVar {
    pub name: CompactString,
    pub value: String,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub name: CompactString,
    /// Fan-out: one derivation per combination of the variables' values.
    pub foreach: Vec<FanOut>,
    pub inputs: Vec<StepInput>,
    pub outputs: Vec<StepOutput>,
    /// A file for people; never part of output hashes.
    pub log: Option<Template>,
    pub run: Template,
    pub resources: Resources,
    /// How many times a failed run is tried again.
    pub retry: u32,
    pub env: Vec<EnvVar>,
    pub tools: Vec<Tool>,
    /// Its `sandbox` line, where it has one (boxed: most steps have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Box<SandboxDecl>>,
    /// `network #true`: it may reach the network, so its result may depend on
    /// more than its key (the key says it is impure).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// The steps whose outputs this one reads, sorted, each once.
    pub deps: Vec<StepId>,
    #[serde(skip)]
    pub span: Span,
    #[serde(skip)]
    pub name_span: Span,
}

impl Step {
    /// Derivations after value fan-out, with file fan-outs counted by `files_in`.
    pub fn instance_count(&self, mut files_in: impl FnMut(InputId) -> usize) -> usize {
        self.foreach
            .iter()
            .map(|f| match &f.domain {
                Domain::Values(v) => v.len(),
                Domain::Files(input) => files_in(*input),
            })
            .fold(1usize, usize::saturating_mul)
    }

    pub fn var(&self, name: &str) -> Option<usize> {
        self.foreach.iter().position(|f| f.var == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanOut {
    pub var: CompactString,
    pub domain: Domain,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// Literal values, as written.
    Values(Vec<String>),
    /// The files of a glob input.
    Files(InputId),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepInput {
    pub name: CompactString,
    pub source: InputRef,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputRef {
    /// A declared `input` (a glob input gives the list of its files).
    Input(InputId),
    /// Output `output` of step `step`: of the matching instance for shared fan-out
    /// variables, a list over the others.
    Output { step: StepId, output: usize },
    /// The current file of this step's fan-out variable (an index into `foreach`).
    Var(usize),
    /// A literal file or directory, relative to the root.
    Path { path: Template, kind: PathKind },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepOutput {
    pub name: CompactString,
    pub path: Template,
    pub kind: PathKind,
    #[serde(skip)]
    pub span: Span,
}

/// Text with placeholders, parsed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Template {
    /// As written (after KDL string decoding).
    pub text: CompactString,
    pub parts: Vec<Part>,
    #[serde(skip)]
    pub span: Span,
}

impl Template {
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The fan-out variables this text uses.
    pub fn vars(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { var, .. } => Some(*var),
            _ => None,
        })
    }

    pub fn params(&self) -> impl Iterator<Item = ParamId> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(id) => Some(*id),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Text(CompactString),
    /// `{in.NAME}`: index into the step's inputs.
    In(usize),
    /// `{out.NAME}`: index into the step's outputs.
    Out(usize),
    /// `{param.NAME}`
    Param(ParamId),
    /// `{VAR}`, `{VAR.stem}`…: index into the step's `foreach`.
    Var {
        var: usize,
        field: VarField,
    },
    /// `{cpus}`: the step's declared CPU count.
    Cpus,
    /// `{log}`: the step's log file.
    Log,
}

/// Which part of a fan-out value a placeholder takes. Only `Value` applies to
/// value lists; the rest apply to files (`raw/a.fits`: name `a.fits`, stem `a`,
/// ext `fits`, dir `raw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VarField {
    Value,
    Name,
    Stem,
    Ext,
    Dir,
}

impl VarField {
    pub const FILE_FIELDS: [(&'static str, VarField); 4] = [
        ("name", VarField::Name),
        ("stem", VarField::Stem),
        ("ext", VarField::Ext),
        ("dir", VarField::Dir),
    ];

    /// The part of `path` this field selects.
    pub fn apply(self, path: &str) -> &str {
        let name = path.rsplit('/').next().unwrap_or(path);
        match self {
            VarField::Value => path,
            VarField::Name => name,
            VarField::Stem => name
                .rsplit_once('.')
                .map_or(name, |(s, _)| if s.is_empty() { name } else { s }),
            VarField::Ext => name
                .rsplit_once('.')
                .map_or("", |(s, e)| if s.is_empty() { "" } else { e }),
            VarField::Dir => path.rsplit_once('/').map_or(".", |(d, _)| d),
        }
    }
}

/// A `sandbox` line: whether steps run sandboxed and which folders, besides
/// the system's, they read where they are (docs/language.md, "What a step can
/// see").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct SandboxDecl {
    /// `sandbox #true` or `sandbox #false`; `None` where it does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `sandbox { read "/cvmfs" }`: absolute folders, as declared (without a
    /// trailing `/`); they enter the key as paths.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<ReadFolder>,
}

impl SandboxDecl {
    /// No `sandbox` line said anything.
    pub fn is_unsaid(&self) -> bool {
        self.enabled.is_none() && self.read.is_empty()
    }
}

/// A folder a sandbox reads (`read "/cvmfs"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadFolder {
    pub path: CompactString,
    #[serde(skip)]
    pub span: Span,
}

/// What a step asks of the machine that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub cpus: u32,
    pub memory_bytes: Option<u64>,
    pub gpus: u32,
    pub time_seconds: Option<u64>,
    pub disk_bytes: Option<u64>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 1,
            memory_bytes: None,
            gpus: 0,
            time_seconds: None,
            disk_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VarField;

    #[test]
    fn var_fields_split_paths() {
        let p = "raw/night1/a.b.fits";
        assert_eq!(VarField::Name.apply(p), "a.b.fits");
        assert_eq!(VarField::Stem.apply(p), "a.b");
        assert_eq!(VarField::Ext.apply(p), "fits");
        assert_eq!(VarField::Dir.apply(p), "raw/night1");
        assert_eq!(VarField::Stem.apply(".hidden"), ".hidden");
        assert_eq!(VarField::Ext.apply("x"), "");
        assert_eq!(VarField::Dir.apply("x"), ".");
    }
}
