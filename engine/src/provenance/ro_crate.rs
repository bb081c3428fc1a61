//! `mustbuild export ro-crate`: a run as a Workflow Run RO-Crate (Provenance Run
//! Crate profile 0.5): the pipeline files (copied in), the pipeline as a
//! ComputationalWorkflow with a HowToStep and a tool per step, the run as a
//! CreateAction, each execution as a CreateAction (command, inputs and outputs
//! by digest, start and end, measured resources) under a ControlAction, all
//! organised by mustbuild's OrganizeAction. Inputs and outputs are named by
//! their workspace path, with their BLAKE3 digest and size; their bytes are in
//! the store, not in the crate.

use super::{ProvenanceError, RunInfo, label, values_of};
use crate::keys::input_digests;
use mustbuild_store::{Field, LocalStore};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

const PROFILES: [(&str, &str, &str); 4] = [
    (
        "https://w3id.org/ro/wfrun/process/0.5",
        "Process Run Crate",
        "0.5",
    ),
    (
        "https://w3id.org/ro/wfrun/workflow/0.5",
        "Workflow Run Crate",
        "0.5",
    ),
    (
        "https://w3id.org/ro/wfrun/provenance/0.5",
        "Provenance Run Crate",
        "0.5",
    ),
    (
        "https://w3id.org/workflowhub/workflow-ro-crate/1.0",
        "Workflow RO-Crate",
        "1.0",
    ),
];

/// ISO 8601 in UTC, from milliseconds since the epoch.
fn iso(ms: i64, utc: &dyn Fn(i64) -> String) -> String {
    format!("{}Z", utc(ms).replace(' ', "T"))
}

/// Writes the crate of run `session` into `dir` (made if missing); `utc` renders
/// a time (the binary's). `license`: the crate's licence (an IRI).
pub fn export(
    store: &LocalStore,
    session: i64,
    dir: &Path,
    license: &str,
    utc: &dyn Fn(i64) -> String,
) -> Result<(), ProvenanceError> {
    let asked = store
        .session(session)?
        .ok_or(ProvenanceError::NoSuchRun(session))?;
    let recorded = asked.alias_of.unwrap_or(asked.id);
    let row = store
        .session(recorded)?
        .ok_or(ProvenanceError::NoSuchRun(recorded))?;
    let info = RunInfo::parse(row.info.as_deref());
    let io = |e: std::io::Error, p: &Path| {
        ProvenanceError::Store(mustbuild_store::StoreError::Io {
            action: "write",
            path: p.to_path_buf(),
            source: e,
        })
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    // The pipeline files, copied in by their name (included files beside).
    let mut parts: Vec<Value> = Vec::new();
    let mut graph: Vec<Value> = Vec::new();
    let main = Path::new(&info.pipeline_file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline.kdl".to_string());
    for file in info.files.keys() {
        let path = Path::new(file);
        let name = if *file == info.pipeline_file {
            main.clone()
        } else {
            format!(
                "included/{}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            )
        };
        let to = dir.join(&name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(e, parent))?;
        }
        if std::fs::copy(path, &to).is_ok() && name != main {
            parts.push(json!({"@id": name}));
            graph.push(json!({"@id": name, "@type": "File", "name": file}));
        }
    }
    if !dir.join(&main).exists() {
        std::fs::write(dir.join(&main), "").map_err(|e| io(e, &dir.join(&main)))?;
    }
    let instances = store.session_instances(recorded)?;
    let mut steps: BTreeMap<String, ()> = BTreeMap::new();
    for i in &instances {
        steps.insert(i.step.clone(), ());
    }
    let step_ids: Vec<Value> = steps
        .keys()
        .map(|s| json!({"@id": format!("#step-{s}")}))
        .collect();
    let tool_ids: Vec<Value> = steps
        .keys()
        .map(|s| json!({"@id": format!("#tool-{s}")}))
        .collect();
    for (position, step) in steps.keys().enumerate() {
        graph.push(json!({
            "@id": format!("#step-{step}"), "@type": "HowToStep", "name": step,
            "position": position.to_string(), "workExample": {"@id": format!("#tool-{step}")},
        }));
        graph.push(json!({
            "@id": format!("#tool-{step}"), "@type": "SoftwareApplication",
            "name": format!("step `{step}` of {main}"),
        }));
    }
    // Each execution of the run, and what it read and made.
    let mut files: BTreeMap<String, Value> = BTreeMap::new();
    let mut controls = Vec::new();
    let mut actions = Vec::new();
    let (mut first, mut last) = (row.started_ms, row.finished_ms.unwrap_or(row.started_ms));
    for inst in &instances {
        let runs = store.runs_of(&inst.key)?;
        // Run here, or (reused) the execution that made the result used.
        let here = runs.iter().rev().find(|r| r.session == Some(recorded));
        let Some(run) = here.or_else(|| runs.iter().find(|r| r.outcome == "succeeded")) else {
            continue;
        };
        let mut name = label(&inst.step, &values_of(&inst.instance));
        if here.is_some() {
            first = first.min(run.started_ms);
            last = last.max(run.finished_ms);
        } else if let Some(s) = run.session {
            name = format!("{name} (reused: made in run {s})");
        }
        let id = format!("#run-{}", run.id);
        let material = store.derivation(&inst.key)?;
        let mut object = Vec::new();
        if let Some(m) = &material {
            for (path, digest, _) in input_digests(m) {
                let fid = file_id(&info.root, path);
                object.push(json!({"@id": fid}));
                files.entry(fid.clone()).or_insert_with(|| {
                    file_entity(
                        &fid,
                        path,
                        &digest.to_hex(),
                        store.content_size(&digest).ok().flatten(),
                    )
                });
            }
        }
        let mut result = Vec::new();
        let placed = store.materialised_of(&inst.key)?;
        for o in store.realised(&inst.key)? {
            // Where it is in the workspace, when mustbuild put it there.
            let (fid, path) = match placed.iter().find(|(_, d)| *d == o.digest) {
                Some((p, _)) => (
                    format!("file://{p}").replace(' ', "%20"),
                    Path::new(p)
                        .strip_prefix(&info.root)
                        .map(|r| r.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| p.clone()),
                ),
                None => (
                    format!("#output-{}-{}", run.id, o.name),
                    format!("{name}: {}", o.name),
                ),
            };
            result.push(json!({"@id": fid}));
            files.entry(fid.clone()).or_insert_with(|| {
                file_entity(
                    &fid,
                    &path,
                    &o.digest.to_hex(),
                    store.content_size(&o.digest).ok().flatten(),
                )
            });
        }
        let command = material
            .as_ref()
            .and_then(|m| match m.fields.get("command") {
                Some(Field::Text(t)) => Some(t.clone()),
                _ => None,
            });
        let mut usage = vec![json!({
            "@id": format!("{id}-wall"), "@type": "PropertyValue", "propertyID": "wall-time",
            "name": "wall time", "unitCode": "https://qudt.org/vocab/unit/MilliSEC",
            "value": run.finished_ms - run.started_ms,
        })];
        for (what, v, unit) in [
            (
                "user-cpu",
                run.user_cpu_ms,
                "https://qudt.org/vocab/unit/MilliSEC",
            ),
            (
                "system-cpu",
                run.sys_cpu_ms,
                "https://qudt.org/vocab/unit/MilliSEC",
            ),
            (
                "max-rss",
                run.max_rss_bytes,
                "https://qudt.org/vocab/unit/BYTE",
            ),
        ] {
            if let Some(v) = v {
                usage.push(json!({
                    "@id": format!("{id}-{what}"), "@type": "PropertyValue", "propertyID": what,
                    "name": what, "unitCode": unit, "value": v,
                }));
            }
        }
        let usage_ids: Vec<Value> = usage.iter().map(|u| json!({"@id": u["@id"]})).collect();
        graph.extend(usage);
        let mut action = json!({
            "@id": id, "@type": "CreateAction", "name": format!("run {name}"),
            "instrument": {"@id": format!("#tool-{}", inst.step)},
            "startTime": iso(run.started_ms, utc), "endTime": iso(run.finished_ms, utc),
            "object": object, "result": result, "resourceUsage": usage_ids,
            "actionStatus": {"@id": if run.outcome == "succeeded" {
                "http://schema.org/CompletedActionStatus"
            } else {
                "http://schema.org/FailedActionStatus"
            }},
            "identifier": inst.key.to_hex(),
        });
        if let Some(c) = command {
            action["description"] = json!(c);
        }
        if let Some(code) = run.exit_code {
            action["exitCode"] = json!(code);
        }
        actions.push(action);
        let control = format!("#control-{}", run.id);
        graph.push(json!({
            "@id": control, "@type": "ControlAction", "name": format!("orchestrate {name}"),
            "instrument": {"@id": format!("#step-{}", inst.step)}, "object": {"@id": id},
        }));
        controls.push(json!({"@id": control}));
    }
    graph.extend(actions);
    // Every file is a data entity of the crate (its bytes are named by digest,
    // not included).
    parts.extend(files.keys().map(|id| json!({"@id": id})));
    graph.extend(files.into_values());
    let run_id = format!("#run-session-{recorded}");
    graph.push(json!({
        "@id": run_id, "@type": "CreateAction", "name": format!("mustbuild run {main} (run {recorded})"),
        "instrument": {"@id": main}, "startTime": iso(first, utc), "endTime": iso(last, utc),
        "agent": {"@id": "#user"},
    }));
    graph.push(json!({"@id": "#user", "@type": "Person", "name": info.user}));
    graph.push(json!({
        "@id": "#mustbuild", "@type": "SoftwareApplication", "name": "mustbuild",
        "version": info.mustbuild,
    }));
    graph.push(json!({
        "@id": format!("#organize-{recorded}"), "@type": "OrganizeAction",
        "name": format!("mustbuild orchestrating run {recorded}"),
        "instrument": {"@id": "#mustbuild"}, "object": controls, "result": {"@id": run_id},
        "startTime": iso(first, utc), "endTime": iso(last, utc),
    }));
    graph.push(json!({
        "@id": "#mustbuild-kdl", "@type": "ComputerLanguage", "name": "mustbuild pipeline (KDL 2.0)",
        "url": {"@id": "https://kdl.dev"},
    }));
    graph.push(json!({
        "@id": main, "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
        "name": format!("pipeline {}", row.pipeline), "programmingLanguage": {"@id": "#mustbuild-kdl"},
        "hasPart": tool_ids, "step": step_ids,
    }));
    for (id, name, version) in PROFILES {
        graph.push(json!({"@id": id, "@type": "CreativeWork", "name": name, "version": version}));
    }
    graph.push(json!({"@id": license, "@type": "CreativeWork", "name": license}));
    parts.insert(0, json!({"@id": main}));
    graph.insert(
        0,
        json!({
            "@id": "./", "@type": "Dataset",
            "name": format!("run {recorded} of pipeline {}", row.pipeline),
            "description": format!("A mustbuild run of {}, by {} on {}", info.pipeline_file, info.user, info.host),
            "datePublished": iso(last, utc), "license": {"@id": license},
            "conformsTo": PROFILES.iter().map(|p| json!({"@id": p.0})).collect::<Vec<_>>(),
            "hasPart": parts, "mainEntity": {"@id": main}, "mentions": {"@id": run_id},
        }),
    );
    graph.insert(
        0,
        json!({
            "@id": "ro-crate-metadata.json", "@type": "CreativeWork",
            "conformsTo": {"@id": "https://w3id.org/ro/crate/1.1"}, "about": {"@id": "./"},
        }),
    );
    // Terms of the Workflow Run Crate profiles beyond RO-Crate 1.1's context.
    let context = json!([
        "https://w3id.org/ro/crate/1.1/context",
        {
            "exitCode": "https://w3id.org/ro/terms/workflow-run#exitCode",
            "resourceUsage": "https://w3id.org/ro/terms/workflow-run#resourceUsage",
        }
    ]);
    let doc = json!({"@context": context, "@graph": graph});
    let path = dir.join("ro-crate-metadata.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    )
    .map_err(|e| io(e, &path))?;
    Ok(())
}

/// An input file's identifier: its absolute path as a `file://` IRI (its bytes
/// are not in the crate).
fn file_id(root: &str, path: &str) -> String {
    let full = Path::new(root).join(path);
    format!("file://{}", full.display()).replace(' ', "%20")
}

fn file_entity(id: &str, name: &str, digest: &str, size: Option<u64>) -> Value {
    let mut f = json!({
        "@id": id, "@type": "File", "name": name,
        "identifier": format!("blake3:{digest}"),
    });
    if let Some(n) = size {
        f["contentSize"] = json!(n.to_string());
    }
    f
}
