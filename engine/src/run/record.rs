//! Recording: what the store keeps of a job that ran (its run record).

use super::instance_label;
use super::local::Done;
use crate::instantiate::Instances;
use mustbuild_executors::Outcome;
use mustbuild_lang::model::Workflow;
use mustbuild_store::{Output, RunRecord};

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
