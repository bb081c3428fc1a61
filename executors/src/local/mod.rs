//! Running commands on this machine ([`Local`], behind the executor
//! interface): each in a prepared folder, with exactly the environment it is
//! given, its output to a log file, under an optional time limit, cancellable;
//! measured (wall, user and system CPU, peak memory) with `wait4`. The whole
//! process group is killed on a time limit or a cancel, so that no grandchild
//! outlives its step. How a command is started is [`start`]'s; how the
//! running ones are watched, [`running`]'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

mod running;
mod start;

pub use running::{Local, LocalJob};
pub(crate) use start::step_process;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Shell code, run as `bash -e -o pipefail -c COMMAND` (of any length: see
    /// [`crate::launch`]).
    pub command: String,
    /// The working folder, prepared by the caller (inputs in place).
    pub dir: PathBuf,
    /// The complete environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Where standard output and standard error go.
    pub log: PathBuf,
    /// Paths, relative to `dir`, that must exist when the command succeeds.
    pub outputs: Vec<PathBuf>,
    pub time_limit: Option<Duration>,
    /// GPUs the command may use (indices or UUIDs, as the machine names them):
    /// set as `CUDA_VISIBLE_DEVICES` when given (empty: it sees none).
    pub gpus: Option<Vec<String>>,
    /// What it may touch, where it runs sandboxed ([`crate::sandbox`]).
    pub sandbox: Option<crate::sandbox::Sandbox>,
}

/// How a run ended. Only `Succeeded` may be recorded in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// The command exited with a non-zero status.
    Failed {
        exit_code: i32,
    },
    /// A signal ended it (not one we sent).
    Killed {
        signal: i32,
    },
    TimedOut {
        limit: Duration,
    },
    Cancelled,
    /// It succeeded without writing these declared outputs.
    MissingOutputs(Vec<PathBuf>),
    /// It could not be started or watched (no bash, no log file…).
    Infrastructure(String),
    /// A batch system stopped it for using more memory than it asked for:
    /// its words, and the peak it saw where it said.
    OutOfMemory {
        reason: String,
        used_bytes: Option<u64>,
    },
    /// A batch system held it longer than allowed (then removed it): why.
    Held {
        reason: String,
    },
}

impl std::fmt::Display for Outcome {
    /// In words, for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Succeeded => write!(f, "succeeded"),
            Outcome::Failed { exit_code } => write!(f, "exited with status {exit_code}"),
            Outcome::Killed { signal } => write!(f, "killed by signal {signal}"),
            Outcome::TimedOut { limit } => {
                write!(f, "ran past its time limit of {} s", limit.as_secs_f64())
            }
            Outcome::Cancelled => write!(f, "cancelled"),
            Outcome::MissingOutputs(paths) => {
                let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(f, "did not write {}", paths.join(", "))
            }
            Outcome::Infrastructure(why) => write!(f, "{why}"),
            Outcome::OutOfMemory { reason, .. } => write!(f, "out of memory: {reason}"),
            Outcome::Held { reason } => {
                write!(f, "held by the batch system too long: {reason}")
            }
        }
    }
}

/// What a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub wall: Duration,
    /// Of the whole process tree (`wait4`: every descendant that was waited for).
    pub user_cpu: Duration,
    pub system_cpu: Duration,
    /// The peak memory of the run, as [`Usage::peak`] says.
    pub max_rss_bytes: u64,
    /// What `max_rss_bytes` is.
    pub peak: Peak,
    /// Bytes the process tree read and wrote through system calls (files and
    /// pipes alike, whether or not the page cache served them): `rchar` and
    /// `wchar` of the command's `/proc/PID/io` read just before it is reaped,
    /// when the kernel has added in every child it waited for. `None` where
    /// the kernel keeps no I/O accounting.
    pub io: Option<Io>,
}

/// What a run's peak memory figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Peak {
    /// `wait4`'s: the peak resident memory of the largest process.
    #[default]
    Largest,
    /// `wait4`'s when it is no higher than mustbuild's own peak, which the
    /// kernel counts in (a forked copy of mustbuild keeps its peak across
    /// `exec`): the command's is at most that.
    AtMost,
    /// The peak of the step's own memory cgroup: its whole process tree
    /// together, with the page cache its writes dirtied (see [`crate::cgroup`]).
    Cgroup,
}

impl Peak {
    /// As run records say it.
    pub const fn method(self) -> &'static str {
        match self {
            Peak::Largest => "wait4 (largest process)",
            Peak::AtMost => "wait4 (at most: mustbuild's own peak)",
            Peak::Cgroup => "cgroup (whole process tree, page cache included)",
        }
    }

    /// The inverse of [`Peak::method`] (an unknown text: `Largest`).
    pub fn from_method(text: &str) -> Peak {
        [Peak::AtMost, Peak::Cgroup]
            .into_iter()
            .find(|p| p.method() == text)
            .unwrap_or(Peak::Largest)
    }
}

/// Bytes read and written (see [`Usage::io`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Io {
    pub read_bytes: u64,
    pub written_bytes: u64,
}

impl Io {
    /// The `rchar` and `wchar` lines of a `/proc/PID/io` text.
    pub fn parse(text: &str) -> Option<Io> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(Io {
            read_bytes: field("rchar")?,
            written_bytes: field("wchar")?,
        })
    }

    /// Of process `pid` (a zombie not yet reaped: its children included).
    pub(crate) fn of(pid: u32) -> Option<Io> {
        Io::parse(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
    }
}

/// Whether to measure beyond `wait4` (`/proc/PID/io`, step cgroups): not with
/// `MUSTBUILD_NO_MEASURE=1`, which the benchmark of what measuring costs sets.
pub(crate) fn measure_io() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MUSTBUILD_NO_MEASURE").is_none_or(|v| v == "0"))
}

/// This process's peak resident memory (`VmHWM`), which every child it starts
/// inherits as its own starting peak.
pub(crate) fn own_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub outcome: Outcome,
    pub usage: Usage,
    pub started: SystemTime,
    /// Whether the command was started: the log is then its own (before, it is
    /// whatever the file held).
    pub spawned: bool,
}

/// Set from anywhere to stop a run (Ctrl-C, `--keep-going` off after a failure).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The flag itself, for a signal handler to set.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// Runs a request to its end: through bash, or without it when bash would only
/// start one program (see [`crate::direct`]).
pub fn run(req: &ExecRequest, cancel: &CancelToken) -> ExecResult {
    Local::new(cancel.clone()).run(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch;

    fn run_with(req: &ExecRequest, cancel: &CancelToken, allow_direct: bool) -> ExecResult {
        let cancel = cancel.clone();
        match allow_direct {
            true => Local::new(cancel).run(req),
            false => Local::through_bash(cancel).run(req),
        }
    }

    pub(super) fn request(dir: &std::path::Path, command: &str) -> ExecRequest {
        ExecRequest {
            command: command.to_string(),
            dir: dir.to_path_buf(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("ONLY_THIS".into(), "yes".into()),
            ],
            log: dir.join("log.txt"),
            outputs: Vec::new(),
            time_limit: None,
            gpus: None,
            sandbox: None,
        }
    }

    #[test]
    fn success_with_outputs_log_and_a_cleared_environment() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(
            dir.path(),
            "echo to-log; env | sort > env.txt; mkdir -p sub && echo hi > sub/out.txt",
        );
        req.outputs = vec!["sub/out.txt".into(), "env.txt".into()];
        req.gpus = Some(vec!["0".into(), "2".into()]);
        let r = run(&req, &CancelToken::default());
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log.txt")).unwrap(),
            "to-log\n"
        );
        let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
        assert!(
            env.contains("ONLY_THIS=yes")
                && env.contains("CUDA_VISIBLE_DEVICES=0,2")
                && env.contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"),
            "{env}"
        );
        assert!(!env.contains("HOME="), "nothing is inherited: {env}");
    }

    #[test]
    fn failures_are_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancelToken::default();
        assert_eq!(
            run(&request(dir.path(), "exit 3"), &cancel).outcome,
            Outcome::Failed { exit_code: 3 }
        );
        // pipefail: a failing first command fails the pipeline.
        assert_eq!(
            run(&request(dir.path(), "false | cat"), &cancel).outcome,
            Outcome::Failed { exit_code: 1 }
        );
        assert_eq!(
            run(&request(dir.path(), "kill -SEGV $$"), &cancel).outcome,
            Outcome::Killed { signal: 11 }
        );
        let mut req = request(dir.path(), "true");
        req.outputs = vec!["never-written.txt".into()];
        assert_eq!(
            run(&req, &cancel).outcome,
            Outcome::MissingOutputs(vec!["never-written.txt".into()])
        );
        let mut req = request(dir.path(), "true");
        req.log = dir.path().join("no/such/folder/log");
        assert!(matches!(
            run(&req, &cancel).outcome,
            Outcome::Infrastructure(_)
        ));
    }

    #[test]
    fn a_time_limit_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(
            dir.path(),
            "(sleep 30; echo survived > survivor.txt) & sleep 30",
        );
        req.time_limit = Some(Duration::from_millis(200));
        let r = run(&req, &CancelToken::default());
        assert_eq!(
            r.outcome,
            Outcome::TimedOut {
                limit: Duration::from_millis(200)
            }
        );
        assert!(r.usage.wall < Duration::from_secs(5), "{:?}", r.usage.wall);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!dir.path().join("survivor.txt").exists());
    }

    #[test]
    fn a_cancel_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancelToken::default();
        let c = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            c.cancel();
        });
        let r = run(&request(dir.path(), "sleep 30"), &cancel);
        t.join().unwrap();
        assert_eq!(r.outcome, Outcome::Cancelled);
    }

    /// A folder with an input and scripts: one that shows what it was given,
    /// one without `#!`, one that may not be executed, one that names its
    /// parent process.
    fn prepared() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        script("in.txt", "some input\n", 0o644);
        script(
            "show.sh",
            // Sorted: the order of the variables differs (documented in direct).
            "#!/bin/sh\necho \"$0\" \"$@\"\necho \"stdin: $(cat)\"\nenv | sort\necho to-stderr >&2\n",
            0o755,
        );
        script("noshebang.sh", "echo no interpreter named\n", 0o755);
        script("notexec.sh", "#!/bin/sh\necho never\n", 0o644);
        script("parent.sh", "#!/bin/sh\ncat /proc/$PPID/comm\n", 0o755);
        // On the PATH: a program, a file that is not one, and a folder.
        std::fs::create_dir_all(dir.path().join("bin/sort")).unwrap();
        std::fs::copy(dir.path().join("show.sh"), dir.path().join("bin/show")).unwrap();
        script("bin/cksum", "#!/bin/sh\necho not this one\n", 0o644);
        // For bash, a first word starting with % names a job, not a program.
        script("bin/%cksum", "#!/bin/sh\necho a program\n", 0o755);
        std::os::unix::fs::symlink("in.txt", dir.path().join("link.txt")).unwrap();
        dir
    }

    /// Every file of `dir`, by name, with `dir`'s own path taken out.
    fn contents(dir: &std::path::Path) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                if e.path().is_dir() {
                    return (e.file_name().into_string().unwrap(), "(folder)".into());
                }
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let text = text.replace(dir.to_str().unwrap(), "DIR");
                (e.file_name().into_string().unwrap(), text)
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn without_bash_a_command_does_what_it_does_with_bash() {
        let cancel = CancelToken::default();
        // Each command, whether it is started without bash, then its run both
        // ways in two copies of the same folder.
        for (command, direct) in [
            ("cksum in.txt > out.txt", true),
            ("./show.sh in.txt", true),
            ("./show.sh a b=c:d > out.txt 2>&1", true),
            ("./show.sh x < in.txt 2> err.txt", true),
            ("./show.sh 2>&1 > out.txt", true),
            ("./show.sh >> in.txt", true),
            ("cksum in.txt > a.txt > b.txt", true),
            ("show found on the path > out.txt", true),
            ("sort in.txt > out.txt", true),
            ("cksum missing.txt > out.txt", true),
            ("cksum in.txt 2> /dev/null > out.txt", true),
            // Standard output a copy of a file open for reading: a write error.
            ("cksum in.txt < in.txt >&0", true),
            // What only bash can do, or does differently from mustbuild.
            ("cksum in.txt >&0", false),
            ("cksum in.txt > /dev/stderr", false),
            ("cksum in.txt > link.txt", false),
            ("cksum in.txt > 2>x", false),
            ("%cksum in.txt", false),
            // What fails before the program runs is left to bash.
            ("no-such-program x", false),
            ("cksum in.txt > no/such/folder/out.txt", false),
            ("./noshebang.sh > out.txt", false),
            ("./notexec.sh", false),
        ] {
            let with_path = |dir: &std::path::Path| {
                let mut req = request(dir, command);
                req.env[0].1 = format!("{}/bin:/usr/bin:/bin", dir.display());
                req.gpus = Some(vec!["0".into(), "2".into()]);
                req
            };
            let probe = prepared();
            let req = with_path(probe.path());
            let log = std::fs::File::create(&req.log).unwrap();
            let started = match crate::direct::spawn(&req, &log) {
                crate::direct::Direct::Started(mut c) => Some(c.wait().unwrap()),
                _ => None,
            };
            assert_eq!(started.is_some(), direct, "{command}");

            let (direct, bash) = (prepared(), prepared());
            let a = run_with(&with_path(direct.path()), &cancel, true);
            let b = run_with(&with_path(bash.path()), &cancel, false);
            assert_eq!(a.outcome, b.outcome, "{command}");
            assert_eq!(contents(direct.path()), contents(bash.path()), "{command}");
        }
    }

    #[test]
    fn pwd_is_the_physical_folder_as_bash_has_it() {
        let cancel = CancelToken::default();
        let shown = |allow_direct: bool| {
            let real = prepared();
            let links = tempfile::tempdir().unwrap();
            let link = links.path().join("step");
            std::os::unix::fs::symlink(real.path(), &link).unwrap();
            let r = run_with(
                &request(&link, "./show.sh > out.txt"),
                &cancel,
                allow_direct,
            );
            assert_eq!(r.outcome, Outcome::Succeeded);
            let out = std::fs::read_to_string(real.path().join("out.txt")).unwrap();
            out.replace(real.path().to_str().unwrap(), "DIR")
        };
        let (direct, bash) = (shown(true), shown(false));
        assert!(bash.contains("PWD=DIR\n"), "{bash}");
        assert_eq!(direct, bash);
    }

    #[test]
    fn a_command_of_any_length_runs() {
        let cancel = CancelToken::default();
        // 20,000 arguments: 140 KB, over what one argument may be.
        let names = " in.txt".repeat(20_000);
        for (command, direct) in [
            (format!("cksum{names} > out.txt"), true),
            (format!("cksum{names} | cat > out.txt"), false),
            (format!("printf '%s\\n'{names} > out.txt"), false),
        ] {
            let outputs = [true, false].map(|allow_direct| {
                let dir = prepared();
                let mut req = request(dir.path(), &command);
                req.outputs = vec!["out.txt".into()];
                let r = run_with(&req, &cancel, allow_direct);
                assert_eq!(r.outcome, Outcome::Succeeded, "{}", &command[..40]);
                let file = dir.path().join(launch::COMMAND_FILE);
                // Bash read it from the file; without bash, no file is needed.
                assert_eq!(file.exists(), !(allow_direct && direct));
                if file.exists() {
                    assert_eq!(std::fs::read_to_string(file).unwrap(), command);
                }
                std::fs::read_to_string(dir.path().join("out.txt")).unwrap()
            });
            assert_eq!(outputs[0], outputs[1]);
            assert_eq!(outputs[0].lines().count(), 20_000);
        }
    }

    #[test]
    fn a_program_no_shell_could_start_is_named_with_what_to_do() {
        let limit = launch::start_limit();
        let one = format!("cksum {} > out.txt", "x".repeat(launch::MAX_ARGUMENT));
        let many = format!("cksum{} > out.txt", " in.txt".repeat(limit / 8));
        for (command, says) in [
            (one, "one argument is"),
            (many, "over this machine's limit"),
        ] {
            let dir = prepared();
            let r = run(&request(dir.path(), &command), &CancelToken::default());
            let Outcome::Infrastructure(why) = &r.outcome else {
                panic!("{:?}", r.outcome)
            };
            assert!(why.starts_with("cannot start `cksum`: "), "{why}");
            assert!(why.contains(says) && why.contains("xargs cksum"), "{why}");
            assert!(!r.spawned);
            // Bash fails the same way, in its own words.
            let r = run_with(
                &request(dir.path(), &command),
                &CancelToken::default(),
                false,
            );
            assert_eq!(r.outcome, Outcome::Failed { exit_code: 126 });
            let log = std::fs::read_to_string(dir.path().join("log.txt")).unwrap();
            assert!(log.contains("Argument list too long"), "{log}");
        }
    }

    #[test]
    fn a_simple_command_runs_without_bash() {
        let cancel = CancelToken::default();
        let parent = |allow_direct: bool| {
            let dir = prepared();
            let r = run_with(
                &request(dir.path(), "./parent.sh > out.txt"),
                &cancel,
                allow_direct,
            );
            assert_eq!(r.outcome, Outcome::Succeeded);
            std::fs::read_to_string(dir.path().join("out.txt")).unwrap()
        };
        assert_eq!(parent(false), "bash\n");
        assert_ne!(parent(true), "bash\n");
        // Bash would exit 128 + 11 here; without it, the signal is reported.
        let dir = prepared();
        std::fs::write(dir.path().join("segv.sh"), "#!/bin/sh\nkill -SEGV $$\n").unwrap();
        let req = request(dir.path(), "/bin/sh segv.sh > out.txt");
        assert_eq!(run(&req, &cancel).outcome, Outcome::Killed { signal: 11 });
        assert_eq!(
            run_with(&req, &cancel, false).outcome,
            Outcome::Failed { exit_code: 139 }
        );
    }

    #[test]
    fn usage_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(
            &request(
                dir.path(),
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
            ),
            &CancelToken::default(),
        );
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert!(
            r.usage.user_cpu > Duration::from_millis(50),
            "{:?}",
            r.usage
        );
        assert!(r.usage.max_rss_bytes > 100 << 10, "{:?}", r.usage);
        // A shell loop needs far less than this test process has used: the
        // figure is bash's own (a cgroup's) or a bound.
        assert_ne!(r.usage.peak, Peak::Largest, "{:?}", r.usage);
        assert!(r.usage.wall >= r.usage.user_cpu / 2);
    }

    #[test]
    fn a_step_cgroup_counts_the_whole_process_tree() {
        // Two processes hold 80 MiB each at the same time.
        let dir = tempfile::tempdir().unwrap();
        let hold = "python3 -c 'import time; b = bytearray(80 << 20); time.sleep(0.6)'";
        let r = run(
            &request(dir.path(), &format!("{hold} & {hold}; wait")),
            &CancelToken::default(),
        );
        assert_eq!(r.outcome, Outcome::Succeeded);
        let mib = r.usage.max_rss_bytes >> 20;
        if crate::cgroup::here().is_some() {
            assert_eq!(r.usage.peak, Peak::Cgroup);
            assert!((160..220).contains(&mib), "{:?}", r.usage);
        } else {
            // wait4 sees one process at a time.
            assert!((80..120).contains(&mib), "{:?}", r.usage);
        }
    }

    #[test]
    fn the_bytes_a_process_tree_reads_and_writes_are_counted_children_included() {
        let dir = tempfile::tempdir().unwrap();
        // Grandchildren of bash (a pipeline in a subshell) do the I/O.
        let r = run(
            &request(
                dir.path(),
                "(head -c 3000000 /dev/zero | cat > big); (cat big | wc -c) > /dev/null",
            ),
            &CancelToken::default(),
        );
        assert_eq!(r.outcome, Outcome::Succeeded);
        let io = r.usage.io.expect("Linux keeps I/O accounting");
        // head reads 3 MB, cat reads and writes them twice, wc reads them.
        assert!(io.read_bytes >= 12_000_000, "{io:?}");
        assert!(io.written_bytes >= 9_000_000, "{io:?}");
        assert!(io.read_bytes < 20_000_000, "{io:?}");
    }

    #[test]
    fn proc_io_text_parses() {
        let text = "rchar: 12\nwchar: 34\nsyscr: 1\nsyscw: 1\nread_bytes: 0\nwrite_bytes: 0\n";
        assert_eq!(
            Io::parse(text),
            Some(Io {
                read_bytes: 12,
                written_bytes: 34
            })
        );
        assert_eq!(Io::parse("rchar: 1\n"), None);
    }
}
