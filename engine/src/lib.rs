//! mustbuild-engine: planning (checked workflow → derivation graph with keys),
//! dispatch to executors, materialisation, provenance (`why`, `audit`) and
//! measurement.
//!
//! It is the only crate that knows the language, the store and the executors
//! together. Now: instantiation of derivations (`instantiate`), their commands
//! (`command`) and keys (`keys`), the dispatcher of `mustbuild run` (`run`), its
//! `--dry-run` reasons (`plan`) and the record that tells a no-op rerun without
//! computing keys (`noop`), and provenance: what a run records of itself and
//! `why`/`show`, read from the store (`provenance`), and `audit` (rerunning
//! realised derivations aside to compare their bytes), and what each step cost
//! in time, memory, I/O and energy (`measure`). A run drives a batch system
//! through `mustbuild_executors::batch` (`run::batch`), whose jobs run one step
//! each on a node with `mustbuild worker` (`worker`), which never opens the
//! store.

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod advice;
pub mod audit;
pub mod cache;
pub mod command;
pub mod config;
pub mod human;
pub mod instantiate;
pub mod keys;
pub mod measure;
pub mod noop;
pub mod plan;
pub mod provenance;
pub mod report;
pub mod run;
pub mod simulate;
mod slots;
pub mod stats;
pub mod worker;

pub use instantiate::{FileRef, Instance, InstanceId, Instances, instantiate};
