//! The local executor's side of a run: worker threads that take a job's key
//! lock, put its inputs in place, wait for its share of the machine, run its
//! command through the worker's own [`mustbuild_executors::Local`] executor,
//! and store and materialise what it made, leaving the coordinator only
//! records to write.

use super::job::Job;
use super::materialise::{materialize_outputs, store_outputs};
use super::scratch::{Placement, Scratch, place_inputs};
use super::{Event, RunError};
use crate::instantiate::{InstanceId, Instances};
use crate::slots::Slots;
use mustbuild_executors::{CancelToken, Outcome};
use mustbuild_lang::model::Workflow;
use mustbuild_store::{Digest, LocalStore, Output, Unrecorded};
use std::path::Path;
use std::sync::mpsc;

/// What workers tell the coordinator.
pub(crate) enum Message {
    Done(Box<Done>),
    /// A worker stopped on a bug.
    Lost,
}

/// A job's end, as a worker leaves it: outputs stored and materialised when it
/// succeeded, nothing recorded yet.
pub(crate) struct Done {
    pub(crate) job: Job,
    pub(crate) result: mustbuild_executors::ExecResult,
    /// The outputs stored, when the command succeeded with outputs of the declared kinds.
    pub(crate) stored: Option<Vec<Output>>,
    pub(crate) log: Vec<u8>,
    pub(crate) log_digest: Option<Digest>,
    /// Another process realised it while this one waited for the lock.
    pub(crate) realised_elsewhere: bool,
    /// The command never started: the run stopped (a failure, Ctrl-C) while the
    /// job waited for its lock or slots. Nothing of it is reported.
    pub(crate) not_started: bool,
    /// What materialising said (edited outputs kept aside).
    pub(crate) events: Vec<Event>,
    /// What it put in the workspace, to record with the run.
    pub(crate) materialised: Vec<mustbuild_store::Placed>,
    /// Its small outputs, to record with the run.
    pub(crate) objects: Unrecorded,
    /// A store or file-system failure: the run stops.
    pub(crate) error: Option<RunError>,
    /// What measuring its command's energy gave (when it started).
    pub(crate) energy: Option<crate::measure::Ended>,
    /// What the node it ran on measured (a batch job's), which the record takes.
    pub(crate) node: Option<crate::worker::NodeResult>,
    /// Its folder was prepared for another to run (a DAGMan node's PRE
    /// script): not started here, and not skipped either.
    pub(crate) handed_over: bool,
    /// What `--sandbox-report` found it needs beyond its sandbox.
    pub(crate) sandbox_found: Option<super::refusal::Found>,
}

impl Done {
    /// Whether its command ran sandboxed: here, as its request says; on a
    /// batch node, as the node says (one whose kernel cannot runs it bare).
    pub(crate) fn ran_sandboxed(&self) -> bool {
        match &self.node {
            Some(node) => node.sandboxed,
            None => self.job.request.sandbox.is_some(),
        }
    }
}

/// Takes the lock of a derivation key, so that two processes never run one
/// derivation at once: a lock on one byte of `STORE/locks/keys`, at an offset
/// drawn from the key. These are open-file-description locks, so threads of one
/// process exclude each other too, and the kernel drops them when the file
/// closes or the process dies. One shared file, rather than one per key, because
/// creating and deleting a file per job slows ext4's inode allocation down.
/// Waits (until `stopped`: `None` then) by polling, so that Ctrl-C, or the run
/// stopping after a failure, is heard; `waiting` is called when it starts to wait.
pub(crate) fn lock_key(
    store: &LocalStore,
    key: &Digest,
    stopped: &dyn Fn() -> bool,
    waiting: &dyn Fn(),
) -> std::io::Result<Option<std::fs::File>> {
    use nix::fcntl::{FcntlArg, fcntl};
    use nix::libc;
    let dir = store.root().join("locks");
    let path = dir.join("keys");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
    };
    let f = match open() {
        Ok(f) => f,
        Err(_) => {
            std::fs::create_dir_all(&dir)?;
            open()?
        }
    };
    let mut first = [0u8; 8];
    first.copy_from_slice(&key.as_bytes()[..8]);
    // 62 bits of the key: a valid, non-negative file offset.
    let offset = (u64::from_le_bytes(first) >> 2) as i64;
    let byte = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: offset,
        l_len: 1,
        l_pid: 0,
    };
    const FIRST_NAP: std::time::Duration = std::time::Duration::from_millis(5);
    let mut nap = FIRST_NAP;
    loop {
        match fcntl(&f, FcntlArg::F_OFD_SETLK(&byte)) {
            Ok(_) => return Ok(Some(f)),
            Err(nix::errno::Errno::EINTR) => continue,
            // Another process runs this derivation.
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                if nap == FIRST_NAP {
                    waiting();
                }
                if stopped() {
                    return Ok(None);
                }
                std::thread::sleep(nap);
                nap = (nap * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A worker's part of a job: everything done with files, nothing recorded.
/// What a worker thread works with.
pub(crate) struct Worker<'a> {
    pub(crate) wf: &'a Workflow,
    pub(crate) instances: &'a Instances,
    pub(crate) store: &'a LocalStore,
    pub(crate) scratch: Scratch,
    pub(crate) slots: &'a Slots,
    pub(crate) cancel: CancelToken,
    pub(crate) messages: mpsc::Sender<Message>,
    pub(crate) starts: &'a std::sync::Mutex<Vec<InstanceId>>,
    /// The pipeline's folder, as an absolute path.
    pub(crate) root: &'a Path,
    pub(crate) measure: &'a crate::measure::Measure,
    /// Commands run sandboxed.
    pub(crate) sandbox: bool,
    /// Batch nodes that cannot sandbox fail the step (`--require-sandbox`).
    pub(crate) require_sandbox: bool,
    /// A refused command is tried again with what it was refused, to find
    /// all it needs (`--sandbox-report`).
    pub(crate) sandbox_report: bool,
    /// This worker's own executor, which its commands run through.
    pub(crate) local: std::cell::RefCell<mustbuild_executors::Local>,
}

pub(crate) fn work(worker: &Worker<'_>, mut job: Job) -> Done {
    let placements = std::mem::take(&mut job.placements);
    worker.scratch.take(&mut job.request);
    if worker.sandbox {
        job.sandbox_request();
    }
    let ticket = job.ticket;
    // While another process holds the derivation, later jobs do not wait for this one.
    let mut done = locked(worker, job, &|| worker.slots.leave(ticket));
    if !done.not_started
        && let Err(e) = run_and_store(worker, &placements, &mut done)
    {
        done.error = Some(e);
    }
    worker.slots.leave(ticket);
    done
}

/// A job with its key's lock taken (`not_started` when the run stopped while
/// it waited; `waiting` is called when it starts to wait), nothing done yet.
pub(crate) fn locked(worker: &Worker<'_>, mut job: Job, waiting: &dyn Fn()) -> Done {
    let stopped = || worker.cancel.is_cancelled() || worker.slots.is_closed();
    let cancelled = match lock_key(worker.store, &job.key, &stopped, waiting) {
        Ok(Some(lock)) => {
            job.lock = Some(lock);
            false
        }
        Ok(None) => true,
        Err(_) => false,
    };
    Done {
        job,
        result: ended_early(Outcome::Cancelled),
        stored: None,
        log: Vec::new(),
        log_digest: None,
        realised_elsewhere: false,
        not_started: cancelled,
        events: Vec::new(),
        materialised: Vec::new(),
        objects: Unrecorded::default(),
        error: None,
        energy: None,
        node: None,
        handed_over: false,
        sandbox_found: None,
    }
}

pub(crate) fn ended_early(outcome: Outcome) -> mustbuild_executors::ExecResult {
    mustbuild_executors::ExecResult {
        outcome,
        usage: mustbuild_executors::Usage::default(),
        started: std::time::SystemTime::now(),
        spawned: false,
    }
}

/// Someone may have realised the job's key while it waited for the lock.
/// Under the key's lock, a plain read sees any realisation another process
/// made (it held the lock until that committed); only then a write to lease it.
pub(crate) fn realised_meanwhile(
    store: &LocalStore,
    job: &Job,
) -> Result<Option<Vec<Output>>, RunError> {
    if !job.force && store.is_realised(&job.key)? {
        return Ok(store.realisation(&job.key)?);
    }
    Ok(None)
}

/// Puts a realisation another process made in the workspace, for `done`.
pub(crate) fn take_realised(
    worker: &Worker<'_>,
    realised: Vec<Output>,
    done: &mut Done,
) -> Result<(), RunError> {
    let job = &done.job;
    let mut events = Vec::new();
    let r = materialize_outputs(
        (worker.wf, worker.instances, worker.root),
        worker.store,
        (job.id, job.key),
        &realised,
        &[],
        &Unrecorded::default(),
        &mut done.materialised,
        &mut |e| events.push(e),
    );
    done.events = events;
    r?;
    done.stored = Some(realised);
    done.realised_elsewhere = true;
    Ok(())
}

pub(crate) fn run_and_store(
    worker: &Worker<'_>,
    placements: &[Placement],
    done: &mut Done,
) -> Result<(), RunError> {
    let Worker {
        store,
        scratch,
        slots,
        cancel,
        starts,
        measure,
        ..
    } = worker;
    if let Some(realised) = realised_meanwhile(store, &done.job)? {
        // No command to start: later jobs do not wait behind this one's copies.
        slots.leave(done.job.ticket);
        return take_realised(worker, realised, done);
    }
    // Stopped meanwhile: no inputs to copy for a command that will not start.
    if cancel.is_cancelled() || slots.is_closed() {
        done.not_started = true;
        return Ok(());
    }
    let mut found = None;
    let job = &mut done.job;
    let placed = place_inputs(store, scratch, placements);
    job.input_bytes = placed.as_ref().ok().copied();
    done.result = match placed {
        Ok(_) => match slots.take(job.ticket, job.cpus, job.memory, job.gpus, cancel, || {
            starts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(job.id);
        }) {
            Ok(share) => {
                // A step that asked for none sees none (not every GPU).
                job.request.gpus = Some(share.gpus.clone());
                let measuring = measure.begin(&share.gpus);
                let mut result = worker.local.borrow_mut().run(&job.request);
                if worker.sandbox_report
                    && result.spawned
                    && result.outcome != Outcome::Succeeded
                    && !cancel.is_cancelled()
                {
                    (result, found) = find_needs(worker, placements, job, result);
                }
                let cpu = result.usage.user_cpu + result.usage.system_cpu;
                done.energy = Some(measure.end(measuring, cpu));
                // The command is over: its CPUs, memory and GPUs go to the next one.
                slots.give(share);
                result
            }
            Err(_) => {
                done.not_started = true;
                return Ok(());
            }
        },
        Err(e) => ended_early(Outcome::Infrastructure(format!(
            "cannot prepare the scratch folder: {e}"
        ))),
    };
    done.sandbox_found = found;
    let log = done.job.request.log.clone();
    store_made(worker, done, &scratch.root, &log)
}

/// The most times `--sandbox-report` runs a command again.
const MAX_REPORT_TRIES: usize = 16;

/// `--sandbox-report` for a sandboxed command that failed (`first`): while
/// its log names paths the sandbox refused, it runs again (inputs placed
/// anew) with them allowed. What it needed, if anything; `first` stays the
/// job's result, with its log, so that nothing of it is stored.
fn find_needs(
    worker: &Worker<'_>,
    placements: &[Placement],
    job: &Job,
    first: mustbuild_executors::ExecResult,
) -> (
    mustbuild_executors::ExecResult,
    Option<super::refusal::Found>,
) {
    let Some(mut sandbox) = job.request.sandbox.clone() else {
        return (first, None);
    };
    let log = &job.request.log;
    let first_log = std::fs::read(log).unwrap_or_default();
    let mut needs = Vec::new();
    let mut then_succeeded = false;
    let mut text = String::from_utf8_lossy(&first_log).into_owned();
    for _ in 0..MAX_REPORT_TRIES {
        let mut widened = false;
        for path in mustbuild_executors::sandbox::refused_paths(&text) {
            let keep_out = [worker.root.to_path_buf(), worker.store.root().to_path_buf()];
            widened |=
                super::refusal::widen(&mut sandbox, &job.request.dir, &path, &keep_out, &mut needs);
        }
        if !widened || place_inputs(worker.store, &worker.scratch, placements).is_err() {
            break;
        }
        let mut again = job.request.clone();
        again.sandbox = Some(sandbox.clone());
        let result = worker.local.borrow_mut().run(&again);
        then_succeeded = result.outcome == Outcome::Succeeded;
        if then_succeeded || worker.cancel.is_cancelled() {
            break;
        }
        text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    }
    let _ = std::fs::write(log, &first_log);
    let found = (!needs.is_empty()).then_some(super::refusal::Found {
        needs,
        then_succeeded,
    });
    (first, found)
}

/// What a command that ended left: its log, and when it succeeded its
/// declared outputs (in `work`, the folder it ran in) moved into the store and
/// put in the workspace. Nothing is recorded yet.
pub(crate) fn store_made(
    worker: &Worker<'_>,
    done: &mut Done,
    work: &Path,
    log: &Path,
) -> Result<(), RunError> {
    let Worker {
        wf,
        instances,
        store,
        root,
        ..
    } = worker;
    let job = &done.job;
    // The log is the command's (the executor truncated it when it started it),
    // unless the command was not started: it is then the last job's.
    // (Most commands say nothing: their empty log is not opened.)
    if done.result.spawned && std::fs::metadata(log).is_ok_and(|m| m.len() > 0) {
        done.log = std::fs::read(log).unwrap_or_default();
    }
    let mut in_scratch = Vec::new();
    let stored = if done.result.outcome == Outcome::Succeeded {
        match store_outputs(
            wf,
            instances,
            store,
            work,
            job,
            &mut in_scratch,
            &mut done.objects,
        ) {
            Ok(Ok(stored)) => Some(stored),
            Ok(Err(why)) => {
                done.result.outcome = Outcome::Infrastructure(why);
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    // A silent command has no log to keep.
    if !done.log.is_empty() {
        done.log_digest = Some(store.add_bytes(&done.log)?);
    }
    if let Some(stored) = &stored {
        let mut events = Vec::new();
        let r = materialize_outputs(
            (wf, instances, root),
            store,
            (job.id, job.key),
            stored,
            &in_scratch,
            &done.objects,
            &mut done.materialised,
            &mut |e| events.push(e),
        );
        done.events = events;
        r?;
    }
    done.stored = stored;
    Ok(())
}
