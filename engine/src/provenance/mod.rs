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
