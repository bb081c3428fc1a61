//! `mustbuild show`: a derivation as the store holds it: its key, inputs by
//! digest, command, env, tools, params, outputs, and the executions of it.

use super::why::{Content, Execution};
use super::{ProvenanceError, Resolved, RunInfo, values_of};
use mustbuild_store::{Field, LocalStore};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Derivation {
    pub step: String,
    pub values: Vec<String>,
    pub run: i64,
    pub key: String,
    /// Whether the store still has the key material (gc may have removed it).
    pub known: bool,
    pub command: Option<String>,
    pub shell: Option<String>,
    pub env: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
    /// Tool name → its digest, and the path the run resolved it to.
    pub tools: BTreeMap<String, (String, Option<String>)>,
    pub inputs: Vec<InputFile>,
    /// Empty when not realised (failed, or gc'd).
    pub outputs: Vec<OutputFile>,
    /// Every execution of this derivation, oldest first.
    pub executions: Vec<Execution>,
    /// The execution that made the outputs in use: the first that succeeded.
    pub made_by: Option<Execution>,
    /// The latest `mustbuild audit` of it.
    pub audit: Option<Audited>,
}

/// What the latest audit of a derivation found.
#[derive(Debug, Clone, Serialize)]
pub struct Audited {
    pub at_ms: i64,
    /// `reproducible`, `differs` or `failed`.
    pub verdict: String,
    pub detail: serde_json::Value,
}

/// The latest audit of `key`, if any.
pub fn latest_audit(
    store: &LocalStore,
    key: &mustbuild_store::Digest,
) -> Result<Option<Audited>, ProvenanceError> {
    Ok(store
        .latest_audit(key)?
        .map(|(at_ms, verdict, detail)| Audited {
            at_ms,
            verdict,
            detail: serde_json::from_str(&detail).unwrap_or_default(),
        }))
}

#[derive(Debug, Clone, Serialize)]
pub struct InputFile {
    pub input: String,
    pub path: String,
    pub kind: String,
    pub content: Content,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputFile {
    pub name: String,
    pub kind: String,
    pub content: Content,
}

fn text(f: Option<&Field>) -> Option<String> {
    match f {
        Some(Field::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

fn text_map(f: Option<&Field>) -> BTreeMap<String, String> {
    match f {
        Some(Field::Map(m)) => m
            .iter()
            .filter_map(|(k, v)| match v {
                Field::Text(t) => Some((k.clone(), t.clone())),
                Field::Digest(d) => Some((k.clone(), d.to_hex())),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The derivation of the resolved instance.
pub fn show(store: &LocalStore, target: &Resolved) -> Result<Derivation, ProvenanceError> {
    let row = &target.row;
    let material = store.derivation(&row.key)?;
    let content = |d: &mustbuild_store::Digest| -> Result<Content, ProvenanceError> {
        Ok(Content {
            digest: d.to_hex(),
            size: store.content_size(d)?,
        })
    };
    let mut inputs = Vec::new();
    if let Some(Field::Map(by_name)) = material.as_ref().and_then(|m| m.fields.get("inputs")) {
        for (name, list) in by_name {
            let Field::List(files) = list else { continue };
            for f in files {
                let Field::Map(entry) = f else { continue };
                let (Some(path), Some(Field::Digest(d))) =
                    (text(entry.get("path")), entry.get("digest"))
                else {
                    continue;
                };
                inputs.push(InputFile {
                    input: name.clone(),
                    path,
                    kind: text(entry.get("kind")).unwrap_or_default(),
                    content: content(d)?,
                });
            }
        }
    }
    let mut outputs = Vec::new();
    for o in store.realised(&row.key)? {
        outputs.push(OutputFile {
            name: o.name,
            kind: format!("{:?}", o.kind).to_lowercase(),
            content: content(&o.digest)?,
        });
    }
    let runs = store.runs_of(&row.key)?;
    let info = store.session(row.session)?;
    let info = RunInfo::parse(info.as_ref().and_then(|s| s.info.as_deref()));
    let fields = material.as_ref().map(|m| &m.fields);
    let tools = text_map(fields.and_then(|f| f.get("tools")))
        .into_iter()
        .map(|(name, digest)| {
            let path = info.tools.get(&name).map(|t| t.path.clone());
            (name, (digest, path))
        })
        .collect();
    Ok(Derivation {
        step: row.step.clone(),
        values: values_of(&row.instance),
        run: target.asked.id,
        key: row.key.to_hex(),
        known: material.is_some(),
        command: text(fields.and_then(|f| f.get("command"))),
        shell: text(fields.and_then(|f| f.get("shell"))),
        env: text_map(fields.and_then(|f| f.get("env"))),
        params: text_map(fields.and_then(|f| f.get("params"))),
        tools,
        inputs,
        outputs,
        made_by: runs
            .iter()
            .find(|r| r.outcome == "succeeded")
            .map(Execution::from),
        executions: runs.iter().map(Execution::from).collect(),
        audit: latest_audit(store, &row.key)?,
    })
}
