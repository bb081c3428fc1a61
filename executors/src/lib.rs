//! mustbuild-executors: plain execution requests in (argv, environment, a
//! prepared folder, the outputs to expect), outcomes out; local, Slurm and
//! HTCondor backends.
//!
//! It must not know about KDL, derivations or the store ("builders stay dumb").
//!
//! Nothing is implemented yet (issue 4).
