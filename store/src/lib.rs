//! mustbuild-store: digests, canonical encoding, content-addressed objects and
//! trees, derivation records, realisations and run records, with a local backend
//! and an S3 one; verify and garbage collection.
//!
//! It must not know about the workflow language, executors or the engine: it
//! stores bytes and records under keys it is given.
//!
//! Nothing is implemented yet (issue 3).
