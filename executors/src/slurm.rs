//! The Slurm executor: ready jobs go out as job arrays, one `sbatch --parsable
//! --array` per batch and resource shape (a script that reads its task's folder
//! and arguments from a table), never one `sbatch` per job; they are followed
//! with one `squeue --json` for all the run's arrays per poll, on an interval
//! that backs off from 0.5 s (0.5 s more per 100 jobs out) to 5 s while
//! nothing changes, never a query per job; `cancel_all` is one `scancel` naming the run's arrays.
//!
//! One array per batch rather than one `sbatch` per job: a submission is a
//! round trip to slurmctld that takes its lock, so 200 jobs are 1 call, not
//! 200 (Snakemake's and Nextflow's per-job calls are what admins complain of).
//!
//! Slurm's own accounting of the ended jobs (`sacct`: MaxRSS, UserCPU,
//! SystemCPU, ConsumedEnergyRaw) is one query for all of them, when the run
//! asks ([`Executor::accounting`]); it answers only where slurmdbd runs.

use crate::batch::{Accounting, BatchJob, Calls, End, Executor, ExecutorError, Report, Resources};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the run's jobs are submitted (from `executor "slurm" { … }`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// The folder of `sbatch`, `squeue` and `scancel`; `PATH` when `None`.
    pub bin: Option<PathBuf>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    /// More `sbatch` options, as written (`--exclusive`).
    pub extra: Vec<String>,
    /// `--job-name`: what `squeue` shows for the run's jobs.
    pub job_name: String,
}

/// The first and the longest interval between two polls.
const FIRST_POLL: Duration = Duration::from_millis(500);
const LONGEST_POLL: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Tracked {
    tag: u64,
    started: bool,
    /// Its `--mem`, in MiB.
    mem_mib: u64,
}

/// The executor of one run: its folder holds each batch's script and table.
#[derive(Debug)]
pub struct Slurm {
    settings: Settings,
    dir: PathBuf,
    /// (array job id, task id) → the job.
    jobs: HashMap<(u64, u64), Tracked>,
    /// Tag → (array job id, task id), of the jobs that ended.
    ended: HashMap<u64, (u64, u64)>,
    batches: usize,
    poll: Duration,
    next_poll: Instant,
    calls: Calls,
}

impl Slurm {
    /// An executor writing its files in `dir` (created).
    pub fn new(settings: Settings, dir: &Path) -> Result<Slurm, ExecutorError> {
        std::fs::create_dir_all(dir).map_err(|source| ExecutorError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Slurm {
            settings,
            dir: dir.to_path_buf(),
            jobs: HashMap::new(),
            ended: HashMap::new(),
            batches: 0,
            poll: FIRST_POLL,
            next_poll: Instant::now(),
            calls: Calls::default(),
        })
    }

    /// Runs a Slurm tool; its standard output.
    fn call(&self, name: &str, args: &[String]) -> Result<String, ExecutorError> {
        crate::batch::call_tool(self.settings.bin.as_deref(), name, args, &self.dir)
    }

    /// `sbatch`'s options for an array of `n` jobs of one shape.
    fn options(&self, r: &Resources, n: usize, script: &Path) -> Vec<String> {
        let s = &self.settings;
        let mut o = vec![
            "--parsable".to_string(),
            format!("--array=0-{}", n - 1),
            format!("--job-name={}", s.job_name),
            format!("--cpus-per-task={}", r.cpus.max(1)),
            format!("--mem={}M", r.memory_bytes.div_ceil(1 << 20).max(1)),
            // Each task says where its own output goes (in its folder).
            format!("--output={}", self.dir.join("slurm-%A_%a.out").display()),
        ];
        if r.gpus > 0 {
            o.push(format!("--gres=gpu:{}", r.gpus));
        }
        if let Some(t) = r.time {
            o.push(format!("--time={}", t.as_secs().div_ceil(60).max(1)));
        }
        for (flag, value) in [
            ("--partition", &s.partition),
            ("--account", &s.account),
            ("--qos", &s.qos),
            ("--constraint", &s.constraint),
        ] {
            if let Some(v) = value {
                o.push(format!("{flag}={v}"));
            }
        }
        o.extend(s.extra.iter().cloned());
        o.push(script.display().to_string());
        o
    }
}

/// `word` for a POSIX shell: in single quotes, each quote closed and escaped.
fn shell_quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The array's script: task N runs line N+1 of `table` (a folder, then the
/// command), its output in that folder.
fn script(table: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # A mustbuild batch: task N runs line N+1 of the table.\n\
         line=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {})\n\
         dir=${{line%%\t*}}\n\
         cd \"$dir\" || exit 111\n\
         exec >\"$dir/stdout\" 2>\"$dir/stderr\"\n\
         eval \"exec ${{line#*\t}}\"\n",
        shell_quoted(&table.display().to_string())
    )
}

/// What `squeue --json` says of one array task.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    array: u64,
    task: u64,
    state: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
}

/// What `squeue --json` answers: each array task it names, and the arrays
/// with tasks still pending (one summary line each, `array_task_string`
/// `"2-99"`, naming no one task).
#[derive(Debug, Default, PartialEq, Eq)]
struct Queue {
    tasks: Vec<Seen>,
    pending: std::collections::HashSet<u64>,
}

fn parse_squeue(out: &str) -> Option<Queue> {
    let v: serde_json::Value = serde_json::from_str(out).ok()?;
    let jobs = v.get("jobs")?.as_array()?;
    let pending = jobs
        .iter()
        .filter(|j| j.get("array_task_id").is_none_or(|t| t.is_null()))
        .filter(|j| j.get("job_state").and_then(|s| s.as_str()) == Some("PENDING"))
        .filter_map(|j| j.get("job_id")?.as_u64())
        .collect();
    let tasks = jobs
        .iter()
        .filter_map(|j| {
            let task = j.get("array_task_id")?.as_u64()?;
            let array = j.get("array_job_id")?.as_u64().filter(|a| *a != 0)?;
            let state = j.get("job_state")?.as_str()?.to_string();
            // 22.05 writes a number; later versions an object.
            let exit = j.get("exit_code");
            let (exit_code, signal) = match exit {
                Some(serde_json::Value::Number(n)) => {
                    let raw = n.as_i64().unwrap_or(0);
                    // A wait status: the code in the high byte, a signal in the low.
                    (
                        Some(((raw >> 8) & 0xff) as i32),
                        Some((raw & 0x7f) as i32).filter(|s| *s != 0),
                    )
                }
                Some(o) => (
                    o.get("return_code")
                        .and_then(|c| c.as_i64())
                        .map(|c| c as i32),
                    o.get("signal")
                        .and_then(|s| s.get("signal_id"))
                        .and_then(|s| s.as_i64())
                        .map(|s| s as i32)
                        .filter(|s| *s != 0),
                ),
                None => (None, None),
            };
            Some(Seen {
                array,
                task,
                state,
                exit_code,
                signal,
            })
        })
        .collect();
    Some(Queue { tasks, pending })
}

/// A task's end, from its state; `None` while it is not over.
fn ended(seen: &Seen) -> Option<End> {
    let code = seen.exit_code.unwrap_or(0);
    Some(match seen.state.as_str() {
        "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
        | "RESIZING" | "SIGNALING" | "STAGE_OUT" => return None,
        "COMPLETED" => End::Exited(code),
        "FAILED" => match seen.signal {
            Some(s) => End::Signalled(s),
            None => End::Exited(code),
        },
        "OUT_OF_MEMORY" => End::OutOfMemory {
            reason: "Slurm ended it OUT_OF_MEMORY".into(),
            used_bytes: None,
        },
        "TIMEOUT" => End::Removed("Slurm stopped it: TIMEOUT (past its --time)".into()),
        "CANCELLED" => End::Removed("cancelled (scancel, or an administrator)".into()),
        "NODE_FAIL" => End::Removed("its node failed (NODE_FAIL)".into()),
        "BOOT_FAIL" => End::Removed("its node failed to boot (BOOT_FAIL)".into()),
        "PREEMPTED" => End::Removed("preempted by another job (PREEMPTED)".into()),
        "DEADLINE" => End::Removed("past its deadline (DEADLINE)".into()),
        other => End::Removed(format!("Slurm says {other}")),
    })
}

impl Executor for Slurm {
    type Job = BatchJob;
    type End = End;

    fn name(&self) -> &'static str {
        "slurm"
    }

    fn calls(&self) -> Calls {
        self.calls
    }

    fn submit(&mut self, jobs: &[BatchJob]) -> Result<(), ExecutorError> {
        // One array per resource shape, in the order they came.
        let mut shapes: BTreeMap<(u32, u64, u32, Option<Duration>), Vec<&BatchJob>> =
            BTreeMap::new();
        for j in jobs {
            let r = &j.resources;
            shapes
                .entry((r.cpus, r.memory_bytes, r.gpus, r.time))
                .or_default()
                .push(j);
        }
        for members in shapes.values() {
            let n = self.batches;
            self.batches += 1;
            let table = self.dir.join(format!("batch-{n}.jobs"));
            let script_path = self.dir.join(format!("batch-{n}.sh"));
            let mut text = String::new();
            for j in members {
                let dir = j.dir.display().to_string();
                if dir.contains(['\t', '\n']) {
                    return Err(ExecutorError::Unsupported(format!(
                        "a job folder's path holds a tab or a line break: {dir}"
                    )));
                }
                let words: Vec<String> = std::iter::once(j.program.display().to_string())
                    .chain(j.args.iter().cloned())
                    .map(|w| shell_quoted(&w))
                    .collect();
                text.push_str(&format!("{dir}\t{}\n", words.join(" ")));
            }
            let write = |path: &Path, text: &str| {
                std::fs::write(path, text).map_err(|source| ExecutorError::Io {
                    action: "write",
                    path: path.to_path_buf(),
                    source,
                })
            };
            write(&table, &text)?;
            write(&script_path, &script(&table))?;
            let args = self.options(&members[0].resources, members.len(), &script_path);
            let out = self.call("sbatch", &args)?;
            self.calls.submits += 1;
            // `ID` or `ID;CLUSTER`.
            let id: u64 = out
                .trim()
                .split(';')
                .next()
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| ExecutorError::Refused {
                    command: "sbatch --parsable".into(),
                    message: format!("unexpected answer: {}", out.trim()),
                })?;
            for (i, j) in members.iter().enumerate() {
                self.jobs.insert(
                    (id, i as u64),
                    Tracked {
                        tag: j.tag,
                        started: false,
                        mem_mib: j.resources.memory_bytes.div_ceil(1 << 20).max(1),
                    },
                );
            }
        }
        // Something new is out: look soon.
        self.poll = FIRST_POLL;
        self.next_poll = Instant::now() + FIRST_POLL;
        Ok(())
    }

    fn reports(&mut self, wait: Duration) -> Result<Vec<Report>, ExecutorError> {
        if self.jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        if self.next_poll > now {
            let nap = (self.next_poll - now).min(wait);
            std::thread::sleep(nap);
            if Instant::now() < self.next_poll {
                return Ok(Vec::new());
            }
        }
        let arrays: std::collections::BTreeSet<u64> = self.jobs.keys().map(|k| k.0).collect();
        let list: Vec<String> = arrays.iter().map(u64::to_string).collect();
        let out = self.call(
            "squeue",
            &["--json".into(), format!("--jobs={}", list.join(","))],
        )?;
        self.calls.queries += 1;
        let queue = parse_squeue(&out).ok_or_else(|| ExecutorError::Refused {
            command: "squeue --json".into(),
            message: format!(
                "unexpected answer: {}",
                out.chars().take(200).collect::<String>()
            ),
        })?;
        let mut reports = Vec::new();
        let mut present = std::collections::HashSet::new();
        for s in &queue.tasks {
            let id = (s.array, s.task);
            present.insert(id);
            let Some(t) = self.jobs.get_mut(&id) else {
                continue;
            };
            let tag = t.tag;
            if !t.started && s.state != "PENDING" {
                t.started = true;
                reports.push(Report::Started { tag, host: None });
            }
            if let Some(mut end) = ended(s) {
                if let End::OutOfMemory { reason, .. } = &mut end {
                    *reason = format!("{reason}: above its --mem={}M", t.mem_mib);
                }
                self.jobs.remove(&id);
                self.ended.insert(tag, id);
                reports.push(Report::Ended {
                    tag,
                    end,
                    memory_bytes: None,
                });
            }
        }
        // A task no longer listed, whose array has none pending either, left
        // the queue unseen (after MinJobAge): it ended with no state we saw.
        let gone: Vec<(u64, u64)> = self
            .jobs
            .keys()
            .filter(|id| !present.contains(id) && !queue.pending.contains(&id.0))
            .copied()
            .collect();
        for id in gone {
            if let Some(t) = self.jobs.remove(&id) {
                reports.push(Report::Ended {
                    tag: t.tag,
                    end: End::Removed("it left Slurm's queue before its end was seen".into()),
                    memory_bytes: None,
                });
            }
        }
        // Back off while nothing changes; look again soon after a change,
        // but less often the more jobs are out (their ends come in bulk, and
        // slurmctld should not hear from a big run twice a second).
        let floor = (FIRST_POLL * (1 + self.jobs.len() as u32 / 100)).min(LONGEST_POLL);
        self.poll = if reports.is_empty() {
            (self.poll * 2).clamp(floor, LONGEST_POLL)
        } else {
            floor
        };
        self.next_poll = Instant::now() + self.poll;
        Ok(reports)
    }

    fn cancel_all(&mut self) -> Result<(), ExecutorError> {
        let arrays: std::collections::BTreeSet<u64> = self.jobs.keys().map(|k| k.0).collect();
        self.jobs.clear();
        if arrays.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = arrays.iter().map(u64::to_string).collect();
        self.call("scancel", &ids).map(|_| ())
    }

    fn accounting(&mut self, tags: &[u64]) -> Result<HashMap<u64, Accounting>, ExecutorError> {
        let wanted: HashMap<(u64, u64), u64> = (tags.iter())
            .filter_map(|t| Some((*self.ended.get(t)?, *t)))
            .collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let arrays: std::collections::BTreeSet<u64> = wanted.keys().map(|k| k.0).collect();
        let list: Vec<String> = arrays.iter().map(u64::to_string).collect();
        let args = [
            "--parsable2".to_string(),
            "--noheader".into(),
            "--noconvert".into(),
            format!("--jobs={}", list.join(",")),
            "--format=JobID,State,MaxRSS,UserCPU,SystemCPU,ConsumedEnergyRaw".into(),
        ];
        // slurmctld sends a job's end to slurmdbd a moment after it ends.
        let mut tries = 0;
        loop {
            let out = self.call("sacct", &args)?;
            self.calls.queries += 1;
            let found = parse_sacct(&out);
            let complete = wanted.keys().all(|id| found.get(id).is_some_and(|a| a.1));
            tries += 1;
            if complete || tries >= SACCT_TRIES {
                return Ok((found.into_iter())
                    .filter_map(|(id, (a, _))| Some((*wanted.get(&id)?, a)))
                    .collect());
            }
            std::thread::sleep(SACCT_WAIT);
        }
    }
}

/// How often, and how far apart, `sacct` is asked until it knows every ended job.
const SACCT_TRIES: u32 = 10;
const SACCT_WAIT: Duration = Duration::from_millis(500);

/// Per (array job id, task id): what `sacct --parsable2 --noconvert` said of
/// its steps, and whether its batch step's record is there.
fn parse_sacct(out: &str) -> HashMap<(u64, u64), (Accounting, bool)> {
    let mut found: HashMap<(u64, u64), (Accounting, bool)> = HashMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let [id, state, rss, user, system, energy] = f[..] else {
            continue;
        };
        let (job, step) = id.split_once('.').map_or((id, None), |(j, s)| (j, Some(s)));
        let Some((array, task)) = job
            .split_once('_')
            .and_then(|(a, t)| Some((a.parse().ok()?, t.parse().ok()?)))
        else {
            continue; // A pending range (`12_[3-9]`), or not an array's.
        };
        let (a, batch) = found.entry((array, task)).or_insert_with(|| {
            let a = Accounting {
                memory_method: "slurm (sacct MaxRSS, sampled)",
                energy_method: "measured (slurm)",
                ..Accounting::default()
            };
            (a, false)
        });
        match step {
            // The job as a whole: its steps' CPU time summed, its energy.
            None => {
                a.user_cpu = cpu_time(user);
                a.system_cpu = cpu_time(system);
                a.energy_joules = energy.parse::<f64>().ok().filter(|j| *j > 0.0);
            }
            Some(step) => {
                if let Some(bytes) = bytes_of(rss).filter(|b| *b > 0) {
                    a.max_rss_bytes = Some(a.max_rss_bytes.map_or(bytes, |m| m.max(bytes)));
                }
                if step == "batch" && !state.starts_with("RUNNING") {
                    *batch = true;
                }
            }
        }
    }
    found
}

/// `2048`, `2048K`, `12M`… in bytes.
fn bytes_of(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    Some((digits.parse::<f64>().ok()? * scale as f64) as u64)
}

/// Slurm's `[DD-[HH:]]MM:SS[.mmm]`.
fn cpu_time(text: &str) -> Option<Duration> {
    let (days, rest) = match text.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, text),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (hours, minutes, seconds) = match parts[..] {
        [h, m, s] => (h.parse::<u64>().ok()?, m.parse::<u64>().ok()?, s),
        [m, s] => (0, m.parse::<u64>().ok()?, s),
        _ => return None,
    };
    let seconds: f64 = seconds.parse().ok()?;
    Some(
        Duration::from_secs((days * 24 + hours) * 3600 + minutes * 60)
            + Duration::from_secs_f64(seconds),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(shell_quoted("a b"), "'a b'");
        assert_eq!(shell_quoted("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_queue_names_tasks_and_pending_arrays() {
        // As Slurm 22.05's squeue --json writes them (fields trimmed).
        let out = r#"{"jobs": [
            {"job_id": 8, "array_job_id": 8, "array_task_id": null, "array_task_string": "2-5", "job_state": "PENDING", "exit_code": 0},
            {"job_id": 9, "array_job_id": 8, "array_task_id": 0, "job_state": "COMPLETED", "exit_code": 0},
            {"job_id": 10, "array_job_id": 8, "array_task_id": 1, "job_state": "FAILED", "exit_code": 768},
            {"job_id": 1, "array_job_id": 0, "array_task_id": null, "job_state": "COMPLETED", "exit_code": 0}
        ]}"#;
        let q = parse_squeue(out).unwrap();
        assert_eq!(q.pending.into_iter().collect::<Vec<_>>(), [8]);
        assert_eq!(q.tasks.len(), 2);
        assert_eq!(
            ended(&q.tasks[1]),
            Some(End::Exited(3)),
            "a wait status: 768 is exit 3"
        );
        assert_eq!(parse_squeue("squeue: error"), None);
    }

    #[test]
    fn sacct_is_read_per_task_from_its_steps() {
        // As slurm-wlm 22.05's sacct writes it for a two-task array (task 1
        // still running) and a pending range.
        let out = "2_0|COMPLETED||00:01.669|00:00.121|\n\
                   2_0.batch|COMPLETED|226254848|00:01.669|00:00.121|0\n\
                   2_1|RUNNING||00:00:00|00:00:00|\n\
                   2_1.batch|RUNNING|1024K|00:00:00|00:00:00|0\n\
                   7_[2-9]|PENDING||00:00:00|00:00:00|\n\
                   8_0|COMPLETED||1-02:03:04|00:00.000|5120\n";
        let found = parse_sacct(out);
        let (a, done) = found[&(2, 0)];
        assert!(done);
        assert_eq!(a.max_rss_bytes, Some(226_254_848));
        assert_eq!(a.user_cpu, Some(Duration::from_millis(1669)));
        assert_eq!(a.system_cpu, Some(Duration::from_millis(121)));
        assert_eq!(a.energy_joules, None);
        let (a, done) = found[&(2, 1)];
        assert!(!done);
        assert_eq!(a.max_rss_bytes, Some(1 << 20));
        assert!(!found.keys().any(|k| k.0 == 7));
        let (a, done) = found[&(8, 0)];
        assert!(!done);
        assert_eq!(
            a.user_cpu,
            Some(Duration::from_secs(26 * 3600 + 3 * 60 + 4))
        );
        assert_eq!(a.energy_joules, Some(5120.0));
        assert_eq!(bytes_of("1.5G"), Some(3 << 29));
        assert_eq!(bytes_of(""), None);
        assert_eq!(cpu_time("xx"), None);
    }

    #[test]
    fn states_become_ends() {
        let s = |state: &str, code: Option<i32>, signal: Option<i32>| Seen {
            array: 1,
            task: 0,
            state: state.into(),
            exit_code: code,
            signal,
        };
        assert_eq!(ended(&s("RUNNING", None, None)), None);
        assert_eq!(ended(&s("COMPLETED", Some(0), None)), Some(End::Exited(0)));
        assert_eq!(ended(&s("FAILED", Some(3), None)), Some(End::Exited(3)));
        assert_eq!(
            ended(&s("FAILED", Some(0), Some(9))),
            Some(End::Signalled(9))
        );
        assert!(matches!(
            ended(&s("OUT_OF_MEMORY", None, None)),
            Some(End::OutOfMemory { .. })
        ));
        assert!(
            matches!(ended(&s("TIMEOUT", None, None)), Some(End::Removed(r)) if r.contains("TIMEOUT"))
        );
    }
}
