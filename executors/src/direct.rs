//! Starting a command without bash when bash would only start one program.
//!
//! A command made of plain words and simple redirections (`cksum a b > out`)
//! is, under `bash -e -o pipefail -c`, one fork of bash and one exec of the
//! program. Bash's start-up costs more than most such programs (about 1.5 ms of
//! CPU here, against 0.8 ms for `cksum`), so mustbuild does what bash would do
//! itself: finds the program on the command's `PATH`, opens the redirections in
//! order, and starts the program with bash's environment (the given one, plus
//! `PWD`, `SHLVL` and `_`). GNU make does the same for recipe lines without
//! shell syntax.
//!
//! Only a command whose meaning cannot depend on the shell takes this path:
//! words of `A-Z a-z 0-9 _ @ % + = : , . / -` only (no quoting, expansion,
//! globbing, comments or operators), a first word that is neither an
//! assignment, nor a job (`%1`), nor one of bash's builtins and reserved words,
//! redirections of the standard descriptors only (`<`, `>`, `>>`, `N>&M`) to
//! regular files (or missing ones) inside the step's folder, or to `/dev/null`
//! (mustbuild opens them, so a path that means "this process", such as
//! `/dev/stderr` or `/proc/self/…`, or a FIFO, goes to bash), and an
//! environment that sets none of the variables bash reads or changes.
//! Everything else, and anything that fails before the program runs (a
//! missing program, a folder that is not there, a script without `#!`), goes
//! to bash, which then does and reports exactly what it always does. A
//! simple command whose words no program can be started with (over the
//! kernel's limits: [`crate::launch`]) is refused with an error that names the
//! program and says what to do: bash could only fail the same way.
//!
//! What differs from bash: a program killed by a signal is reported as killed
//! by that signal (bash would exit `128 + N` and print a line, not in the log
//! here); the program's parent is mustbuild, and it leads its own process
//! group, where with a redirection bash would be its parent and the leader;
//! and its environment holds the same variables in another order (sorted by
//! name; bash's order is that of its hash tables).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::ExecRequest;
use crate::launch::{self, TooLong, variable};

/// How a redirection opens its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// `<`
    Read,
    /// `>`
    Truncate,
    /// `>>`
    Append,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redirect<'a> {
    /// `N<path`, `N>path`, `N>>path`.
    File {
        fd: usize,
        open: Open,
        path: &'a str,
    },
    /// `N>&M`, `N<&M`: descriptor `fd` becomes a copy of `to`.
    Copy { fd: usize, to: usize },
}

/// A command bash would run as one program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Simple<'a> {
    pub words: Vec<&'a str>,
    /// In the order bash applies them: left to right.
    pub redirects: Vec<Redirect<'a>>,
}

/// Bash 5's builtins and reserved words: a first word among these is not a
/// program. (Those made of characters outside `word_char` are left out: such a
/// command is never simple anyway.)
const NOT_PROGRAMS: &[&str] = &[
    ".",
    ":",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "coproc",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "echo",
    "elif",
    "else",
    "enable",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "fi",
    "for",
    "function",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "in",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "then",
    "time",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "while",
];

/// Variables bash reads, or changes or drops before it starts a program
/// (found by passing each of bash 5.2's variables to `env` through bash), and
/// those of its special variables that could be next: a command given any of
/// these goes to bash. Names starting with `BASH` go to bash too.
const BASH_VARIABLES: &[&str] = &[
    "_",
    "CDPATH",
    "COMP_WORDBREAKS",
    "DIRSTACK",
    "ENV",
    "EPOCHREALTIME",
    "EPOCHSECONDS",
    "EUID",
    "EXECIGNORE",
    "FUNCNAME",
    "GLOBIGNORE",
    "GROUPS",
    "HISTCMD",
    "IFS",
    "LINENO",
    "OLDPWD",
    "OPTERR",
    "OPTIND",
    "POSIXLY_CORRECT",
    "PPID",
    "PS1",
    "PS2",
    "PS4",
    "PWD",
    "RANDOM",
    "SECONDS",
    "SHELLOPTS",
    "SHLVL",
    "SRANDOM",
    "UID",
];

/// A character that bash takes literally in a word, wherever it is (what a
/// word needs no quoting for).
pub fn bash_literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c)
}

fn word_char(c: u8) -> bool {
    bash_literal(char::from(c))
}

/// `command` as a simple command, when it is one (see the module's comment).
pub(crate) fn parse(command: &str) -> Option<Simple<'_>> {
    let bytes = command.as_bytes();
    let mut words = Vec::new();
    let mut redirects = Vec::new();
    let mut i = 0;
    let skip_blanks = |mut i: usize| {
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        i
    };
    let word_end = |mut i: usize| {
        while i < bytes.len() && word_char(bytes[i]) {
            i += 1;
        }
        i
    };
    // Digits right before `<` or `>` name a descriptor.
    let names_a_descriptor = |start: usize, end: usize| {
        end > start
            && bytes[start..end].iter().all(u8::is_ascii_digit)
            && matches!(bytes.get(end), Some(b'<' | b'>'))
    };
    loop {
        i = skip_blanks(i);
        if i == bytes.len() {
            break;
        }
        let end = word_end(i);
        let next = bytes.get(end).copied();
        let operator = matches!(next, Some(b'<' | b'>'));
        let fd = if names_a_descriptor(i, end) {
            Some(
                command[i..end]
                    .parse::<usize>()
                    .ok()
                    .filter(|&fd| fd <= 2)?,
            )
        } else {
            None
        };
        if end > i && fd.is_none() {
            words.push(&command[i..end]);
            i = end;
            continue;
        }
        let Some(op) = next.filter(|_| operator) else {
            return None; // a character bash gives a meaning to
        };
        i = end + 1;
        let (fd, open) = match (op, bytes.get(i)) {
            (b'<', Some(b'<' | b'>')) => return None, // here-document, `<>`
            (b'<', _) => (fd.unwrap_or(0), Open::Read),
            (b'>', Some(b'|')) => return None, // `>|`
            (b'>', Some(b'>')) => {
                i += 1;
                (fd.unwrap_or(1), Open::Append)
            }
            _ => (fd.unwrap_or(1), Open::Truncate),
        };
        if bytes.get(i) == Some(&b'&') {
            // `N>&M`, `N<&M`: only a standard descriptor, and nothing after it.
            let to = match bytes.get(i + 1) {
                Some(d @ b'0'..=b'2') if open != Open::Append => usize::from(d - b'0'),
                _ => return None,
            };
            i += 2;
            if bytes.get(i).is_some_and(|&c| c != b' ' && c != b'\t') {
                return None;
            }
            redirects.push(Redirect::Copy { fd, to });
            continue;
        }
        let start = skip_blanks(i);
        let end = word_end(start);
        if end == start || names_a_descriptor(start, end) {
            return None; // nothing to open, or (`> 2>x`) a syntax error
        }
        redirects.push(Redirect::File {
            fd,
            open,
            path: &command[start..end],
        });
        i = end;
    }
    let first = *words.first()?;
    let builtin = !first.contains('/') && NOT_PROGRAMS.contains(&first);
    if first.contains('=') || first.starts_with('%') || builtin {
        return None;
    }
    Some(Simple { words, redirects })
}

/// Whether bash would start the program with exactly this environment (plus
/// `PWD`, `SHLVL` and `_`): every name a plain identifier bash does not read.
fn plain_environment(env: &[(String, String)]) -> bool {
    env.iter().all(|(name, _)| {
        let b = name.as_bytes();
        !b.is_empty()
            && !b[0].is_ascii_digit()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
            && !name.starts_with("BASH")
            && !BASH_VARIABLES.contains(&name.as_str())
    })
}

/// The program bash would run for `word`: the word itself when it has a `/`
/// (relative to the command's folder, and passed on as written, since a script
/// sees the path it was started by), else the first entry of `PATH` that holds
/// an executable non-folder of that name, as bash searches (with `access`, as
/// bash uses `eaccess`). Left to bash: relative or empty entries, and a match
/// that is not a regular file (bash would try it, and fail).
fn find_program(word: &str, env: &[(String, String)]) -> Option<PathBuf> {
    if word.contains('/') {
        return Some(PathBuf::from(word));
    }
    let (_, path) = env.iter().rev().find(|(name, _)| name == "PATH")?;
    for entry in path.split(':') {
        if !entry.starts_with('/') {
            return None;
        }
        let candidate = Path::new(entry).join(word);
        let Ok(meta) = candidate.metadata() else {
            continue;
        };
        if meta.is_dir() || nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_err()
        {
            continue;
        }
        return meta.is_file().then_some(candidate);
    }
    None
}

/// Whether opening `path` in mustbuild gives what opening it in the step would:
/// `/dev/null`, or a path inside the step's folder (relative, no `..`, through
/// folders that are not links) that is missing or a regular file, not a link.
fn opens_the_same(dir: &Path, path: &str) -> bool {
    use std::path::Component;
    if path == "/dev/null" {
        return true;
    }
    let mut at = dir.to_path_buf();
    let mut parts = Path::new(path).components().peekable();
    while let Some(part) = parts.next() {
        match part {
            Component::CurDir => continue,
            Component::Normal(name) => at.push(name),
            _ => return false,
        }
        let meta = at.symlink_metadata();
        if parts.peek().is_some() {
            // A folder on the way (a link could lead out, to /proc/self…).
            if !meta.is_ok_and(|m| m.is_dir()) {
                return false;
            }
        } else {
            return match meta {
                Ok(meta) => meta.is_file(),
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
        }
    }
    false
}

/// What became of a start without bash.
#[derive(Debug)]
pub(crate) enum Direct {
    Started(Child),
    /// Not simple, or something failed before the program ran: bash does it,
    /// and says what went wrong in its own words.
    ToBash,
    /// Simple, but no program can be started with these arguments: bash would
    /// fail too (`Argument list too long`), after the same search.
    TooLong {
        program: String,
        why: TooLong,
    },
}

/// Starts `command` as bash would, without bash.
pub(crate) fn spawn(req: &ExecRequest, log: &File) -> Direct {
    start(req, log).unwrap_or_else(|not| not)
}

/// `Err`: what became of it instead.
fn start(req: &ExecRequest, log: &File) -> Result<Direct, Direct> {
    let to_bash = |_| Direct::ToBash;
    let simple = parse(&req.command).ok_or(Direct::ToBash)?;
    let env = &req.env;
    if !plain_environment(env) {
        return Err(Direct::ToBash);
    }
    let dir = &req.dir;
    let redirected = |r: &Redirect| match *r {
        Redirect::File { path, .. } => opens_the_same(dir, path),
        Redirect::Copy { .. } => true,
    };
    if !simple.redirects.iter().all(redirected) {
        return Err(Direct::ToBash);
    }
    let program = find_program(simple.words[0], env).ok_or(Direct::ToBash)?;
    // Bash's PWD: the physical path of its working folder.
    let pwd = std::fs::canonicalize(dir).map_err(to_bash)?;
    // Bash lowers SHLVL before it execs a command without redirections in
    // place of itself.
    let shlvl = if simple.redirects.is_empty() {
        "0"
    } else {
        "1"
    };
    let added = [
        (OsStr::new("PWD"), pwd.as_os_str()),
        (OsStr::new("SHLVL"), OsStr::new(shlvl)),
        (OsStr::new("_"), program.as_os_str()),
    ];
    let gpus = (req.gpus.iter())
        .flat_map(|g| crate::gpus::step_variables(g))
        .map(|(k, v)| variable(k, v));
    let strings = (simple.words.iter().map(|w| w.len()))
        .chain(launch::variables(env))
        .chain(added.iter().map(|(k, v)| variable(k, v)))
        .chain(gpus);
    if let Some(why) = launch::start_refused(&program, strings) {
        let program = simple.words[0].to_string();
        return Err(Direct::TooLong { program, why });
    }
    // Standard input (`None`: /dev/null), output and error, as bash leaves them.
    let mut fds: [Option<File>; 3] = [
        None,
        Some(log.try_clone().map_err(to_bash)?),
        Some(log.try_clone().map_err(to_bash)?),
    ];
    for r in &simple.redirects {
        match *r {
            Redirect::File { fd, open, path } => {
                let mut options = OpenOptions::new();
                match open {
                    Open::Read => options.read(true),
                    Open::Truncate => options.write(true).create(true).truncate(true),
                    Open::Append => options.append(true).create(true),
                };
                fds[fd] = Some(options.open(dir.join(path)).map_err(to_bash)?);
            }
            // A copy of standard input while it is /dev/null, open for
            // reading only: left to bash.
            Redirect::Copy { fd, to } => {
                let from = fds[to].as_ref().ok_or(Direct::ToBash)?;
                fds[fd] = Some(from.try_clone().map_err(to_bash)?);
            }
        }
    }
    let stdio = |f: Option<File>| f.map_or_else(Stdio::null, Stdio::from);
    let [stdin, stdout, stderr] = fds;
    use std::os::unix::process::CommandExt;
    crate::local::step_process(&program, req)
        .arg0(simple.words[0])
        .args(&simple.words[1..])
        .envs(added)
        .stdin(stdio(stdin))
        .stdout(stdio(stdout))
        .stderr(stdio(stderr))
        .spawn()
        .map(Direct::Started)
        .map_err(to_bash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(fd: usize, open: Open, path: &str) -> Redirect<'_> {
        Redirect::File { fd, open, path }
    }

    #[test]
    fn plain_words_and_redirections_are_simple() {
        let s = parse("cksum data/a.txt  b,c:d > out/o.txt").unwrap();
        assert_eq!(s.words, ["cksum", "data/a.txt", "b,c:d"]);
        assert_eq!(s.redirects, [file(1, Open::Truncate, "out/o.txt")]);

        let s = parse("\tsort -k2 --out=x <in.txt 2>>err.log >o 2>&1 ").unwrap();
        assert_eq!(s.words, ["sort", "-k2", "--out=x"]);
        assert_eq!(
            s.redirects,
            [
                file(0, Open::Read, "in.txt"),
                file(2, Open::Append, "err.log"),
                file(1, Open::Truncate, "o"),
                Redirect::Copy { fd: 2, to: 1 },
            ]
        );
        // Digits are a descriptor only right before the operator.
        let s = parse("tool 2 > a a2>b 0<c").unwrap();
        assert_eq!(s.words, ["tool", "2", "a2"]);
        assert_eq!(
            s.redirects,
            [
                file(1, Open::Truncate, "a"),
                file(1, Open::Truncate, "b"),
                file(0, Open::Read, "c")
            ]
        );
        assert_eq!(parse("./run.py x").unwrap().words, ["./run.py", "x"]);
        assert_eq!(
            parse("/usr/bin/echo x").unwrap().words,
            ["/usr/bin/echo", "x"]
        );
    }

    #[test]
    fn anything_bash_gives_a_meaning_to_is_not() {
        for command in [
            "",
            "  ",
            "> out",
            "cksum a; cksum b",
            "cksum a && true",
            "cksum a | cat",
            "cksum a &",
            "cksum 'a b'",
            "cksum \"a\"",
            "cksum a\\ b",
            "cksum $HOME",
            "cksum ${x}",
            "cksum `ls`",
            "cksum $(ls)",
            "cksum *.txt",
            "cksum a?",
            "cksum [ab]",
            "cksum {a,b}",
            "cksum ~/a",
            "cksum a # comment",
            "cksum a\ncksum b",
            "cksum (a)",
            "cksum é",
            "cksum a 3> b",
            "cksum a 10> b",
            "cksum a &> b",
            "cksum a >& b",
            "cksum a >| b",
            "cksum a <> b",
            "cksum a << EOF",
            "cksum a <<< b",
            "cksum a >",
            "cksum a 2>&3",
            "cksum a > 2>x",
            "cksum a > 1<x",
            "cksum a 2>&1x",
            "cksum a >>&2",
            "cksum a !",
            "X=1 cksum a",
            "echo hi > out",
            "printf x",
            "test -f a",
            "true",
            ". ./env.sh",
            ": > out",
            "exec cksum a",
            "time cksum a",
            "if",
        ] {
            assert_eq!(parse(command), None, "{command:?}");
        }
    }

    #[test]
    fn only_what_opens_the_same_anywhere_is_opened_here() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("file"), "x").unwrap();
        std::fs::create_dir(d.join("folder")).unwrap();
        std::os::unix::fs::symlink("file", d.join("link")).unwrap();
        std::os::unix::fs::symlink("folder", d.join("to-folder")).unwrap();
        std::os::unix::fs::symlink("/proc/self", d.join("self")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(d.join("fifo"))
            .status()
            .unwrap();
        assert!(fifo.success());
        for path in ["file", "./file", "missing", "folder/missing", "/dev/null"] {
            assert!(opens_the_same(d, path), "{path}");
        }
        for path in [
            "folder",
            "link",
            "fifo",
            "../file",
            "folder/../file",
            "/dev/stderr",
            "/dev/fd/1",
            "/proc/self/status",
            "/tmp/x",
            "to-folder/missing",
            "self/status",
            "self/cwd/stray",
            "file/missing",
            "nowhere/missing",
            "",
        ] {
            assert!(!opens_the_same(d, path), "{path}");
        }
    }

    #[test]
    fn the_program_is_the_one_bash_would_find() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (sub, mode) in [("a", 0o644), ("b", 0o755)] {
            std::fs::create_dir(d.join(sub)).unwrap();
            let p = d.join(sub).join("tool");
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::create_dir_all(d.join("c/tool")).unwrap();
        // An executable that is not a regular file: bash would try it.
        std::fs::create_dir(d.join("f")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .args(["-m", "755"])
            .arg(d.join("f/tool"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let path = |entries: &[&str]| {
            let joined: Vec<String> = entries
                .iter()
                .map(|e| {
                    if e.starts_with('/') || e.is_empty() {
                        e.to_string()
                    } else {
                        d.join(e).display().to_string()
                    }
                })
                .collect();
            vec![("PATH".to_string(), joined.join(":"))]
        };
        // A folder and a file that may not be run are passed over.
        assert_eq!(
            find_program("tool", &path(&["c", "a", "b"])),
            Some(d.join("b/tool"))
        );
        assert_eq!(
            find_program("tool", &path(&["nowhere", "b"])),
            Some(d.join("b/tool"))
        );
        assert_eq!(
            find_program("./tool", &path(&["b"])),
            Some(PathBuf::from("./tool"))
        );
        assert_eq!(find_program("tool", &path(&["a"])), None);
        assert_eq!(find_program("tool", &path(&["a", "f", "b"])), None);
        // Searching the current folder, or no PATH at all: bash decides.
        assert_eq!(find_program("tool", &path(&["", "b"])), None);
        assert_eq!(
            find_program("tool", &[("PATH".into(), "bin:/usr/bin".into())]),
            None
        );
        assert_eq!(find_program("tool", &[]), None);
    }

    #[test]
    fn only_an_environment_bash_ignores_is_plain() {
        let env = |name: &str| vec![(name.to_string(), "x".to_string())];
        assert!(plain_environment(&env("PATH")));
        assert!(plain_environment(&env("OMP_NUM_THREADS")));
        for name in [
            "BASH_ENV",
            "BASHOPTS",
            "SHELLOPTS",
            "PWD",
            "_",
            "IFS",
            "PPID",
            "OPTIND",
            "RANDOM",
            "EPOCHSECONDS",
            "PS1",
            "PS2",
            "A-B",
            "1A",
            "",
        ] {
            assert!(!plain_environment(&env(name)), "{name}");
        }
    }
}
