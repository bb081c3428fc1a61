//! mustbuild-executors: plain execution requests in (argv, environment, a
//! prepared folder, the outputs to expect), outcomes out; local, Slurm and
//! HTCondor backends.
//!
//! It must not know about KDL, derivations or the store ("builders stay dumb").
//!
//! Nothing is implemented yet (issue 4).

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]
