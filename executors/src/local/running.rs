//! The local executor: commands started on this machine and watched together
//! until each ends, behind the same [`Executor`] interface as a batch system.
//! A command that ends is reaped at once; one past its time limit, or every
//! one at a cancel, is killed with its whole process group.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use wait4::{ResUse, Wait4};

use super::{CancelToken, ExecRequest, ExecResult, Io, Outcome, Peak, Usage};
use crate::executor::{Executor, ExecutorError, Report};

/// One command to run, with the caller's tag for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalJob {
    pub tag: u64,
    pub request: ExecRequest,
}

/// Commands on this machine. Each is started by [`Executor::submit`] (a
/// command that cannot start ends at once, as
/// [`Outcome::Infrastructure`]) and reported when it has ended. A cancel of
/// the token it was made with kills them all, each then reported as
/// [`Outcome::Cancelled`]; [`Executor::cancel_all`] and dropping it kill
/// them unreported. Drive it from the thread that submits: a step's memory
/// cgroup and sandbox starter are that thread's.
#[derive(Debug)]
pub struct Local {
    cancel: CancelToken,
    running: Vec<Running>,
    /// Commands that ended before they started, for the next report.
    ended: Vec<Report<ExecResult>>,
    /// Whether a simple command may start without bash.
    direct: bool,
}

/// A command started and not yet reaped.
#[derive(Debug)]
struct Running {
    tag: u64,
    child: std::process::Child,
    /// Its process group (its own id), which a kill reaches in full.
    group: Pid,
    /// Readable the moment it ends (none before Linux 5.3).
    pidfd: Option<OwnedFd>,
    started: SystemTime,
    clock: Instant,
    time_limit: Option<Duration>,
    /// Its folder and the outputs it must leave there.
    dir: PathBuf,
    outputs: Vec<PathBuf>,
    /// Why it was killed, once it was.
    stopped: Option<Outcome>,
    /// Its thread's memory cgroup, while it ran alone there: the peak of a
    /// command that overlapped another would be both's, so wait4's is kept.
    cgroup: Option<crate::cgroup::Step>,
}

/// How often a wait wakes to honour a cancel or a time limit.
const TICK: Duration = Duration::from_millis(50);

impl Local {
    /// An executor whose commands `cancel` stops.
    pub fn new(cancel: CancelToken) -> Local {
        Local {
            cancel,
            running: Vec::new(),
            ended: Vec::new(),
            direct: true,
        }
    }

    /// One that starts every command with bash (to compare the two).
    #[cfg(test)]
    pub(crate) fn through_bash(cancel: CancelToken) -> Local {
        let mut local = Local::new(cancel);
        local.direct = false;
        local
    }

    /// Runs `request` to its end: started as [`Executor::submit`] would,
    /// then waited for through [`Executor::reports`] (use it alone: the
    /// reports of commands submitted before are dropped).
    pub fn run(&mut self, request: &ExecRequest) -> ExecResult {
        const TAG: u64 = u64::MAX;
        self.start(TAG, request);
        while !(self.running.is_empty() && self.ended.is_empty()) {
            // The reports of a local executor are never an error.
            for report in self.reports(Duration::MAX).unwrap_or_default() {
                if let Report::Ended { tag: TAG, end, .. } = report {
                    return end;
                }
            }
        }
        ExecResult {
            outcome: Outcome::Infrastructure("the command was not reported".to_string()),
            usage: Usage::default(),
            started: SystemTime::now(),
            spawned: false,
        }
    }

    /// Starts one command, or notes why it could not start.
    fn start(&mut self, tag: u64, req: &ExecRequest) {
        let started = SystemTime::now();
        let clock = Instant::now();
        let not_started = |why: String| Report::Ended {
            tag,
            end: ExecResult {
                outcome: Outcome::Infrastructure(why),
                usage: Usage::default(),
                started,
                spawned: false,
            },
            memory_bytes: None,
        };
        let log = match std::fs::File::create(&req.log) {
            Ok(f) => f,
            Err(e) => {
                let why = format!("cannot create the log {}: {e}", req.log.display());
                return self.ended.push(not_started(why));
            }
        };
        // This thread's memory cgroup, where there can be one, which the
        // command and all it starts will be charged to: its peak is the
        // command's only while no other runs from here.
        let cgroup = match self.running.is_empty() {
            true => crate::cgroup::here().and_then(|c| c.step()),
            false => {
                self.running.iter_mut().for_each(|r| r.cgroup = None);
                None
            }
        };
        // A sandboxed command is started from a thread that restricted itself.
        let spawned = match &req.sandbox {
            Some(_) => super::start::start_sandboxed(req, &log, self.direct),
            None => super::start::start(req, &log, self.direct),
        };
        let child = match spawned {
            Ok(child) => child,
            Err(why) => return self.ended.push(not_started(why)),
        };
        let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let pidfd = rustix::process::Pid::from_raw(group.as_raw()).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        self.running.push(Running {
            tag,
            child,
            group,
            pidfd,
            started,
            clock,
            time_limit: req.time_limit,
            dir: req.dir.clone(),
            outputs: req.outputs.clone(),
            stopped: None,
            cgroup,
        });
    }

    /// Kills every command past its time limit, or all at a cancel.
    fn stop_overdue(&mut self) {
        let cancelled = self.cancel.is_cancelled();
        for r in self.running.iter_mut().filter(|r| r.stopped.is_none()) {
            let over = r.time_limit.filter(|&l| r.clock.elapsed() >= l);
            if cancelled || over.is_some() {
                // Not reaped yet, so the group id cannot have been reused.
                let _ = killpg(r.group, Signal::SIGKILL);
                r.stopped = Some(match over {
                    Some(limit) => Outcome::TimedOut { limit },
                    None => Outcome::Cancelled,
                });
            }
        }
    }

    /// Sleeps until a command may have ended, a time limit falls due or a
    /// tick passes, at most `wait`: woken by the commands' pidfds, else naps
    /// that grow to 20 ms.
    fn nap(&self, mut wait: Duration, nap: &mut Duration) {
        wait = wait.min(TICK);
        for r in &self.running {
            // Until its limit (once killed, the usual wait for it to go).
            if let (Some(limit), None) = (r.time_limit, &r.stopped) {
                wait = wait.min(limit.saturating_sub(r.clock.elapsed()));
            }
        }
        let fds: Option<Vec<_>> = (self.running.iter())
            .map(|r| r.pidfd.as_ref())
            .map(|fd| fd.map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)))
            .collect();
        match fds {
            Some(mut fds) if !fds.is_empty() => {
                let timeout = rustix::event::Timespec {
                    tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(wait.subsec_nanos()),
                };
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
            }
            _ => {
                std::thread::sleep((*nap).min(wait));
                *nap = (*nap * 2).min(Duration::from_millis(20));
            }
        }
    }
}

impl Executor for Local {
    type Job = LocalJob;
    type End = ExecResult;

    fn name(&self) -> &'static str {
        "local"
    }

    fn submit(&mut self, jobs: &[LocalJob]) -> Result<(), ExecutorError> {
        for job in jobs {
            self.start(job.tag, &job.request);
        }
        Ok(())
    }

    fn reports(&mut self, wait: Duration) -> Result<Vec<Report<ExecResult>>, ExecutorError> {
        let clock = Instant::now();
        let mut nap = Duration::from_millis(1);
        loop {
            let mut reports = std::mem::take(&mut self.ended);
            let mut at = 0;
            while at < self.running.len() {
                match self.running[at].reaped() {
                    Some(used) => {
                        let (tag, end) = self.running.swap_remove(at).end(used);
                        reports.push(Report::Ended {
                            tag,
                            memory_bytes: end.spawned.then_some(end.usage.max_rss_bytes),
                            end,
                        });
                    }
                    None => at += 1,
                }
            }
            if !reports.is_empty() || self.running.is_empty() {
                return Ok(reports);
            }
            self.stop_overdue();
            let left = wait.saturating_sub(clock.elapsed());
            if left.is_zero() {
                return Ok(reports);
            }
            self.nap(left, &mut nap);
        }
    }

    fn cancel_all(&mut self) -> Result<(), ExecutorError> {
        for mut r in self.running.drain(..) {
            let _ = killpg(r.group, Signal::SIGKILL);
            let _ = r.child.wait();
        }
        self.ended.clear();
        Ok(())
    }
}

impl Drop for Local {
    /// No command outlives its executor.
    fn drop(&mut self) {
        let _ = self.cancel_all();
    }
}

/// What reaping a command gave: its status and usage, with its I/O read just
/// before; or why it could not be waited for.
type Reaped = Result<(ResUse, Option<Io>), String>;

impl Running {
    /// The command reaped, if it has ended.
    fn reaped(&mut self) -> Option<Reaped> {
        if !has_exited(self.group) {
            return None;
        }
        let io = if super::measure_io() {
            Io::of(self.child.id())
        } else {
            None
        };
        match self.child.try_wait4() {
            Ok(Some(used)) => Some(Ok((used, io))),
            Ok(None) => None,
            Err(e) => Some(Err(format!("cannot wait for the command: {e}"))),
        }
    }

    /// How it ended, measured: its tag and result.
    fn end(self, reaped: Reaped) -> (u64, ExecResult) {
        let wall = self.clock.elapsed();
        // Whatever its children still do, they go with it.
        let _ = killpg(self.group, Signal::SIGKILL);
        let (used, io) = match reaped {
            Ok(r) => r,
            Err(why) => {
                let result = ExecResult {
                    outcome: Outcome::Infrastructure(why),
                    usage: Usage::default(),
                    started: self.started,
                    spawned: true,
                };
                return (self.tag, result);
            }
        };
        let (max_rss_bytes, peak) = match self.cgroup.as_ref().and_then(|c| c.peak()) {
            Some(bytes) => (bytes, Peak::Cgroup),
            None if super::own_peak_rss().is_none_or(|own| used.rusage.maxrss <= own) => {
                (used.rusage.maxrss, Peak::AtMost)
            }
            None => (used.rusage.maxrss, Peak::Largest),
        };
        let usage = Usage {
            wall,
            user_cpu: used.rusage.utime,
            system_cpu: used.rusage.stime,
            max_rss_bytes,
            peak,
            io,
        };
        let outcome = match (self.stopped, used.status.code(), used.status.signal()) {
            (Some(o), _, _) => o,
            (None, Some(0), _) => {
                let missing: Vec<PathBuf> = (self.outputs.into_iter())
                    .filter(|o| std::fs::symlink_metadata(self.dir.join(o)).is_err())
                    .collect();
                if missing.is_empty() {
                    Outcome::Succeeded
                } else {
                    Outcome::MissingOutputs(missing)
                }
            }
            (None, Some(code), _) => Outcome::Failed { exit_code: code },
            (None, None, Some(signal)) => Outcome::Killed { signal },
            (None, None, None) => {
                Outcome::Infrastructure("the command ended without a status".to_string())
            }
        };
        let result = ExecResult {
            outcome,
            usage,
            started: self.started,
            spawned: true,
        };
        (self.tag, result)
    }
}

/// Whether `pid` (a child) has ended, leaving it a zombie to read before reaping.
fn has_exited(pid: Pid) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => false,
        // Ended, or no longer waitable: let wait4 say.
        Ok(_) | Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::tests::request;

    fn job(tag: u64, dir: &std::path::Path, command: &str) -> LocalJob {
        let mut request = request(dir, command);
        request.log = dir.join(format!("log-{tag}.txt"));
        request.time_limit = Some(Duration::from_secs(20));
        LocalJob { tag, request }
    }

    /// Every report until `n` commands have ended, in the order they came.
    fn ends(local: &mut Local, n: usize) -> Vec<(u64, ExecResult)> {
        let mut ended = Vec::new();
        while ended.len() < n {
            for report in local.reports(Duration::from_secs(30)).unwrap() {
                if let Report::Ended { tag, end, .. } = report {
                    ended.push((tag, end));
                }
            }
        }
        ended
    }

    #[test]
    fn commands_submitted_together_run_together_and_each_is_reported_as_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = Local::new(CancelToken::default());
        // The first waits for the second: run one after the other, it would
        // run to its time limit.
        let jobs = [
            job(
                1,
                dir.path(),
                "while [ ! -e b ]; do sleep 0.01; done; echo a > a",
            ),
            job(2, dir.path(), "sleep 0.2; echo b > b"),
            job(3, dir.path(), "exit 3"),
        ];
        local.submit(&jobs).unwrap();
        let ended = ends(&mut local, 3);
        let tags: Vec<u64> = ended.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, [3, 2, 1], "{ended:?}");
        assert_eq!(ended[0].1.outcome, Outcome::Failed { exit_code: 3 });
        assert_eq!(ended[1].1.outcome, Outcome::Succeeded);
        assert_eq!(ended[2].1.outcome, Outcome::Succeeded);
        assert!(ended[2].1.usage.wall < Duration::from_secs(10));
        assert!(local.reports(Duration::ZERO).unwrap().is_empty());
    }

    #[test]
    fn a_command_that_cannot_start_is_reported_ended_unstarted() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = Local::new(CancelToken::default());
        let mut lost = job(7, dir.path(), "true");
        lost.request.log = dir.path().join("no/such/folder/log.txt");
        local.submit(&[lost, job(8, dir.path(), "true")]).unwrap();
        let ended = ends(&mut local, 2);
        let (tag, lost) = &ended[0];
        assert_eq!(*tag, 7);
        assert!(!lost.spawned);
        assert!(
            matches!(&lost.outcome, Outcome::Infrastructure(why) if why.contains("cannot create the log")),
            "{lost:?}"
        );
        assert_eq!(ended[1], (8, ended[1].1.clone()));
        assert_eq!(ended[1].1.outcome, Outcome::Succeeded);
    }

    #[test]
    fn a_cancel_reports_every_running_command_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancelToken::default();
        let mut local = Local::new(cancel.clone());
        let jobs = [
            job(1, dir.path(), "sleep 30"),
            job(2, dir.path(), "sleep 30"),
        ];
        local.submit(&jobs).unwrap();
        assert!(
            local
                .reports(Duration::from_millis(100))
                .unwrap()
                .is_empty()
        );
        cancel.cancel();
        let ended = ends(&mut local, 2);
        for (_, end) in &ended {
            assert_eq!(end.outcome, Outcome::Cancelled);
            assert!(end.usage.wall < Duration::from_secs(10), "{end:?}");
        }
    }

    #[test]
    fn cancel_all_and_drop_kill_every_command_and_report_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = Local::new(CancelToken::default());
        let started = |name: &str| format!("echo $$ > {name}; exec sleep 30");
        local
            .submit(&[job(1, dir.path(), &started("one"))])
            .unwrap();
        let mut dropped = Local::new(CancelToken::default());
        dropped
            .submit(&[job(2, dir.path(), &started("two"))])
            .unwrap();
        let pid = |name: &str| loop {
            if let Ok(text) = std::fs::read_to_string(dir.path().join(name))
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                break Pid::from_raw(pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (one, two) = (pid("one"), pid("two"));
        local.cancel_all().unwrap();
        drop(dropped);
        // Reaped, not only killed: no such process remains.
        for pid in [one, two] {
            assert_eq!(
                nix::sys::signal::kill(pid, None),
                Err(nix::errno::Errno::ESRCH)
            );
        }
        assert!(local.reports(Duration::from_millis(50)).unwrap().is_empty());
    }

    #[test]
    fn a_command_that_overlapped_another_keeps_wait4s_peak() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = Local::new(CancelToken::default());
        let alone = local.run(&request(dir.path(), "true"));
        let hold = "python3 -c 'import time; b = bytearray(40 << 20); time.sleep(0.3)'";
        local
            .submit(&[job(1, dir.path(), hold), job(2, dir.path(), hold)])
            .unwrap();
        let ended = ends(&mut local, 2);
        if crate::cgroup::here().is_some() {
            assert_eq!(alone.usage.peak, Peak::Cgroup);
        }
        for (_, end) in &ended {
            assert_eq!(end.outcome, Outcome::Succeeded);
            assert_ne!(end.usage.peak, Peak::Cgroup, "{end:?}");
            assert!(end.usage.max_rss_bytes >= 40 << 20, "{end:?}");
        }
    }
}
