//! Sandboxed steps: what a command may read, write and reach, enforced by the
//! kernel's Landlock (no root, no daemon, no user namespace: it works on a
//! laptop, a login node and inside a batch job).
//!
//! Landlock restricts the calling *thread* and everything it starts from then
//! on, for good. So the command is started from a thread that restricted
//! itself to the step's sandbox and starts the command (posix_spawn, as
//! ever): the worker thread that waits for the command stays unrestricted,
//! and no fork is paid. The worker keeps that thread for its next steps of
//! the same sandbox (they run in the same folder, reused), so a thread and a
//! ruleset are paid once per worker and sandbox, not per step.
//!
//! What a step gets: its folder (inputs placed there, `HOME` and `TMPDIR`
//! inside it) to read and write; the system's program and library folders,
//! `/etc`, `/proc`, `/dev` and what the step's `PATH` names to read and run;
//! `/dev/null` and its kin to write; no network unless the step may use it:
//! Landlock refuses TCP connections and listening (Linux 6.7 on: ABI 4),
//! and a seccomp filter on the same thread refuses to make any other network
//! socket (UDP, raw, SCTP, MPTCP, packet), which Landlock has no rules for
//! (io_uring's own socket operations pass beneath seccomp; Landlock still
//! refuses their TCP); on a kernel whose Landlock has no network rules
//! (before 6.7), the filter refuses TCP sockets too. Not the workspace, the
//! store, the user's home or `/tmp`: a step that reads or writes there fails with `EACCES`
//! ("Permission denied"), and its log names the path. What a step's
//! declaration adds ([`Allowances`]): its inputs outside the pipeline's folder,
//! the folders it declares to read (`sandbox { read … }`), and the network
//! (`network #true`).

use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The Landlock ABI whose rights are asked for (Linux 6.7: files and TCP);
/// older kernels enforce what they know of it.
const ABI_ASKED: ABI = ABI::V4;

/// What one command may touch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sandbox {
    /// Read and run below these (the system's folders, the `PATH`'s: opened
    /// once for every step of the process).
    pub read: Vec<PathBuf>,
    /// Read where they are: the step's own declared inputs outside its folder
    /// (opened for the step).
    pub inputs: Vec<PathBuf>,
    /// Read, write, make and remove below these (besides [`SYSTEM_WRITE`]):
    /// the step's folder (opened for the step: it is made again between steps).
    pub write: Vec<PathBuf>,
    /// TCP connections and listening sockets allowed.
    pub network: bool,
}

/// What a step's declaration lets its sandbox reach besides its folder and
/// the system's: plain data, which travels to batch nodes with the job.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Allowances {
    /// Its declared inputs outside the pipeline's folder, read where they are.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// The folders it declares to read (`sandbox { read "/cvmfs" }`).
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// `network #true`.
    #[serde(default)]
    pub network: bool,
    /// Never readable, whatever the `PATH` or a tool's installation would
    /// open: these folders (the workspace, the store), what holds them,
    /// and what holds `HOME` (a `~/bin` on `PATH` must not open `~`).
    #[serde(default)]
    pub keep_out: Vec<PathBuf>,
}

/// Read by every program: the system's program and library folders, its
/// configuration, the kernel's views.
pub const SYSTEM_READ: [&str; 12] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc",
    "/dev", "/run",
];
/// Written by every program: the devices that hold nothing.
pub const SYSTEM_WRITE: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/pts",
    "/dev/ptmx",
];

impl Sandbox {
    /// A step's sandbox: `dir` (its folder) to write; the system's folders,
    /// each folder of the `PATH` in `env` (the folder, and the installation
    /// above a `…/bin`) and what its declaration `allows` to read; the network
    /// if that allows it.
    pub fn for_step(dir: &Path, env: &[(String, String)], allows: &Allowances) -> Sandbox {
        let path = (env.iter().find(|(k, _)| k == "PATH")).map_or("", |(_, v)| v.as_str());
        Sandbox {
            read: readable(path, &allows.read, &allows.keep_out),
            inputs: allows.inputs.clone(),
            write: vec![dir.to_path_buf()],
            network: allows.network,
        }
    }
}

/// The folders a step reads and runs from: the system's, each folder of
/// `path` (and the installation above a `…/bin`), the `declared` ones, less
/// those that would open what `keep_out` names. Remembered for the process:
/// every step of a run asks the same question, and comparing the folders
/// with links resolved costs more than a small step's start.
fn readable(path: &str, declared: &[PathBuf], keep_out: &[PathBuf]) -> Vec<PathBuf> {
    type Question = (String, Vec<PathBuf>, Vec<PathBuf>);
    static READABLE: std::sync::OnceLock<std::sync::Mutex<HashMap<Question, Vec<PathBuf>>>> =
        std::sync::OnceLock::new();
    let memo = READABLE.get_or_init(Default::default);
    let question = (path.to_string(), declared.to_vec(), keep_out.to_vec());
    let lock = || {
        memo.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(read) = lock().get(&question) {
        return read.clone();
    }
    let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    for entry in std::env::split_paths(path) {
        if !entry.is_absolute() {
            continue; // `.` or `` would be the step's own folder: it has it.
        }
        if entry.file_name().is_some_and(|n| n == "bin")
            && let Some(prefix) = entry.parent().filter(|p| p != &Path::new("/"))
        {
            read.push(prefix.to_path_buf());
        }
        read.push(entry);
    }
    read.extend(declared.iter().cloned());
    read.retain(|folder| !exposes(folder, keep_out));
    lock().insert(question, read.clone());
    read
}

/// Whether reading below `folder` would read what must stay out of sight:
/// a folder of `keep_out` or what is in it, or `HOME` itself (what is in a
/// home, such as a conda installation, may be read). Paths are compared as
/// given and with links resolved.
fn exposes(folder: &Path, keep_out: &[PathBuf]) -> bool {
    // Read once: this runs for every folder of every step.
    static HOME: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let home = HOME.get_or_init(|| std::env::var_os("HOME").map(PathBuf::from));
    let forms = |p: &Path| [Some(p.to_path_buf()), canonical(p)];
    let folders = forms(folder);
    let holds = |outer: &Path, inner: &Path| inner.starts_with(outer);
    let mut out = keep_out.iter().map(|k| (k.as_path(), true));
    let home = home.as_deref().map(|h| (h, false));
    out.by_ref().chain(home).any(|(k, inside_too)| {
        forms(k).iter().flatten().any(|k| {
            folders
                .iter()
                .flatten()
                .any(|f| holds(f, k) || (inside_too && holds(k, f)))
        })
    })
}

/// `path` with its links resolved (`None` when it is not there), remembered
/// for the process: the folders compared do not move during a run.
fn canonical(path: &Path) -> Option<PathBuf> {
    static CANONICAL: Memo<Option<PathBuf>> = std::sync::OnceLock::new();
    remembered(&CANONICAL, path, |p| std::fs::canonicalize(p).ok())
}

/// What a function of a path gave, per path, for the whole process.
type Memo<T> = std::sync::OnceLock<std::sync::Mutex<HashMap<PathBuf, T>>>;

/// `make(path)`, made once per path and remembered in `memo`.
fn remembered<T: Clone>(memo: &'static Memo<T>, path: &Path, make: impl FnOnce(&Path) -> T) -> T {
    let mut cache = memo
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    cache
        .entry(path.to_path_buf())
        .or_insert_with(|| make(path))
        .clone()
}

/// Whether this kernel enforces Landlock, or why not (said once per run by
/// the caller): found by restricting a thread made for the question.
pub fn support() -> Result<(), String> {
    static SUPPORT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    SUPPORT
        .get_or_init(|| {
            let probe = std::thread::spawn(|| {
                let ruleset = Ruleset::default().handle_access(AccessFs::Execute).ok()?;
                Some(ruleset.create().ok()?.restrict_self().ok()?.landlock)
            });
            match probe.join().ok().flatten() {
                Some(LandlockStatus::Available { .. }) => Ok(()),
                Some(LandlockStatus::NotEnabled) => {
                    Err("Landlock is built into this kernel but turned off at boot".into())
                }
                Some(LandlockStatus::NotImplemented) => {
                    Err("this kernel has no Landlock (Linux 5.13 and later have it)".into())
                }
                None => Err("Landlock cannot be used here".into()),
            }
        })
        .clone()
}

/// The paths a failed sandboxed command's log says it was refused, as tools
/// word it (`cat: /x: Permission denied`, Python's `Permission denied:
/// '/x'`), in order, once each.
pub fn refused_paths(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        let path = if let Some(before) = line.strip_suffix(": Permission denied") {
            let last = before.rsplit(": ").next().unwrap_or(before);
            // `ln: failed to create hard link 'A' => 'B'`: the first quoted.
            Some(last.split('\'').nth(1).unwrap_or(last))
        } else if let Some((_, after)) = line.split_once("Permission denied: ") {
            Some(after.trim().trim_matches(['\'', '"']))
        } else {
            None
        };
        if let Some(p) = path.map(str::trim).filter(|p| !p.is_empty())
            && !out.iter().any(|o| o == p)
        {
            out.push(p.to_string());
        }
    }
    out
}

/// A path opened for a rule (`None`: it is not there), kept for every later
/// step: the system's folders and the steps' `PATH` do not move during a run.
/// (A step's own folder is opened afresh: it is made again between steps.)
fn opened(path: &Path) -> Option<std::sync::Arc<PathFd>> {
    static OPENED: Memo<Option<std::sync::Arc<PathFd>>> = std::sync::OnceLock::new();
    remembered(&OPENED, path, |p| {
        PathFd::new(p).ok().map(std::sync::Arc::new)
    })
}

/// Rules allowing `access` beneath each of `fds`.
fn rules<'a>(
    fds: impl Iterator<Item = &'a PathFd>,
    access: landlock::BitFlags<AccessFs>,
) -> impl Iterator<Item = Result<PathBeneath<&'a PathFd>, landlock::RulesetError>> {
    fds.map(move |fd| Ok(PathBeneath::new(fd, access)))
}

/// Restricts the calling thread (and all it will start) to `sandbox`.
pub fn restrict(sandbox: &Sandbox) -> Result<(), String> {
    let abi = ABI_ASKED;
    let why = |e: &dyn std::fmt::Display| format!("cannot set up the sandbox: {e}");
    let read: Vec<_> = sandbox.read.iter().filter_map(|p| opened(p)).collect();
    let devices: Vec<_> = (SYSTEM_WRITE.iter())
        .filter_map(|p| opened(Path::new(p)))
        .collect();
    // The step's own: opened now (one that is not there is an error).
    let fresh = |paths: &[PathBuf]| -> Result<Vec<PathFd>, String> {
        (paths.iter().map(PathFd::new))
            .collect::<Result<_, _>>()
            .map_err(|e| why(&e))
    };
    let (inputs, own) = (fresh(&sandbox.inputs)?, fresh(&sandbox.write)?);
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| why(&e))?;
    if !sandbox.network {
        // Handled and never allowed: no TCP connection, no listening port.
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(|e| why(&e))?;
    }
    let status = ruleset
        .create()
        .map_err(|e| why(&e))?
        .add_rules(rules(
            (read.iter().map(|f| &**f)).chain(&inputs),
            AccessFs::from_read(abi),
        ))
        .map_err(|e| why(&e))?
        .add_rules(rules(
            (devices.iter().map(|f| &**f)).chain(&own),
            AccessFs::from_all(abi),
        ))
        .map_err(|e| why(&e))?
        .restrict_self()
        .map_err(|e| why(&e))?;
    if let RulesetStatus::NotEnforced = status.ruleset {
        return Err("the kernel enforced no part of the sandbox".into());
    }
    if !sandbox.network
        && let Some(filter) = network_filter(!enforces_tcp(status.landlock))
    {
        seccompiler::apply_filter(filter).map_err(|e| why(&e))?;
    }
    Ok(())
}

/// Whether Landlock, as the kernel enforced it, refuses TCP connections and
/// listening (its network rules came with ABI 4, Linux 6.7).
fn enforces_tcp(landlock: LandlockStatus) -> bool {
    matches!(landlock, LandlockStatus::Available { effective_abi, .. } if effective_abi >= ABI::V4)
}

/// A seccomp filter (`None` on an architecture it does not know) that
/// refuses, with `EACCES` as Landlock does, to make a network socket that is
/// not plain TCP: an Internet socket other than a stream of protocol 0 or
/// TCP (so UDP, raw, SCTP, MPTCP, which Landlock's TCP rules do not see), a
/// packet socket, an SMC socket; and, with `tcp_too` (where Landlock cannot
/// refuse TCP), any Internet socket. A program of another architecture (i386
/// on x86-64) is not filtered. Written out here rather than built by
/// seccompiler, whose filters kill such a program; built once.
fn network_filter(tcp_too: bool) -> Option<&'static seccompiler::BpfProgram> {
    // Beside Landlock's TCP rules, and alone.
    static FILTERS: [std::sync::OnceLock<Option<seccompiler::BpfProgram>>; 2] =
        [const { std::sync::OnceLock::new() }; 2];
    FILTERS[usize::from(tcp_too)]
        .get_or_init(|| build_network_filter(tcp_too))
        .as_ref()
}

fn build_network_filter(tcp_too: bool) -> Option<seccompiler::BpfProgram> {
    // AUDIT_ARCH_*: the architectures whose calls are filtered (all little-endian).
    let arch: u32 = match std::env::consts::ARCH {
        "x86_64" => 0xC000_003E,
        "aarch64" => 0xC000_00B7,
        "riscv64" => 0xC000_00F3,
        _ => return None,
    };
    if cfg!(target_endian = "big") {
        return None;
    }
    const LD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const AND: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    // seccomp_data: nr at 0, arch at 4, the arguments' low halves at 16 + 8 × i.
    const ARG0: u32 = 16;
    const ARG1: u32 = 24;
    const ARG2: u32 = 32;
    // Where the jumps go (indices into the program below).
    const ARGS: usize = 5;
    const KIND: usize = 10;
    const DENY: usize = 16;
    const ALLOW: usize = 17;
    const X32: u32 = 0x4000_0000;
    // Where an Internet socket goes: to the test of its kind, or refused.
    let internet = Some(if tcp_too { DENY } else { KIND });
    let socket = libc::SYS_socket as u32;
    let ins = |code, k, jt: Option<usize>, jf: Option<usize>, at: usize| {
        let rel = |to: Option<usize>| to.map_or(0, |t| (t - at - 1) as u8);
        seccompiler::sock_filter {
            code,
            jt: rel(jt),
            jf: rel(jf),
            k,
        }
    };
    let program: [(u16, u32, Option<usize>, Option<usize>); 18] = [
        (LD, 4, None, None),
        (JEQ, arch, None, Some(ALLOW)),
        (LD, 0, None, None),
        (JEQ, socket, Some(ARGS), None),
        (JEQ, socket | X32, None, Some(ALLOW)),
        (LD, ARG0, None, None), // ARGS: the domain
        (JEQ, libc::AF_INET as u32, internet, None),
        (JEQ, libc::AF_INET6 as u32, internet, None),
        (JEQ, libc::AF_PACKET as u32, Some(DENY), None),
        (JEQ, 43, Some(DENY), Some(ALLOW)), // AF_SMC
        (LD, ARG1, None, None),             // KIND: the type, flags aside
        (AND, 0xf, None, None),
        (JEQ, libc::SOCK_STREAM as u32, None, Some(DENY)),
        (LD, ARG2, None, None), // the protocol
        (JEQ, 0, Some(ALLOW), None),
        (JEQ, libc::IPPROTO_TCP as u32, Some(ALLOW), Some(DENY)),
        (RET, 0x0005_0000 | libc::EACCES as u32, None, None), // SECCOMP_RET_ERRNO
        (RET, 0x7fff_0000, None, None),                       // SECCOMP_RET_ALLOW
    ];
    Some(
        (program.iter().enumerate())
            .map(|(at, &(code, k, jt, jf))| ins(code, k, jt, jf, at))
            .collect(),
    )
}

/// Runs `start` (which starts the command) on a thread restricted to
/// `sandbox`: the command keeps the restriction, the caller stays free. The
/// thread is kept by the calling thread for its later commands of the same
/// sandbox (a worker's steps run in the same folder, reused): a thread and a
/// ruleset cost more than a small step's command (~0.1 ms against ~0.8 ms
/// measured), a message to a kept thread a few microseconds. `cgroup` is the
/// calling thread's memory cgroup, where the command must start.
pub(crate) fn start_in<T: Send + 'static>(
    sandbox: Sandbox,
    cgroup: Option<PathBuf>,
    start: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let key = Key {
        bound: bound_to(&sandbox)?,
        sandbox,
        cgroup,
    };
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(start));
        let _ = reply.send(started);
    });
    let ended = || "the sandbox's thread has ended".to_string();
    STARTERS.with(|kept| {
        let mut kept = kept.borrow_mut();
        let found = (kept.iter().position(|s| s.key == key)).and_then(|at| kept.remove(at));
        let starter = match found {
            Some(starter) => starter,
            None => Starter::new(key)?,
        };
        starter.jobs.send(job).map_err(|_| ended())?;
        kept.push_front(starter);
        kept.truncate(KEPT);
        Ok::<(), String>(())
    })?;
    match answer.recv() {
        Ok(Ok(started)) => started,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(ended()),
    }
}

/// A thread restricted to one sandbox for good, which starts what it is sent.
struct Starter {
    key: Key,
    jobs: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

/// What a kept thread is restricted to, and so which commands it may start.
#[derive(PartialEq, Eq)]
struct Key {
    sandbox: Sandbox,
    /// (device, inode) of each of the step's own paths (its folder, its
    /// inputs), in order: a rule holds the file it was made for, so a folder
    /// made again, or an input replaced, is another sandbox.
    bound: Vec<(u64, u64)>,
    /// The memory cgroup of the thread that made it: a thread starts in its
    /// maker's, and the commands it starts in its own.
    cgroup: Option<PathBuf>,
}

/// Kept threads per calling thread, at most; the least recently used goes.
const KEPT: usize = 4;

thread_local! {
    /// The calling thread's kept threads, the last used first. They end when
    /// it does (their channel closes).
    static STARTERS: std::cell::RefCell<std::collections::VecDeque<Starter>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

impl Starter {
    /// Starts the thread and restricts it (an error: it could not be).
    fn new(key: Key) -> Result<Starter, String> {
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (ready, restricted) = std::sync::mpsc::sync_channel(1);
        let sandbox = key.sandbox.clone();
        std::thread::Builder::new()
            .name("sandbox".into())
            .spawn(move || {
                let done = restrict(&sandbox);
                let ok = done.is_ok();
                let _ = ready.send(done);
                if ok {
                    for job in inbox {
                        job();
                    }
                }
            })
            .map_err(|e| format!("cannot set up the sandbox: cannot start a thread: {e}"))?;
        match restricted.recv() {
            Ok(Ok(())) => Ok(Starter { key, jobs }),
            Ok(Err(why)) => Err(why),
            Err(_) => Err("cannot set up the sandbox: its thread ended".into()),
        }
    }
}

/// (device, inode) of the step's own paths, which its rules are made for.
fn bound_to(sandbox: &Sandbox) -> Result<Vec<(u64, u64)>, String> {
    use std::os::unix::fs::MetadataExt;
    (sandbox.inputs.iter().chain(&sandbox.write))
        .map(|p| {
            std::fs::metadata(p)
                .map(|m| (m.dev(), m.ino()))
                .map_err(|e| format!("cannot set up the sandbox: {}: {e}", p.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steps_sandbox_reads_the_system_and_its_path_and_writes_its_folder() {
        let env = [(
            "PATH".to_string(),
            "/opt/conda/envs/x/bin:/usr/bin:relative".to_string(),
        )];
        let allows = Allowances {
            read: vec![PathBuf::from("/cvmfs/sft.cern.ch")],
            ..Allowances::default()
        };
        let s = Sandbox::for_step(Path::new("/s/scratch/3"), &env, &allows);
        assert!(s.read.contains(&PathBuf::from("/cvmfs/sft.cern.ch")));
        assert!(s.read.contains(&PathBuf::from("/opt/conda/envs/x")));
        assert!(s.read.contains(&PathBuf::from("/opt/conda/envs/x/bin")));
        assert!(s.read.contains(&PathBuf::from("/usr")));
        assert!(!s.read.iter().any(|p| p.ends_with("relative")));
        assert_eq!(s.write, [PathBuf::from("/s/scratch/3")]);
        assert!(!s.network);
    }

    #[test]
    fn no_path_or_tool_folder_opens_the_workspace_the_store_or_the_home() {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let ws = PathBuf::from(format!("{home}/w"));
        let env = [(
            "PATH".to_string(),
            format!("{home}/bin:{home}/w/bin:{home}/miniconda3/bin:/usr/bin"),
        )];
        let allows = Allowances {
            keep_out: vec![ws.clone(), PathBuf::from("/s/store")],
            read: vec![PathBuf::from("/s"), PathBuf::from("/cvmfs")],
            ..Allowances::default()
        };
        let s = Sandbox::for_step(Path::new("/s/store/scratch/1"), &env, &allows);
        let has = |p: &str| s.read.contains(&PathBuf::from(p));
        // ~/bin is read, not ~ above it; nothing of the workspace; conda is.
        assert!(has(&format!("{home}/bin")));
        assert!(!has(&home));
        assert!(!s.read.iter().any(|p| p.starts_with(&ws)));
        assert!(has(&format!("{home}/miniconda3")));
        assert!(has(&format!("{home}/miniconda3/bin")));
        assert!(!has("/s") && has("/cvmfs") && has("/usr/bin"));
    }

    #[test]
    fn refused_paths_are_read_from_what_tools_say() {
        let log = "cat: /w/secret.txt: Permission denied\n\
                   /usr/bin/bash: line 1: /tmp/x: Permission denied\n\
                   PermissionError: [Errno 13] Permission denied: '/home/u/.netrc'\n\
                   cat: /w/secret.txt: Permission denied\n\
                   ln: failed to create hard link '/o/link' => 'l.txt': Permission denied\n\
                   all is well\n";
        assert_eq!(
            refused_paths(log),
            ["/w/secret.txt", "/tmp/x", "/home/u/.netrc", "/o/link"]
        );
        assert!(refused_paths("done\n").is_empty());
    }

    #[test]
    fn a_sandboxed_thread_cannot_read_outside_but_the_caller_still_can() {
        if support().is_err() {
            return; // No Landlock here: nothing to check.
        }
        let tmp = tempfile::tempdir().unwrap();
        let inside = tmp.path().join("inside");
        std::fs::create_dir(&inside).unwrap();
        let secret = tmp.path().join("secret.txt");
        std::fs::write(&secret, "x").unwrap();
        let env = [("PATH".to_string(), "/usr/bin".to_string())];
        let sandbox = Sandbox::for_step(&inside, &env, &Allowances::default());
        let (ok, hidden) = (inside.join("ok.txt"), secret.clone());
        let read = start_in(sandbox, None, move || {
            std::fs::write(ok, "fine").map_err(|e| e.to_string())?;
            Ok(std::fs::read_to_string(hidden).map_err(|e| e.kind()))
        })
        .unwrap();
        assert_eq!(read, Err(std::io::ErrorKind::PermissionDenied));
        // This thread is as free as before.
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "x");
        assert_eq!(
            std::fs::read_to_string(inside.join("ok.txt")).unwrap(),
            "fine"
        );
    }

    #[test]
    fn without_the_network_no_tcp_udp_or_raw_socket_and_with_it_both() {
        if support().is_err() {
            return; // No Landlock here: nothing to check.
        }
        let tmp = tempfile::tempdir().unwrap();
        let env = [("PATH".to_string(), "/usr/bin".to_string())];
        let try_all = |network: bool| {
            let allows = Allowances {
                network,
                ..Allowances::default()
            };
            let sandbox = Sandbox::for_step(tmp.path(), &env, &allows);
            start_in(sandbox, None, || {
                let kind = |r: std::io::Result<()>| r.map_err(|e| e.kind());
                Ok([
                    kind(std::net::UdpSocket::bind("127.0.0.1:0").map(drop)),
                    kind(std::net::UdpSocket::bind("[::1]:0").map(drop)),
                    kind(std::net::TcpListener::bind("127.0.0.1:0").map(drop)),
                ])
            })
            .unwrap()
        };
        let denied = Err(std::io::ErrorKind::PermissionDenied);
        let [udp4, udp6, tcp] = try_all(false);
        assert_eq!((udp4, tcp), (denied, denied));
        // A host without IPv6 answers otherwise; never with a socket.
        assert!(udp6.is_err());
        let [udp4, _, tcp] = try_all(true);
        assert_eq!((udp4, tcp), (Ok(()), Ok(())));
        // Nor SCTP or MPTCP streams, which Landlock's TCP rules do not see
        // (Python says PermissionError for EACCES; a kernel without the
        // protocol would say another error).
        let allows = Allowances::default();
        let sandbox = Sandbox::for_step(tmp.path(), &env, &allows);
        for protocol in ["262", "132"] {
            let code = format!(
                "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, {protocol})"
            );
            let out = start_in(sandbox.clone(), None, move || {
                (std::process::Command::new("/usr/bin/python3").args(["-c", &code]))
                    .output()
                    .map_err(|e| e.to_string())
            })
            .unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                said.contains("PermissionError"),
                "protocol {protocol}: {said}"
            );
        }
        // The filter is the sandboxed thread's: this one still makes sockets.
        assert!(std::net::UdpSocket::bind("127.0.0.1:0").is_ok());
    }

    #[test]
    fn where_landlock_cannot_refuse_tcp_the_filter_does() {
        let abi = |effective_abi| LandlockStatus::Available {
            effective_abi,
            kernel_abi: None,
        };
        assert!(enforces_tcp(abi(ABI::V4)) && enforces_tcp(abi(ABI::V5)));
        assert!(!enforces_tcp(abi(ABI::V3)) && !enforces_tcp(abi(ABI::V1)));
        assert!(!enforces_tcp(LandlockStatus::NotEnabled));
        // Each filter alone, on a thread of its own (no Landlock): what a
        // kernel before 6.7 would leave of the sandbox's network rules.
        let tmp = tempfile::tempdir().unwrap();
        let sockets = |tcp_too: bool| {
            let socket = tmp.path().join(format!("unix-{tcp_too}"));
            std::thread::spawn(move || {
                let Some(filter) = network_filter(tcp_too) else {
                    return None; // An architecture it does not know.
                };
                seccompiler::apply_filter(filter).unwrap();
                let kind = |r: std::io::Result<()>| r.map_err(|e| e.kind());
                Some([
                    kind(std::net::TcpListener::bind("127.0.0.1:0").map(drop)),
                    kind(std::net::UdpSocket::bind("127.0.0.1:0").map(drop)),
                    kind(std::os::unix::net::UnixListener::bind(&socket).map(drop)),
                ])
            })
            .join()
            .unwrap()
        };
        let denied = Err(std::io::ErrorKind::PermissionDenied);
        if let Some([tcp, udp, unix]) = sockets(true) {
            assert_eq!((tcp, udp, unix), (denied, denied, Ok(())));
        }
        if let Some([tcp, udp, unix]) = sockets(false) {
            assert_eq!((tcp, udp, unix), (Ok(()), denied, Ok(())));
        }
    }

    #[test]
    fn a_declared_folder_is_read_where_it_is_and_not_written() {
        if support().is_err() {
            return; // No Landlock here: nothing to check.
        }
        let tmp = tempfile::tempdir().unwrap();
        let (inside, refs) = (tmp.path().join("inside"), tmp.path().join("refs"));
        std::fs::create_dir(&inside).unwrap();
        std::fs::create_dir(&refs).unwrap();
        std::fs::write(refs.join("genome.fa"), ">chr1").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "x").unwrap();
        let env = [("PATH".to_string(), "/usr/bin".to_string())];
        let allows = Allowances {
            read: vec![refs.clone()],
            ..Allowances::default()
        };
        let sandbox = Sandbox::for_step(&inside, &env, &allows);
        let (refs, secret) = (refs.clone(), tmp.path().join("secret.txt"));
        let (read, written, other) = start_in(sandbox, None, move || {
            let kind = |r: std::io::Result<()>| r.map_err(|e| e.kind());
            Ok((
                std::fs::read_to_string(refs.join("genome.fa")).map_err(|e| e.kind()),
                kind(std::fs::write(refs.join("new.txt"), "y")),
                kind(std::fs::read(secret).map(drop)),
            ))
        })
        .unwrap();
        assert_eq!(read.as_deref(), Ok(">chr1"));
        assert_eq!(written, Err(std::io::ErrorKind::PermissionDenied));
        assert_eq!(other, Err(std::io::ErrorKind::PermissionDenied));
    }

    #[test]
    fn a_kept_thread_starts_only_for_its_own_sandbox() {
        if support().is_err() {
            return; // No Landlock here: nothing to check.
        }
        let tmp = tempfile::tempdir().unwrap();
        let (step, other) = (tmp.path().join("step"), tmp.path().join("other"));
        std::fs::create_dir(&step).unwrap();
        std::fs::create_dir(&other).unwrap();
        let env = [("PATH".to_string(), "/usr/bin".to_string())];
        let allows = Allowances::default();
        // Which thread started it, and whether it could write `file`.
        let write = |folder: &Path, file: PathBuf| {
            let sandbox = Sandbox::for_step(folder, &env, &allows);
            start_in(sandbox, None, move || {
                let wrote = std::fs::write(file, "x").map_err(|e| e.kind());
                Ok((std::thread::current().id(), wrote))
            })
            .unwrap()
        };
        let (first, wrote) = write(&step, step.join("a"));
        assert_eq!(wrote, Ok(()));
        assert_ne!(first, std::thread::current().id());
        // The next step in the same folder: the same thread, as restricted.
        let (again, wrote) = write(&step, step.join("b"));
        assert_eq!(again, first);
        assert_eq!(wrote, Ok(()));
        let (_, wrote) = write(&step, other.join("c"));
        assert_eq!(wrote, Err(std::io::ErrorKind::PermissionDenied));
        // Another folder's sandbox is another thread, which cannot write here.
        let (elsewhere, wrote) = write(&other, step.join("d"));
        assert_ne!(elsewhere, first);
        assert_eq!(wrote, Err(std::io::ErrorKind::PermissionDenied));
        // The folder made again is another file: its rule would not hold it.
        std::fs::remove_dir_all(&step).unwrap();
        std::fs::create_dir(&step).unwrap();
        let (renewed, wrote) = write(&step, step.join("e"));
        assert_ne!(renewed, first);
        assert_eq!(wrote, Ok(()));
    }
}
