//! A run on a batch system (HTCondor now, Slurm next), on the coordinator and
//! workers of a local run. What differs is where the command runs:
//!
//! 1. A worker takes the job's key lock (as locally), puts its inputs in a job
//!    folder under `STORE/spool/` (on the filesystem the nodes share) and writes
//!    the worker's spec there (`crate::worker`), then hands the job on.
//! 2. The submitter thread gathers prepared jobs into batches, submits each
//!    batch in one call, and hears of the jobs from the executor's reports.
//! 3. When a job ends, a worker reads what the node's `mustbuild worker` left
//!    (`result.json`, the log, the outputs in `work/`) into the store and the
//!    workspace exactly as for a local command; the coordinator records it.
//!
//! Only this process writes the store's database: nodes write files in their
//! job folder, nothing else.

use super::job::Job;
use super::local::{
    Done, Worker, ended_early, locked, realised_meanwhile, store_made, take_realised,
};
use super::scratch::{Scratch, place_inputs, remove_any};
use crate::advice::{MemoryLine, Sizing};
use crate::instantiate::InstanceId;
use crate::worker::{LOG, NodeResult, RESULT, SPEC, Spec, Tool, WORK};
use mustbuild_executors::batch::{
    Accounting, BatchExecutor, BatchJob, End, Executor, Report, Resources,
};
use mustbuild_executors::{CancelToken, Outcome};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// Jobs submitted in one call, at most.
const SUBMIT_BATCH: usize = 1000;
/// How long the first prepared job waits for others to join its batch.
const GATHER: Duration = Duration::from_millis(200);
/// How long the submitter waits for reports while jobs are out.
const REPORT_WAIT: Duration = Duration::from_millis(100);
/// A job expected to take at most this long is short: short jobs of one
/// shape (CPUs, memory, GPUs, disk) go out in groups, one batch job running
/// them one after another, so that thousands of them do not flood the queue.
pub const SHORT: Duration = Duration::from_secs(30);
/// A group's members, at most, and the time they are expected to take together.
pub const GROUP_MAX: usize = 50;
pub const GROUP_TIME: Duration = Duration::from_secs(120);
/// Memory a step asks for when it declares none and has no history.
pub const DEFAULT_MEMORY: u64 = 1 << 30;
/// Local disk a step asks for when it declares none (its folder is on the
/// shared filesystem: little is used on the node).
pub const DEFAULT_DISK: u64 = 1 << 30;

/// Per step that ran before, what history says to ask for (`crate::advice`).
pub fn advised(
    store: &mustbuild_store::LocalStore,
    wf: &mustbuild_lang::model::Workflow,
) -> HashMap<String, Sizing> {
    let declared = wf
        .steps
        .iter()
        .map(|s| (s.name.to_string(), s.resources.clone()))
        .collect();
    crate::advice::sizing(store, &wf.name, &declared).unwrap_or_default()
}

/// What a batch job for `instance` (its label) of `step` asks for: its
/// declared memory, else history's, else [`DEFAULT_MEMORY`]; its disk, else
/// [`DEFAULT_DISK`]. History's line over input size, where there is one,
/// comes with it: it decides once the inputs are in place.
pub fn memory_and_disk(
    step: &mustbuild_lang::model::Step,
    instance: &str,
    advised: &HashMap<String, Sizing>,
) -> (u64, u64, Option<MemoryLine>) {
    let sizing = advised
        .get(step.name.as_str())
        .filter(|_| step.resources.memory_bytes.is_none());
    let memory = step
        .resources
        .memory_bytes
        .or_else(|| sizing.map(|s| s.memory_for(instance)))
        .unwrap_or(DEFAULT_MEMORY);
    let disk = step.resources.disk_bytes.unwrap_or(DEFAULT_DISK);
    (memory, disk, sizing.and_then(|s| s.line))
}

/// Writes a batch system's own figures (by job ticket) over the run records
/// of those jobs (`runs`: ticket → run id). Figures that cannot be written
/// leave the node's: it stops nothing.
pub(crate) fn record_accounting(
    store: &mustbuild_store::LocalStore,
    accounted: &[(u64, Accounting)],
    runs: &HashMap<u64, i64>,
) {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as i64);
    let figures: Vec<mustbuild_store::Accounted<'_>> = (accounted.iter())
        .filter_map(|(ticket, a)| {
            Some(mustbuild_store::Accounted {
                id: *runs.get(ticket)?,
                max_rss_bytes: a.max_rss_bytes.map(|b| b as i64),
                memory_method: a.memory_method,
                user_cpu_ms: ms(a.user_cpu),
                sys_cpu_ms: ms(a.system_cpu),
                energy_joules: a.energy_joules,
                energy_method: a.energy_method,
            })
        })
        .collect();
    let _ = store.set_run_accounting(&figures);
}

/// Each step's declared tools (the pipeline's and its own) as its key holds
/// them, for the node to check.
pub(crate) fn step_tools(
    wf: &mustbuild_lang::model::Workflow,
    tools: &std::collections::BTreeMap<String, crate::keys::ToolIdentity>,
) -> HashMap<String, Vec<Tool>> {
    wf.steps
        .iter()
        .map(|s| {
            let names = wf.tools.iter().chain(&s.tools).map(|t| t.name.as_str());
            let declared = names
                .filter_map(|n| {
                    let t = tools.get(n)?;
                    Some(Tool {
                        name: n.to_string(),
                        path: t.path.clone(),
                        digest: t.digest.to_hex(),
                    })
                })
                .collect();
            (s.name.to_string(), declared)
        })
        .collect()
}

/// Which batch system, and how it is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum System {
    HtCondor(mustbuild_executors::htcondor::Settings),
    Slurm(mustbuild_executors::slurm::Settings),
    /// A DAGMan node's PRE script (`mustbuild export dagman`): the one
    /// instance to run gets its job folder prepared at `folder`, for DAGMan
    /// to run; nothing is submitted.
    DagPrepare {
        folder: PathBuf,
    },
    /// Its POST script: the job ran in `folder`; what it left is stored.
    DagFinish {
        folder: PathBuf,
    },
}

impl System {
    /// The job folder every job of the run has, when it is fixed (DAG nodes).
    fn folder(&self) -> Option<&Path> {
        match self {
            System::DagPrepare { folder } | System::DagFinish { folder } => Some(folder),
            System::HtCondor(_) | System::Slurm(_) => None,
        }
    }
}

/// The executor of a DAGMan node's scripts: DAGMan itself runs the job, so
/// each job submitted is reported ended at once (the job folder tells how).
#[derive(Debug, Default)]
struct Handed {
    tags: Vec<u64>,
}

impl Executor for Handed {
    type Job = BatchJob;
    type End = End;

    fn name(&self) -> &'static str {
        "dagman"
    }

    fn calls(&self) -> mustbuild_executors::batch::Calls {
        Default::default()
    }

    fn submit(
        &mut self,
        jobs: &[BatchJob],
    ) -> Result<(), mustbuild_executors::batch::ExecutorError> {
        self.tags.extend(jobs.iter().map(|j| j.tag));
        Ok(())
    }

    fn reports(
        &mut self,
        _: Duration,
    ) -> Result<Vec<Report>, mustbuild_executors::batch::ExecutorError> {
        Ok(self
            .tags
            .drain(..)
            .map(|tag| Report::Ended {
                tag,
                end: End::Exited(0),
                memory_bytes: None,
            })
            .collect())
    }

    fn cancel_all(&mut self) -> Result<(), mustbuild_executors::batch::ExecutorError> {
        self.tags.clear();
        Ok(())
    }
}

/// A run's batch system (`RunOptions::batch`).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub system: System,
    /// Jobs queued or running at once, at most.
    pub max_queued: usize,
    /// The `mustbuild` the nodes run (`mustbuild worker`): this one.
    pub program: PathBuf,
}

impl Batch {
    /// How long a job may stay held before its step fails.
    pub(crate) fn held_timeout(&self) -> Duration {
        match &self.system {
            System::HtCondor(s) => s.held_timeout,
            System::Slurm(_) | System::DagPrepare { .. } | System::DagFinish { .. } => {
                Duration::MAX
            }
        }
    }

    pub(crate) fn executor(&self, dir: &Path) -> Result<Box<BatchExecutor>, super::RunError> {
        match &self.system {
            System::HtCondor(settings) => Ok(Box::new(
                mustbuild_executors::htcondor::HtCondor::new(settings.clone(), dir)?,
            )),
            System::Slurm(settings) => Ok(Box::new(mustbuild_executors::slurm::Slurm::new(
                settings.clone(),
                dir,
            )?)),
            System::DagPrepare { .. } | System::DagFinish { .. } => Ok(Box::<Handed>::default()),
        }
    }
}

/// What a worker thread is given.
#[expect(
    clippy::large_enum_variant,
    reason = "every job is a Run, moved as before; only batch jobs also come back boxed"
)]
pub(crate) enum Task {
    /// Run this job (locally, or prepared for the batch system).
    Run(Job),
    /// This batch job ended: take in what it left.
    Finish(Box<Landed>),
}

/// A batch job prepared in its folder, for the submitter.
pub(crate) struct Prepared {
    done: Done,
    folder: PathBuf,
    /// The instance, for messages.
    label: String,
}

/// A batch job that ended (`end: None`: it was never submitted).
pub(crate) struct Landed {
    done: Done,
    folder: PathBuf,
    end: Option<Result<End, String>>,
}

/// What the workers of a batch run share.
pub(crate) struct Side<'a> {
    pub(crate) prepared: Mutex<mpsc::Sender<Prepared>>,
    /// The run's folder in `STORE/spool`.
    pub(crate) spool: PathBuf,
    /// Each step's declared tools, as the key holds them.
    pub(crate) tools: &'a HashMap<String, Vec<Tool>>,
    pub(crate) model: mustbuild_executors::energy::Model,
    pub(crate) system: &'a System,
}

/// A worker's part before submission: `Some` when the job ends here (run
/// stopped, realised meanwhile, its folder could not be made).
pub(crate) fn prepare(worker: &Worker<'_>, side: &Side<'_>, mut job: Job) -> Option<Done> {
    let placements = std::mem::take(&mut job.placements);
    let mut done = locked(worker, job, &|| {});
    if done.not_started {
        return Some(done);
    }
    match realised_meanwhile(worker.store, &done.job) {
        Ok(Some(realised)) => {
            if let Err(e) = take_realised(worker, realised, &mut done) {
                done.error = Some(e);
            }
            return Some(done);
        }
        Ok(None) => {}
        Err(e) => {
            done.error = Some(e);
            return Some(done);
        }
    }
    if worker.cancel.is_cancelled() || worker.slots.is_closed() {
        done.not_started = true;
        return Some(done);
    }
    let folder = match side.system.folder() {
        Some(f) => f.to_path_buf(),
        None => side.spool.join(done.job.ticket.to_string()),
    };
    let made = if matches!(side.system, System::DagFinish { .. }) {
        // The PRE script prepared it and the job ran there.
        Ok(())
    } else {
        let scratch = Scratch::at(&folder);
        place_inputs(worker.store, &scratch, &placements)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let job = &mut done.job;
                job.input_bytes = Some(bytes);
                if let Some(line) = job.memory_line {
                    job.memory = line.request(bytes);
                }
                write_spec(worker, side, job, &folder)
            })
    };
    if let Err(e) = made {
        done.result = ended_early(Outcome::Infrastructure(format!(
            "cannot prepare the job folder {}: {e}",
            folder.display()
        )));
        if side.system.folder().is_none() {
            let _ = remove_any(&folder);
        }
        return Some(done);
    }
    let sent = side
        .prepared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send(Prepared {
            label: label(worker, &done.job),
            done,
            folder,
        });
    match sent {
        Ok(()) => None,
        Err(mpsc::SendError(p)) => {
            let mut done = p.done;
            done.not_started = true;
            Some(done)
        }
    }
}

fn label(worker: &Worker<'_>, job: &Job) -> String {
    let inst = worker.instances.get(job.id);
    crate::provenance::label(&worker.wf.step(inst.step).name, &inst.values)
}

fn write_spec(
    worker: &Worker<'_>,
    side: &Side<'_>,
    job: &Job,
    folder: &Path,
) -> Result<(), String> {
    let inst = worker.instances.get(job.id);
    let step = worker.wf.step(inst.step);
    let spec = Spec {
        label: label(worker, job),
        command: job.request.command.clone(),
        env: job.request.env.clone(),
        outputs: job.request.outputs.clone(),
        time_limit_ms: job.request.time_limit.map(|t| t.as_millis() as u64),
        gpus: job.gpus as u32,
        tools: side
            .tools
            .get(step.name.as_str())
            .cloned()
            .unwrap_or_default(),
        core_watts: side.model.core_watts,
        memory_watts_per_gb: side.model.memory_watts_per_gb,
        sandbox: worker.sandbox && job.sandbox.is_some(),
        require_sandbox: worker.require_sandbox,
        outside: Vec::new(),
        allows: job.sandbox.clone().unwrap_or_default(),
    };
    let path = folder.join(SPEC);
    let bytes = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A worker's part after the job ended: what the node left, into the store.
pub(crate) fn finish(worker: &Worker<'_>, side: &Side<'_>, landed: Landed) -> Done {
    let Landed {
        mut done,
        folder,
        end,
    } = landed;
    if matches!(side.system, System::DagPrepare { .. }) {
        // Ready for DAGMan: the POST script takes in what the job leaves.
        done.not_started = true;
        done.handed_over = end.is_some();
        return done;
    }
    // A DAG node's folder is DAGMan's: its job's output stays for people.
    let remove = |folder: &Path| {
        if side.system.folder().is_none() {
            let _ = remove_any(folder);
        }
    };
    let log = folder.join(LOG);
    let ran = log.exists();
    let gone = |outcome| mustbuild_executors::ExecResult {
        spawned: ran,
        ..ended_early(outcome)
    };
    let Some(end) = end else {
        done.not_started = true;
        remove(&folder);
        return done;
    };
    // A result is written last, by rename: the step ran to its end on the
    // node, whatever happened to the batch job after (a group's later member
    // ran out of memory, the job was removed).
    let result = read_result(&folder);
    done.result = match (end, result) {
        // The node's kernel killed the step's process for the job's memory
        // limit (a cgroup), the worker survived to say it failed.
        (Ok(End::OutOfMemory { reason, used_bytes }), Ok(node)) if node.outcome != "succeeded" => {
            let mut r = node.to_exec();
            r.outcome = Outcome::OutOfMemory {
                reason,
                used_bytes: used_bytes.or(Some(node.max_rss_bytes)),
            };
            done.node = Some(node);
            r
        }
        (_, Ok(node)) => {
            let r = node.to_exec();
            done.node = Some(node);
            r
        }
        (Err(why), _) => gone(Outcome::Infrastructure(why)),
        (Ok(End::Exited(0)), Err(why)) => gone(Outcome::Infrastructure(format!(
            "`mustbuild worker` left no result on the node ({why}){}",
            stderr_tail(&folder)
        ))),
        (Ok(end), Err(_)) => ended(worker, end, &folder, gone),
    };
    if let Err(e) = store_made(worker, &mut done, &folder.join(WORK), &log) {
        done.error = Some(e);
    }
    remove(&folder);
    done
}

/// The outcome of a step whose batch job ended before it did.
fn ended(
    worker: &Worker<'_>,
    end: End,
    folder: &Path,
    gone: impl Fn(Outcome) -> mustbuild_executors::ExecResult,
) -> mustbuild_executors::ExecResult {
    match end {
        End::Exited(code) => gone(Outcome::Infrastructure(format!(
            "`mustbuild worker` exited with status {code} on the node{}",
            stderr_tail(folder)
        ))),
        End::Signalled(signal) => gone(Outcome::Killed { signal }),
        End::OutOfMemory { reason, used_bytes } => {
            gone(Outcome::OutOfMemory { reason, used_bytes })
        }
        End::Held(reason) => gone(Outcome::Held { reason }),
        End::Removed(_) if worker.cancel.is_cancelled() => gone(Outcome::Cancelled),
        End::Removed(reason) => gone(Outcome::Infrastructure(format!(
            "the batch system removed the job: {reason}"
        ))),
    }
}

fn read_result(folder: &Path) -> Result<NodeResult, String> {
    let path = folder.join(RESULT);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The last lines the worker wrote on its standard error, to end a message.
fn stderr_tail(folder: &Path) -> String {
    let text = std::fs::read(folder.join("stderr")).unwrap_or_default();
    let tail = super::tail(&text, 5);
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", tail.trim())
    }
}

/// What jobs must share to run in one group: CPUs, memory, GPUs, disk.
type Shape = (usize, u64, usize, u64);

/// A batch's jobs as batch jobs: each alone, but short ones of one shape
/// together (see [`SHORT`]), in the order they came. `about` gives a job's
/// shape and expected time.
fn group<T>(batch: Vec<T>, about: impl Fn(&T) -> (Shape, Option<Duration>)) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    // The group each shape is filling: its index in `groups`, and its time.
    let mut filling: HashMap<Shape, (usize, Duration)> = HashMap::new();
    for p in batch {
        let (shape, expected) = about(&p);
        let Some(expected) = expected.filter(|t| *t <= SHORT) else {
            groups.push(vec![p]);
            continue;
        };
        match filling.get_mut(&shape) {
            Some((i, time)) if groups[*i].len() < GROUP_MAX && *time + expected <= GROUP_TIME => {
                *time += expected;
                groups[*i].push(p);
            }
            _ => {
                filling.insert(shape, (groups.len(), expected));
                groups.push(vec![p]);
            }
        }
    }
    groups
}

/// What the submitter thread works with.
pub(crate) struct Submitter<'a> {
    pub(crate) executor: Box<BatchExecutor>,
    pub(crate) program: &'a Path,
    pub(crate) prepared: mpsc::Receiver<Prepared>,
    pub(crate) tasks: mpsc::Sender<Task>,
    pub(crate) starts: &'a Mutex<Vec<InstanceId>>,
    pub(crate) cancel: CancelToken,
    /// Closed when the run stops (a failure without `--keep-going`).
    pub(crate) slots: &'a crate::slots::Slots,
    /// Set by the coordinator when the run is over.
    pub(crate) finished: &'a AtomicBool,
    /// What the user should hear (a held job), for the coordinator to tell.
    pub(crate) notes: &'a Mutex<Vec<String>>,
    /// How long a job may stay held before its step fails.
    pub(crate) timeout: Duration,
    /// Where it leaves the calls it made when the run is over.
    pub(crate) calls: &'a Mutex<Option<(&'static str, mustbuild_executors::batch::Calls)>>,
    /// Where it leaves, by job ticket, what the batch system's own accounting
    /// says the jobs of one step each used (Slurm's `sacct`).
    pub(crate) accounted: &'a Mutex<Vec<(u64, Accounting)>>,
}

impl Submitter<'_> {
    /// Submits prepared jobs in batches and hands the ended back to the
    /// workers, until the run is over.
    pub(crate) fn run(mut self) {
        let mut queue: Vec<Prepared> = Vec::new();
        let mut oldest: Option<Instant> = None;
        // What is out, by tag: a batch job's members (one, or a group).
        let mut out: HashMap<u64, Vec<Prepared>> = HashMap::new();
        let mut open = true;
        let mut cancelled = false;
        // Jobs of one step that ended as the batch system saw: tag, ticket.
        let mut single: Vec<(u64, u64)> = Vec::new();
        loop {
            // What was prepared meanwhile (waiting a little when nothing is out).
            let wait = if out.is_empty() && queue.is_empty() {
                Some(REPORT_WAIT)
            } else {
                None
            };
            if open {
                let first = match wait {
                    Some(w) => self.prepared.recv_timeout(w).map_err(|e| match e {
                        mpsc::RecvTimeoutError::Timeout => mpsc::TryRecvError::Empty,
                        mpsc::RecvTimeoutError::Disconnected => mpsc::TryRecvError::Disconnected,
                    }),
                    None => self.prepared.try_recv(),
                };
                let mut next = first;
                loop {
                    match next {
                        Ok(p) => {
                            oldest.get_or_insert_with(Instant::now);
                            queue.push(p);
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                    next = self.prepared.try_recv();
                }
            }
            if self.cancel.is_cancelled() && !cancelled {
                cancelled = true;
                // One removal for the run's jobs; they end as cancelled.
                let _ = self.executor.cancel_all();
                for p in out.drain().flat_map(|(_, g)| g) {
                    self.land(p, Some(Ok(End::Removed("cancelled".into()))));
                }
            }
            // Nothing new goes out once the run stops (a failure, Ctrl-C).
            if cancelled || self.slots.is_closed() {
                for p in queue.drain(..) {
                    self.land(p, None);
                }
                oldest = None;
            }
            let due = oldest.is_some_and(|t| t.elapsed() >= GATHER) || !open;
            if !queue.is_empty() && (queue.len() >= SUBMIT_BATCH || due) {
                let batch: Vec<Prepared> = queue.drain(..queue.len().min(SUBMIT_BATCH)).collect();
                oldest = (!queue.is_empty()).then(Instant::now);
                self.submit(batch, &mut out);
            }
            if !out.is_empty() {
                match self.executor.reports(REPORT_WAIT) {
                    Ok(reports) => {
                        for r in reports {
                            match r {
                                Report::Started { tag, .. } => {
                                    let mut starts = self
                                        .starts
                                        .lock()
                                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                                    for p in out.get(&tag).into_iter().flatten() {
                                        starts.push(p.done.job.id);
                                    }
                                }
                                Report::Held { tag, reason } => {
                                    let held = self.timeout;
                                    let mut notes = self
                                        .notes
                                        .lock()
                                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                                    for p in out.get(&tag).into_iter().flatten() {
                                        notes.push(format!(
                                            "{} is held by {}: {reason} (it fails if still held after {} s)",
                                            p.label,
                                            self.executor.name(),
                                            held.as_secs()
                                        ));
                                    }
                                }
                                Report::Ended { tag, end, .. } => {
                                    let members = out.remove(&tag).unwrap_or_default();
                                    if let [p] = &members[..] {
                                        single.push((tag, p.done.job.ticket));
                                    }
                                    for p in members {
                                        self.land(p, Some(Ok(end.clone())));
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // The jobs cannot be followed: removed, and their steps fail.
                        let _ = self.executor.cancel_all();
                        let why = format!("lost track of the {} jobs: {e}", self.executor.name());
                        for p in out.drain().flat_map(|(_, g)| g) {
                            self.land(p, Some(Err(why.clone())));
                        }
                    }
                }
            }
            let over = self.finished.load(Ordering::SeqCst) || !open;
            if over && out.is_empty() && queue.is_empty() {
                break;
            }
        }
        // A group's figures are the group's, not a step's: only single jobs.
        if !cancelled && !single.is_empty() {
            let tags: Vec<u64> = single.iter().map(|s| s.0).collect();
            // A system that keeps no accounting (no slurmdbd) says so: the
            // records keep the node's figures.
            if let Ok(found) = self.executor.accounting(&tags) {
                let by_ticket =
                    (single.iter()).filter_map(|(tag, ticket)| Some((*ticket, *found.get(tag)?)));
                self.accounted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(by_ticket);
            }
        }
        *self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((self.executor.name(), self.executor.calls()));
    }

    fn submit(&mut self, batch: Vec<Prepared>, out: &mut HashMap<u64, Vec<Prepared>>) {
        let groups = group(batch, |p| {
            let job = &p.done.job;
            ((job.cpus, job.memory, job.gpus, job.disk), job.expected)
        });
        let jobs: Vec<BatchJob> = groups
            .iter()
            .map(|members| {
                let p = &members[0];
                let job = &p.done.job;
                let specs = members
                    .iter()
                    .map(|m| m.folder.join(SPEC).to_string_lossy().into_owned());
                BatchJob {
                    tag: job.ticket,
                    program: self.program.to_path_buf(),
                    args: std::iter::once("worker".to_string()).chain(specs).collect(),
                    dir: p.folder.clone(),
                    resources: Resources {
                        cpus: job.cpus as u32,
                        memory_bytes: job.memory,
                        disk_bytes: job.disk,
                        gpus: job.gpus as u32,
                        time: job.request.time_limit,
                    },
                }
            })
            .collect();
        match self.executor.submit(&jobs) {
            Ok(()) => {
                for members in groups {
                    out.insert(members[0].done.job.ticket, members);
                }
            }
            Err(e) => {
                let why = format!("cannot submit to {}: {e}", self.executor.name());
                for p in groups.into_iter().flatten() {
                    self.land(p, Some(Err(why.clone())));
                }
            }
        }
    }

    fn land(&self, p: Prepared, end: Option<Result<End, String>>) {
        let landed = Landed {
            done: p.done,
            folder: p.folder,
            end,
        };
        // The workers outlive this thread: a send fails only on a bug.
        let _ = self.tasks.send(Task::Finish(Box::new(landed)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_comes_from_the_step_else_the_instance_else_the_line_once_inputs_are_known() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("pipeline.kdl");
        let text = "pipeline \"p\"\nstep free {\n  out o=\"a\"\n  run \"true\"\n}\n\
                    step fixed {\n  resources memory=\"2GiB\"\n  out o=\"b\"\n  run \"true\"\n}\n";
        std::fs::write(&file, text).unwrap();
        let wf = mustbuild_lang::load(&file).workflow.unwrap();
        let line = MemoryLine::fit(&[
            (10 << 20, 30 << 20),
            (20 << 20, 40 << 20),
            (40 << 20, 60 << 20),
            (80 << 20, 100 << 20),
        ])
        .unwrap();
        let sizing = |memory_bytes| Sizing {
            memory_bytes,
            wall_p95_s: 1.0,
            line: Some(line),
            instances: HashMap::from([("x=big".to_string(), 640 << 20)]),
        };
        let advised = HashMap::from([
            ("free".to_string(), sizing(256 << 20)),
            ("fixed".to_string(), sizing(256 << 20)),
        ]);
        let (free, fixed) = (&wf.steps[0], &wf.steps[1]);
        assert_eq!(
            memory_and_disk(free, "x=big", &advised),
            (640 << 20, DEFAULT_DISK, Some(line))
        );
        assert_eq!(
            memory_and_disk(free, "x=new", &advised),
            (256 << 20, DEFAULT_DISK, Some(line))
        );
        // What the pipeline declares stands.
        assert_eq!(
            memory_and_disk(fixed, "x=big", &advised),
            (2 << 30, DEFAULT_DISK, None)
        );
        // No history: the default.
        assert_eq!(
            memory_and_disk(free, "", &HashMap::new()),
            (DEFAULT_MEMORY, DEFAULT_DISK, None)
        );
    }

    #[test]
    fn short_jobs_of_one_shape_are_grouped_within_the_bounds() {
        let small = (1, 1 << 30, 0, 1 << 30);
        let big = (4, 8 << 30, 0, 1 << 30);
        let s = |n: u64| Some(Duration::from_secs(n));
        // (name, shape, expected)
        let jobs = vec![
            (0, small, s(10)),
            (1, big, s(10)),
            (2, small, None),  // unknown: alone
            (3, small, s(31)), // not short: alone
            (4, small, s(10)),
            (5, big, s(10)),
        ];
        let groups = group(jobs, |j| (j.1, j.2));
        let names: Vec<Vec<u32>> = groups
            .iter()
            .map(|g| g.iter().map(|j| j.0).collect())
            .collect();
        assert_eq!(names, [vec![0, 4], vec![1, 5], vec![2], vec![3]]);
        // 12 of 10 s fill one group (120 s); the 13th starts another.
        let many: Vec<(u32, Shape, Option<Duration>)> =
            (0..13).map(|i| (i, small, s(10))).collect();
        let sizes: Vec<usize> = group(many, |j| (j.1, j.2)).iter().map(Vec::len).collect();
        assert_eq!(sizes, [12, 1]);
        // At most GROUP_MAX, however short.
        let tiny: Vec<(u32, Shape, Option<Duration>)> =
            (0..120).map(|i| (i, small, s(0))).collect();
        let sizes: Vec<usize> = group(tiny, |j| (j.1, j.2)).iter().map(Vec::len).collect();
        assert_eq!(sizes, [GROUP_MAX, GROUP_MAX, 20]);
    }
}
