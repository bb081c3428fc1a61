//! Provenance: what the store remembers of each run, read back for people.
//! `why` explains why an instance ran (down to the root causes) or was reused,
//! `show` what a derivation is and which run made it; both name their target as
//! a user does (an output path, `step`, `step[values]`) and read only the store,
//! so they answer after the pipeline file changed or went away.

mod depends;
mod info;
pub mod ro_crate;
mod show;
mod target;
mod why;

pub use depends::{Depends, depends};
pub use info::{RunInfo, ToolInfo};
pub use show::{Audited, Derivation, InputFile, OutputFile, latest_audit, show};
pub use target::{Resolved, Target, resolve};
pub use why::{
    Cause, Content, Execution, Explanation, RootCause, Status, ToolSide, WhyReport, line_diff, why,
};

use mustbuild_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// The target names nothing the store remembers; the hint says what to try.
    #[error("{message}")]
    NotFound { message: String, hint: String },
    #[error("`{target}` names {count} instances in run {session}: {listed}")]
    Ambiguous {
        target: String,
        count: usize,
        session: i64,
        listed: String,
    },
    #[error("the store has no run {0}")]
    NoSuchRun(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProvenanceError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ProvenanceError::NotFound { hint, .. } => Some(hint.clone()),
            ProvenanceError::Ambiguous { target, .. } => Some(format!(
                "name one: `{target}[VALUE]`, or all its values: `{target}[V1, V2]`"
            )),
            ProvenanceError::NoSuchRun(_) => Some("`mustbuild runs` lists the runs".to_string()),
            ProvenanceError::Store(_) => None,
        }
    }
}

/// How an instance is shown: `step`, or `step[v1, v2]` (as a target is written).
pub fn label(step: &str, values: &[String]) -> String {
    if values.is_empty() {
        step.to_string()
    } else {
        format!("{step}[{}]", values.join(", "))
    }
}

/// An instance's values from the store's label of it (`run::instance_label`).
pub fn values_of(instance: &str) -> Vec<String> {
    if instance.is_empty() {
        Vec::new()
    } else {
        instance.split('\t').map(str::to_string).collect()
    }
}

/// What a file an instance read is, by its path: what the store last put
/// there tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathOrigin {
    /// Never put in place by mustbuild: a source file.
    Source,
    /// An output of this step (`None`: of a step the store did not record).
    Output(Option<String>),
    /// The run's folder is not known: tell by content alone.
    Unknown,
}

/// Where `path` (relative to the run's folder `root`) came from.
pub(crate) fn path_origin(
    store: &mustbuild_store::LocalStore,
    root: &str,
    path: &str,
) -> Result<PathOrigin, ProvenanceError> {
    if root.is_empty() {
        return Ok(PathOrigin::Unknown);
    }
    Ok(
        match store.materialised_from(&std::path::Path::new(root).join(path))? {
            None => PathOrigin::Source,
            Some((_, Some(key))) => PathOrigin::Output(
                store
                    .instances_with_key(&key)?
                    .into_iter()
                    .next()
                    .map(|r| r.step),
            ),
            Some((_, None)) => PathOrigin::Output(None),
        },
    )
}

/// Among the instances that made a file's bytes, the one whose step's output
/// the path is (several steps may make the same bytes).
pub(crate) fn choose_producer<T>(
    origin: &PathOrigin,
    candidates: &[T],
    is_of_step: impl Fn(&T, &str) -> bool,
) -> Option<usize> {
    match origin {
        PathOrigin::Source => None,
        PathOrigin::Output(Some(step)) => candidates
            .iter()
            .position(|c| is_of_step(c, step))
            .or((!candidates.is_empty()).then_some(0)),
        PathOrigin::Output(None) | PathOrigin::Unknown => (!candidates.is_empty()).then_some(0),
    }
}
