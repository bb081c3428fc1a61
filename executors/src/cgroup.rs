//! A memory cgroup for the steps each worker thread starts (from the process's
//! first second on: see [`ADOPT_AFTER`]), where mustbuild may make one: then a step's peak is that of its whole process tree
//! together (what a batch system's cgroup limit counts) rather than `wait4`'s
//! figure for its largest process, which for small steps is only a bound.
//!
//! Only the version-1 memory hierarchy can do this without moving mustbuild
//! itself: there a *thread* can change cgroup, and a process starts in the
//! cgroup of the thread that started it, while mustbuild's own memory stays
//! charged where its main thread is. A worker thread moves once into a cgroup
//! of its own (`mustbuild-PID-N` beside mustbuild's); before each step it
//! resets the cgroup's `memory.max_usage_in_bytes`, and after it the peak
//! above what the cgroup held then is the step's. (A cgroup per step would
//! be exact even where the page cache earlier steps left is reclaimed during
//! a step, but making one and moving into it and back costs ~0.2 ms a step:
//! a fifth of a small step's cost here.) The figure counts the page cache
//! the step's writes dirtied as well as its processes' memory, as HTCondor's
//! and Slurm's cgroups do.
//!
//! Not where a memory limit is set on mustbuild's cgroup or above it (a batch
//! job's, a container's): an OOM kill is counted in the killed process's
//! cgroup, and the batch system that set the limit would miss it.
//!
//! Version 2 moves only whole processes, and gives controllers only to
//! cgroups without processes, so a per-step figure there would mean splitting
//! mustbuild's own (delegated) cgroup: not done; such hosts keep `wait4`'s
//! figures, and the record says which.
//!
//! A thread stays in its cgroup when it ends (moving a thread takes a lock
//! that every fork and exit of the process waits on: 18 ms seen); the
//! cgroups of ended threads are removed by [`release`], called when a run's
//! workers are done, and those of a process that died by the next mustbuild.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The memory hierarchy mustbuild is in, where it may make cgroups.
pub(crate) struct Cgroups {
    /// mustbuild's own memory cgroup.
    home: PathBuf,
    /// When the first step asked (about when the run began).
    born: std::time::Instant,
    next: AtomicU64,
    /// Cleared at the first refusal: no retry on every step.
    usable: AtomicBool,
}

/// How long a process runs steps before its worker threads take cgroups.
#[cfg(not(test))]
const ADOPT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
#[cfg(test)]
const ADOPT_AFTER: std::time::Duration = std::time::Duration::ZERO;

/// The step cgroups, if this host has a version-1 memory hierarchy. Off with
/// `MUSTBUILD_NO_MEASURE=1` or `MUSTBUILD_NO_CGROUP=1`.
pub(crate) fn here() -> Option<&'static Cgroups> {
    static HERE: OnceLock<Option<Cgroups>> = OnceLock::new();
    HERE.get_or_init(|| {
        let off = std::env::var_os("MUSTBUILD_NO_CGROUP").is_some_and(|v| v != "0");
        if off || !crate::local::measure_io() {
            return None;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let home = memory_cgroup(&mountinfo, &own)?;
        if limited(&home) {
            return None;
        }
        remove_stale(&home);
        Some(Cgroups {
            home,
            born: std::time::Instant::now(),
            next: AtomicU64::new(0),
            usable: AtomicBool::new(true),
        })
    })
    .as_ref()
    .filter(|c| c.usable.load(Ordering::Relaxed))
}

/// The folder of the version-1 memory cgroup that `/proc/self/cgroup` names,
/// under the hierarchy's mount in `/proc/self/mountinfo`.
fn memory_cgroup(mountinfo: &str, own: &str) -> Option<PathBuf> {
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })?;
    mountinfo.lines().find_map(|l| {
        // ID PARENT MAJ:MIN ROOT MOUNT OPTIONS… - TYPE SOURCE SUPER-OPTIONS
        let (left, right) = l.split_once(" - ")?;
        let mut right = right.split(' ');
        let (kind, _, options) = (right.next()?, right.next()?, right.next()?);
        if kind != "cgroup" || !options.split(',').any(|o| o == "memory") {
            return None;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        let (root, mount) = (fields.get(3)?, fields.get(4)?);
        // A cgroup seen from inside a namespace is relative to its root.
        let rel = path.strip_prefix(root.trim_end_matches('/'))?;
        Some(Path::new(mount).join(rel.trim_start_matches('/')))
    })
}

/// Whether a memory limit is set on `home` or above it (a batch job's cgroup,
/// a container's). The kernel counts an OOM kill in the cgroup of the process
/// it kills: in a step cgroup below the limit, the batch system that set it
/// would not see that its job ran out of memory (Slurm would say FAILED, not
/// OUT_OF_MEMORY). There, steps keep `wait4`'s figures and the batch
/// system's own.
fn limited(home: &Path) -> bool {
    home.ancestors()
        .map_while(|d| std::fs::read_to_string(d.join("memory.limit_in_bytes")).ok())
        .any(|limit| limit.trim().parse::<u64>().is_ok_and(|l| l < 1 << 62))
}

/// Removes the step cgroups of mustbuild processes that are gone.
fn remove_stale(home: &Path) {
    let Ok(entries) = std::fs::read_dir(home) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = (name.to_str())
            .and_then(|n| n.strip_prefix("mustbuild-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// The calling thread's id, as the `tasks` file takes it.
fn thread_id() -> String {
    nix::unistd::gettid().as_raw().to_string()
}

impl Cgroups {
    /// Resets the peak of the calling thread's cgroup (moving the thread into
    /// one of its own the first time) for a step about to be started from it.
    /// `None` (and none from now on) when the kernel refuses.
    pub(crate) fn step(&'static self) -> Option<Step> {
        // The main thread owns the process's memory: moved, it would take
        // mustbuild's own charges along.
        if nix::unistd::gettid() == nix::unistd::getpid() {
            return None;
        }
        THREAD.with(|mine| {
            let mut mine = mine.borrow_mut();
            // A thread's first move waits for an RCU grace period (10 ms seen,
            // every fork of the process held meanwhile): paid only once the
            // process has run long enough for it not to count. Steps before
            // keep wait4's figure.
            if mine.is_none() && self.born.elapsed() >= ADOPT_AFTER {
                *mine = self.join();
            }
            let peak = mine.as_ref()?.peak.clone();
            let before = reset(&peak).ok().and_then(|()| read_bytes(&peak));
            if before.is_none() {
                self.usable.store(false, Ordering::Relaxed);
            }
            Some(Step {
                peak,
                before: before?,
            })
        })
    }

    /// A cgroup for the calling thread, with the thread in it.
    fn join(&'static self) -> Option<ThreadCgroup> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = (self.home).join(format!("mustbuild-{}-{n}", std::process::id()));
        let peak = |()| {
            let path = dir.join("memory.max_usage_in_bytes");
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
        };
        let joined = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join("tasks"), thread_id()))
            .and_then(peak);
        match joined {
            Ok(peak) => Some(ThreadCgroup {
                dir,
                peak: std::sync::Arc::new(peak),
            }),
            Err(_) => {
                let _ = std::fs::remove_dir(&dir);
                self.usable.store(false, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The memory cgroup this thread has moved into, if it has: a thread it
/// starts begins there too.
pub(crate) fn of_thread() -> Option<PathBuf> {
    THREAD.with(|t| t.borrow().as_ref().map(|c| c.dir.clone()))
}

thread_local! {
    static THREAD: std::cell::RefCell<Option<ThreadCgroup>> = const { std::cell::RefCell::new(None) };
}

/// A worker thread's cgroup, which the thread is in.
struct ThreadCgroup {
    dir: PathBuf,
    /// Its `memory.max_usage_in_bytes`, open: an open per read would double
    /// what measuring costs a small step.
    peak: std::sync::Arc<std::fs::File>,
}

impl Drop for ThreadCgroup {
    /// At the thread's end it stays where it is: moving a thread takes a lock
    /// every fork and exit of the process waits on (18 ms seen, as the other
    /// workers exited). Its cgroup is removed by [`release`] once it is gone.
    fn drop(&mut self) {
        ENDED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(self.dir.clone());
    }
}

/// The cgroups of worker threads that have ended, for [`release`].
static ENDED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes the cgroups of the worker threads that have ended (call it when a
/// run's workers are done); one still in use, or that a process a step left
/// holds, is left to the next mustbuild's sweep.
pub fn release() {
    let ended = std::mem::take(
        &mut *ENDED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for dir in ended {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The figure a cgroup file holds (read from its start each time).
fn read_bytes(file: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

/// Sets a cgroup's peak back to what it holds now.
fn reset(peak: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    peak.write_at(b"0", 0).map(|_| ())
}

/// One step's measure, begun before it was started.
#[derive(Debug)]
pub(crate) struct Step {
    peak: std::sync::Arc<std::fs::File>,
    /// What the cgroup held as the step began (earlier steps' page cache).
    before: u64,
}

impl Step {
    /// The most memory the step's processes had charged at once, in bytes.
    pub(crate) fn peak(&self) -> Option<u64> {
        Some(read_bytes(&self.peak)?.saturating_sub(self.before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_memory_cgroup_is_found_under_its_mount() {
        let own = "9:name=systemd:/\n4:memory:/process_api/ae87\n1:cpu:/\n0::/\n";
        assert_eq!(
            memory_cgroup(MOUNTINFO, own),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/ae87"))
        );
        // A namespace's mount of a sub-tree.
        let nested = "35 31 0:32 /slurm/job_4 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            memory_cgroup(nested, "4:memory:/slurm/job_4/step_0\n"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/step_0"))
        );
    }

    #[test]
    fn a_memory_limit_on_the_way_up_turns_them_off() {
        let tmp = tempfile::tempdir().unwrap();
        let job = tmp.path().join("slurm/job_4");
        std::fs::create_dir_all(job.join("step_0")).unwrap();
        let limit = |d: &Path, l: u64| {
            std::fs::write(d.join("memory.limit_in_bytes"), format!("{l}\n")).unwrap()
        };
        let unlimited = 9_223_372_036_854_771_712;
        limit(tmp.path(), unlimited);
        limit(&tmp.path().join("slurm"), unlimited);
        limit(&job, unlimited);
        limit(&job.join("step_0"), unlimited);
        assert!(!limited(&job.join("step_0")));
        limit(&job, 64 << 20);
        assert!(limited(&job.join("step_0")));
    }

    #[test]
    fn a_version_2_only_host_has_none() {
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(memory_cgroup(v2, "0::/user.slice/session-1.scope\n"), None);
        // Memory bound to no v1 hierarchy.
        assert_eq!(memory_cgroup(MOUNTINFO, "0::/\n1:cpu:/\n"), None);
    }

    #[test]
    fn a_process_started_from_a_thread_is_charged_to_the_threads_cgroup() {
        let Some(cgroups) = here() else {
            return; // No v1 memory hierarchy of our own here: wait4's figures.
        };
        std::thread::spawn(move || {
            let step = cgroups.step().unwrap();
            let hold = "import time; b = bytearray(50 << 20); time.sleep(0.2)";
            let mut child = std::process::Command::new("python3")
                .args(["-c", hold])
                .spawn()
                .unwrap();
            let dir = THREAD.with(|t| t.borrow().as_ref().unwrap().dir.clone());
            let tasks = std::fs::read_to_string(dir.join("tasks")).unwrap();
            // The thread and the child are inside.
            assert!(tasks.contains(&thread_id()), "{tasks}");
            assert!(tasks.contains(&child.id().to_string()), "{tasks}");
            child.wait().unwrap();
            let mib = step.peak().unwrap() >> 20;
            assert!((50..70).contains(&mib), "{mib} MiB");
            // The next step starts from what the cgroup holds now.
            let next = cgroups.step().unwrap();
            assert!(next.peak().unwrap() < 1 << 20);
            dir
        })
        .join()
        .map(|dir| {
            // Gone once released, the thread having ended.
            release();
            assert!(!dir.exists(), "{dir:?} is left");
        })
        .unwrap();
    }
}
