//! What a batch system (HTCondor now, Slurm next) is handed and tells, behind
//! the [`Executor`] interface: a job is plain, a program with arguments, a
//! folder, resources. What the program does (it is `mustbuild worker`) is none
//! of the executor's business; it reports how the batch system saw the job end.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::executor::{Calls, Executor, ExecutorError, Report};

/// A batch system, as the dispatcher holds it.
pub type BatchExecutor = dyn Executor<Job = BatchJob, End = End>;

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
