//! Helpers shared by the end-to-end tests: run the real binary.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]
#![expect(
    clippy::expect_used,
    reason = "a test helper that cannot run the binary fails the test"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (tests run the binary from there, so paths in messages are short).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `mustbuild` with a plain, fixed-width, colourless output.
pub fn mustbuild(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mustbuild"));
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env_remove("CLICOLOR_FORCE");
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(dir: &Path, args: &[&str]) -> Run {
    output(mustbuild(dir).args(args))
}

/// Runs `cmd` (made by [`mustbuild`], then given its arguments) to its end.
pub fn output(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("the binary runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}
