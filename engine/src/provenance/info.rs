//! What a run records of itself (a session's `info`): enough to tell, later, a
//! pipeline text, a `--param` or a tool's path from another run's.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A run's description, stored as JSON with its session. Every field is
/// optional when read: older and newer versions of mustbuild read each other's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunInfo {
    /// mustbuild's version.
    pub mustbuild: String,
    /// The pipeline file, absolute.
    pub pipeline_file: String,
    /// The pipeline's folder as the run saw it, absolute: what the paths in
    /// key materials are relative to.
    pub root: String,
    /// Every pipeline file read (the pipeline and what it includes): path → digest of its text.
    pub files: BTreeMap<String, String>,
    /// Every param's value in this run.
    pub params: BTreeMap<String, String>,
    /// `--param NAME=VALUE`, as given.
    pub overrides: Vec<(String, String)>,
    pub targets: Vec<String>,
    /// `--force`d steps.
    pub forced: Vec<String>,
    pub user: String,
    pub host: String,
    pub jobs: usize,
    /// Each declared tool as resolved: name → its path and digest.
    pub tools: BTreeMap<String, ToolInfo>,
    /// Told a no-op from the last complete run's record (nothing was looked at
    /// but the files' identities; the files, params and tools are its).
    pub noop: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolInfo {
    pub path: String,
    pub digest: String,
}

impl RunInfo {
    /// The fields every run knows without reading its pipeline: version, user, host.
    pub fn here(pipeline_file: &std::path::Path) -> RunInfo {
        RunInfo {
            mustbuild: env!("CARGO_PKG_VERSION").to_string(),
            pipeline_file: pipeline_file.to_string_lossy().into_owned(),
            user: user(),
            host: mustbuild_store::hostname(),
            ..RunInfo::default()
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// What a session's `info` column holds; a missing or unreadable one is empty.
    pub fn parse(json: Option<&str>) -> RunInfo {
        json.and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }
}

/// The user running mustbuild: `$USER`, else `uid N`.
fn user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()))
}
