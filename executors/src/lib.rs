//! mustbuild-executors: plain execution requests in (a command, a prepared
//! folder, an environment, the outputs to expect), outcomes out, through one
//! interface for every backend ([`executor::Executor`]: submit a batch of
//! jobs, hear of them as they end, cancel all). Behind it: this machine
//! (`local`, which starts simple commands without bash: `direct`), HTCondor
//! and Slurm (`slurm`), with what a batch job is in `batch`. Also how a
//! command of any length reaches bash (`launch`, the command file every
//! executor shares), the machine's GPUs (`gpus`), what a step's energy was
//! (`energy`) and the sandbox a command may run in (`sandbox`).
//!
//! It must not know about KDL, derivations or the store ("builders stay dumb").
//! A failed step is data (an [`Outcome`]), not an error.

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod batch;
mod cgroup;
mod direct;
pub mod energy;
pub mod executor;
pub mod gpus;
pub mod htcondor;
pub mod launch;
pub mod local;
pub mod sandbox;
pub mod slurm;

pub use cgroup::release as release_cgroups;
pub use direct::bash_literal;
pub use local::{
    CancelToken, ExecRequest, ExecResult, Io, Local, LocalJob, Outcome, Peak, Usage, run,
};
