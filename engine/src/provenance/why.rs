//! `mustbuild why`: whether an instance ran or was reused in a run and, if it
//! ran, every difference between its key material and that of its previous
//! time, each changed input followed upstream to what changed it, down to the
//! root causes (a source file, a param, the command text, an env var, a tool,
//! the pipeline text; or no earlier result: never built, a new fan-out value,
//! forced, failed last time, garbage-collected).
//!
//! Everything comes from the store: sessions, what each did with each instance
//! (`session_instances`), whole key materials, realisations and run records.

use super::{ProvenanceError, Resolved, RunInfo, label, values_of};
use mustbuild_store::{Digest, Field, InstanceRow, KeyMaterial, LocalStore, RunRow};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// An answer: the tree, and its leaves (the root causes) first.
#[derive(Debug, Clone, Serialize)]
pub struct WhyReport {
    /// The run asked about.
    pub run: i64,
    /// The asked run was a no-op: it used what this run left, unchanged (the
    /// explanation is of this run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_as_run: Option<i64>,
    pub root_causes: Vec<RootCause>,
    pub explanation: Explanation,
    /// The latest `mustbuild audit` of the target's derivation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<super::Audited>,
}

/// A root cause, where it is, and the instances it reached the target through.
#[derive(Debug, Clone, Serialize)]
pub struct RootCause {
    /// The instance whose key it changed (or that had no earlier result).
    pub at: String,
    /// From the instance after `at` down to the target: each read the one before.
    pub via: Vec<String>,
    pub cause: Cause,
}

/// One instance in one run, and why it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub step: String,
    pub values: Vec<String>,
    /// The run explained.
    pub run: i64,
    pub key: String,
    pub status: Status,
    /// The execution that made the result this run used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub made_by: Option<Execution>,
    /// For a reused result no run of this store made: the remote cache it
    /// came from, the key that signed it, and the run that fetched it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<mustbuild_store::Fetched>,
    /// The earlier run whose key of this instance this one is compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared_with_run: Option<i64>,
    /// Why its key cannot cover all its result depends on (`network`, from
    /// `network #true`); empty for a pure step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub impure: Vec<String>,
    pub causes: Vec<Cause>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its result was in the store: not run.
    Reused,
    /// Run, and succeeded.
    Executed,
    /// Run, and failed.
    Failed,
    /// Meant to run; no record of an end (killed, or stopped by a failure).
    NotFinished,
}

/// One execution, from its run record.
#[derive(Debug, Clone, Serialize)]
pub struct Execution {
    pub record: i64,
    pub run: Option<i64>,
    pub host: String,
    pub started_ms: i64,
    pub wall_ms: i64,
    pub outcome: String,
    pub exit_code: Option<i64>,
    /// Whether its command ran sandboxed, where the record says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandboxed: Option<bool>,
}

impl From<&RunRow> for Execution {
    fn from(r: &RunRow) -> Execution {
        Execution {
            record: r.id,
            run: r.session,
            host: r.host.clone(),
            started_ms: r.started_ms,
            wall_ms: r.finished_ms - r.started_ms,
            outcome: r.outcome.clone(),
            exit_code: r.exit_code,
            sandboxed: r.sandboxed,
        }
    }
}

/// A file's content: its digest and, where the store knows it, its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Content {
    pub digest: String,
    pub size: Option<u64>,
}

/// A tool as a run resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolSide {
    pub digest: String,
    /// From the run's own record; `None` when it did not say.
    pub path: Option<String>,
}

/// A difference, or why there was nothing to compare with.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    /// No earlier run of this pipeline had this step.
    NeverBuilt,
    /// The step ran before, but not with these values.
    NewValue,
    /// `--force`.
    Forced,
    /// The same derivation failed last time.
    FailedLastTime {
        run: Option<i64>,
        outcome: String,
        exit_code: Option<i64>,
    },
    /// The same derivation was meant to run last time and never ended.
    Interrupted { run: i64 },
    /// The same derivation, whose result (made in `made_in`) is gone from the store.
    Collected { made_in: Option<i64> },
    /// The earlier key material is gone from the store: nothing to compare with.
    PreviousGone { run: i64 },
    /// A source file's content.
    Source {
        input: String,
        path: String,
        before: Content,
        after: Content,
    },
    /// A file made by another step, and why that changed.
    Upstream {
        input: String,
        path: String,
        before: Content,
        after: Content,
        /// `None` when it is explained elsewhere in this answer (`explained_as`).
        #[serde(skip_serializing_if = "Option::is_none")]
        producer: Option<Box<Explanation>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        explained_as: Option<String>,
    },
    /// An input's list of files.
    InputFiles {
        input: String,
        added: Vec<String>,
        removed: Vec<String>,
    },
    Param {
        name: String,
        before: Option<String>,
        after: Option<String>,
        /// Whether `--param` set it, before and after.
        override_before: bool,
        override_after: bool,
    },
    /// The command text (when not only a param or a path changed it).
    Command {
        before: String,
        after: String,
        diff: Vec<String>,
    },
    Env {
        name: String,
        before: Option<String>,
        after: Option<String>,
    },
    Tool {
        name: String,
        before: Option<ToolSide>,
        after: Option<ToolSide>,
    },
    /// Another field of the derivation: the shell, the outputs, the key version.
    Definition {
        field: String,
        before: Option<String>,
        after: Option<String>,
    },
    /// The pipeline files whose text changed between the two runs (what the
    /// changes above were written in).
    PipelineText { files: Vec<String> },
    /// The producer's key did not change but its output did: it ran again and
    /// made other bytes (not reproducible, or a result replaced).
    SameKeyOtherBytes,
}

impl Cause {
    /// Whether it says what changed in the derivation (what pipeline text can
    /// be the origin of).
    fn is_definition(&self) -> bool {
        matches!(
            self,
            Cause::Param { .. }
                | Cause::Command { .. }
                | Cause::Env { .. }
                | Cause::Definition { .. }
                | Cause::InputFiles { .. }
        )
    }
}

/// Explains `target` in the run it was resolved in.
pub fn why(store: &LocalStore, target: &Resolved) -> Result<WhyReport, ProvenanceError> {
    let mut explainer = Explainer {
        store,
        pipeline: target.asked.pipeline.clone(),
        explained: HashSet::new(),
        infos: HashMap::new(),
    };
    let explanation = explainer.explain(&target.row, None)?;
    let mut root_causes = Vec::new();
    collect_roots(&explanation, &mut Vec::new(), &mut root_causes);
    Ok(WhyReport {
        run: target.asked.id,
        same_as_run: (target.asked.id != target.row.session).then_some(target.row.session),
        audit: super::latest_audit(store, &target.row.key)?,
        root_causes,
        explanation,
    })
}

fn collect_roots(e: &Explanation, via: &mut Vec<String>, out: &mut Vec<RootCause>) {
    let here = label(&e.step, &e.values);
    for c in &e.causes {
        match c {
            Cause::Upstream {
                producer: Some(p), ..
            } => {
                via.insert(0, here.clone());
                collect_roots(p, via, out);
                via.remove(0);
            }
            Cause::Upstream { producer: None, .. } | Cause::PipelineText { .. } => {}
            cause => out.push(RootCause {
                at: here.clone(),
                via: via.clone(),
                cause: cause.clone(),
            }),
        }
    }
    // The pipeline files go with the definition changes they carried.
    if let Some(files @ Cause::PipelineText { .. }) = e
        .causes
        .iter()
        .find(|c| matches!(c, Cause::PipelineText { .. }))
        && e.causes.iter().any(Cause::is_definition)
    {
        out.push(RootCause {
            at: here,
            via: via.clone(),
            cause: files.clone(),
        });
    }
}

struct Explainer<'a> {
    store: &'a LocalStore,
    pipeline: String,
    /// (run, step, instance) already explained in this answer.
    explained: HashSet<(i64, String, String)>,
    infos: HashMap<i64, RunInfo>,
}

impl Explainer<'_> {
    fn info(&mut self, session: i64) -> Result<&RunInfo, ProvenanceError> {
        if !self.infos.contains_key(&session) {
            let row = self.store.session(session)?;
            let mut info = RunInfo::parse(row.as_ref().and_then(|r| r.info.as_deref()));
            // A no-op run's files and tools are its alias's.
            if let Some(of) = row.and_then(|r| r.alias_of) {
                let s = self.store.session(of)?;
                info = RunInfo::parse(s.as_ref().and_then(|r| r.info.as_deref()));
            }
            self.infos.insert(session, info);
        }
        Ok(&self.infos[&session])
    }

    /// Why `now` ran in its run, compared with `before` (default: the
    /// instance's latest earlier run).
    fn explain(
        &mut self,
        now: &InstanceRow,
        before: Option<InstanceRow>,
    ) -> Result<Explanation, ProvenanceError> {
        self.explained
            .insert((now.session, now.step.clone(), now.instance.clone()));
        let runs = self.store.runs_of(&now.key)?;
        let here: Vec<&RunRow> = runs
            .iter()
            .filter(|r| r.session == Some(now.session))
            .collect();
        let (status, made_by) = if now.planned == "reused" {
            let first = runs.iter().find(|r| r.outcome == "succeeded");
            (Status::Reused, first.map(Execution::from))
        } else {
            match here.last() {
                Some(r) if r.outcome == "succeeded" => {
                    (Status::Executed, Some(Execution::from(*r)))
                }
                Some(_) => (Status::Failed, None),
                None => (Status::NotFinished, None),
            }
        };
        let before = match before {
            Some(b) => Some(b),
            None => {
                self.store
                    .instance_before(&self.pipeline, &now.step, &now.instance, now.session)?
            }
        };
        let mut out = Explanation {
            step: now.step.clone(),
            values: values_of(&now.instance),
            run: now.session,
            key: now.key.to_hex(),
            status,
            fetched: match (status, &made_by) {
                (Status::Reused, None) => self.store.fetched(&now.key)?,
                _ => None,
            },
            made_by,
            compared_with_run: before.as_ref().map(|b| b.session),
            impure: (self.store.derivation(&now.key)?)
                .map(|m| crate::keys::impurities(&m))
                .unwrap_or_default(),
            causes: Vec::new(),
        };
        // A result reused as the target: nothing ran, nothing to explain.
        if status == Status::Reused && before.as_ref().is_none_or(|b| b.key == now.key) {
            return Ok(out);
        }
        if now.planned == "forced" {
            out.causes.push(Cause::Forced);
        }
        match before {
            None => {
                out.compared_with_run = None;
                out.causes.push(
                    if self
                        .store
                        .step_seen_before(&self.pipeline, &now.step, now.session)?
                    {
                        Cause::NewValue
                    } else {
                        Cause::NeverBuilt
                    },
                );
            }
            Some(b) if b.key == now.key => {
                if now.planned != "forced" {
                    out.causes.push(same_key_cause(&runs, now, &b));
                }
            }
            Some(b) => {
                let (old, new) = (
                    self.store.derivation(&b.key)?,
                    self.store.derivation(&now.key)?,
                );
                match (old, new) {
                    (Some(old), Some(new)) => {
                        let causes = self.differences(&old, &new, &b, now)?;
                        out.causes.extend(causes);
                    }
                    _ => out.causes.push(Cause::PreviousGone { run: b.session }),
                }
            }
        }
        Ok(out)
    }

    /// Every difference between two key materials of one instance, each
    /// changed input explained upstream.
    fn differences(
        &mut self,
        old: &KeyMaterial,
        new: &KeyMaterial,
        before: &InstanceRow,
        now: &InstanceRow,
    ) -> Result<Vec<Cause>, ProvenanceError> {
        let mut causes = Vec::new();
        let mut renamed: Vec<(String, String)> = Vec::new();
        self.input_changes(old, new, before, now, &mut causes, &mut renamed)?;
        for change in old.diff(new) {
            let path = change.path.as_str();
            let (top, name) = path.split_once('.').unwrap_or((path, ""));
            let text = |f: &Option<Field>| f.as_ref().map(field_text);
            match top {
                "inputs" => {}
                "command" => {}
                "params" => {
                    let before_info = self.info(before.session)?.overrides.clone();
                    let after_info = &self.info(now.session)?.overrides;
                    causes.push(Cause::Param {
                        name: name.to_string(),
                        before: text(&change.before),
                        after: text(&change.after),
                        override_before: before_info.iter().any(|(n, _)| n == name),
                        override_after: after_info.iter().any(|(n, _)| n == name),
                    });
                    if let (Some(b), Some(a)) = (text(&change.before), text(&change.after)) {
                        renamed.push((b, a));
                    }
                }
                "env" => causes.push(Cause::Env {
                    name: name.to_string(),
                    before: text(&change.before),
                    after: text(&change.after),
                }),
                "tools" => {
                    let side = |info: &RunInfo, f: &Option<Field>| {
                        f.as_ref().map(|f| ToolSide {
                            digest: field_text(f),
                            path: info.tools.get(name).map(|t| t.path.clone()),
                        })
                    };
                    let b = side(self.info(before.session)?, &change.before);
                    let a = side(self.info(now.session)?, &change.after);
                    causes.push(Cause::Tool {
                        name: name.to_string(),
                        before: b,
                        after: a,
                    });
                }
                _ => causes.push(Cause::Definition {
                    field: path.to_string(),
                    before: text(&change.before),
                    after: text(&change.after),
                }),
            }
        }
        if let (Some(Field::Text(b)), Some(Field::Text(a))) =
            (old.fields.get("command"), new.fields.get("command"))
            && b != a
        {
            // Not a cause of its own when the params and paths that changed account for it.
            let mut explained = b.clone();
            for (from, to) in &renamed {
                if !from.is_empty() {
                    explained = explained.replace(from.as_str(), to);
                }
            }
            if explained != *a {
                causes.push(Cause::Command {
                    before: b.clone(),
                    after: a.clone(),
                    diff: line_diff(b, a),
                });
            }
        }
        if causes.iter().any(Cause::is_definition) {
            let old_files = self.info(before.session)?.files.clone();
            let new_files = &self.info(now.session)?.files;
            let changed: Vec<String> = new_files
                .iter()
                .filter(|(path, digest)| old_files.get(*path).is_some_and(|d| d != *digest))
                .map(|(path, _)| path.clone())
                .chain(
                    new_files
                        .keys()
                        .filter(|p| !old_files.contains_key(*p))
                        .map(|p| format!("{p} (new)")),
                )
                .collect();
            if !changed.is_empty() {
                causes.push(Cause::PipelineText { files: changed });
            }
        }
        Ok(causes)
    }

    /// The inputs: files added or removed per input, and each file whose
    /// content changed, as a source or as another step's output.
    fn input_changes(
        &mut self,
        old: &KeyMaterial,
        new: &KeyMaterial,
        before: &InstanceRow,
        now: &InstanceRow,
        causes: &mut Vec<Cause>,
        renamed: &mut Vec<(String, String)>,
    ) -> Result<(), ProvenanceError> {
        let (a, b) = (inputs_by_name(old), inputs_by_name(new));
        let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for input in names {
            let empty = Vec::new();
            let (was, is) = (
                a.get(input).unwrap_or(&empty),
                b.get(input).unwrap_or(&empty),
            );
            let old_paths: BTreeMap<&str, Digest> =
                was.iter().map(|(p, d)| (p.as_str(), *d)).collect();
            let new_paths: BTreeSet<&str> = is.iter().map(|(p, _)| p.as_str()).collect();
            let added: Vec<String> = is
                .iter()
                .filter(|(p, _)| !old_paths.contains_key(p.as_str()))
                .map(|(p, _)| p.clone())
                .collect();
            let removed: Vec<String> = was
                .iter()
                .filter(|(p, _)| !new_paths.contains(p.as_str()))
                .map(|(p, _)| p.clone())
                .collect();
            if added.len() == 1 && removed.len() == 1 {
                renamed.push((removed[0].clone(), added[0].clone()));
            }
            if !added.is_empty() || !removed.is_empty() {
                causes.push(Cause::InputFiles {
                    input: input.clone(),
                    added,
                    removed,
                });
            }
            for (path, digest) in is {
                let Some(old_digest) = old_paths.get(path.as_str()) else {
                    continue;
                };
                if old_digest == digest {
                    continue;
                }
                let before_content = self.content(old_digest)?;
                let after_content = self.content(digest)?;
                let Some(producer) = self.producer(now, path, digest)? else {
                    causes.push(Cause::Source {
                        input: input.clone(),
                        path: path.clone(),
                        before: before_content,
                        after: after_content,
                    });
                    continue;
                };
                let id = (
                    producer.session,
                    producer.step.clone(),
                    producer.instance.clone(),
                );
                let (explanation, explained_as) = if self.explained.contains(&id) {
                    (
                        None,
                        Some(label(&producer.step, &values_of(&producer.instance))),
                    )
                } else {
                    // The producer as it was in the run this one is compared with.
                    let earlier = match self.store.session_instance(
                        before.session,
                        &producer.step,
                        &producer.instance,
                    )? {
                        Some(e) => Some(e),
                        None => self.store.instance_before(
                            &self.pipeline,
                            &producer.step,
                            &producer.instance,
                            producer.session,
                        )?,
                    };
                    let mut e = self.explain(&producer, earlier.clone())?;
                    if earlier.as_ref().is_some_and(|x| x.key == producer.key)
                        && e.causes.iter().all(|c| !matches!(c, Cause::Forced))
                    {
                        e.causes.push(Cause::SameKeyOtherBytes);
                    }
                    (Some(Box::new(e)), None)
                };
                causes.push(Cause::Upstream {
                    input: input.clone(),
                    path: path.clone(),
                    before: before_content,
                    after: after_content,
                    producer: explanation,
                    explained_as,
                });
            }
        }
        Ok(())
    }

    /// The instance of `now`'s run that made the file `path` it read (with
    /// content `digest`); `None` for a source file.
    fn producer(
        &mut self,
        now: &InstanceRow,
        path: &str,
        digest: &Digest,
    ) -> Result<Option<InstanceRow>, ProvenanceError> {
        let root = self.info(now.session)?.root.clone();
        let origin = super::path_origin(self.store, &root, path)?;
        if origin == super::PathOrigin::Source {
            return Ok(None);
        }
        let candidates: Vec<InstanceRow> = self
            .store
            .producers_in(now.session, digest)?
            .into_iter()
            .map(|(row, _)| row)
            .filter(|r| !(r.step == now.step && r.instance == now.instance))
            .collect();
        Ok(
            super::choose_producer(&origin, &candidates, |r, step| r.step == step)
                .map(|i| candidates[i].clone()),
        )
    }

    fn content(&self, digest: &Digest) -> Result<Content, ProvenanceError> {
        Ok(Content {
            digest: digest.to_hex(),
            size: self.store.content_size(digest)?,
        })
    }
}

/// Why an instance whose key did not change ran again.
fn same_key_cause(runs: &[RunRow], now: &InstanceRow, before: &InstanceRow) -> Cause {
    let earlier: Vec<&RunRow> = runs
        .iter()
        .filter(|r| r.session.is_none_or(|s| s < now.session))
        .collect();
    if let Some(last) = earlier.last()
        && last.outcome != "succeeded"
    {
        return Cause::FailedLastTime {
            run: last.session,
            outcome: last.outcome.clone(),
            exit_code: last.exit_code,
        };
    }
    if let Some(made) = earlier.iter().rev().find(|r| r.outcome == "succeeded") {
        return Cause::Collected {
            made_in: made.session,
        };
    }
    if before.planned != "reused" {
        return Cause::Interrupted {
            run: before.session,
        };
    }
    Cause::Collected { made_in: None }
}

/// Each input's files, in order: (path, digest).
fn inputs_by_name(m: &KeyMaterial) -> BTreeMap<String, Vec<(String, Digest)>> {
    crate::keys::inputs_by_name(m)
        .map(|(name, files)| {
            let files = files.map(|(p, d, _)| (p.to_string(), d)).collect();
            (name.to_string(), files)
        })
        .collect()
}

fn field_text(f: &Field) -> String {
    match f {
        Field::Text(t) => t.clone(),
        Field::Digest(d) => d.to_hex(),
        Field::Integer(n) => n.to_string(),
        Field::List(items) => {
            let parts: Vec<String> = items.iter().map(field_text).collect();
            format!("[{}]", parts.join(", "))
        }
        Field::Map(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}: {}", field_text(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

/// A line diff (`-` removed, `+` added, ` ` kept) by longest common subsequence;
/// long texts, beyond what a command is, give their changed lines only.
pub fn line_diff(before: &str, after: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    if a.len() * b.len() > 250_000 {
        let old: HashSet<&str> = a.iter().copied().collect();
        let new: HashSet<&str> = b.iter().copied().collect();
        return a
            .iter()
            .filter(|l| !new.contains(*l))
            .map(|l| format!("-{l}"))
            .chain(
                b.iter()
                    .filter(|l| !old.contains(*l))
                    .map(|l| format!("+{l}")),
            )
            .collect();
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("-{}", a[i]));
            i += 1;
        } else {
            out.push(format!("+{}", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_diff_keeps_common_lines() {
        assert_eq!(line_diff("a\nb\nc", "a\nx\nc"), [" a", "-b", "+x", " c"]);
        assert_eq!(line_diff("one", "two"), ["-one", "+two"]);
        assert_eq!(line_diff("", "new"), ["+new"]);
    }
}
