//! Starting a step's command: without bash where bash would only start one
//! program ([`crate::direct`]), else with bash (the command as an argument or
//! through the command file, [`crate::launch`]); a sandboxed one from a thread
//! restricted to its sandbox ([`crate::sandbox`]).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::ExecRequest;
use crate::launch::{self, Launch};

/// The bash that runs commands: found once on the PATH mustbuild was started
/// with (the command's own PATH may not hold it), else `/bin/bash`.
fn bash() -> &'static std::path::Path {
    static BASH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASH.get_or_init(|| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("bash"))
            .find(|c| c.is_file())
            .unwrap_or_else(|| PathBuf::from("/bin/bash"))
    })
}

/// `program` set up as every step's process is, whoever starts it: in the
/// request's folder, with exactly its environment (and its GPUs), in a process
/// group of its own so that a kill reaches everything it started.
pub(crate) fn step_process(program: &std::path::Path, req: &ExecRequest) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(&req.dir)
        .env_clear()
        .envs(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .process_group(0);
    if let Some(gpus) = &req.gpus {
        cmd.envs(crate::gpus::step_variables(gpus));
    }
    cmd
}

/// Starts the command with bash, as an argument or through the command file
/// (see [`crate::launch`]); a start the kernel refuses as too long is tried
/// again through the file.
fn start_bash(req: &ExecRequest, log: &std::fs::File) -> Result<std::process::Child, String> {
    let share = || {
        log.try_clone()
            .map_err(|e| format!("cannot share the log {}: {e}", req.log.display()))
    };
    let mut how = launch::choose(bash(), &req.command, &req.env);
    loop {
        if how == Launch::File {
            launch::write_command_file(&req.dir, &req.command).map_err(|e| {
                let file = req.dir.join(launch::COMMAND_FILE);
                format!("cannot write the command file {}: {e}", file.display())
            })?;
        }
        let spawned = step_process(bash(), req)
            .args(launch::bash_args(&req.command, how))
            .stdin(Stdio::null())
            .stdout(share()?)
            .stderr(share()?)
            .spawn();
        match spawned {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(E2BIG) && how == Launch::Argument => {
                how = Launch::File;
            }
            Err(e) if e.raw_os_error() == Some(E2BIG) => {
                return Err(format!(
                    "cannot start bash: {e}: the step's environment alone is over this \
                     machine's limit of {} bytes for starting a program",
                    launch::start_limit()
                ));
            }
            Err(e) => return Err(format!("cannot start bash: {e}")),
        }
    }
}

const E2BIG: i32 = nix::errno::Errno::E2BIG as i32;

/// The error for a simple command that no shell could start either.
fn too_long(program: &str, why: launch::TooLong) -> String {
    format!(
        "cannot start `{program}`: {why}. Write the paths to a file with bash's own \
         `printf '%s\\n' PATHS… > paths.txt` (a builtin: no limit applies) and give \
         `{program}` that file, or run `xargs {program} < paths.txt` if it may take the \
         paths a part at a time"
    )
}

/// Starts the command: without bash where bash would only start one program.
pub(super) fn start(
    req: &ExecRequest,
    log: &std::fs::File,
    allow_direct: bool,
) -> Result<std::process::Child, String> {
    let direct = if allow_direct {
        crate::direct::spawn(req, log)
    } else {
        crate::direct::Direct::ToBash
    };
    match direct {
        crate::direct::Direct::Started(child) => Ok(child),
        crate::direct::Direct::TooLong { program, why } => Err(too_long(&program, why)),
        crate::direct::Direct::ToBash => start_bash(req, log),
    }
}

/// Starts the command from a thread restricted to its sandbox, which owns
/// what it needs; the sandbox, taken out of the request, keys that thread.
pub(super) fn start_sandboxed(
    req: &ExecRequest,
    log: &std::fs::File,
    allow_direct: bool,
) -> Result<std::process::Child, String> {
    let log = (log.try_clone())
        .map_err(|e| format!("cannot share the log {}: {e}", req.log.display()))?;
    let mut req = req.clone();
    match req.sandbox.take() {
        Some(sandbox) => crate::sandbox::start_in(sandbox, crate::cgroup::of_thread(), move || {
            start(&req, &log, allow_direct)
        }),
        None => start(&req, &log, allow_direct),
    }
}
