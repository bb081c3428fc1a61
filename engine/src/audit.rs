//! `mustbuild audit`: is a realised result reproducible? Each chosen derivation
//! whose result is in the store runs again in a scratch folder, as a run's
//! worker runs it (inputs copied from the workspace's sources and the store's
//! objects, the same environment, `HOME` and `TMPDIR`), and the
//! digests of what it makes are compared with its realisation, sandboxed as a
//! run sandboxes it. The workspace and the realisations are never touched; the
//! verdict is stored per derivation (`why` and `show` print the latest). A
//! step whose key says it is impure (`network #true`) is audited too, and its
//! verdict says so: its result may depend on what it fetched.

use crate::instantiate::{InstanceId, Instances};
use crate::keys::{key_from_outputs, resolve_tools};
use crate::run::{RunError, Scratch, in_order, place_inputs, prepare, tool_folders};
use mustbuild_executors::{CancelToken, Outcome};
use mustbuild_lang::model::{PathKind, Workflow};
use mustbuild_store::{Digest, LocalStore, ObjectData, OutputKind};
use serde::Serialize;
use std::path::Path;

/// What one audit found for one derivation.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub step: String,
    pub values: Vec<String>,
    pub key: String,
    #[serde(flatten)]
    pub finding: Finding,
    /// Why its key cannot cover all it depends on (`network`); empty when pure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub impure: Vec<String>,
    /// Whether it ran sandboxed this time.
    pub sandboxed: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Finding {
    /// Every output came out byte for byte as realised.
    Reproducible,
    /// These outputs came out otherwise.
    Differs { outputs: Vec<OutputDiff> },
    /// The command did not succeed this time.
    Failed {
        outcome: String,
        /// The paths the sandbox refused it, as its log names them: the
        /// audit runs a step sandboxed even where its result was made
        /// unsandboxed (`--no-sandbox`, a node without Landlock).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        refused: Vec<String>,
        /// What to do about those.
        #[serde(skip_serializing_if = "Option::is_none")]
        advice: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutputDiff {
    pub name: String,
    pub path: String,
    pub realised: String,
    pub audited: String,
    /// For text: the first differing line, before and after (`-`, `+`).
    pub first_difference: Vec<String>,
}

/// Which realised instances to audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub path_var: String,
    /// Only these instances (all when `None`).
    pub selected: Option<Vec<bool>>,
    /// At most this many, spread evenly over the candidates (all when `None`).
    pub sample: Option<usize>,
    /// Run the commands sandboxed (where their steps allow it), as a run does.
    pub sandbox: bool,
    pub cancel: CancelToken,
}

/// Audits the realised instances chosen, one after the other, reporting each
/// verdict through `on_verdict` as it is stored.
pub fn audit(
    wf: &Workflow,
    instances: &Instances,
    store: &LocalStore,
    options: &AuditOptions,
    on_verdict: &mut dyn FnMut(&Verdict),
) -> Result<Vec<Verdict>, RunError> {
    let tools = resolve_tools(wf, store, &options.path_var)?;
    let tool_reads = tool_folders(wf, &tools);
    let n = instances.all.len();
    let mut outputs: Vec<Option<Vec<Digest>>> = vec![None; n];
    let mut kinds: Vec<Option<Vec<OutputKind>>> = vec![None; n];
    let mut realised: Vec<(InstanceId, Digest, Vec<String>)> = Vec::new();
    // Keys in order, as `--dry-run` computes them: what is realised now.
    for (i, inst) in instances.all.iter().enumerate() {
        let id = InstanceId(i as u32);
        let Some(material) = key_from_outputs(wf, instances, store, &tools, &outputs, id)? else {
            continue;
        };
        let key = material.key();
        let impure = crate::keys::impurities(&material);
        let Some((digests, k)) = store
            .realisation(&key)?
            .and_then(|r| in_order(wf.step(inst.step), &r))
        else {
            continue;
        };
        outputs[i] = Some(digests);
        kinds[i] = Some(k);
        if options.selected.as_ref().is_none_or(|s| s[i]) {
            realised.push((id, key, impure));
        }
    }
    let chosen: Vec<(InstanceId, Digest, Vec<String>)> = match options.sample {
        Some(k) if k < realised.len() => (0..k)
            .map(|j| realised[j * realised.len() / k.max(1)].clone())
            .collect(),
        _ => realised,
    };
    let mut verdicts = Vec::new();
    // One scratch folder, as a run's worker has (its inputs placed anew for
    // each derivation); gone at the end, or, if killed, at the next run.
    let scratch = Scratch::new(store, crate::run::next_run_number(), 0);
    for (id, key, impure) in chosen {
        if options.cancel.is_cancelled() {
            break;
        }
        let finding = audit_one(
            (wf, instances, store),
            &tool_reads[instances.get(id).step.index()],
            (&outputs, &kinds),
            (id, key),
            &scratch,
            options,
        );
        if finding.is_err() {
            scratch.remove();
        }
        let (finding, sandboxed) = finding?;
        let inst = instances.get(id);
        let verdict = Verdict {
            step: wf.step(inst.step).name.to_string(),
            values: inst.values.clone(),
            key: key.to_hex(),
            finding,
            impure,
            sandboxed,
        };
        let detail = serde_json::to_string(&verdict.finding).unwrap_or_default();
        let word = match verdict.finding {
            Finding::Reproducible => "reproducible",
            Finding::Differs { .. } => "differs",
            Finding::Failed { .. } => "failed",
        };
        store.add_audit(&key, word, &detail)?;
        on_verdict(&verdict);
        verdicts.push(verdict);
    }
    scratch.remove();
    Ok(verdicts)
}

type Known<'a> = (&'a [Option<Vec<Digest>>], &'a [Option<Vec<OutputKind>>]);

fn audit_one(
    (wf, instances, store): (&Workflow, &Instances, &LocalStore),
    tool_reads: &crate::run::ToolReads,
    (outputs, kinds): Known<'_>,
    (id, key): (InstanceId, Digest),
    scratch: &Scratch,
    options: &AuditOptions,
) -> Result<(Finding, bool), RunError> {
    let inst = instances.get(id);
    let step = wf.step(inst.step);
    let mut job = prepare(wf, instances, id, key, outputs, kinds, &options.path_var);
    let root = std::path::absolute(&wf.root).unwrap_or_else(|_| wf.root.clone());
    if let Some(allows) = &mut job.sandbox {
        tool_reads.allow(allows, [&root, store.root()]);
    }
    place_inputs(store, scratch, &job.placements)?;
    scratch.take(&mut job.request);
    if options.sandbox {
        job.sandbox_request();
    }
    let request = job.request;
    let sandboxed = request.sandbox.is_some();
    let result = mustbuild_executors::local::run(&request, &options.cancel);
    if result.outcome != Outcome::Succeeded {
        // A command that ran unsandboxed was refused nothing.
        let refused = match sandboxed && result.spawned {
            true => {
                let log = std::fs::read(&request.log).unwrap_or_default();
                mustbuild_executors::sandbox::refused_paths(&String::from_utf8_lossy(&log))
            }
            false => Vec::new(),
        };
        let advice =
            (!refused.is_empty()).then(|| crate::run::refusal::advice(&step.name, &refused, &root));
        let finding = Finding::Failed {
            outcome: format!("{:?}", result.outcome),
            refused,
            advice,
        };
        return Ok((finding, sandboxed));
    }
    let mut diffs = Vec::new();
    let expected = outputs[id.index()].as_deref().unwrap_or_default();
    for ((decl, path), realised) in step.outputs.iter().zip(&inst.outputs).zip(expected) {
        let made = scratch.root.join(path);
        let (digest, _, _) = store.path_digest(&made)?;
        if digest == *realised {
            continue;
        }
        let first_difference = if decl.kind == PathKind::File {
            first_difference(store, realised, &made)
        } else {
            Vec::new()
        };
        diffs.push(OutputDiff {
            name: decl.name.to_string(),
            path: path.clone(),
            realised: realised.to_hex(),
            audited: digest.to_hex(),
            first_difference,
        });
    }
    let finding = if diffs.is_empty() {
        Finding::Reproducible
    } else {
        Finding::Differs { outputs: diffs }
    };
    Ok((finding, sandboxed))
}

/// For two texts, the first line that differs (`-realised`, `+audited`);
/// nothing for binary content.
fn first_difference(store: &LocalStore, realised: &Digest, made: &Path) -> Vec<String> {
    let before = match store.object_data(realised) {
        Ok(ObjectData::Inline(b)) => b,
        Ok(ObjectData::File(p)) => std::fs::read(p).unwrap_or_default(),
        Err(_) => return Vec::new(),
    };
    let Ok(after) = std::fs::read(made) else {
        return Vec::new();
    };
    let (Ok(a), Ok(b)) = (std::str::from_utf8(&before), std::str::from_utf8(&after)) else {
        return Vec::new();
    };
    let (mut x, mut y) = (a.lines(), b.lines());
    for number in 1.. {
        match (x.next(), y.next()) {
            (None, None) => break,
            (l, r) if l == r => continue,
            (l, r) => {
                let mut out = vec![format!("line {number}:")];
                out.extend(l.map(|l| format!("-{l}")));
                out.extend(r.map(|r| format!("+{r}")));
                return out;
            }
        }
    }
    Vec::new()
}
