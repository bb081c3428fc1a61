//! What a user names (`results/a.txt`, `align`, `align[s1]`, `align[s1, hg38]`)
//! and the instance of a run it is.

use super::{ProvenanceError, label, values_of};
use mustbuild_store::{InstanceRow, LocalStore, SessionRow};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An output in the workspace.
    Path(PathBuf),
    /// A step, and some or all of its instance's values.
    Instance {
        step: String,
        values: Option<Vec<String>>,
    },
}

impl Target {
    /// `step[values]` and bare names are instances, unless a file of that name
    /// is in `cwd`; anything with a `/` or a `.` is a path.
    pub fn parse(text: &str, cwd: &Path) -> Target {
        if let Some(open) = text.find('[')
            && text.ends_with(']')
            && !text[..open].contains('/')
        {
            let inner = text[open + 1..text.len() - 1].trim();
            let values = if inner.is_empty() {
                Vec::new()
            } else {
                inner.split(',').map(|v| v.trim().to_string()).collect()
            };
            return Target::Instance {
                step: text[..open].to_string(),
                values: Some(values),
            };
        }
        let bare = !text.contains('/') && !text.contains('.');
        if bare && !cwd.join(text).exists() {
            Target::Instance {
                step: text.to_string(),
                values: None,
            }
        } else {
            Target::Path(PathBuf::from(text))
        }
    }
}

/// A target found: the run asked about, and the instance as a run recorded it
/// (the asked run's own, or, for a no-op run, the run whose derivations it used).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub asked: SessionRow,
    pub row: InstanceRow,
}

/// Finds `target` in run `run` (default: the latest run that touched it).
pub fn resolve(
    store: &LocalStore,
    target: &Target,
    run: Option<i64>,
    cwd: &Path,
) -> Result<Resolved, ProvenanceError> {
    let (step, values, text) = match target {
        Target::Instance { step, values } => (
            step.clone(),
            values.clone(),
            match values {
                Some(v) => label(step, v),
                None => step.clone(),
            },
        ),
        Target::Path(p) => {
            let row = instance_of_path(store, p, cwd)?;
            let values = values_of(&row.instance);
            if run.is_none() {
                let asked = store
                    .latest_session_of(&row.step, Some(&row.instance))?
                    .and_then(|s| store.session(s).transpose())
                    .transpose()?
                    .ok_or(ProvenanceError::NoSuchRun(row.session))?;
                return Ok(Resolved { asked, row });
            }
            let text = label(&row.step, &values);
            (row.step, Some(values), text)
        }
    };
    let session = match run {
        Some(id) => id,
        None => {
            let exact = values.as_ref().map(|v| v.join("\t"));
            let found = match store.latest_session_of(&step, exact.as_deref())? {
                Some(s) => Some(s),
                None => store.latest_session_of(&step, None)?,
            };
            found.ok_or_else(|| ProvenanceError::NotFound {
                message: format!("no run in this store has processed step `{step}`"),
                hint: "name the step as the pipeline does, or an output path; \
                       `mustbuild runs` lists the runs this store remembers"
                    .to_string(),
            })?
        }
    };
    let asked = store
        .session(session)?
        .ok_or(ProvenanceError::NoSuchRun(session))?;
    let recorded = asked.alias_of.unwrap_or(asked.id);
    let rows = store.session_step_instances(recorded, &step)?;
    if rows.is_empty() {
        return Err(ProvenanceError::NotFound {
            message: format!("run {session} did not process step `{step}`"),
            hint: "leave out --run for the latest run that did".to_string(),
        });
    }
    let matching: Vec<&InstanceRow> = match &values {
        None => rows.iter().collect(),
        Some(v) => {
            let exact = v.join("\t");
            match rows.iter().find(|r| r.instance == exact) {
                Some(r) => vec![r],
                None => rows
                    .iter()
                    .filter(|r| {
                        let have = values_of(&r.instance);
                        v.iter().all(|want| have.contains(want))
                    })
                    .collect(),
            }
        }
    };
    match matching.as_slice() {
        [one] => Ok(Resolved {
            asked,
            row: (*one).clone(),
        }),
        [] => Err(ProvenanceError::NotFound {
            message: format!("run {session} has no instance `{text}`"),
            hint: format!(
                "its instances of `{step}`: {}",
                listing(&step, rows.iter().collect())
            ),
        }),
        many => Err(ProvenanceError::Ambiguous {
            target: text,
            count: many.len(),
            session,
            listed: listing(&step, many.to_vec()),
        }),
    }
}

/// Up to eight instances, as targets.
fn listing(step: &str, rows: Vec<&InstanceRow>) -> String {
    let mut out: Vec<String> = rows
        .iter()
        .take(8)
        .map(|r| label(step, &values_of(&r.instance)))
        .collect();
    if rows.len() > 8 {
        out.push(format!("… ({} in all)", rows.len()));
    }
    out.join(", ")
}

/// The instance whose realisation is what mustbuild last put at `path`, as
/// the latest run that recorded it did.
fn instance_of_path(
    store: &LocalStore,
    path: &Path,
    cwd: &Path,
) -> Result<InstanceRow, ProvenanceError> {
    let absolute = std::path::absolute(cwd.join(path)).unwrap_or_else(|_| cwd.join(path));
    let mut found = store.materialised_from(&absolute)?;
    if found.is_none()
        && let Ok(canonical) = std::fs::canonicalize(&absolute)
    {
        found = store.materialised_from(&canonical)?;
    }
    let not_made = || ProvenanceError::NotFound {
        message: format!(
            "`{}` is not an output mustbuild put in place",
            path.display()
        ),
        hint: "name an output of a step (or the step itself: `STEP`, `STEP[VALUE]`); \
               a source file is explained by the steps that read it"
            .to_string(),
    };
    let (digest, key) = found.ok_or_else(not_made)?;
    if let Some(key) = key
        && let Some(row) = store.instances_with_key(&key)?.into_iter().next()
    {
        return Ok(row);
    }
    // Put in place before the store recorded whose it was: by content, the
    // latest run's derivation with that output.
    let mut best: Option<InstanceRow> = None;
    for (key, _) in store.realisations_of(&digest)? {
        if let Some(row) = store.instances_with_key(&key)?.into_iter().next()
            && best.as_ref().is_none_or(|b| row.session > b.session)
        {
            best = Some(row);
        }
    }
    best.ok_or_else(|| ProvenanceError::NotFound {
        message: format!(
            "`{}` was put in place by mustbuild, but the store no longer has the run that made it",
            path.display()
        ),
        hint: "gc removed it; a new `mustbuild run` records it again".to_string(),
    })
}
