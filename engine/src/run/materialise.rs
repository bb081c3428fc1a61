//! Materialisation: a job's outputs into the store, and realised outputs into
//! the workspace (an edited one kept aside).

use super::job::Job;
use super::{Event, RunError, io_err};
use crate::instantiate::{InstanceId, Instances};
use mustbuild_lang::model::{PathKind, Workflow};
use mustbuild_store::{Digest, Ingest, LocalStore, Output, OutputKind, StoreError, Unrecorded};
use std::path::{Path, PathBuf};

/// Moves a succeeded job's declared outputs into the store; an output of the
/// wrong kind (a folder declared as a file) is the step's failure, with why.
/// Small files are not recorded yet: they go to `objects`, recorded with the
/// run. The store read them and left them in the scratch folder: those are
/// named in `in_scratch` (output name, file), to be moved to the workspace
/// rather than written again.
pub(crate) fn store_outputs(
    wf: &Workflow,
    instances: &Instances,
    store: &LocalStore,
    scratch: &Path,
    job: &Job,
    in_scratch: &mut Vec<(String, PathBuf)>,
    objects: &mut Unrecorded,
) -> Result<Result<Vec<Output>, String>, StoreError> {
    let inst = instances.get(job.id);
    let step = wf.step(inst.step);
    let mut stored = Vec::new();
    for (decl, path) in step.outputs.iter().zip(&inst.outputs) {
        let file = scratch.join(path);
        let (s, unrecorded) = store.add_path_unrecorded(&file, Ingest::Move)?;
        // Not recorded yet: a small file, which the store read and left there.
        if unrecorded.bytes(&s.digest).is_some() {
            in_scratch.push((decl.name.to_string(), file));
        }
        objects.append(unrecorded);
        let is_dir = s.kind == OutputKind::Tree;
        if is_dir != (decl.kind == PathKind::Dir) {
            return Ok(Err(format!(
                "output `{}` ({path}) is a {} but is declared as a {}",
                decl.name,
                if is_dir { "folder" } else { "file" },
                if is_dir { "file" } else { "folder" }
            )));
        }
        stored.push(Output {
            name: decl.name.to_string(),
            digest: s.digest,
            kind: s.kind,
        });
    }
    Ok(Ok(stored))
}

/// Puts an instance's outputs in the workspace. An output already there with the
/// right content is left alone (a no-op run copies nothing). One whose content
/// differs from what mustbuild last put there was edited by someone: it is kept
/// as `NAME.edited` and reported, then replaced.
///
/// Files named in `in_scratch` (output name, file holding exactly its content)
/// are moved there rather than written again, when they can be; the content of
/// the others may be among `unrecorded`.
///
/// Adds what it put where to `materialised`, for the store's `materialised`
/// table (the caller records it with the run, or on its way out after an error).
#[allow(clippy::too_many_arguments)]
pub(crate) fn materialize_outputs(
    (wf, instances, root): (&Workflow, &Instances, &Path),
    store: &LocalStore,
    (id, key): (InstanceId, Digest),
    outputs: &[Output],
    in_scratch: &[(String, PathBuf)],
    unrecorded: &Unrecorded,
    materialised: &mut Vec<mustbuild_store::Placed>,
    on_event: &mut dyn FnMut(Event),
) -> Result<(), RunError> {
    let inst = instances.get(id);
    let key = Some(key);
    let step = wf.step(inst.step);
    for (decl, path) in step.outputs.iter().zip(&inst.outputs) {
        let Some(o) = outputs.iter().find(|o| o.name == decl.name.as_str()) else {
            continue;
        };
        let dest = wf.root.join(path);
        let absolute = root.join(path);
        let present = std::fs::symlink_metadata(&dest).ok();
        if present.is_some() {
            let current = store.path_digest(&dest).ok().map(|(d, _, _)| d);
            let recorded = store.materialised_from(&absolute)?;
            let last = recorded.map(|(d, _)| d);
            if current == Some(o.digest) {
                // Also when the same bytes are now another derivation's output.
                if last != current || recorded.and_then(|(_, k)| k) != key {
                    materialised.push((absolute, o.digest, key));
                }
                continue;
            }
            if last.is_some() && current.is_some() && current != last {
                // A folder output's path ends in `/`: its backup is a sibling. An
                // older backup is never overwritten: NAME.edited.1, .2, … follow.
                let base = format!("{}.edited", path.trim_end_matches('/'));
                let backup = (0..)
                    .map(|n| match n {
                        0 => base.clone(),
                        n => format!("{base}.{n}"),
                    })
                    .find(|b| std::fs::symlink_metadata(wf.root.join(b)).is_err())
                    .unwrap_or(base);
                std::fs::rename(&dest, wf.root.join(&backup))
                    .map_err(io_err("keep the edited", &dest))?;
                on_event(Event::Replaced {
                    path: path.clone(),
                    backup,
                });
            }
        }
        let left = in_scratch.iter().find(|(name, _)| name == &o.name);
        let adopted = match left {
            // Not over a folder: that is replaced in steps, by `materialize`.
            Some((_, file)) if !present.is_some_and(|m| m.is_dir()) => {
                if let Some(parent) = dest.parent()
                    && !parent.is_dir()
                {
                    std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                }
                mustbuild_store::materialize::adopt(file, &dest, o.kind == OutputKind::Executable)
                    .map_err(io_err("move the output to", &dest))?
            }
            _ => false,
        };
        if !adopted {
            store.materialize_with(&o.digest, o.kind, &dest, unrecorded)?;
        }
        materialised.push((absolute, o.digest, key));
    }
    Ok(())
}
