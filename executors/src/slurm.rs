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

use crate::batch::{BatchJob, Calls, End, Executor, ExecutorError, Report, Resources};
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
