//! Running a pipeline on this machine: a first, plain version of `mustbuild run`.
//!
//! Instances are taken in topological order as their inputs become known. For each,
//! the key is computed from content; a realised key is materialised from the store;
//! otherwise the instance runs in a fresh scratch folder that holds only its inputs
//! (at their workspace paths), with a cleared environment, up to `jobs` at a time.
//! Declared outputs are moved into the store, realised, and materialised into the
//! workspace; anything else the command left is discarded.
//!
//! A step takes its declared CPUs, memory and GPUs out of what `-j` and the
//! machine offer (GPUs by name, handed over in `CUDA_VISIBLE_DEVICES`); a failed
//! run is tried again `retry` times; after a failure nothing new starts unless
//! `--keep-going`.
//!
//! Threads: this one (the coordinator, `coordinator.rs`) computes keys, looks up
//! realisations and commits records, in order; workers do the file work of an
//! instance (scratch folder, command through the worker's own local executor,
//! moving outputs into the store, materialising them, cleaning up), so that
//! slow file-system calls (fsync, copies) of different instances overlap
//! instead of queuing behind one another. This module sets a run up, starts
//! the threads and ends the run.

mod batch;
mod coordinator;
mod job;
mod keying;
mod local;
mod materialise;
pub mod priority;
mod record;
pub(crate) mod refusal;
mod scratch;

use batch::Task;
pub use batch::{Batch, System, advised, memory_and_disk};
use coordinator::{Coordinator, Progress};
pub(crate) use job::{ToolReads, prepare, tool_folders};
use local::{Message, Worker, work};
use record::tail;
pub(crate) use scratch::{Scratch, place_inputs};
use scratch::{remove_stale_scratch, remove_stale_spool};

use crate::instantiate::{InstanceId, Instances};
use crate::keys::{KeyError, resolve_tools};
use crate::slots::Slots;
use mustbuild_executors::{CancelToken, Outcome};
use mustbuild_lang::model::{Step, Workflow};
use mustbuild_store::{Digest, KnownKey, LocalStore, Output, OutputKind, StoreError};

/// Keys of instances that became ready are computed when fewer than this many
/// jobs per worker wait to be handed out (or a whole batch is ready).
const KEYS_AHEAD: usize = 2;

/// Jobs handed to the workers, at most, per worker: a worker that finishes one
/// finds the next already waiting, without waking the coordinator for it.
const HANDED_PER_WORKER: usize = 2;

/// Commands that started are reported within this time. Starting sends the
/// coordinator no message: every wake-up of a thread while commands run costs
/// the machine idle time, so starts are reported with the next job that ends,
/// or after this time.
const STARTS_REPORTED_WITHIN: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest the coordinator waits, while enough jobs are handed out, before
/// it looks at the jobs that ended (see `Pace`).
const NAP_MAX: std::time::Duration = std::time::Duration::from_millis(3);

/// Job ends recorded in one transaction, at most: those that arrived while the
/// last were recorded.
const RECORD_BATCH: usize = 64;

/// Instances whose keys are recorded in one transaction (it holds the store's
/// write lock: short enough for other runs and the workers to get it soon).
const KEY_BATCH: usize = 256;
/// The first batch: small, so that the first commands start without waiting for
/// hundreds of keys; each next batch is twice as big, up to `KEY_BATCH`.
const FIRST_KEY_BATCH: usize = 8;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("a worker thread stopped on a bug; the store is consistent, and the next run resumes")]
    WorkerLost,
    #[error(
        "the store's realisation of `{step}` lacks a declared output; `mustbuild store verify --repair` drops it"
    )]
    IncompleteRealisation { step: String },
    #[error("step `{step}` needs {needs} GPU(s); this machine offers {offered}{}", if *offered == 0 { " (set CUDA_VISIBLE_DEVICES, or install the NVIDIA driver's NVML)" } else { "" })]
    NotEnoughGpus {
        step: String,
        needs: u32,
        offered: usize,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Cache(#[from] crate::cache::Required),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Executor(#[from] mustbuild_executors::batch::ExecutorError),
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
    /// The GPUs steps may be given (`mustbuild_executors::gpus`).
    pub gpus: Vec<String>,
    /// Set to leave a no-op record after a complete run ([`crate::noop`]).
    pub noop: Option<crate::noop::Request>,
    /// The last complete run's record, where it holds but some files changed:
    /// instances whose files and upstream did not change take their keys from it.
    pub prior: Option<crate::noop::Prior>,
    /// What the run records of itself for `mustbuild runs` and `why` (the
    /// tools' identities are added as resolved).
    pub info: Option<crate::provenance::RunInfo>,
    /// The power figures for energy where no counter can be read.
    pub energy_model: mustbuild_executors::energy::Model,
    /// The remote caches to take results from and push them to.
    pub cache: Option<std::sync::Arc<crate::cache::Cache>>,
    /// The batch system commands run on; this machine when `None`.
    pub batch: Option<Batch>,
    /// Local commands run sandboxed (`mustbuild_executors::sandbox`): each
    /// sees its folder, the system and its `PATH`, and no network.
    pub sandbox: bool,
    /// A sandboxed command that is refused runs again with what it was
    /// refused, to list everything it needs (`--sandbox-report`); nothing
    /// of it is stored.
    pub sandbox_report: bool,
    /// Batch nodes that cannot sandbox a step fail it rather than run it
    /// unsandboxed (this machine's kernel was checked by the caller).
    pub require_sandbox: bool,
}

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Something the user should know that stops nothing (a remote cache
    /// dropped for the run, records ignored): once each.
    Warning {
        message: String,
    },
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
        /// User and system CPU time.
        cpu_seconds: f64,
        /// The energy first recorded (RAPL's share, where it is read, is known
        /// only once the steps that ran beside it have ended).
        energy_joules: Option<f64>,
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
        /// How the last attempt ended, in words.
        why: String,
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
    /// Job folders prepared for DAGMan to run (`System::DagPrepare`).
    pub prepared: usize,
    /// The batch system's name and the calls the run made of it.
    pub batch_calls: Option<(&'static str, mustbuild_executors::batch::Calls)>,
    /// User and system CPU time of the commands run (retries included).
    pub cpu_seconds: f64,
    /// Their energy, in joules (see `mustbuild_executors::energy`).
    pub energy_joules: f64,
    pub session: i64,
    /// Told from the last complete run's record, without computing keys.
    pub from_noop_record: bool,
    /// Instances that run only because a tool or an env var changed (a cause
    /// the user may not expect), and which (`tools.NAME`, `env.NAME`).
    pub unexpected: Vec<(String, Vec<String>)>,
}

/// An instance to run, its key known, waiting for resources.
struct Runnable {
    id: InstanceId,
    key: Digest,
    forced: bool,
    /// 0, or how many times it failed and is tried again.
    attempt: u32,
    /// The memory to ask for instead of the step's (a retry after it ran out).
    memory: Option<u64>,
}

/// Runs (and audits) of one process (a library user's, tests) get scratch
/// folders of their own.
pub(crate) fn next_run_number() -> u64 {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
    let tool_reads = job::tool_folders(wf, &tools);
    let _n = instances.all.len();
    let selected = |i: usize| options.selected.as_ref().is_none_or(|s| s[i]);
    // A step asking for more GPUs than there are would wait forever.
    for (i, inst) in instances.all.iter().enumerate() {
        let step = wf.step(inst.step);
        if selected(i)
            && options.batch.is_none()
            && step.resources.gpus as usize > options.gpus.len()
        {
            return Err(RunError::NotEnoughGpus {
                step: step.name.to_string(),
                needs: step.resources.gpus,
                offered: options.gpus.len(),
            });
        }
    }
    let mut progress = Progress::new(wf, instances, store, options, selected)?;
    let _measure = crate::measure::Measure::new(options.energy_model);
    let measure = crate::measure::Measure::new(options.energy_model);
    // What is materialised is recorded by absolute path.
    let root = std::path::absolute(&wf.root).unwrap_or_else(|_| wf.root.clone());
    let info = options.info.as_ref().map(|info| {
        let mut info = info.clone();
        info.root = root.to_string_lossy().into_owned();
        info.tools = tools
            .iter()
            .map(|(name, t)| {
                let tool = crate::provenance::ToolInfo {
                    path: t.path.to_string_lossy().into_owned(),
                    digest: t.digest.to_hex(),
                };
                (name.clone(), tool)
            })
            .collect();
        info.to_json()
    });
    let session = store.begin_session(&wf.name, info.as_deref())?;
    progress.summary.session = session;
    let cancel = options.cancel.clone();
    let total_cpus = options.jobs.max(1);
    let total_memory = options.memory_bytes.unwrap_or(u64::MAX);
    let slots = Slots::new(total_cpus, total_memory, options.gpus.clone());
    // Workers: those running commands, and as many again storing what a command
    // made or preparing the next job, so that a slot given back is taken at once.
    let workers = 2 * total_cpus + 1;

    // On a batch system, the jobs queued there bound what is handed out.
    let max_in_flight = match &options.batch {
        Some(b) => b.max_queued.max(1),
        None => HANDED_PER_WORKER * workers,
    };
    // What history says steps that declare no memory should ask for, and
    // how long they take.
    let advised = match &options.batch {
        Some(_) => batch::advised(store, wf),
        None => Default::default(),
    };
    let run_number = next_run_number();
    // A batch run's folder on the shared filesystem: the executor's files and
    // one folder per job.
    // (Absolute: the nodes and the batch system's tools start elsewhere.)
    let spool = store.root().join("spool").join(format!(
        "{}-{}-{run_number}",
        mustbuild_store::hostname(),
        std::process::id()
    ));
    let spool = std::path::absolute(&spool).unwrap_or(spool);
    if options.batch.is_some() {
        remove_stale_spool(store);
    }
    let executor = match &options.batch {
        Some(b) => Some(b.executor(&spool.join(".executor"))?),
        None => None,
    };
    let step_tools = match &options.batch {
        Some(_) => batch::step_tools(wf, &tools),
        None => Default::default(),
    };
    let (prepared_tx, prepared_rx) = mpsc::channel();
    let side = options.batch.as_ref().map(|b| batch::Side {
        prepared: std::sync::Mutex::new(prepared_tx),
        spool: spool.clone(),
        tools: &step_tools,
        model: options.energy_model,
        system: &b.system,
    });
    let finished = std::sync::atomic::AtomicBool::new(false);
    // What the submitter has to tell (a job held).
    let notes = std::sync::Mutex::new(Vec::<String>::new());
    let calls = std::sync::Mutex::new(None);
    let accounted = std::sync::Mutex::new(Vec::new());
    let (job_tx, job_rx) = mpsc::channel::<Task>();
    let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Message>();
    // Instances whose commands started, in the order they took their shares.
    let starts = std::sync::Mutex::new(Vec::new());
    remove_stale_scratch(store);
    let result = std::thread::scope(|scope| -> Result<(), RunError> {
        // Results go to the remote cache from a thread of their own, in
        // batches, while the run goes on; the run ends when they are sent.
        let (push_tx, pusher) = match options.cache.as_deref().filter(|c| c.pushes()) {
            Some(cache) => {
                let (tx, rx) = mpsc::channel();
                let cancel = cancel.clone();
                let pusher =
                    scope.spawn(move || cache.push_from(store, &rx, || cancel.is_cancelled()));
                (Some(tx), Some(pusher))
            }
            None => (None, None),
        };
        // A batch run's submitter: it owns the executor, and hands ended jobs
        // back to the workers.
        if let (Some(executor), Some(b)) = (executor, &options.batch) {
            let submitter = batch::Submitter {
                executor,
                program: &b.program,
                prepared: prepared_rx,
                tasks: job_tx.clone(),
                starts: &starts,
                cancel: cancel.clone(),
                slots: &slots,
                finished: &finished,
                notes: &notes,
                timeout: b.held_timeout(),
                calls: &calls,
                accounted: &accounted,
            };
            scope.spawn(move || submitter.run());
        } else {
            drop(prepared_rx);
        }
        let side = side.as_ref();
        for worker in 0..workers {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            let cancel = cancel.clone();
            let slots = &slots;
            let starts = &starts;
            let root = &root;
            let measure = &measure;
            scope.spawn(move || {
                let local = mustbuild_executors::Local::new(cancel.clone()).into();
                let worker = Worker {
                    wf,
                    instances,
                    store,
                    scratch: Scratch::new(store, run_number, worker),
                    slots,
                    cancel,
                    messages: tx,
                    starts,
                    root,
                    measure,
                    sandbox: options.sandbox,
                    sandbox_report: options.sandbox_report,
                    require_sandbox: options.require_sandbox,
                    local,
                };
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => break,
                    };
                    let Ok(task) = job else { break };
                    // A bug in a worker ends the run with an error, not a hang.
                    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        match (task, side) {
                            (Task::Run(job), None) => Some(work(&worker, job)),
                            (Task::Run(job), Some(side)) => batch::prepare(&worker, side, job),
                            (Task::Finish(landed), Some(side)) => {
                                Some(batch::finish(&worker, side, *landed))
                            }
                            // Only a batch run's submitter hands back ended jobs.
                            (Task::Finish(_), None) => None,
                        }
                    }));
                    let Ok(done) = done else {
                        let _ = worker.messages.send(Message::Lost);
                        break;
                    };
                    // A batch job handed to the submitter ends later.
                    let Some(done) = done else { continue };
                    if worker.messages.send(Message::Done(Box::new(done))).is_err() {
                        break;
                    }
                }
                worker.scratch.remove();
            });
        }
        drop(done_tx);
        // On an error, the commands running and queued are stopped before the
        // error is returned (scope waits for the workers).
        let mut coordinator = Coordinator {
            wf,
            instances,
            store,
            options,
            session,
            tools: &tools,
            tool_reads: &tool_reads,
            root: &root,
            measure: &measure,
            slots: &slots,
            starts: &starts,
            notes: &notes,
            advised: &advised,
            cancel: cancel.clone(),
            job_tx,
            done_rx: &done_rx,
            push_tx,
            total_cpus,
            total_memory,
            workers,
            max_in_flight,
            progress: &mut progress,
            in_flight: 0,
            stop: false,
            batch_size: FIRST_KEY_BATCH,
            tickets: 0,
            pace: Pace::default(),
        };
        let coordinated = coordinator.coordinate(on_event);
        if coordinated.is_err() {
            cancel.cancel();
        }
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        // The workers and the pusher are told there is no more.
        drop(coordinator);
        if let (Some(pusher), Some(cache)) = (pusher, &options.cache) {
            let _ = pusher.join();
            for message in cache.take_warnings() {
                on_event(Event::Warning { message });
            }
            if let Some(e) = cache.take_required() {
                coordinated?;
                return Err(e.into());
            }
        }
        coordinated
    });
    let Progress {
        outputs,
        failed,
        prepared,
        keys,
        taken,
        mut seen,
        mut summary,
        attributions,
        batch_runs,
        ..
    } = progress;
    // The workers have ended: their memory cgroups go.
    mustbuild_executors::release_cgroups();
    if options.batch.is_some() {
        let _ = std::fs::remove_dir_all(&spool);
        summary.batch_calls = calls
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .filter(|(name, _)| *name != "dagman");
        let accounted = accounted
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        batch::record_accounting(store, &accounted, &batch_runs);
    }
    // Jobs that ended after the run stopped on an error: what they put in the
    // workspace is remembered (the next run would take it for an edit otherwise).
    for m in done_rx.try_iter() {
        if let Message::Done(d) = m {
            let _ = store.set_materialised_many(&d.materialised);
        }
    }
    for (i, o) in outputs.iter().enumerate() {
        if o.is_none() && !failed[i] && !prepared[i] && selected(i) {
            summary.skipped += 1;
            let inst = &instances.all[i];
            on_event(Event::Skipped {
                step: wf.step(inst.step).name.to_string(),
                values: inst.values.clone(),
            });
        }
    }
    // RAPL figures, now that no step runs: they replace the model's (a figure
    // that cannot be written leaves the model's: it stops nothing).
    if store.set_run_energies(&attributions.energies()).is_ok() {
        summary.energy_joules += attributions.correction();
    }
    let mut inherited = Ok(());
    // The instances taken from the record are its session's: named at the end,
    // when it is known whether every instance was reached.
    if let Some(prior) = &options.prior {
        let labels: Vec<String> = taken
            .iter()
            .map(|id| instance_label(&instances.get(*id).values))
            .collect();
        let taken: Vec<KnownKey<'_>> = taken
            .iter()
            .zip(&labels)
            .filter_map(|(id, label)| {
                Some(KnownKey {
                    key: keys[id.index()]?,
                    step: &wf.step(instances.get(*id).step).name,
                    instance: label,
                })
            })
            .collect();
        let complete = keys.iter().all(Option::is_some);
        inherited = store.inherit_instances(session, prior.session, &taken, complete);
    }
    store.finish_session(session)?;
    store.release_leases()?;
    result?;
    inherited?;
    if let Some(request) = &options.noop {
        let complete =
            summary.failed + summary.skipped + summary.cancelled == 0 && options.selected.is_none();
        if complete {
            seen.tools = tools;
            // A record is an optimisation: failing to write one fails nothing.
            let finished = crate::noop::Finished {
                wf,
                instances,
                keys: &keys,
                outputs: &outputs,
                seen: &seen,
            };
            let _ = crate::noop::record(store, request, finished, session);
        } else if options.selected.is_none() {
            let _ = store.forget_noop_record(&request.name());
        }
    }
    Ok(summary)
}

/// An instance's outputs in the order its step declares them (the store lists
/// them by name): digests and kinds; `None` when one is missing.
pub(crate) fn in_order(step: &Step, realised: &[Output]) -> Option<(Vec<Digest>, Vec<OutputKind>)> {
    step.outputs
        .iter()
        .map(|decl| {
            realised
                .iter()
                .find(|o| o.name == decl.name.as_str())
                .map(|o| (o.digest, o.kind))
        })
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().unzip())
}

/// A realised instance's output digests and kinds in declared order, as the
/// dispatcher keeps them; an error when one is missing.
#[expect(
    clippy::type_complexity,
    reason = "the dispatcher's two per-instance lists"
)]
fn outputs_in_order(
    step: &Step,
    realised: &[Output],
) -> Result<(Option<Vec<Digest>>, Option<Vec<OutputKind>>), RunError> {
    let (digests, kinds) =
        in_order(step, realised).ok_or_else(|| RunError::IncompleteRealisation {
            step: step.name.to_string(),
        })?;
    Ok((Some(digests), Some(kinds)))
}

/// The fields that changed from `previous` to `material` when all are tools'
/// identities or env vars; `None` otherwise (or when `previous` is gone).
fn only_tools_or_env(
    store: &LocalStore,
    previous: &Digest,
    material: &mustbuild_store::KeyMaterial,
) -> Result<Option<Vec<String>>, RunError> {
    let Some(before) = store.derivation(previous)? else {
        return Ok(None);
    };
    let changed: Vec<String> = before.diff(material).into_iter().map(|c| c.path).collect();
    let unexpected = !changed.is_empty()
        && changed
            .iter()
            .all(|p| p.starts_with("tools.") || p.starts_with("env."));
    Ok(unexpected.then_some(changed))
}

/// Reports an instance's `started` event, once.
fn announce(
    (wf, instances): (&Workflow, &Instances),
    id: InstanceId,
    started: &mut [bool],
    on_event: &mut dyn FnMut(Event),
) {
    if !started[id.index()] {
        started[id.index()] = true;
        let inst = instances.get(id);
        on_event(Event::Started {
            step: wf.step(inst.step).name.to_string(),
            values: inst.values.clone(),
        });
    }
}

/// How often jobs end, to know how long the coordinator may leave them
/// unrecorded without the workers running out of jobs.
///
/// Each time a worker sends a job's end, the coordinator wakes and records it:
/// a transaction, and a wake-up that can preempt a running command. When
/// several jobs are handed out and waiting, nothing needs the coordinator
/// soon: it naps for half the time the waiting jobs will take to start (at most
/// `NAP_MAX`), then records all the ends that arrived in one transaction.
#[derive(Default)]
struct Pace {
    last: Option<std::time::Instant>,
    /// Time between two job ends, averaged.
    between: Option<std::time::Duration>,
}

impl Pace {
    /// `n` jobs ended now.
    fn ended(&mut self, n: usize) {
        let now = std::time::Instant::now();
        if let Some(last) = self.last {
            let sample = (now - last) / n.max(1) as u32;
            self.between = Some(match self.between {
                Some(b) => (b * 3 + sample) / 4,
                None => sample,
            });
        }
        self.last = Some(now);
    }

    /// Naps while `waiting` handed-out jobs keep the workers busy.
    fn nap(&self, waiting: usize) {
        let Some(between) = self.between else { return };
        let nap = (between * waiting as u32 / 2).min(NAP_MAX);
        if nap >= std::time::Duration::from_micros(200) {
            std::thread::sleep(nap);
        }
    }
}

/// Reports the `started` events of the commands that started since the last call.
fn announce_starts(
    starts: &std::sync::Mutex<Vec<InstanceId>>,
    context: (&Workflow, &Instances),
    started: &mut [bool],
    on_event: &mut dyn FnMut(Event),
) {
    let ids = std::mem::take(
        &mut *starts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for id in ids {
        announce(context, id, started, on_event);
    }
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

/// How an instance is named among its step's: its fan-out values.
pub fn instance_label(values: &[String]) -> String {
    values.join("\t")
}
