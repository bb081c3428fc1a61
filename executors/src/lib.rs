//! mustbuild-executors: plain execution requests in (a command, a prepared
//! folder, an environment, the outputs to expect), outcomes out; the local
//! executor (simple commands started without bash: `direct`), how a command of
//! any length reaches bash (`launch`, the command file every executor shares),
//! the machine's GPUs (`gpus`) and what a step's energy was (`energy`) now,
//! the interface batch systems are driven through (`batch`) and HTCondor
//! and Slurm (`slurm`) behind it.
//!
//! It must not know about KDL, derivations or the store ("builders stay dumb").
//! A failed step is data (an [`Outcome`]), not an error.

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod batch;
mod cgroup;
mod direct;
pub mod energy;
pub mod gpus;
pub mod htcondor;
pub mod launch;
pub mod local;
pub mod sandbox;
pub mod slurm;

pub use cgroup::release as release_cgroups;
pub use direct::bash_literal;
pub use local::{CancelToken, ExecRequest, ExecResult, Io, Outcome, Peak, Usage, run};
