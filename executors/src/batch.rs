//! The interface the dispatcher drives for a batch system (HTCondor now, Slurm
//! next): hand over a batch of ready jobs, hear of them as they start and end,
//! cancel all. A job is plain: a program with arguments, a folder, resources.
//! What the program does (it is `mustbuild worker`) is none of the executor's
//! business; it reports how the batch system saw the job end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// What a job asks of the batch system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    pub cpus: u32,
    /// Memory, in bytes (0: the batch system's default).
    pub memory_bytes: u64,
    /// Local disk, in bytes (0: the batch system's default).
    pub disk_bytes: u64,
    pub gpus: u32,
    /// Wall time, where the step declares it (the worker enforces it exactly;
    /// a batch system's limit is a backstop).
    pub time: Option<std::time::Duration>,
}

/// One job to hand over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchJob {
    /// The caller's name for it, given back in its reports.
    pub tag: u64,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Its working folder (on a filesystem the nodes share); the batch
    /// system's own output for it goes there too (`stdout`, `stderr`).
    pub dir: PathBuf,
    pub resources: Resources,
}

/// How a job ended, as the batch system tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The program exited with this status.
    Exited(i32),
    /// A signal ended it.
    Signalled(i32),
    /// The batch system killed or removed it for using more memory than it
    /// asked for: its words, and the peak it saw (bytes) where it said.
    OutOfMemory {
        reason: String,
        used_bytes: Option<u64>,
    },
    /// Held (by the batch system or a policy) for longer than allowed, then
    /// removed: the hold reason.
    Held(String),
    /// Removed by someone or something else (an admin, a policy): the reason.
    Removed(String),
}

/// What an executor hears of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// It started on this host.
    Started { tag: u64, host: Option<String> },
    /// It is held (it may be released, or removed after a timeout): why.
    Held { tag: u64, reason: String },
    Ended {
        tag: u64,
        end: End,
        /// The peak memory the batch system measured, where it said.
        memory_bytes: Option<u64>,
    },
}

/// What a batch system's own accounting says a job used, where it keeps any
/// (Slurm's `sacct`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Accounting {
    /// The largest resident memory it saw (Slurm samples it).
    pub max_rss_bytes: Option<u64>,
    pub user_cpu: Option<Duration>,
    pub system_cpu: Option<Duration>,
    /// Where an energy plugin is configured.
    pub energy_joules: Option<f64>,
    /// How the memory and the energy were found, as run records say it.
    pub memory_method: &'static str,
    pub energy_method: &'static str,
}

/// Why an executor could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {message}")]
    Refused { command: String, message: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// Runs a batch system's tool `name` (from `bin`, else `PATH`) in `dir`; its
/// standard output, or why it failed in its own words.
pub(crate) fn call_tool<S: AsRef<str>>(
    bin: Option<&std::path::Path>,
    name: &str,
    args: &[S],
    dir: &std::path::Path,
) -> Result<String, ExecutorError> {
    let program = bin.map_or_else(|| PathBuf::from(name), |b| b.join(name));
    let out = std::process::Command::new(&program)
        .args(args.iter().map(AsRef::as_ref))
        .current_dir(dir)
        .output()
        .map_err(|source| ExecutorError::Spawn {
            program: name.to_string(),
            source,
        })?;
    if !out.status.success() {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        return Err(ExecutorError::Refused {
            command: format!("{name} {}", args.join(" ")),
            message,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The calls an executor made of its batch system: what the load a run put
/// on the scheduler is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Calls {
    /// Submissions (`condor_submit`, `sbatch`).
    pub submits: usize,
    /// Queries of the queue (`condor_q`, `squeue`); reading a job event log
    /// is not one.
    pub queries: usize,
}

/// A batch system, as the dispatcher drives it.
pub trait Executor: Send {
    /// The calls made so far.
    fn calls(&self) -> Calls;
    /// Its name, for messages (`htcondor`).
    fn name(&self) -> &'static str;
    /// Hands these jobs over, in as few requests as the system allows.
    fn submit(&mut self, jobs: &[BatchJob]) -> Result<(), ExecutorError>;
    /// What happened to the jobs handed over since the last call; waits up to
    /// `wait` when nothing has.
    fn reports(&mut self, wait: Duration) -> Result<Vec<Report>, ExecutorError>;
    /// Removes every job handed over that has not ended; they are reported
    /// no more.
    fn cancel_all(&mut self) -> Result<(), ExecutorError>;
    /// What the system's own accounting says the ended jobs `tags` used, in
    /// one query, where it keeps any (none by default).
    fn accounting(&mut self, tags: &[u64]) -> Result<HashMap<u64, Accounting>, ExecutorError> {
        let _ = tags;
        Ok(HashMap::new())
    }
}
