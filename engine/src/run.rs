//! Running a pipeline on this machine: a first, plain version of `mustbuild run`.
//!
//! Instances are taken in topological order as their inputs become known. For each,
//! the key is computed from content; a realised key is materialised from the store;
//! otherwise the instance runs in a fresh scratch folder that holds only its inputs
//! (at their workspace paths), with a cleared environment, up to `jobs` at a time.
//! Declared outputs are moved into the store, realised, and materialised into the
//! workspace; anything else the command left is discarded.
//!
//! A step takes its declared CPUs and memory out of what `-j` and the machine
//! offer; a failed run is tried again `retry` times; after a failure nothing new
//! starts unless `--keep-going`. Still to come (issue 4): GPU slots, a progress
//! display, `--dry-run` reasons, targets.

use crate::instantiate::{FileRef, InstanceId, Instances};
use crate::keys::{KeyError, key_from_outputs, resolve_tools};
use mustbuild_executors::{CancelToken, ExecRequest, Outcome};
use mustbuild_lang::model::{PathKind, Workflow};
use mustbuild_store::{Digest, Ingest, LocalStore, Output, OutputKind, RunRecord, StoreError};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_path_buf();
    move |source| RunError::Io {
        action,
        path,
        source,
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// CPUs to fill: a step takes its declared `cpus` (at most all of them).
    pub jobs: usize,
    /// Memory to fill, when known: a step takes its declared `memory`.
    pub memory_bytes: Option<u64>,
    /// The `PATH` given to steps and used to resolve tools.
    pub path_var: String,
    /// Go on with everything that does not depend on a failure.
    pub keep_going: bool,
    /// Set to stop: running commands are killed, nothing new starts.
    pub cancel: CancelToken,
    /// Only these instances (closed under dependencies); all when `None`.
    pub selected: Option<Vec<bool>>,
    /// Steps whose instances run even when realised (`--force`).
    pub force: Vec<mustbuild_lang::model::StepId>,
}

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Cached {
        step: String,
        values: Vec<String>,
    },
    Started {
        step: String,
        values: Vec<String>,
    },
    Executed {
        step: String,
        values: Vec<String>,
        seconds: f64,
    },
    Failed {
        step: String,
        values: Vec<String>,
        outcome: Outcome,
        log_tail: String,
    },
    /// A workspace output someone edited was kept aside and replaced.
    Replaced {
        path: String,
        backup: String,
    },
    /// A failed run tried again.
    Retrying {
        step: String,
        values: Vec<String>,
        attempt: u32,
    },
    Skipped {
        step: String,
        values: Vec<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub executed: usize,
    pub cached: usize,
    pub failed: usize,
    /// Stopped by a cancel (Ctrl-C).
    pub cancelled: usize,
    /// Not run because something they read failed.
    pub skipped: usize,
    /// User and system CPU time of the commands run (retries included).
    pub cpu_seconds: f64,
    pub session: i64,
}

struct Job {
    id: InstanceId,
    /// Held from before the run until the realisation is committed: two processes
    /// never run the same derivation at once.
    lock: Option<std::fs::File>,
    /// Run even if realised (`--force`).
    force: bool,
    attempt: u32,
    cpus: usize,
    memory: u64,
    key: Digest,
    scratch: PathBuf,
    request: ExecRequest,
}

struct Done {
    job: Job,
    result: mustbuild_executors::ExecResult,
    /// Another process realised it while this one waited for the lock.
    realised_elsewhere: Option<Vec<Output>>,
}

/// Takes the lock of a derivation key (a file in the store's `locks/`).
fn lock_key(store: &LocalStore, key: &Digest) -> std::io::Result<std::fs::File> {
    let dir = store.root().join("locks");
    std::fs::create_dir_all(&dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(key.to_hex()))?;
    f.lock()?;
    Ok(f)
}

/// Runs every instance (or takes it from the store), reporting each through `on_event`.
pub fn run(
    wf: &Workflow,
    instances: &Instances,
    store: &LocalStore,
    options: &RunOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<RunSummary, RunError> {
    let tools = resolve_tools(wf, store, &options.path_var)?;
    let n = instances.all.len();
    let mut outputs: Vec<Option<Vec<Digest>>> = vec![None; n];
    let mut failed = vec![false; n];
    let selected = |i: usize| options.selected.as_ref().is_none_or(|s| s[i]);
    let mut waiting: Vec<usize> = instances.all.iter().map(|i| i.deps.len()).collect();
    let mut dependents: Vec<Vec<InstanceId>> = vec![Vec::new(); n];
    for (i, inst) in instances
        .all
        .iter()
        .enumerate()
        .filter(|(i, _)| selected(*i))
    {
        for d in &inst.deps {
            dependents[d.index()].push(InstanceId(i as u32));
        }
    }
    let mut ready: std::collections::VecDeque<InstanceId> = (0..n)
        .filter(|&i| waiting[i] == 0 && selected(i))
        .map(|i| InstanceId(i as u32))
        .collect();
    let session = store.begin_session(&wf.name)?;
    let mut summary = RunSummary {
        session,
        ..RunSummary::default()
    };
    let cancel = options.cancel.clone();
    let total_cpus = options.jobs.max(1);
    let total_memory = options.memory_bytes.unwrap_or(u64::MAX);
    let (mut free_cpus, mut free_memory) = (total_cpus, total_memory);
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let result = std::thread::scope(|scope| -> Result<(), RunError> {
        for _ in 0..total_cpus {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            let cancel = cancel.clone();
            scope.spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(mut job) = job else { return };
                    job.lock = lock_key(store, &job.key).ok();
                    // Someone may have realised it while we waited for the lock.
                    let elsewhere = if job.force {
                        None
                    } else {
                        store.realisation(&job.key).ok().flatten()
                    };
                    let result = match elsewhere {
                        Some(_) => mustbuild_executors::ExecResult {
                            outcome: Outcome::Cancelled,
                            usage: mustbuild_executors::Usage::default(),
                            started: std::time::SystemTime::now(),
                        },
                        None => mustbuild_executors::run(&job.request, &cancel),
                    };
                    if tx
                        .send(Done {
                            job,
                            result,
                            realised_elsewhere: elsewhere,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut in_flight = 0usize;
        let mut stop = false;
        loop {
            if cancel.is_cancelled() {
                stop = true;
            }
            // Start what fits, unless stopping.
            loop {
                if stop {
                    break;
                }
                // The first ready instance whose resources fit what is free.
                let fits = |id: &InstanceId| {
                    let r = &wf.step(instances.get(*id).step).resources;
                    (r.cpus as usize).min(total_cpus) <= free_cpus
                        && r.memory_bytes.unwrap_or(0).min(total_memory) <= free_memory
                };
                let Some(pos) = ready.iter().position(fits) else {
                    break;
                };
                let Some(id) = ready.remove(pos) else {
                    break;
                };
                let inst = instances.get(id);
                let step = wf.step(inst.step);
                let Some(material) = key_from_outputs(wf, instances, store, &tools, &outputs, id)?
                else {
                    continue;
                };
                let key = store.put_derivation(&material)?;
                store.use_derivation(session, &key)?;
                store.set_last_key(&wf.name, &step.name, &instance_label(&inst.values), &key)?;
                let forced = options.force.contains(&inst.step);
                if let Some(realised) = if forced {
                    None
                } else {
                    store.realisation(&key)?
                } {
                    materialize_outputs(wf, instances, store, id, &realised, on_event)?;
                    outputs[id.index()] = Some(realised.iter().map(|o| o.digest).collect());
                    summary.cached += 1;
                    on_event(Event::Cached {
                        step: step.name.to_string(),
                        values: inst.values.clone(),
                    });
                    release(&dependents[id.index()], &mut waiting, &mut ready);
                    continue;
                }
                let mut job = prepare(wf, instances, store, id, key, &outputs, &options.path_var)?;
                job.force = forced;
                job.cpus = (step.resources.cpus as usize).min(total_cpus);
                job.memory = step.resources.memory_bytes.unwrap_or(0).min(total_memory);
                free_cpus -= job.cpus;
                free_memory -= job.memory;
                on_event(Event::Started {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                });
                in_flight += 1;
                if job_tx.send(job).is_err() {
                    in_flight -= 1;
                }
            }
            if in_flight == 0 {
                break;
            }
            let Ok(Done {
                job,
                result,
                realised_elsewhere,
            }) = done_rx.recv()
            else {
                break;
            };
            in_flight -= 1;
            free_cpus += job.cpus;
            free_memory += job.memory;
            let inst = instances.get(job.id);
            let step = wf.step(inst.step);
            summary.cpu_seconds += (result.usage.user_cpu + result.usage.system_cpu).as_secs_f64();
            if let Some(realised) = realised_elsewhere {
                let _ = remove_tree(&job.scratch);
                materialize_outputs(wf, instances, store, job.id, &realised, on_event)?;
                outputs[job.id.index()] = Some(realised.iter().map(|o| o.digest).collect());
                summary.cached += 1;
                on_event(Event::Cached {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                });
                release(&dependents[job.id.index()], &mut waiting, &mut ready);
                continue;
            }
            let log = std::fs::read(&job.request.log).unwrap_or_default();
            let log_digest = store.add_bytes(&log)?;
            let mut outcome = result.outcome.clone();
            let mut stored = Vec::new();
            if outcome == Outcome::Succeeded {
                for (decl, path) in step.outputs.iter().zip(&inst.outputs) {
                    let s = store.add_path(&job.scratch.join(path), Ingest::Move)?;
                    let is_dir = s.kind == OutputKind::Tree;
                    if is_dir != (decl.kind == PathKind::Dir) {
                        outcome = Outcome::Infrastructure(format!(
                            "output `{}` ({path}) is a {} but is declared as a {}",
                            decl.name,
                            if is_dir { "folder" } else { "file" },
                            if is_dir { "file" } else { "folder" }
                        ));
                        break;
                    }
                    stored.push(Output {
                        name: decl.name.to_string(),
                        digest: s.digest,
                        kind: s.kind,
                    });
                }
            }
            store.add_run(&RunRecord {
                session: Some(session),
                key: job.key,
                step: step.name.to_string(),
                host: mustbuild_store::hostname(),
                started_ms: millis(result.started),
                finished_ms: millis(result.started) + result.usage.wall.as_millis() as i64,
                outcome: outcome_name(&outcome).to_string(),
                exit_code: match outcome {
                    Outcome::Failed { exit_code } => Some(i64::from(exit_code)),
                    Outcome::Succeeded => Some(0),
                    _ => None,
                },
                user_cpu_ms: Some(result.usage.user_cpu.as_millis() as i64),
                sys_cpu_ms: Some(result.usage.system_cpu.as_millis() as i64),
                max_rss_bytes: Some(result.usage.max_rss_bytes as i64),
                read_bytes: None,
                write_bytes: None,
                energy_joules: None,
                energy_method: None,
                log: Some(log_digest),
            })?;
            let _ = remove_tree(&job.scratch);
            if outcome == Outcome::Succeeded {
                store.realise(&job.key, &stored)?;
                drop(job.lock);
                let _ = std::fs::remove_file(store.root().join("locks").join(job.key.to_hex()));
                materialize_outputs(wf, instances, store, job.id, &stored, on_event)?;
                outputs[job.id.index()] = Some(stored.iter().map(|o| o.digest).collect());
                summary.executed += 1;
                on_event(Event::Executed {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                    seconds: result.usage.wall.as_secs_f64(),
                });
                release(&dependents[job.id.index()], &mut waiting, &mut ready);
            } else if job.attempt < step.retry
                && !cancel.is_cancelled()
                && outcome != Outcome::Cancelled
            {
                on_event(Event::Retrying {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                    attempt: job.attempt + 1,
                });
                let mut again = prepare(
                    wf,
                    instances,
                    store,
                    job.id,
                    job.key,
                    &outputs,
                    &options.path_var,
                )?;
                again.attempt = job.attempt + 1;
                again.force = job.force;
                again.cpus = job.cpus;
                again.memory = job.memory;
                free_cpus -= again.cpus;
                free_memory -= again.memory;
                in_flight += 1;
                if job_tx.send(again).is_err() {
                    in_flight -= 1;
                }
            } else {
                if outcome == Outcome::Cancelled {
                    summary.cancelled += 1;
                } else {
                    summary.failed += 1;
                }
                failed[job.id.index()] = true;
                on_event(Event::Failed {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                    outcome,
                    log_tail: tail(&log, 20),
                });
                // Unless told to go on, nothing new starts; what runs finishes.
                if !options.keep_going {
                    stop = true;
                }
            }
        }
        drop(job_tx);
        Ok(())
    });
    for (i, o) in outputs.iter().enumerate() {
        if o.is_none() && !failed[i] && selected(i) {
            summary.skipped += 1;
            let inst = &instances.all[i];
            on_event(Event::Skipped {
                step: wf.step(inst.step).name.to_string(),
                values: inst.values.clone(),
            });
        }
    }
    store.finish_session(session)?;
    store.release_leases()?;
    result?;
    Ok(summary)
}

fn release(
    dependents: &[InstanceId],
    waiting: &mut [usize],
    ready: &mut std::collections::VecDeque<InstanceId>,
) {
    for d in dependents {
        waiting[d.index()] -= 1;
        if waiting[d.index()] == 0 {
            ready.push_back(*d);
        }
    }
}

fn millis(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed { .. } | Outcome::MissingOutputs(_) => "failed",
        Outcome::Killed { .. } | Outcome::TimedOut { .. } => "killed",
        Outcome::Cancelled => "cancelled",
        Outcome::Infrastructure(_) => "infrastructure",
    }
}

/// The last `lines` lines of a log, for error messages.
fn tail(log: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A fresh scratch folder mirroring the workspace with only this instance's inputs.
fn prepare(
    wf: &Workflow,
    instances: &Instances,
    store: &LocalStore,
    id: InstanceId,
    key: Digest,
    outputs: &[Option<Vec<Digest>>],
    path_var: &str,
) -> Result<Job, RunError> {
    let inst = instances.get(id);
    let step = wf.step(inst.step);
    let scratch = store.root().join("scratch").join(format!(
        "{}-{}-{}",
        key.short(),
        std::process::id(),
        id.0
    ));
    let _ = remove_tree(&scratch);
    std::fs::create_dir_all(&scratch).map_err(io_err("create", &scratch))?;
    for files in &inst.inputs {
        for f in files {
            match f {
                FileRef::Source(p) if !p.starts_with('/') => {
                    copy_in(&wf.root.join(p), &scratch.join(p))?
                }
                FileRef::Source(_) => {}
                FileRef::Output { instance, output } => {
                    let up = instances.get(*instance);
                    let digest = outputs[instance.index()].as_ref().map(|d| d[*output]);
                    if let Some(d) = digest {
                        let kind = if wf.step(up.step).outputs[*output].kind == PathKind::Dir {
                            OutputKind::Tree
                        } else {
                            OutputKind::File
                        };
                        store.materialize(&d, kind, &scratch.join(&up.outputs[*output]))?;
                    }
                }
            }
        }
    }
    for path in inst.outputs.iter().chain(&inst.log) {
        if let Some(parent) = scratch.join(path).parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
    }
    let home = scratch.join(".mustbuild/home");
    let tmp = scratch.join(".mustbuild/tmp");
    for d in [&home, &tmp] {
        std::fs::create_dir_all(d).map_err(io_err("create", d))?;
    }
    let mut env: Vec<(String, String)> = wf
        .env
        .iter()
        .chain(&step.env)
        .map(|e| (e.name.to_string(), e.value.clone()))
        .collect();
    env.push(("PATH".into(), path_var.to_string()));
    env.push(("HOME".into(), home.display().to_string()));
    env.push(("TMPDIR".into(), tmp.display().to_string()));
    let request = ExecRequest {
        command: crate::command::render_command(wf, instances, id),
        dir: scratch.clone(),
        env,
        log: scratch.join(".mustbuild/log"),
        outputs: inst.outputs.iter().map(PathBuf::from).collect(),
        time_limit: step
            .resources
            .time_seconds
            .map(std::time::Duration::from_secs),
        gpus: None,
    };
    Ok(Job {
        id,
        lock: None,
        force: false,
        attempt: 0,
        cpus: 1,
        memory: 0,
        key,
        scratch,
        request,
    })
}

/// Copies a source file or folder into the scratch folder (reflink where possible).
fn copy_in(src: &Path, dest: &Path) -> Result<(), RunError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    let meta = std::fs::metadata(src).map_err(io_err("read input", src))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dest).map_err(io_err("create", dest))?;
        for e in std::fs::read_dir(src).map_err(io_err("list", src))? {
            let e = e.map_err(io_err("list", src))?;
            copy_in(&e.path(), &dest.join(e.file_name()))?;
        }
        return Ok(());
    }
    reflink_copy::reflink_or_copy(src, dest).map_err(io_err("copy input", src))?;
    Ok(())
}

/// Puts an instance's outputs in the workspace. An output already there with the
/// right content is left alone (a no-op run copies nothing). One whose content
/// differs from what mustbuild last put there was edited by someone: it is kept
/// as `NAME.edited` and reported, then replaced.
fn materialize_outputs(
    wf: &Workflow,
    instances: &Instances,
    store: &LocalStore,
    id: InstanceId,
    outputs: &[Output],
    on_event: &mut dyn FnMut(Event),
) -> Result<(), RunError> {
    let inst = instances.get(id);
    let step = wf.step(inst.step);
    for (decl, path) in step.outputs.iter().zip(&inst.outputs) {
        let Some(o) = outputs.iter().find(|o| o.name == decl.name.as_str()) else {
            continue;
        };
        let dest = wf.root.join(path);
        let absolute = std::path::absolute(&dest).unwrap_or_else(|_| dest.clone());
        if std::fs::symlink_metadata(&dest).is_ok() {
            let current = store.path_digest(&dest).ok().map(|(d, _, _)| d);
            if current == Some(o.digest) {
                store.set_materialised(&absolute, &o.digest)?;
                continue;
            }
            let last = store.materialised(&absolute)?;
            if last.is_some() && current.is_some() && current != last {
                let backup = wf.root.join(format!("{path}.edited"));
                std::fs::rename(&dest, &backup).map_err(io_err("keep the edited", &dest))?;
                on_event(Event::Replaced {
                    path: path.clone(),
                    backup: format!("{path}.edited"),
                });
            }
        }
        store.materialize(&o.digest, o.kind, &dest)?;
        store.set_materialised(&absolute, &o.digest)?;
    }
    Ok(())
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path)
    } else {
        Ok(())
    }
}

/// How an instance is named among its step's: its fan-out values.
pub fn instance_label(values: &[String]) -> String {
    values.join("\t")
}
