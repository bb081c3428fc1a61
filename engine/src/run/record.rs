//! Recording: what the store keeps of a job that ran (its run record), and the
//! coordinator's recording of the jobs that ended, a batch to a transaction.

use super::coordinator::Progress;
use super::local::Done;
use super::{
    Event, RunError, Runnable, announce, instance_label, outputs_in_order, refusal, release,
};
use crate::instantiate::Instances;
use mustbuild_executors::Outcome;
use mustbuild_lang::model::Workflow;
use mustbuild_store::{FinishedRun, Output, RunRecord};

/// A job's run record, and its outputs when it succeeded.
pub(crate) type RecordedRun<'a> = (RunRecord, Option<&'a [Output]>);

/// The run record of a job whose command ran (or could not start).
pub(crate) fn run_record(
    (wf, instances): (&Workflow, &Instances),
    session: i64,
    measure: &crate::measure::Measure,
    done: &Done,
) -> RunRecord {
    let result = &done.result;
    let outcome = &result.outcome;
    let usage = &result.usage;
    let energy = done.energy.as_ref().map(|e| {
        measure.recorded(
            e,
            usage.user_cpu + usage.system_cpu,
            usage.wall,
            usage.max_rss_bytes,
        )
    });
    let gpus = done.job.request.gpus.as_ref().filter(|g| !g.is_empty());
    let mut record = RunRecord {
        session: Some(session),
        key: done.job.key,
        step: wf.step(instances.get(done.job.id).step).name.to_string(),
        instance: Some(instance_label(&instances.get(done.job.id).values)),
        host: mustbuild_store::hostname(),
        started_ms: millis(result.started),
        finished_ms: millis(result.started) + result.usage.wall.as_millis() as i64,
        outcome: outcome_name(outcome).to_string(),
        exit_code: match outcome {
            Outcome::Failed { exit_code } => Some(i64::from(*exit_code)),
            Outcome::Succeeded => Some(0),
            _ => None,
        },
        user_cpu_ms: Some(result.usage.user_cpu.as_millis() as i64),
        sys_cpu_ms: Some(result.usage.system_cpu.as_millis() as i64),
        max_rss_bytes: Some(result.usage.max_rss_bytes as i64),
        read_bytes: usage.io.map(|io| io.read_bytes as i64),
        write_bytes: usage.io.map(|io| io.written_bytes as i64),
        energy_joules: energy.as_ref().map(|e| e.joules),
        energy_method: energy.map(|e| e.method.to_string()),
        log: done.log_digest,
        cpu_model: crate::measure::cpu_model(),
        gpus: gpus.map(|g| g.join(",")),
        memory_method: result.spawned.then(|| usage.peak.method().to_string()),
        input_bytes: done.job.input_bytes.map(|b| b as i64),
        sandboxed: result.spawned.then(|| done.ran_sandboxed()),
    };
    // A batch job's figures are its node's.
    if let Some(node) = &done.node {
        record.host = node.host.clone();
        record.cpu_model = node.cpu_model.clone();
        record.energy_joules = node.energy_joules;
        record.energy_method = node.energy_method.clone();
        record.gpus = Some(node.gpus.join(",")).filter(|g| !g.is_empty());
    }
    record
}

pub(crate) fn millis(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed { .. } | Outcome::MissingOutputs(_) => "failed",
        Outcome::Killed { .. } | Outcome::TimedOut { .. } | Outcome::OutOfMemory { .. } => "killed",
        Outcome::Cancelled => "cancelled",
        Outcome::Infrastructure(_) | Outcome::Held { .. } => "infrastructure",
    }
}

/// The last `lines` lines of a log, for error messages.
pub(crate) fn tail(log: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl super::coordinator::Coordinator<'_> {
    /// Records a batch of jobs that ended, in one transaction, then tells of
    /// each: realised (its dependents released), tried again, or failed (and
    /// then, without `--keep-going`, nothing new starts).
    pub(super) fn record_ended(
        &mut self,
        mut batch: Vec<Done>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), RunError> {
        let (wf, instances, store, options, session, root, measure) = (
            self.wf,
            self.instances,
            self.store,
            self.options,
            self.session,
            self.root,
            self.measure,
        );
        let cancel = &self.cancel;
        let push_tx = &self.push_tx;
        let Progress {
            outputs,
            failed,
            prepared,
            started,
            waiting,
            dependents,
            runnable,
            ready,
            kinds,
            summary,
            attributions,
            batch_runs,
            ..
        } = &mut *self.progress;
        // A job that met a store or file-system error stops the run: those
        // that ended before it are recorded as usual, those after it only
        // have what they put in the workspace remembered.
        let after_error = match batch.iter().position(|d| d.error.is_some()) {
            Some(i) => batch.split_off(i),
            None => Vec::new(),
        };
        // Per job: its run and, when it succeeded, its outputs.
        let records: Vec<Option<RecordedRun<'_>>> = batch
            .iter()
            .map(|d| {
                let recorded = !d.not_started && !d.realised_elsewhere;
                recorded.then(|| {
                    let stored = d
                        .stored
                        .as_deref()
                        .filter(|_| d.result.outcome == Outcome::Succeeded);
                    (run_record((wf, instances), session, measure, d), stored)
                })
            })
            .collect();
        let finished: Vec<FinishedRun<'_>> = batch
            .iter()
            .zip(&records)
            .filter_map(|(d, r)| {
                r.as_ref().map(|(record, stored)| FinishedRun {
                    run: record,
                    realised: *stored,
                    materialised: &d.materialised,
                    objects: &d.objects,
                })
            })
            .collect();
        let ids = match store.finish_runs(&finished) {
            Ok(ids) => ids,
            Err(e) => {
                for d in batch.iter().chain(&after_error) {
                    let _ = store.set_materialised_many(&d.materialised);
                }
                return Err(e.into());
            }
        };
        // Each job's energy as recorded, for the summary and its event.
        let energies: Vec<Option<f64>> = records
            .iter()
            .map(|r| r.as_ref().and_then(|(record, _)| record.energy_joules))
            .collect();
        summary.energy_joules += energies.iter().flatten().sum::<f64>();
        let mut ids = ids.into_iter();
        for ((d, r), recorded) in batch.iter().zip(&records).zip(&energies) {
            // Every recorded job has an id, whether or not it was measured.
            let id = if r.is_some() { ids.next() } else { None };
            if let (Some(id), Some(_)) = (id, &options.batch) {
                batch_runs.insert(d.job.ticket, id);
            }
            let Some(energy) = &d.energy else { continue };
            attributions.ended(energy);
            if let Some(id) = id {
                attributions.recorded(energy.token, id, energy.gpu_joules, *recorded);
            }
        }
        drop(finished);
        drop(records);
        let mut retries = Vec::new();
        for (done, energy_joules) in batch.into_iter().zip(energies) {
            let sandboxed = done.ran_sandboxed();
            let Done {
                job,
                result,
                stored,
                log,
                realised_elsewhere,
                not_started,
                handed_over,
                events,
                materialised,
                sandbox_found,
                ..
            } = done;
            for e in events {
                on_event(e);
            }
            if handed_over {
                prepared[job.id.index()] = true;
                summary.prepared += 1;
            }
            if not_started {
                continue;
            }
            let inst = instances.get(job.id);
            let step = wf.step(inst.step);
            // A job that failed before its command started (its inputs could
            // not be put in place) is still reported as started first.
            if !realised_elsewhere {
                announce((wf, instances), job.id, started, on_event);
            }
            summary.cpu_seconds += (result.usage.user_cpu + result.usage.system_cpu).as_secs_f64();
            if realised_elsewhere {
                store.set_materialised_many(&materialised)?;
                let realised = stored.unwrap_or_default();
                (outputs[job.id.index()], kinds[job.id.index()]) =
                    outputs_in_order(step, &realised)?;
                summary.cached += 1;
                on_event(Event::Cached {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                });
                release(&dependents[job.id.index()], waiting, ready);
                continue;
            }
            let outcome = result.outcome.clone();
            let stored = stored.filter(|_| outcome == Outcome::Succeeded);
            if let Some(stored) = stored {
                // Recorded: another process waiting for it finds it realised.
                drop(job.lock);
                (outputs[job.id.index()], kinds[job.id.index()]) = outputs_in_order(step, &stored)?;
                if let Some(push) = &push_tx {
                    // Sent in the background, signed; a failure is a warning.
                    let _ = push.send((job.key, stored.clone()));
                }
                if let Some(cache) = &options.cache {
                    for message in cache.take_warnings() {
                        on_event(Event::Warning { message });
                    }
                }
                summary.executed += 1;
                on_event(Event::Executed {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                    seconds: result.usage.wall.as_secs_f64(),
                    cpu_seconds: (result.usage.user_cpu + result.usage.system_cpu).as_secs_f64(),
                    energy_joules,
                });
                release(&dependents[job.id.index()], waiting, ready);
            } else if job.attempt < step.retry
                && !cancel.is_cancelled()
                && outcome != Outcome::Cancelled
            {
                on_event(Event::Retrying {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                    attempt: job.attempt + 1,
                    why: outcome.to_string(),
                });
                // Out of memory: asked again with twice as much, or half
                // as much again as it was seen to use, whichever is more.
                let memory = match &outcome {
                    Outcome::OutOfMemory { used_bytes, .. } => Some(
                        (job.memory.max(1 << 20) * 2)
                            .max(used_bytes.unwrap_or(0) * 3 / 2)
                            .next_multiple_of(1 << 20),
                    ),
                    _ => None,
                };
                retries.push(Runnable {
                    id: job.id,
                    key: job.key,
                    forced: job.force,
                    attempt: job.attempt + 1,
                    memory,
                });
            } else {
                if outcome == Outcome::Cancelled {
                    summary.cancelled += 1;
                } else {
                    summary.failed += 1;
                }
                failed[job.id.index()] = true;
                let log_tail = tail(&log, 20);
                // A command that ran unsandboxed was refused nothing.
                let refused = if sandboxed {
                    mustbuild_executors::sandbox::refused_paths(&log_tail)
                } else {
                    Vec::new()
                };
                on_event(Event::Failed {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                    outcome,
                    log_tail,
                });
                if let Some(found) = &sandbox_found {
                    on_event(Event::Warning {
                        message: refusal::report(&step.name, found, root),
                    });
                } else if !refused.is_empty() {
                    on_event(Event::Warning {
                        message: refusal::advice(&step.name, &refused, root),
                    });
                }
                // Unless told to go on, nothing new starts; what runs finishes.
                if !options.keep_going {
                    self.stop = true;
                }
            }
        }
        // First in line among the runnable, in the order they ended: handed
        // out next (behind the jobs already handed out).
        for r in retries {
            runnable.retry(r);
        }
        let mut after_error = after_error.into_iter();
        if let Some(failing) = after_error.next() {
            for e in failing.events {
                on_event(e);
            }
            // What it and the jobs after it put in place is remembered.
            let _ = store.set_materialised_many(&failing.materialised);
            for d in after_error {
                let _ = store.set_materialised_many(&d.materialised);
            }
            if let Some(e) = failing.error {
                return Err(e);
            }
        }
        Ok(())
    }
}
