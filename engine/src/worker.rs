//! `mustbuild worker JOB/job.json`: one step, run on a batch system's node
//! exactly as the local executor runs it, the store never touched.
//!
//! The driver (the `mustbuild run` on the login node) prepares a job folder on
//! the shared filesystem: `job.json` (this module's [`Spec`]) and `work/`, the
//! step's scratch folder with its inputs in place. The worker checks that each
//! declared tool on this node is the one in the key, runs the command in
//! `work/` with the cleared environment, its log at `JOB/log`, measures it on
//! this node, and writes `result.json` ([`NodeResult`]) last, by rename. The
//! driver alone reads the outputs left in `work/` into the store and writes
//! the database: SQLite is never opened from a node (it is not safe over a
//! network filesystem), and a worker killed at any instant leaves no record.

use mustbuild_executors::sandbox::{Allowances, Sandbox};
use mustbuild_executors::{CancelToken, ExecRequest, ExecResult, Io, Outcome, Peak, Usage};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The spec's file name in a job folder; the result's; the step's folder; its log.
pub const SPEC: &str = "job.json";
pub const RESULT: &str = "result.json";
pub const WORK: &str = "work";
pub const LOG: &str = "log";

/// What a worker runs (written by the driver).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Spec {
    /// The instance, for messages (`step[values]`).
    pub label: String,
    pub command: String,
    /// The step's whole environment but `HOME` and `TMPDIR` (set in `work/`).
    pub env: Vec<(String, String)>,
    /// Relative to `work/`: what must exist when the command succeeds.
    pub outputs: Vec<PathBuf>,
    pub time_limit_ms: Option<u64>,
    /// GPUs the step asked for (the batch system names which).
    pub gpus: u32,
    /// The tools the key holds, to be found the same on the node.
    pub tools: Vec<Tool>,
    /// The energy model's figures where no counter is read.
    pub core_watts: f64,
    pub memory_watts_per_gb: f64,
    /// Run the command sandboxed where the node's kernel can
    /// (`mustbuild_executors::sandbox`), with what the step's declaration
    /// allows besides its folder.
    #[serde(default)]
    pub sandbox: bool,
    #[serde(default)]
    pub allows: Allowances,
    /// What an earlier version called the absolute inputs (`allows.inputs`
    /// now): read, never written, so that its jobs keep them.
    #[serde(default, skip_serializing)]
    pub outside: Vec<PathBuf>,
    /// A node that cannot sandbox fails the step rather than run it
    /// unsandboxed (`--require-sandbox`).
    #[serde(default)]
    pub require_sandbox: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tool {
    pub name: String,
    pub path: PathBuf,
    /// BLAKE3, hexadecimal.
    pub digest: String,
}

/// What a worker tells the driver (`result.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeResult {
    /// `succeeded`, `failed`, `killed`, `timed-out`, `cancelled`,
    /// `missing-outputs`, `infrastructure`.
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why, for `infrastructure`; the missing paths, for `missing-outputs`.
    pub detail: Option<String>,
    pub missing: Vec<PathBuf>,
    pub spawned: bool,
    pub started_ms: u64,
    pub wall_ms: u64,
    pub user_cpu_ms: u64,
    pub sys_cpu_ms: u64,
    pub max_rss_bytes: u64,
    /// What `max_rss_bytes` is ([`Peak::method`]).
    pub memory_method: String,
    pub read_bytes: Option<u64>,
    pub written_bytes: Option<u64>,
    pub host: String,
    pub cpu_model: Option<String>,
    pub gpus: Vec<String>,
    pub energy_joules: Option<f64>,
    pub energy_method: Option<String>,
    /// Whether the command ran sandboxed.
    #[serde(default)]
    pub sandboxed: bool,
}

impl NodeResult {
    fn from_exec(r: &ExecResult) -> NodeResult {
        let (outcome, exit_code, signal, detail, missing) = match &r.outcome {
            Outcome::Succeeded => ("succeeded", Some(0), None, None, Vec::new()),
            Outcome::Failed { exit_code } => ("failed", Some(*exit_code), None, None, Vec::new()),
            Outcome::Killed { signal } => ("killed", None, Some(*signal), None, Vec::new()),
            Outcome::TimedOut { limit } => (
                "timed-out",
                None,
                None,
                Some(limit.as_millis().to_string()),
                Vec::new(),
            ),
            Outcome::Cancelled => ("cancelled", None, None, None, Vec::new()),
            Outcome::MissingOutputs(m) => ("missing-outputs", None, None, None, m.clone()),
            Outcome::Infrastructure(why) | Outcome::Held { reason: why } => {
                ("infrastructure", None, None, Some(why.clone()), Vec::new())
            }
            Outcome::OutOfMemory { reason, .. } => (
                "infrastructure",
                None,
                None,
                Some(reason.clone()),
                Vec::new(),
            ),
        };
        let u = &r.usage;
        NodeResult {
            outcome: outcome.into(),
            exit_code,
            signal,
            detail,
            missing,
            spawned: r.spawned,
            started_ms: millis(r.started),
            wall_ms: u.wall.as_millis() as u64,
            user_cpu_ms: u.user_cpu.as_millis() as u64,
            sys_cpu_ms: u.system_cpu.as_millis() as u64,
            max_rss_bytes: u.max_rss_bytes,
            memory_method: u.peak.method().to_string(),
            read_bytes: u.io.map(|io| io.read_bytes),
            written_bytes: u.io.map(|io| io.written_bytes),
            host: mustbuild_store::hostname(),
            cpu_model: crate::measure::cpu_model(),
            ..NodeResult::default()
        }
    }

    /// The result as the local executor would have given it.
    pub fn to_exec(&self) -> ExecResult {
        let outcome = match self.outcome.as_str() {
            "succeeded" => Outcome::Succeeded,
            "failed" => Outcome::Failed {
                exit_code: self.exit_code.unwrap_or(1),
            },
            "killed" => Outcome::Killed {
                signal: self.signal.unwrap_or(9),
            },
            "timed-out" => Outcome::TimedOut {
                limit: Duration::from_millis(
                    self.detail
                        .as_deref()
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(0),
                ),
            },
            "cancelled" => Outcome::Cancelled,
            "missing-outputs" => Outcome::MissingOutputs(self.missing.clone()),
            _ => Outcome::Infrastructure(
                self.detail
                    .clone()
                    .unwrap_or_else(|| format!("the worker said `{}`", self.outcome)),
            ),
        };
        ExecResult {
            outcome,
            usage: Usage {
                wall: Duration::from_millis(self.wall_ms),
                user_cpu: Duration::from_millis(self.user_cpu_ms),
                system_cpu: Duration::from_millis(self.sys_cpu_ms),
                max_rss_bytes: self.max_rss_bytes,
                peak: Peak::from_method(&self.memory_method),
                io: match (self.read_bytes, self.written_bytes) {
                    (Some(read_bytes), Some(written_bytes)) => Some(Io {
                        read_bytes,
                        written_bytes,
                    }),
                    _ => None,
                },
            },
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(self.started_ms),
            spawned: self.spawned,
        }
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a worker could not even run its step (the driver reports its exit
/// status and standard error).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot read the job {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the job {} is not a mustbuild job of this version: {source}", path.display())]
    Spec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Stopped by a signal (the batch system removed or evicted the job):
    /// no result is written, so the driver tells the end from the batch system.
    #[error("stopped by a signal before the step ended: no result written")]
    Stopped,
    #[error("cannot write the result {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The digests of the tool files a worker has hashed: one batch job runs up
/// to 50 grouped steps, most with the same tools, and each file is hashed once.
#[derive(Debug, Default)]
pub struct ToolDigests(std::collections::HashMap<PathBuf, Result<String, String>>);

impl ToolDigests {
    /// The file's BLAKE3 (hexadecimal), or why it cannot be read.
    fn of(&mut self, path: &Path) -> &Result<String, String> {
        self.0.entry(path.to_path_buf()).or_insert_with(|| {
            mustbuild_store::hashing::hash_file(path)
                .map(|(digest, _)| digest.to_hex())
                .map_err(|e| e.to_string())
        })
    }
}

/// Why a declared tool on this node is not the one in the key; `None` when
/// every one is.
pub fn tool_mismatch(tools: &[Tool], digests: &mut ToolDigests) -> Option<String> {
    let host = mustbuild_store::hostname();
    for t in tools {
        let found = match digests.of(&t.path) {
            Ok(digest) if *digest == t.digest => continue,
            Ok(digest) => format!(
                "its {} there has digest {}",
                t.path.display(),
                short(digest)
            ),
            Err(e) => format!("it has no {} ({e})", t.path.display()),
        };
        return Some(format!(
            "tool `{}` differs on node {host}: the key holds {} (blake3 {}), but {found}; \
             run the step where the same tool is installed (e.g. `requirements` in \
             `executor \"htcondor\" {{ … }}`), or declare the tool the node has",
            t.name,
            t.path.display(),
            short(&t.digest),
        ));
    }
    None
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// Runs the job whose spec is at `spec_path`, writing `result.json` beside it.
/// A step that fails is a result, not an error.
pub fn run(
    spec_path: &Path,
    cancel: &CancelToken,
    digests: &mut ToolDigests,
) -> Result<NodeResult, WorkerError> {
    let text = std::fs::read(spec_path).map_err(|source| WorkerError::Read {
        path: spec_path.to_path_buf(),
        source,
    })?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|source| WorkerError::Spec {
        path: spec_path.to_path_buf(),
        source,
    })?;
    let job = spec_path.parent().unwrap_or(Path::new("."));
    let job = std::path::absolute(job).unwrap_or_else(|_| job.to_path_buf());
    let work = job.join(WORK);
    let unsandboxable = || {
        let why = (spec.sandbox && spec.require_sandbox)
            .then(|| mustbuild_executors::sandbox::support().err())
            .flatten()?;
        Some(format!(
            "this node cannot sandbox the step ({why}), and the run requires it \
             (--require-sandbox)"
        ))
    };
    let result = match tool_mismatch(&spec.tools, digests).or_else(unsandboxable) {
        Some(why) => NodeResult::from_exec(&ExecResult {
            outcome: Outcome::Infrastructure(why),
            usage: Usage::default(),
            started: SystemTime::now(),
            spawned: false,
        }),
        None => run_step(&spec, &job, &work, cancel),
    };
    if cancel.is_cancelled() {
        return Err(WorkerError::Stopped);
    }
    let path = job.join(RESULT);
    let partial = job.join(format!("{RESULT}.partial"));
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::write(p, bytes).map_err(|source| WorkerError::Write {
            path: p.to_path_buf(),
            source,
        })
    };
    let bytes = serde_json::to_vec_pretty(&result).unwrap_or_default();
    write(&partial, &bytes)?;
    std::fs::rename(&partial, &path).map_err(|source| WorkerError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(result)
}

fn run_step(spec: &Spec, job: &Path, work: &Path, cancel: &CancelToken) -> NodeResult {
    let home = work.join(".mustbuild/home");
    let tmp = work.join(".mustbuild/tmp");
    for d in [&home, &tmp] {
        let _ = std::fs::create_dir_all(d);
    }
    let mut env = spec.env.clone();
    env.push(("HOME".into(), home.display().to_string()));
    env.push(("TMPDIR".into(), tmp.display().to_string()));
    // The batch system names the GPUs it gave (HTCondor and Slurm set
    // CUDA_VISIBLE_DEVICES); a step that asked for none sees none.
    let gpus = if spec.gpus == 0 {
        Vec::new()
    } else {
        std::env::var("CUDA_VISIBLE_DEVICES")
            .map(|v| mustbuild_executors::gpus::parse_visible_devices(&v))
            .unwrap_or_default()
    };
    // Sandboxed as a local step is, where this node's kernel has Landlock.
    let sandbox = (spec.sandbox && mustbuild_executors::sandbox::support().is_ok()).then(|| {
        let mut allows = spec.allows.clone();
        allows.inputs.extend(spec.outside.iter().cloned());
        Sandbox::for_step(work, &env, &allows)
    });
    let sandboxed = sandbox.is_some();
    let request = ExecRequest {
        command: spec.command.clone(),
        dir: work.to_path_buf(),
        env,
        log: job.join(LOG),
        outputs: spec.outputs.clone(),
        time_limit: spec.time_limit_ms.map(Duration::from_millis),
        gpus: Some(gpus.clone()),
        sandbox,
    };
    let model = mustbuild_executors::energy::Model {
        core_watts: spec.core_watts,
        memory_watts_per_gb: spec.memory_watts_per_gb,
    };
    let measure = crate::measure::Measure::new(model);
    let started = measure.begin(&gpus);
    // From a thread of its own: a step's memory cgroup (where there is one)
    // is its starting thread's, and never the main thread's.
    let exec = std::thread::scope(|s| {
        s.spawn(|| mustbuild_executors::run(&request, cancel))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    mustbuild_executors::release_cgroups();
    let usage = &exec.usage;
    let cpu = usage.user_cpu + usage.system_cpu;
    let ended = measure.end(started, cpu);
    // The node's other jobs are not this run's: RAPL's package figure cannot
    // be shared out among them, so energy is the model's (and NVML's, for
    // the step's own GPUs).
    let energy = measure.recorded(&ended, cpu, usage.wall, usage.max_rss_bytes);
    let mut r = NodeResult::from_exec(&exec);
    r.sandboxed = sandboxed && exec.spawned;
    r.gpus = gpus;
    r.energy_joules = Some(energy.joules);
    r.energy_method = Some(energy.method.to_string());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_round_trips_to_what_the_local_executor_gives() {
        let exec = ExecResult {
            outcome: Outcome::Failed { exit_code: 3 },
            usage: Usage {
                wall: Duration::from_millis(1500),
                user_cpu: Duration::from_millis(700),
                system_cpu: Duration::from_millis(20),
                max_rss_bytes: 300 << 20,
                peak: Peak::Cgroup,
                io: Some(Io {
                    read_bytes: 10,
                    written_bytes: 20,
                }),
            },
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            spawned: true,
        };
        let r = NodeResult::from_exec(&exec);
        let back: NodeResult = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.to_exec(), exec);
        let limit = Outcome::TimedOut {
            limit: Duration::from_secs(5),
        };
        let timed = NodeResult::from_exec(&ExecResult {
            outcome: limit.clone(),
            ..exec
        });
        assert_eq!(timed.to_exec().outcome, limit);
    }

    #[test]
    fn a_tool_that_differs_on_the_node_is_named_with_both_identities() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("python3");
        std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
        let (digest, _) = mustbuild_store::hashing::hash_file(&tool).unwrap();
        let same = Tool {
            name: "python3".into(),
            path: tool.clone(),
            digest: digest.to_hex(),
        };
        let fresh = ToolDigests::default;
        assert_eq!(
            tool_mismatch(std::slice::from_ref(&same), &mut fresh()),
            None
        );
        std::fs::write(&tool, b"#!/bin/sh\necho other\n").unwrap();
        let why = tool_mismatch(std::slice::from_ref(&same), &mut fresh()).unwrap();
        assert!(why.contains("tool `python3` differs on node"), "{why}");
        assert!(why.contains(&digest.to_hex()[..12]), "{why}");
        std::fs::remove_file(&tool).unwrap();
        let why = tool_mismatch(&[same], &mut fresh()).unwrap();
        assert!(why.contains("it has no"), "{why}");
    }
}
