//! mustbuild-engine: planning (checked workflow → derivation graph with keys),
//! dispatch to executors, materialisation, provenance (`why`, `audit`) and
//! measurement.
//!
//! It is the only crate that knows the language, the store and the executors
//! together. Nothing is implemented yet (issue 4).

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]
