//! The coordinator of a run: the one thread that owns what is known of every
//! instance ([`Progress`]) and changes it, in order. Its loop keys what became
//! ready, a batch to a transaction ([`Coordinator::key_ready`], in
//! `keying.rs`), hands the runnable to the workers with their shares of the
//! machine ([`Coordinator::hand_out`]), then records the jobs that ended
//! meanwhile, a batch to a transaction ([`Coordinator::record_ended`], in
//! `record.rs`). What a job is (`job.rs`), how its outputs reach the store and
//! the workspace (`materialise.rs`) and the workers' file work (`local.rs`,
//! `batch.rs`) are the other modules'.

use super::batch::Task;
use super::local::Message;
use super::priority::RunQueue;
use super::{
    Event, KEYS_AHEAD, Pace, RECORD_BATCH, RunError, RunOptions, RunSummary, Runnable,
    STARTS_REPORTED_WITHIN, ToolReads, announce_starts, batch, instance_label, prepare,
};
use crate::instantiate::{InstanceId, Instances};
use crate::slots::Slots;
use mustbuild_executors::CancelToken;
use mustbuild_lang::model::Workflow;
use mustbuild_store::{Digest, LocalStore, Output, OutputKind};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, mpsc};

/// What a run knows of its instances as it goes, and its tallies: the
/// coordinator's while the run goes, then its end's.
pub(super) struct Progress {
    /// Each instance's output digests, once known.
    pub(super) outputs: Vec<Option<Vec<Digest>>>,
    pub(super) failed: Vec<bool>,
    /// Prepared for a DAGMan node to run (`System::DagPrepare`).
    pub(super) prepared: Vec<bool>,
    /// Whether an instance's `started` event was sent (once, whatever the attempts).
    pub(super) started: Vec<bool>,
    /// How many of its upstream instances each still waits for.
    pub(super) waiting: Vec<usize>,
    pub(super) dependents: Vec<Vec<InstanceId>>,
    /// Instances whose inputs are known, then (key computed, not realised)
    /// those waiting for resources to run.
    pub(super) ready: VecDeque<InstanceId>,
    pub(super) runnable: RunQueue,
    /// Each instance's upward rank, which orders the runnable: computed
    /// when two jobs first wait at once (see [`super::priority::rank_for`]).
    pub(super) ranks: Option<Vec<f64>>,
    /// What keys read, for a no-op record.
    pub(super) seen: crate::noop::Seen,
    pub(super) keys: Vec<Option<Digest>>,
    /// The kind (file, executable, folder) of each output, beside its digest.
    pub(super) kinds: Vec<Option<Vec<OutputKind>>>,
    /// What the record gives, for instances whose files and upstream are
    /// unchanged (taken out as used), and the digests of the sources it read.
    pub(super) from_prior: Vec<Option<(Digest, Vec<Digest>)>>,
    pub(super) prior_sources: HashMap<String, Digest>,
    /// What the record says each instance's outputs are: an instance is taken
    /// from it only if what it reads came out as recorded.
    pub(super) recorded_outputs: Vec<Option<Vec<Digest>>>,
    /// The instances taken from the record, in the order taken.
    pub(super) taken: Vec<InstanceId>,
    pub(super) summary: RunSummary,
    pub(super) attributions: crate::measure::Attributions,
    /// A batch job's run record, by its ticket (for the batch system's own figures).
    pub(super) batch_runs: HashMap<u64, i64>,
}

impl Progress {
    /// Nothing known yet: the instances `selected` with no upstream are ready.
    pub(super) fn new(
        wf: &Workflow,
        instances: &Instances,
        store: &LocalStore,
        options: &RunOptions,
        selected: impl Fn(usize) -> bool,
    ) -> Result<Progress, RunError> {
        let n = instances.all.len();
        let outputs: Vec<Option<Vec<Digest>>> = vec![None; n];
        let failed = vec![false; n];
        // Prepared for a DAGMan node to run (`System::DagPrepare`).
        let prepared = vec![false; n];
        // Whether an instance's `started` event was sent (once, whatever the attempts).
        let started = vec![false; n];
        let waiting: Vec<usize> = instances.all.iter().map(|i| i.deps.len()).collect();
        let dependents = super::priority::dependents(instances, &selected);
        // Instances whose inputs are known, then (key computed, not realised) those
        // waiting for resources to run.
        let ready: std::collections::VecDeque<InstanceId> = (0..n)
            .filter(|&i| waiting[i] == 0 && selected(i))
            .map(|i| InstanceId(i as u32))
            .collect();
        let seen = crate::noop::Seen {
            generation: store.generation()?,
            ..Default::default()
        };
        let keys: Vec<Option<Digest>> = vec![None; n];
        // The kind (file, executable, folder) of each output, beside its digest.
        let kinds: Vec<Option<Vec<OutputKind>>> = vec![None; n];
        // What the record gives, for instances whose files and upstream are unchanged.
        let (from_prior, prior_sources) = match &options.prior {
            Some(prior) => prior.clean(wf, instances),
            None => (vec![None; n], Default::default()),
        };
        // What the record says each instance's outputs are: an instance is taken
        // from it only if what it reads came out as recorded.
        // The instances taken from the record, in the order taken.
        let taken: Vec<InstanceId> = Vec::new();
        let recorded_outputs: Vec<Option<Vec<Digest>>> = from_prior
            .iter()
            .map(|p| p.as_ref().map(|(_, o)| o.clone()))
            .collect();
        Ok(Progress {
            outputs,
            failed,
            prepared,
            started,
            waiting,
            dependents,
            ready,
            runnable: RunQueue::default(),
            ranks: None,
            seen,
            keys,
            kinds,
            from_prior,
            prior_sources,
            recorded_outputs,
            taken,
            summary: RunSummary::default(),
            attributions: crate::measure::Attributions::default(),
            batch_runs: HashMap::new(),
        })
    }
}

/// The coordinator: what it reads of the run, its lines to the workers (and
/// the cache's pusher), and how far it got.
pub(super) struct Coordinator<'r> {
    pub(super) wf: &'r Workflow,
    pub(super) instances: &'r Instances,
    pub(super) store: &'r LocalStore,
    pub(super) options: &'r RunOptions,
    pub(super) session: i64,
    pub(super) tools: &'r std::collections::BTreeMap<String, crate::keys::ToolIdentity>,
    pub(super) tool_reads: &'r [ToolReads],
    /// The pipeline's folder, as an absolute path.
    pub(super) root: &'r PathBuf,
    pub(super) measure: &'r crate::measure::Measure,
    pub(super) slots: &'r Slots,
    /// Instances whose commands started, in the order they took their shares.
    pub(super) starts: &'r Mutex<Vec<InstanceId>>,
    /// What the submitter has to tell (a job held).
    pub(super) notes: &'r Mutex<Vec<String>>,
    /// What history says steps that declare no memory should ask for.
    pub(super) advised: &'r HashMap<String, crate::advice::Sizing>,
    pub(super) cancel: CancelToken,
    pub(super) job_tx: mpsc::Sender<Task>,
    pub(super) done_rx: &'r mpsc::Receiver<Message>,
    /// Realised results to send to the remote cache.
    pub(super) push_tx: Option<mpsc::Sender<(Digest, Vec<Output>)>>,
    pub(super) total_cpus: usize,
    pub(super) total_memory: u64,
    pub(super) workers: usize,
    /// Jobs handed to the workers (or queued on the batch system) at most.
    pub(super) max_in_flight: usize,
    pub(super) progress: &'r mut Progress,
    /// Jobs handed out and not yet ended.
    pub(super) in_flight: usize,
    /// Set at a cancel, or a failure without `--keep-going`: nothing new starts.
    pub(super) stop: bool,
    /// How many ready instances the next keying takes, at most.
    pub(super) batch_size: usize,
    /// The next job's ticket: the order jobs take their shares in.
    pub(super) tickets: u64,
    pub(super) pace: Pace,
}

impl Coordinator<'_> {
    /// The loop, until every reachable instance is known, failed or skipped,
    /// or the run stopped; an error stops it (the caller then cancels what
    /// runs).
    pub(super) fn coordinate(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<(), RunError> {
        loop {
            if self.cancel.is_cancelled() {
                self.stop = true;
            }
            if self.stop {
                // Jobs waiting for their slots give up; what runs finishes.
                self.slots.close();
            }
            if !self.stop && self.keys_now() {
                self.key_ready(on_event)?;
            }
            // Hand runnable instances to the workers, in order, a few ahead: each
            // prepares its job, then waits for the job's share of the slots.
            self.hand_out();
            let more_keys = !self.stop && self.keys_now();
            if self.in_flight == 0 && !more_keys {
                break;
            }
            // While the workers have jobs enough in hand, the jobs that end
            // meanwhile are taken together: one wake-up, one transaction.
            if !more_keys && !self.stop {
                (self.pace).nap(self.in_flight.saturating_sub(self.total_cpus));
            }
            // With keys left to compute, only what has arrived is handled first.
            let message = if more_keys {
                self.done_rx.try_recv()
            } else {
                (self.done_rx)
                    .recv_timeout(STARTS_REPORTED_WITHIN)
                    .map_err(|e| match e {
                        mpsc::RecvTimeoutError::Timeout => mpsc::TryRecvError::Empty,
                        mpsc::RecvTimeoutError::Disconnected => mpsc::TryRecvError::Disconnected,
                    })
            };
            // Started before any job that ended: reported first.
            self.announce_starts(on_event);
            if self.options.batch.is_some() {
                let told = std::mem::take(
                    &mut *(self.notes)
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for message in told {
                    on_event(Event::Warning { message });
                }
            }
            let first = match message {
                Ok(Message::Done(done)) => *done,
                Ok(Message::Lost) => return Err(RunError::WorkerLost),
                Err(mpsc::TryRecvError::Empty) => continue,
                Err(mpsc::TryRecvError::Disconnected) => break,
            };
            // The jobs that ended meanwhile too: their runs are recorded in one
            // transaction (most of what a job costs the store is per transaction).
            let mut batch = vec![first];
            let mut lost = false;
            while batch.len() < RECORD_BATCH {
                match self.done_rx.try_recv() {
                    Ok(Message::Done(done)) => batch.push(*done),
                    Ok(Message::Lost) => {
                        lost = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.in_flight -= batch.len();
            self.pace.ended(batch.len());
            // Those that ended meanwhile may have started meanwhile.
            self.announce_starts(on_event);
            self.record_ended(batch, on_event)?;
            if lost {
                return Err(RunError::WorkerLost);
            }
        }
        Ok(())
    }

    /// Whether to key what became ready now. The first batches are small, so
    /// that commands start at once. While enough jobs wait to be handed out,
    /// what becomes ready waits too, for a bigger batch: it would start
    /// behind those jobs anyway, and a transaction per job that ends costs
    /// more than its keys.
    fn keys_now(&self) -> bool {
        let Progress {
            ready, runnable, ..
        } = &*self.progress;
        !ready.is_empty()
            && (runnable.len() < KEYS_AHEAD * self.workers || ready.len() >= self.batch_size)
    }

    /// Reports the `started` events of the commands that started since the last call.
    fn announce_starts(&mut self, on_event: &mut dyn FnMut(Event)) {
        let context = (self.wf, self.instances);
        announce_starts(self.starts, context, &mut self.progress.started, on_event);
    }

    /// Hands runnable instances to the workers, in order, while fewer than
    /// the most allowed are out: each with its resources (on a batch system,
    /// what it asks of the nodes; here, its share of the machine, queued).
    fn hand_out(&mut self) {
        let (wf, instances, store, options, tool_reads, root, slots, advised) = (
            self.wf,
            self.instances,
            self.store,
            self.options,
            self.tool_reads,
            self.root,
            self.slots,
            self.advised,
        );
        let job_tx = &self.job_tx;
        let Progress {
            outputs,
            runnable,
            kinds,
            ..
        } = &mut *self.progress;
        while !self.stop && self.in_flight < self.max_in_flight {
            let Some(Runnable {
                id,
                key,
                forced,
                attempt,
                memory,
            }) = runnable.pop()
            else {
                break;
            };
            let step = wf.step(instances.get(id).step);
            let mut job = prepare(wf, instances, id, key, outputs, kinds, &options.path_var);
            if let Some(allows) = &mut job.sandbox {
                let reads = &tool_reads[instances.get(id).step.index()];
                reads.allow(allows, [root, store.root()]);
            }
            job.force = forced;
            job.attempt = attempt;
            job.ticket = self.tickets;
            self.tickets += 1;
            job.gpus = step.resources.gpus as usize;
            if options.batch.is_some() {
                // The batch system's nodes, not this machine, bound them.
                job.cpus = step.resources.cpus as usize;
                let label = instance_label(&instances.get(id).values);
                let (asked, disk, line) = batch::memory_and_disk(step, &label, advised);
                job.memory = memory.unwrap_or(asked);
                // A retry's larger request stands.
                job.memory_line = line.filter(|_| memory.is_none());
                job.disk = disk;
                // Measured, else declared (a limit: often generous).
                job.expected = advised
                    .get(step.name.as_str())
                    .map(|s| std::time::Duration::from_secs_f64(s.wall_p95_s))
                    .or(step
                        .resources
                        .time_seconds
                        .map(std::time::Duration::from_secs));
            } else {
                job.cpus = (step.resources.cpus as usize).min(self.total_cpus);
                job.memory = memory
                    .or(step.resources.memory_bytes)
                    .unwrap_or(0)
                    .min(self.total_memory);
                slots.queue(job.ticket, job.cpus, job.memory, job.gpus);
            }
            self.in_flight += 1;
            if job_tx.send(Task::Run(job)).is_err() {
                self.in_flight -= 1;
                break;
            }
        }
    }
}
