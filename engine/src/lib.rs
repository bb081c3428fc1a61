//! mustbuild-engine: planning (checked workflow → derivation graph with keys),
//! dispatch to executors, materialisation, provenance (`why`, `audit`) and
//! measurement.
//!
//! It is the only crate that knows the language, the store and the executors
//! together. So far (issue 4, in progress): instantiation of derivations, the
//! rendering of their commands, their keys, and a first plain `run`.

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod command;
pub mod instantiate;
pub mod keys;
pub mod noop;
pub mod plan;
pub mod run;

pub use instantiate::{FileRef, Instance, InstanceId, Instances, instantiate};
