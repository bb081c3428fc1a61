//! How a command reaches bash: as the argument of `bash -e -o pipefail -c`
//! when the kernel lets it, else through a command file in the job's folder.
//!
//! Linux refuses to start a program whose single argument is 128 KiB or more
//! (`MAX_ARG_STRLEN`), or whose arguments and environment together pass a
//! quarter of the stack limit (at most 6 MiB, at least 128 KiB). A gather over
//! a few thousand files passes the first. Such a command is written to
//! [`COMMAND_FILE`] and bash is given a short script that reads it and runs it:
//! `bash -e -o pipefail -c 'eval "$(< .mustbuild/command.sh)"'`. Under `eval`,
//! the command sees what it sees under `-c`: the same `$0` (`bash`), no
//! positional parameters, the same options, `LINENO` counted from its first
//! line, the same `FUNCNAME`, `BASH_SOURCE` and `caller`, `return` failing as it
//! does at top level, and a failure ending the shell under `-e`. What differs:
//! `BASH_EXECUTION_STRING` holds the short script; a syntax error is reported as
//! `bash: eval: line N: …` where `-c` says `bash: -c: line N: …`; bash does not
//! replace itself with the last program of the command, so a program killed by
//! a signal makes bash exit `128 + N` (as any earlier program does); and the
//! text of an unterminated here-document that ends the command loses its
//! trailing blank lines. Cluster executors, whose job descriptions have their
//! own limits on arguments, start every command this way.
//!
//! The key of a step is its command's text and `bash -e -o pipefail -c`, never
//! how the command was started: the same command gives the same key, and the
//! same results, whichever way it runs.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where a command too long for an argument is written, relative to the job's
/// folder (mustbuild's own folder there, emptied between jobs).
pub const COMMAND_FILE: &str = ".mustbuild/command.sh";

/// What bash runs in place of a command written to [`COMMAND_FILE`].
pub const RUN_COMMAND_FILE: &str = r#"eval "$(< .mustbuild/command.sh)""#;

/// The longest single argument, terminating NUL included (`MAX_ARG_STRLEN`).
pub const MAX_ARGUMENT: usize = 32 * 4096;

/// The bytes a start may use for its arguments and environment on this
/// machine, counted as the kernel counts them (see [`start_refused`]): a
/// quarter of the stack limit, at most 6 MiB (`_STK_LIM / 4 * 3`), at least
/// 128 KiB. Read once: mustbuild never changes its stack limit.
pub fn start_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        const FLOOR: u64 = 128 << 10;
        const CEILING: u64 = 6 << 20;
        let stack = rustix::process::getrlimit(rustix::process::Resource::Stack)
            .current
            .unwrap_or(u64::MAX);
        let limit = (stack / 4).clamp(FLOOR, CEILING);
        usize::try_from(limit).unwrap_or(usize::MAX)
    })
}

/// The length of a variable as a start passes it: `NAME=value`.
pub fn variable(name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> usize {
    name.as_ref().len() + 1 + value.as_ref().len()
}

/// The lengths of an environment's variables, for [`start_refused`].
pub fn variables(env: &[(String, String)]) -> impl Iterator<Item = usize> + '_ {
    env.iter().map(|(k, v)| variable(k, v))
}

/// Why starting `program` with these strings (their lengths: the arguments,
/// the first being `argv[0]`, then each variable, see [`variable`]) cannot
/// happen, whoever starts it: over [`MAX_ARGUMENT`] for one, or over
/// [`start_limit`] for all.
pub fn start_refused(program: &Path, strings: impl IntoIterator<Item = usize>) -> Option<TooLong> {
    let (size, argument) = measure(program, strings);
    let limit = start_limit();
    (argument + 1 > MAX_ARGUMENT || size > limit).then_some(TooLong {
        argument,
        size,
        limit,
    })
}

/// What a start costs against [`start_limit`], and its longest string: each
/// string with its NUL (the program's path is copied too), and a pointer for
/// each argument and variable.
fn measure(program: &Path, strings: impl IntoIterator<Item = usize>) -> (usize, usize) {
    let pointer = std::mem::size_of::<usize>();
    let mut size = program.as_os_str().len() + 1;
    let mut longest = 0;
    for len in strings {
        size += len + 1 + pointer;
        longest = longest.max(len);
    }
    (size, longest)
}

/// A start over the kernel's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// The longest argument (or `NAME=value`), in bytes.
    pub argument: usize,
    /// Arguments and environment, as the kernel counts them.
    pub size: usize,
    /// [`start_limit`].
    pub limit: usize,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.argument + 1 > MAX_ARGUMENT {
            write!(
                f,
                "one argument is {} bytes, and Linux starts no program with an argument of {} or more",
                self.argument, MAX_ARGUMENT
            )
        } else {
            write!(
                f,
                "its arguments and environment take {} bytes, over this machine's limit of {} \
                 (a quarter of the stack limit, `ulimit -s`)",
                self.size, self.limit
            )
        }
    }
}

/// How bash gets the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `bash -e -o pipefail -c COMMAND`.
    Argument,
    /// [`COMMAND_FILE`], then `bash -e -o pipefail -c RUN_COMMAND_FILE`.
    File,
}

/// Bash's arguments (after its name) for each way.
pub fn bash_args(command: &str, launch: Launch) -> [&str; 5] {
    let script = match launch {
        Launch::Argument => command,
        Launch::File => RUN_COMMAND_FILE,
    };
    ["-e", "-o", "pipefail", "-c", script]
}

/// How `command` would be started by `bash` in `env`: as an argument when the
/// start fits the kernel's limits (with a margin for the variables bash's
/// caller may add), else through the file. `MUSTBUILD_COMMAND_FILE=always`
/// takes the file for every command, as cluster executors do (to check that
/// nothing depends on the way).
pub fn choose(bash: &Path, command: &str, env: &[(String, String)]) -> Launch {
    if always_file() {
        return Launch::File;
    }
    let args = std::iter::once("bash").chain(bash_args(command, Launch::Argument));
    match start_refused(bash, args.map(str::len).chain(variables(env))) {
        None => Launch::Argument,
        Some(_) => Launch::File,
    }
}

fn always_file() -> bool {
    static ALWAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALWAYS.get_or_init(|| {
        std::env::var_os("MUSTBUILD_COMMAND_FILE").is_some_and(|v| v.as_bytes() == b"always")
    })
}

/// Writes `command` to [`COMMAND_FILE`] in `dir` (making `.mustbuild` when it
/// is not there), so that [`RUN_COMMAND_FILE`] runs exactly it. `$(< …)` drops
/// the file's trailing newlines, which changes nothing but for a final
/// backslash: under `-c`, a backslash before the last newline continues the
/// line into the end of the text (it vanishes); under `eval`, it would stand
/// alone and be kept. It is left out here, as `-c` leaves it out.
pub fn write_command_file(dir: &Path, command: &str) -> io::Result<()> {
    let file = dir.join(COMMAND_FILE);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&file, as_evaluated(command))
}

/// The text that, read by `$(< …)` and evaluated, means what `command` means
/// under `-c`.
fn as_evaluated(command: &str) -> &str {
    let kept = command.trim_end_matches('\n');
    let backslashes = kept.len() - kept.trim_end_matches('\\').len();
    if kept.len() < command.len() && backslashes % 2 == 1 {
        &kept[..kept.len() - 1]
    } else {
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The command run both ways, in two fresh folders: its status, output and
    /// error output (the error output with `-c:` and `eval:` made one).
    fn both_ways(command: &str) -> [(Option<i32>, String, String); 2] {
        [Launch::Argument, Launch::File].map(|launch| {
            let dir = tempfile::tempdir().unwrap();
            if launch == Launch::File {
                write_command_file(dir.path(), command).unwrap();
            }
            let out = Command::new("bash")
                .args(bash_args(command, launch))
                .current_dir(dir.path())
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .output()
                .unwrap();
            let text = |bytes: &[u8]| {
                String::from_utf8_lossy(bytes).replace(dir.path().to_str().unwrap(), "DIR")
            };
            let err = text(&out.stderr).replace("bash: eval:", "bash: -c:");
            (out.status.code(), text(&out.stdout), err)
        })
    }

    #[test]
    fn a_command_means_the_same_from_a_file() {
        for command in [
            "echo \"$0\" $# \"$-\" \"$@\"",
            "echo $LINENO\necho $LINENO",
            "f() { echo \"${FUNCNAME[*]}\" \"${BASH_SOURCE[*]}\"; caller; }; f",
            "echo before; false; echo after",
            "false | true; echo after",
            "return 3; echo after",
            "exit 7",
            "echo a \\\n",
            "echo a \\\n\n\n",
            "echo a \\\\\n",
            "echo a\\\n",
            "echo 'a\n\n'\n\n",
            "cat <<EOF\nhi $((1 + 1))\nEOF\n",
            "cat <<'EOF'\n$x\nEOF",
            "set -- a b; echo $#; shift; echo $1",
            "echo \"${BASH_EXECUTION_STRING+set}\"x",
            "trap 'echo trapped' EXIT; echo body",
            "shopt -q expand_aliases && echo aliases; alias e=echo\ne hi",
            "echo 'unterminated",
            "if then fi",
            "echo $(( 1 +",
            "pwd; echo \"$PWD\"; ls -A",
            "exec echo replaced",
        ] {
            let [argument, file] = both_ways(command);
            let file_view = (file.0, file.1.replace(".mustbuild\n", ""), file.2);
            // `ls -A` shows mustbuild's folder in the file's case only.
            assert_eq!(argument, file_view, "{command:?}");
        }
    }

    #[test]
    fn short_commands_go_as_an_argument_and_long_ones_through_the_file() {
        let bash = Path::new("/bin/bash");
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        assert_eq!(choose(bash, "echo hi", &env), Launch::Argument);
        let near = "x".repeat(MAX_ARGUMENT - 1);
        assert_eq!(choose(bash, &near, &env), Launch::Argument);
        let over = "x".repeat(MAX_ARGUMENT);
        assert_eq!(choose(bash, &over, &env), Launch::File);
        // Short, but the environment leaves no room.
        let crowded: Vec<(String, String)> = (0..start_limit() / 4096)
            .map(|i| (format!("V{i}"), "v".repeat(4096)))
            .collect();
        assert_eq!(choose(bash, "echo hi", &crowded), Launch::File);
    }

    #[test]
    fn the_size_of_a_start_is_counted_as_linux_counts_it() {
        // Just under and just over the limit, by the count: the kernel agrees.
        let limit = start_limit();
        let program = Path::new("/bin/true");
        let attempt = |extra: usize| {
            let argv0 = program.as_os_str().len();
            let (fixed, _) = measure(program, [argv0]);
            let pointer = std::mem::size_of::<usize>();
            // Arguments of 100 KiB, then one to make the size.
            let mut args = Vec::new();
            let mut size = fixed;
            let chunk = 100 << 10;
            while size + chunk + 1 + pointer <= limit + extra {
                args.push("a".repeat(chunk));
                size += chunk + 1 + pointer;
            }
            let rest = (limit + extra).saturating_sub(size + 1 + pointer);
            args.push("b".repeat(rest));
            let lengths = std::iter::once(argv0).chain(args.iter().map(String::len));
            let refused = start_refused(program, lengths);
            let run = Command::new(program).args(&args).env_clear().status();
            (refused.is_none(), run.is_ok())
        };
        assert_eq!(attempt(0), (true, true));
        assert_eq!(attempt(1), (false, false));
        // One argument: its NUL makes it `MAX_ARGUMENT` at most.
        for (length, fits) in [(MAX_ARGUMENT - 1, true), (MAX_ARGUMENT, false)] {
            let arg = "c".repeat(length);
            let lengths = [program.as_os_str().len(), arg.len()];
            assert_eq!(start_refused(program, lengths).is_none(), fits);
            assert_eq!(Command::new(program).arg(&arg).status().is_ok(), fits);
        }
    }
}
