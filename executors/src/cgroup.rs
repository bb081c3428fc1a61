//! A memory cgroup of its own for each step, where mustbuild may make one:
//! then a step's peak is that of its whole process tree together (what a
//! batch system's cgroup limit counts), exact, rather than `wait4`'s figure
//! for its largest process.
//!
//! Only the version-1 memory hierarchy can do this without moving mustbuild
//! itself: there a *thread* can change cgroup, and a process starts in its
//! parent thread's. The worker thread that starts a step joins the step's
//! cgroup, starts the command (which, with everything it starts, is charged
//! there from its first page) and goes back; mustbuild's own memory stays
//! where it was. Version 2 moves only whole processes, and its controllers
//! are given only to cgroups without processes, so a per-step figure there
//! would mean splitting mustbuild's own cgroup (a delegated one): not done;
//! such hosts keep `wait4`'s figure, and the record says which.
//!
//! The figure is the cgroup's `memory.max_usage_in_bytes`, which counts the
//! page cache the step's writes dirtied as well as its processes' memory, as
//! HTCondor's and Slurm's cgroups do.
//!
//! Step cgroups are `mustbuild-PID-N` beside mustbuild's own, removed when the
//! step ends; those of a process that died are removed by the next one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The memory hierarchy mustbuild is in, where it may make cgroups.
pub(crate) struct Cgroups {
    /// mustbuild's own memory cgroup (where threads go back to).
    home: PathBuf,
    next: AtomicU64,
    /// Cleared at the first refusal: no retry on every step.
    usable: AtomicBool,
}

/// The step cgroups, if this host has a version-1 memory hierarchy. Off with
/// `MUSTBUILD_NO_MEASURE=1` or `MUSTBUILD_NO_CGROUP=1`.
pub(crate) fn here() -> Option<&'static Cgroups> {
    static HERE: OnceLock<Option<Cgroups>> = OnceLock::new();
    HERE.get_or_init(|| {
        let off = |name| std::env::var_os(name).is_some_and(|v| v != "0");
        if off("MUSTBUILD_NO_MEASURE") || off("MUSTBUILD_NO_CGROUP") {
            return None;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let home = memory_cgroup(&mountinfo, &own)?;
        remove_stale(&home);
        Some(Cgroups {
            home,
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
    /// Makes a step cgroup and moves the calling thread into it, so that the
    /// next process it starts is charged there. `None` (and no step cgroups
    /// from now on) when the kernel refuses.
    pub(crate) fn enter(&'static self) -> Option<Entered> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .home
            .join(format!("mustbuild-{}-{n}", std::process::id()));
        let joined = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join("tasks"), thread_id()))
            .inspect_err(|_| {
                let _ = std::fs::remove_dir(&dir);
            });
        match joined {
            Ok(()) => Some(Entered {
                step: Some(StepCgroup { dir }),
                home: &self.home,
            }),
            Err(_) => {
                self.usable.store(false, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The calling thread inside a step cgroup: it goes home when this is dropped
/// (the cgroup is then removed) or when [`Entered::leave`] hands the cgroup on.
pub(crate) struct Entered {
    step: Option<StepCgroup>,
    home: &'static Path,
}

impl Entered {
    /// Back to mustbuild's own cgroup; the process started meanwhile stays.
    pub(crate) fn leave(mut self) -> Option<StepCgroup> {
        self.step.take()
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // Refused only if the home cgroup went away, when nothing can be done.
        let _ = std::fs::write(self.home.join("tasks"), thread_id());
    }
}

/// A step's cgroup: its peak, then its removal.
#[derive(Debug)]
pub(crate) struct StepCgroup {
    dir: PathBuf,
}

impl StepCgroup {
    /// The most memory charged to it at once, in bytes.
    pub(crate) fn peak(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join("memory.max_usage_in_bytes")).ok()?;
        text.trim().parse().ok()
    }
}

impl Drop for StepCgroup {
    /// Removed once its last process has gone: a killed group may take a
    /// moment to be reaped; what still holds it is left to the next sweep.
    fn drop(&mut self) {
        for wait_ms in [0, 1, 5, 20] {
            std::thread::sleep(std::time::Duration::from_millis(wait_ms));
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {}
                _ => return,
            }
        }
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
    fn a_version_2_only_host_has_none() {
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(memory_cgroup(v2, "0::/user.slice/session-1.scope\n"), None);
        // Memory bound to no v1 hierarchy.
        assert_eq!(memory_cgroup(MOUNTINFO, "0::/\n1:cpu:/\n"), None);
    }

    #[test]
    fn a_process_started_inside_is_charged_there_and_its_cgroup_goes_when_it_ends() {
        let Some(cgroups) = here() else {
            return; // No v1 memory hierarchy of our own here: wait4's figures.
        };
        let entered = cgroups.enter().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let step = entered.leave().unwrap();
        let dir = step.dir.clone();
        let tasks = |d: &Path| std::fs::read_to_string(d.join("tasks")).unwrap();
        // The child is inside; this thread is home again.
        assert_eq!(tasks(&dir).trim(), child.id().to_string());
        assert!(tasks(&cgroups.home).contains(&thread_id()));
        child.wait().unwrap();
        assert!(step.peak().unwrap() > 0);
        drop(step);
        assert!(!dir.exists());
    }
}
