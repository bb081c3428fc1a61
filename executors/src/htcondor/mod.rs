//! The HTCondor executor: ready jobs go out in batches, one `condor_submit`
//! per batch (a `queue … from` table, never a submit per job); what happens to
//! them is read from the run's job event log as it grows (`events`), never by
//! a query per job; `cancel_all` is one `condor_rm` naming the run's clusters.
//!
//! MUST's case is assumed: a shared filesystem on the submit and execute
//! nodes (`should_transfer_files = NO`), so a job's folder is where it runs.

pub mod events;

use crate::batch::{BatchJob, Calls, End, Executor, ExecutorError, Report};
use events::{EventLog, Exit, Kind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the run's jobs are submitted (from `executor "htcondor" { … }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The folder of `condor_submit` and `condor_rm`; `PATH` when `None`.
    pub bin: Option<PathBuf>,
    /// `accounting_group`.
    pub accounting_group: Option<String>,
    /// `requirements`.
    pub requirements: Option<String>,
    /// More submit commands, as written (`+wishedAcctGroup = "x"`).
    pub extra: Vec<String>,
    /// A job held longer than this is removed and its step fails.
    pub held_timeout: Duration,
    /// `batch_name`: what `condor_q` shows for the run's jobs.
    pub batch_name: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            bin: None,
            accounting_group: None,
            requirements: None,
            extra: Vec::new(),
            held_timeout: Duration::from_secs(600),
            batch_name: "mustbuild".into(),
        }
    }
}

/// A job handed over and not ended.
#[derive(Debug)]
struct Tracked {
    tag: u64,
    held: Option<(Instant, String)>,
    /// The last hold's reason: a removal after it is explained by it.
    hold: Option<(String, Option<u32>, Option<u32>)>,
}

/// The executor of one run: its folder holds the event log and each batch's
/// submit description and table.
#[derive(Debug)]
pub struct HtCondor {
    settings: Settings,
    dir: PathBuf,
    log: EventLog,
    jobs: HashMap<(u64, u64), Tracked>,
    clusters: Vec<u64>,
    batches: usize,
    calls: Calls,
    /// When the event log last told something, and when the queue was last asked.
    heard: Instant,
    asked: Instant,
}

/// How long the event log may say nothing, while jobs are out, before the
/// queue is asked (`condor_q -json`, once for all the run's jobs).
const QUIET: Duration = Duration::from_secs(120);

impl HtCondor {
    /// An executor writing its files in `dir` (created).
    pub fn new(settings: Settings, dir: &Path) -> Result<HtCondor, ExecutorError> {
        std::fs::create_dir_all(dir).map_err(|source| ExecutorError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(HtCondor {
            log: EventLog::new(dir.join("events.log")),
            settings,
            dir: dir.to_path_buf(),
            jobs: HashMap::new(),
            clusters: Vec::new(),
            batches: 0,
            calls: Calls::default(),
            heard: Instant::now(),
            asked: Instant::now(),
        })
    }

    /// Runs a condor tool; its standard output.
    fn call(&self, name: &str, args: &[&str]) -> Result<String, ExecutorError> {
        crate::batch::call_tool(self.settings.bin.as_deref(), name, args, &self.dir)
    }

    /// The submit description of a batch whose table is `table`.
    fn description(&self, program: &Path, table: &Path) -> String {
        let s = &self.settings;
        let mut d = String::new();
        let mut line = |l: String| {
            d.push_str(&l);
            d.push('\n');
        };
        line("universe = vanilla".into());
        line(format!("executable = {}", program.display()));
        line("arguments = \"$(args)\"".into());
        line("initialdir = $(dir)".into());
        line("output = $(dir)/stdout".into());
        line("error = $(dir)/stderr".into());
        line(format!("log = {}", self.dir.join("events.log").display()));
        line("should_transfer_files = NO".into());
        line("getenv = false".into());
        line("request_cpus = $(cpus)".into());
        line("request_memory = $(memory)".into());
        line("request_disk = $(disk)".into());
        line("request_gpus = $(gpus)".into());
        line("+MustbuildTag = $(tag)".into());
        line(format!("batch_name = {}", s.batch_name));
        if let Some(group) = &s.accounting_group {
            line(format!("accounting_group = {group}"));
        }
        if let Some(req) = &s.requirements {
            line(format!("requirements = {req}"));
        }
        for extra in &s.extra {
            line(extra.clone());
        }
        line(format!(
            "queue tag,dir,cpus,memory,disk,gpus,args from {}",
            table.display()
        ));
        d
    }
}

impl HtCondor {
    /// The tracked jobs the queue no longer holds (they left it with no end
    /// in the event log: a lost or unwritable log), as ended; one query.
    fn vanished(&mut self) -> Result<Vec<Report>, ExecutorError> {
        let clusters: std::collections::BTreeSet<String> =
            self.jobs.keys().map(|(c, _)| c.to_string()).collect();
        let mut args: Vec<&str> = clusters.iter().map(String::as_str).collect();
        args.extend(["-json", "-attributes", "ClusterId,ProcId,JobStatus"]);
        let out = self.call("condor_q", &args)?;
        self.calls.queries += 1;
        let queued = parse_queue(&out).ok_or_else(|| ExecutorError::Refused {
            command: "condor_q -json".into(),
            message: format!(
                "unexpected answer: {}",
                out.chars().take(200).collect::<String>()
            ),
        })?;
        let gone: Vec<(u64, u64)> = self
            .jobs
            .keys()
            .filter(|id| !queued.contains(id))
            .copied()
            .collect();
        Ok(gone
            .into_iter()
            .filter_map(|id| self.jobs.remove(&id))
            .map(|t| Report::Ended {
                tag: t.tag,
                end: End::Removed(format!(
                    "it left the queue with no end in the job event log {}",
                    self.dir.join("events.log").display()
                )),
                memory_bytes: None,
            })
            .collect())
    }
}

/// The (cluster, proc) of each job in `condor_q -json`'s answer (nothing at
/// all when the queue holds none of them).
fn parse_queue(out: &str) -> Option<std::collections::HashSet<(u64, u64)>> {
    if out.trim().is_empty() {
        return Some(Default::default());
    }
    let ads: Vec<serde_json::Value> = serde_json::from_str(out).ok()?;
    Some(
        ads.iter()
            .filter_map(|ad| Some((ad.get("ClusterId")?.as_u64()?, ad.get("ProcId")?.as_u64()?)))
            .collect(),
    )
}

/// A job's arguments in `arguments = "…"`'s syntax (each in single quotes,
/// a quote doubled), for the table's last column.
fn quoted_args(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', "''").replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A table row's value must not hold what separates columns.
fn plain(value: &str) -> bool {
    !value.is_empty() && !value.contains([' ', '\t', ',', '\n', '"', '\''])
}

/// `condor_submit -terse`'s `C.P - C.Q` lines: the cluster and first proc.
fn parse_terse(out: &str) -> Option<(u64, u64)> {
    let first = out.lines().find(|l| l.contains(" - "))?;
    let (from, _) = first.split_once(" - ")?;
    let (c, p) = from.trim().split_once('.')?;
    Some((c.parse().ok()?, p.parse().ok()?))
}

impl Executor for HtCondor {
    type Job = BatchJob;
    type End = End;

    fn name(&self) -> &'static str {
        "htcondor"
    }

    fn calls(&self) -> Calls {
        self.calls
    }

    fn submit(&mut self, jobs: &[BatchJob]) -> Result<(), ExecutorError> {
        let Some(first) = jobs.first() else {
            return Ok(());
        };
        if jobs.iter().any(|j| j.program != first.program) {
            return Err(ExecutorError::Unsupported(
                "one batch runs one program".into(),
            ));
        }
        let mut table = String::new();
        for j in jobs {
            let dir = j.dir.to_string_lossy();
            if !plain(&dir) {
                return Err(ExecutorError::Unsupported(format!(
                    "HTCondor cannot take a job folder whose path holds spaces, commas or quotes: {dir} (move the store)"
                )));
            }
            let r = &j.resources;
            table.push_str(&format!(
                "{} {dir} {} {} {} {} {}\n",
                j.tag,
                r.cpus.max(1),
                // MB, KB: HTCondor's units.
                r.memory_bytes.div_ceil(1 << 20).max(1),
                r.disk_bytes.div_ceil(1 << 10).max(1),
                r.gpus,
                quoted_args(&j.args),
            ));
        }
        let n = self.batches;
        self.batches += 1;
        let table_path = self.dir.join(format!("batch-{n}.jobs"));
        let sub_path = self.dir.join(format!("batch-{n}.sub"));
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|source| ExecutorError::Io {
                action: "write",
                path: path.to_path_buf(),
                source,
            })
        };
        write(&table_path, &table)?;
        write(&sub_path, &self.description(&first.program, &table_path))?;
        let out = self.call("condor_submit", &["-terse", &sub_path.to_string_lossy()])?;
        self.calls.submits += 1;
        let (cluster, proc0) = parse_terse(&out).ok_or_else(|| ExecutorError::Refused {
            command: "condor_submit".into(),
            message: format!("unexpected answer: {}", out.trim()),
        })?;
        self.clusters.push(cluster);
        for (i, j) in jobs.iter().enumerate() {
            self.jobs.insert(
                (cluster, proc0 + i as u64),
                Tracked {
                    tag: j.tag,
                    held: None,
                    hold: None,
                },
            );
        }
        Ok(())
    }

    fn reports(&mut self, wait: Duration) -> Result<Vec<Report>, ExecutorError> {
        let until = Instant::now() + wait;
        let mut nap = Duration::from_millis(20);
        loop {
            let mut reports = Vec::new();
            let events = self.log.read_new().map_err(|source| ExecutorError::Io {
                action: "read",
                path: self.dir.join("events.log"),
                source,
            })?;
            if !events.is_empty() {
                self.heard = Instant::now();
            }
            for e in events {
                let id = (e.cluster, e.proc);
                let Some(t) = self.jobs.get_mut(&id) else {
                    continue;
                };
                let tag = t.tag;
                let ended = |end: End, memory_mb: Option<u64>| Report::Ended {
                    tag,
                    end,
                    memory_bytes: memory_mb.map(|m| m << 20),
                };
                match e.kind {
                    Kind::Executing { host } => reports.push(Report::Started { tag, host }),
                    Kind::Evicted => {}
                    Kind::Released => t.held = None,
                    Kind::Held {
                        reason,
                        code,
                        subcode,
                    } => {
                        t.held = Some((Instant::now(), reason.clone()));
                        t.hold = Some((reason.clone(), code, subcode));
                        reports.push(Report::Held { tag, reason });
                    }
                    Kind::Terminated { exit, memory_mb } => {
                        self.jobs.remove(&id);
                        reports.push(ended(
                            match exit {
                                Exit::Code(c) => End::Exited(c),
                                Exit::Signal(s) => End::Signalled(s),
                            },
                            memory_mb,
                        ));
                    }
                    Kind::Aborted { reason } => {
                        let hold = t.hold.take();
                        self.jobs.remove(&id);
                        // HTCondor's memory policies hold the job (code 21 from a
                        // policy such as MUST's, 34 from a cgroup limit) and remove it.
                        let end = match hold {
                            Some((held, code, _))
                                if matches!(code, Some(34))
                                    || held.contains("memory")
                                    || reason.contains("memory") =>
                            {
                                End::OutOfMemory {
                                    used_bytes: used_mb(&held).map(|m| m << 20),
                                    reason: held,
                                }
                            }
                            Some((held, ..)) => End::Removed(format!("{reason} (held: {held})")),
                            None => End::Removed(reason),
                        };
                        reports.push(ended(end, None));
                    }
                }
            }
            // Held past the timeout: removed, and its step fails with the reason.
            let timeout = self.settings.held_timeout;
            let overdue: Vec<((u64, u64), u64, String)> = self
                .jobs
                .iter()
                .filter_map(|(id, t)| {
                    let (since, reason) = t.held.as_ref()?;
                    (since.elapsed() >= timeout).then(|| (*id, t.tag, reason.clone()))
                })
                .collect();
            for (id, tag, reason) in overdue {
                let _ = self.call("condor_rm", &[&format!("{}.{}", id.0, id.1)]);
                self.jobs.remove(&id);
                reports.push(Report::Ended {
                    tag,
                    end: End::Held(reason),
                    memory_bytes: None,
                });
            }
            // The log has said nothing for long: one query for all the run's
            // jobs tells whether some left the queue unseen.
            if !self.jobs.is_empty()
                && self.heard.elapsed() >= QUIET
                && self.asked.elapsed() >= QUIET
            {
                self.asked = Instant::now();
                reports.extend(self.vanished()?);
            }
            if !reports.is_empty() || Instant::now() >= until || self.jobs.is_empty() {
                return Ok(reports);
            }
            std::thread::sleep(nap.min(until.saturating_duration_since(Instant::now())));
            nap = (nap * 2).min(Duration::from_millis(250));
        }
    }

    fn cancel_all(&mut self) -> Result<(), ExecutorError> {
        let live: std::collections::BTreeSet<u64> = self.jobs.keys().map(|k| k.0).collect();
        self.jobs.clear();
        if live.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = live.iter().map(u64::to_string).collect();
        let args: Vec<&str> = names.iter().map(String::as_str).collect();
        self.call("condor_rm", &args).map(|_| ())
    }
}

/// The MB figure in MUST's hold reason (`… 300 MB used, …`).
fn used_mb(reason: &str) -> Option<u64> {
    let before = reason.split(" MB used").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_answers_name_the_cluster_and_first_proc() {
        assert_eq!(parse_terse("12.0 - 12.199\n"), Some((12, 0)));
        assert_eq!(parse_terse("nothing"), None);
    }

    #[test]
    fn arguments_are_quoted_as_htcondor_reads_them() {
        let args = ["worker".to_string(), "/a b/it's".to_string()];
        assert_eq!(quoted_args(&args), "'worker' '/a b/it''s'");
    }

    #[test]
    fn the_queue_answer_names_its_jobs() {
        let out = r#"[
{ "ClusterId": 12, "ProcId": 0, "JobStatus": 1 },
{ "ClusterId": 12, "ProcId": 3, "JobStatus": 2 }
]"#;
        let q = parse_queue(out).unwrap();
        assert!(q.contains(&(12, 0)) && q.contains(&(12, 3)) && q.len() == 2);
        assert_eq!(
            parse_queue("\n").unwrap().len(),
            0,
            "an empty queue says nothing"
        );
        assert_eq!(parse_queue("-- Schedd: x"), None);
    }

    #[test]
    fn the_memory_figure_comes_from_the_policy_reason() {
        let r = "memory usage exceeded 1.5 x request_memory: 300 MB used, 128 MB requested";
        assert_eq!(used_mb(r), Some(300));
    }

    #[test]
    fn a_batch_is_one_queue_from_table() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            accounting_group: Some("group_must.lab".into()),
            extra: vec!["+wishedAcctGroup = \"lab\"".into()],
            ..Settings::default()
        };
        let c = HtCondor::new(settings, dir.path()).unwrap();
        let d = c.description(
            Path::new("/usr/bin/mustbuild"),
            Path::new("/x/batch-0.jobs"),
        );
        assert!(d.contains("queue tag,dir,cpus,memory,disk,gpus,args from /x/batch-0.jobs"));
        assert!(d.contains("accounting_group = group_must.lab\n"));
        assert!(d.contains("+wishedAcctGroup = \"lab\"\n"));
        assert_eq!(d.matches("queue").count(), 1, "{d}");
    }
}
