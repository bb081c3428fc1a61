//! The interface the dispatcher drives every backend through: hand over a
//! batch of ready jobs, hear of them as they start and end, cancel all. This
//! machine ([`crate::local::Local`]: a job is an [`crate::ExecRequest`], its
//! end an [`crate::ExecResult`]) and batch systems ([`crate::htcondor`],
//! [`crate::slurm`]: a [`crate::batch::BatchJob`], ended as a
//! [`crate::batch::End`]) alike; what differs is only what a job and its end
//! are.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::batch::{Accounting, End};

/// An executor, as the dispatcher drives it.
pub trait Executor: Send {
    /// One job to hand over, with the caller's tag for it.
    type Job;
    /// How one ended.
    type End;
    /// The calls made so far of the system behind it (none on this machine).
    fn calls(&self) -> Calls {
        Calls::default()
    }
    /// Its name, for messages (`local`, `htcondor`).
    fn name(&self) -> &'static str;
    /// Hands these jobs over, in as few requests as the system allows.
    fn submit(&mut self, jobs: &[Self::Job]) -> Result<(), ExecutorError>;
    /// What happened to the jobs handed over since the last call; waits up to
    /// `wait` when nothing has.
    fn reports(&mut self, wait: Duration) -> Result<Vec<Report<Self::End>>, ExecutorError>;
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

/// What an executor hears of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report<E = End> {
    /// It started on this host (on this machine a job has started when
    /// `submit` returns, and only its end is reported).
    Started { tag: u64, host: Option<String> },
    /// It is held (it may be released, or removed after a timeout): why.
    Held { tag: u64, reason: String },
    Ended {
        tag: u64,
        end: E,
        /// The peak memory the system measured, where it said.
        memory_bytes: Option<u64>,
    },
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
