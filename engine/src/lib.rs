//! mustbuild-engine: planning (checked workflow → derivation graph with keys),
//! dispatch to executors, materialisation, provenance (`why`, `audit`) and
//! measurement.
//!
//! It is the only crate that knows the language, the store and the executors
//! together. Nothing is implemented yet (issue 4).
