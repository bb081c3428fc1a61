//! `mustbuild run --executor htcondor` against the real HTCondor pool that
//! `scripts/test-all` starts (HTCondor 23 from Debian 13 in a debootstrap root,
//! with MUST's memory policy: above 1.5 × request_memory a job is held, then
//! removed). The pool's jobs see the host's /tmp, so a test's workspace and
//! store are where the nodes find them, as on MUST's shared filesystem.

mod common;

use common::{FAN_OUT, results, workspace};

use common::{Condor, Run};
use std::path::Path;

fn on_pool(condor: &Condor, dir: &Path, args: &[&str]) -> Run {
    let mut cmd = condor.mustbuild(dir);
    cmd.args([
        "run",
        "pipeline.kdl",
        "--store",
        "store",
        "--executor",
        "htcondor",
    ])
    .args(args);
    common::output(&mut cmd)
}

/// The jobs of the run's batch name in the queue (`condor_q`).
fn queued(condor: &Condor, batch: &str) -> usize {
    let constraint = format!("JobBatchName == \"{batch}\"");
    condor
        .tool("condor_q", &["-constraint", &constraint, "-af", "ProcId"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The jobs of a batch name that ran and left the queue (`condor_history`).
fn finished(condor: &Condor, batch: &str) -> usize {
    let constraint = format!("JobBatchName == \"{batch}\"");
    condor
        .tool(
            "condor_history",
            &["-constraint", &constraint, "-af", "ProcId"],
        )
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn a_fan_out_runs_as_htcondor_jobs_with_the_bytes_of_a_local_run() {
    let Some(condor) = common::condor() else {
        return;
    };
    let local = workspace(FAN_OUT);
    let r = common::run(local.path(), &["run", "pipeline.kdl", "--store", "store"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A pipeline name of its own, to count its jobs in the pool.
    let name = common::unique("bases");
    let pipeline = FAN_OUT.replace("pipeline \"bases\"", &format!("pipeline \"{name}\""));
    let pool = workspace(&pipeline);
    let r = on_pool(&condor, pool.path(), &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("executed 4, cached 0"), "{}", r.stdout);
    let local_results = results(local.path());
    assert_eq!(local_results.len(), 4);
    assert_eq!(results(pool.path()), local_results);
    let batch = format!("mustbuild {name}");
    assert_eq!(
        finished(&condor, &batch),
        4,
        "one HTCondor job per step run"
    );
    // The run record is the node's: its host, and the step's own log in the store.
    let stats = common::output(
        condor
            .mustbuild(pool.path())
            .args(["stats", "--store", "store", "--json"]),
    );
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    assert!(stats.stdout.contains("\"bases\""), "{}", stats.stdout);
    // Each ran sandboxed on its node, as it would here.
    assert_eq!(
        common::sandboxed_runs(&stats.stdout),
        (4, 4),
        "{}",
        stats.stdout
    );

    // Nothing changed: nothing is submitted.
    let again = on_pool(&condor, pool.path(), &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.starts_with("executed 0, cached 4"),
        "{}",
        again.stdout
    );
    // One sample changed: its step and the gather, two jobs.
    let a = pool.path().join("data/samples/A.fastq");
    let text = std::fs::read_to_string(&a).unwrap();
    let cut: String = text.lines().take(400).map(|l| format!("{l}\n")).collect();
    std::fs::write(&a, cut).unwrap();
    let changed = on_pool(&condor, pool.path(), &[]);
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    assert!(
        changed.stdout.starts_with("executed 2, cached 2"),
        "{}",
        changed.stdout
    );
    assert_eq!(
        finished(&condor, &batch),
        6,
        "only what changed became jobs"
    );
    assert!(
        !pool
            .path()
            .join("store/spool")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "job folders are removed once their results are stored"
    );
}

#[test]
fn a_failing_job_shows_its_log_tail_from_the_node() {
    let Some(condor) = common::condor() else {
        return;
    };
    let dir = workspace(
        r#"pipeline "fails"
step broken {
    out x="x.txt"
    run "echo reading the calibration table >&2; echo no such table: cal-2026 >&2; exit 3"
}
"#,
    );
    let r = on_pool(&condor, dir.path(), &[]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("FAILED   broken"), "{}", r.stderr);
    assert!(r.stderr.contains("exit_code: 3"), "{}", r.stderr);
    assert!(
        r.stderr.contains("| no such table: cal-2026"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("x.txt").exists());
}

#[test]
fn a_node_whose_tool_differs_is_refused_before_the_step_runs() {
    let Some(condor) = common::condor() else {
        return;
    };
    // The pool's python3 is Debian 13's (3.13); the key holds this machine's.
    let dir = workspace(
        r#"pipeline "tools"
tool python3
step py {
    out x="x.txt"
    run "python3 -c 'print(sum([0.1] * 10))' > {out.x}"
}
"#,
    );
    let r = on_pool(&condor, dir.path(), &[]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("tool `python3` differs on node"),
        "{}",
        r.stderr
    );
    assert!(
        !dir.path().join("x.txt").exists(),
        "nothing of the node's python3 is kept"
    );
    // Nothing was realised under the key.
    let again = on_pool(&condor, dir.path(), &["--dry-run"]);
    assert!(again.stdout.contains("would run 1"), "{}", again.stdout);
}

#[test]
fn a_step_over_its_memory_request_is_told_and_retried_larger() {
    let Some(condor) = common::condor() else {
        return;
    };
    // 300 MiB held for 8 s, asking for 64 MiB: the pool's policy (MUST's) holds
    // it above 96 MB, then removes it.
    let hog =
        "python3 -c 'import time; x = b\\\"m\\\" * (300 << 20); time.sleep(8)'; echo ok > {out.x}";
    let name = common::unique("memory");
    let dir = workspace(&format!(
        r#"pipeline "{name}"
step retried {{
    out x="retried.txt"
    run "{hog}"
    resources memory="64MiB"
    retry 1
}}
step once {{
    out x="once.txt"
    run "{hog}"
    resources memory="64MiB"
}}
"#
    ));
    let r = on_pool(&condor, dir.path(), &["--keep-going"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    // In HTCondor's words (the policy's reason, after the slot's name).
    let once = r
        .stderr
        .lines()
        .find(|l| l.starts_with("FAILED   once: out of memory: "));
    assert!(
        once.is_some_and(|l| l.contains("memory usage exceeded 1.5 x request_memory")),
        "{}",
        r.stderr
    );
    let retry = r
        .stderr
        .lines()
        .find(|l| l.starts_with("retry    retried (attempt 1): out of memory: "));
    assert!(
        retry.is_some_and(|l| l.contains("MB used, 64 MB requested")),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.starts_with("executed 1, cached 0, failed 1"),
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("retried.txt")).unwrap(),
        "ok\n"
    );
    // Asked again with more than it was seen to use (300 MiB and more).
    let constraint = format!("JobBatchName == \"mustbuild {name}\"");
    let requests = condor.tool(
        "condor_history",
        &["-constraint", &constraint, "-af", "RequestMemory"],
    );
    let mut requests: Vec<u64> = requests
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    requests.sort();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(&requests[..2], &[64, 64]);
    assert!(requests[2] >= 450, "{requests:?}");
}

#[test]
fn ctrl_c_removes_the_runs_jobs_and_exits_130() {
    let Some(condor) = common::condor() else {
        return;
    };
    let name = common::unique("sleepers");
    let dir = workspace(&format!(
        r#"pipeline "{name}"
step nap {{
    foreach i "1" "2" "3" "4" "5" "6"
    out x="naps/{{i}}.txt"
    run "sleep 120; echo {{i}} > {{out.x}}"
}}
"#
    ));
    let mut cmd = condor.mustbuild(dir.path());
    cmd.args([
        "run",
        "pipeline.kdl",
        "--store",
        "store",
        "--executor",
        "htcondor",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let batch = format!("mustbuild {name}");
    let secs = std::time::Duration::from_secs;
    let millis = std::time::Duration::from_millis;
    common::wait_until(
        secs(60),
        millis(200),
        || queued(&condor, &batch) >= 6,
        || "the jobs were never queued".into(),
    );
    let out = common::interrupt(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // condor_rm has taken them out of the queue (removed jobs leave it once
    // their shadows stop).
    let constraint = format!("JobBatchName == \"{batch}\"");
    common::wait_until(
        secs(30),
        millis(250),
        || queued(&condor, &batch) == 0,
        || {
            let left = ["-constraint", &constraint, "-af", "ProcId", "JobStatus"];
            format!(
                "jobs still queued after Ctrl-C: {}",
                condor.tool("condor_q", &left)
            )
        },
    );
    assert!(
        !dir.path().join("naps").exists()
            || !dir.path().join("naps").read_dir().unwrap().any(|_| true)
    );
}

#[test]
fn short_steps_go_out_grouped_in_few_jobs() {
    let Some(condor) = common::condor() else {
        return;
    };
    let name = common::unique("short");
    let values: Vec<String> = (1..=12).map(|i| format!("\"{i}\"")).collect();
    let dir = workspace(&format!(
        r#"pipeline "{name}"
step tiny {{
    foreach i {}
    out x="tiny/{{i}}.txt"
    run "echo {{i}} > {{out.x}}"
    resources time="10s"
}}
step slow {{
    out x="slow.txt"
    run "echo slow > {{out.x}}"
}}
"#,
        values.join(" ")
    ));
    let r = on_pool(&condor, dir.path(), &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("executed 13, cached 0"),
        "{}",
        r.stdout
    );
    for i in 1..=12 {
        let text = std::fs::read_to_string(dir.path().join(format!("tiny/{i}.txt"))).unwrap();
        assert_eq!(text, format!("{i}\n"));
    }
    // Declared short (10 s, 12 of them: 120 s), they fit one job; the step
    // with no time declared (and no history) goes alone.
    assert_eq!(finished(&condor, &format!("mustbuild {name}")), 2);
}

#[test]
fn an_exported_dag_runs_under_dagman_with_done_nodes_for_what_is_realised() {
    let Some(condor) = common::condor() else {
        return;
    };
    let local = workspace(FAN_OUT);
    let r = common::run(local.path(), &["run", "pipeline.kdl", "--store", "store"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // DAGMan refuses node logs under /tmp.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let from = workspace(FAN_OUT);
    std::fs::rename(from.path().join("data"), dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("pipeline.kdl"), FAN_OUT).unwrap();
    // One sample's step is realised first: it becomes a DONE node.
    let first = common::output(condor.mustbuild(dir.path()).args([
        "run",
        "pipeline.kdl",
        "--store",
        "store",
        "results/A.bases",
    ]));
    assert_eq!(first.code, 0, "{}", first.stderr);
    let export = common::output(condor.mustbuild(dir.path()).args([
        "export",
        "dagman",
        "pipeline.kdl",
        "--store",
        "store",
        "-o",
        "dag",
    ]));
    assert_eq!(export.code, 0, "{}", export.stderr);
    assert!(
        export.stdout.contains("3 node(s) to run, 1 done"),
        "{}",
        export.stdout
    );
    let dag = std::fs::read_to_string(dir.path().join("dag/pipeline.dag")).unwrap();
    assert_eq!(
        dag.lines()
            .filter(|l| l.starts_with("JOB ") && l.ends_with(" DONE"))
            .count(),
        1
    );
    assert_eq!(dag.lines().filter(|l| l.starts_with("PARENT ")).count(), 3);
    condor.own(dir.path());
    let dag_file = dir.path().join("dag/pipeline.dag");
    condor.tool("condor_submit_dag", &[dag_file.to_str().unwrap()]);
    let out = dir.path().join("dag/pipeline.dag.dagman.out");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let status = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("EXITING WITH STATUS")) {
            break line
                .trim()
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_string();
        }
        assert!(
            std::time::Instant::now() < until,
            "DAGMan did not finish:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(
        status,
        "0",
        "{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    assert_eq!(results(dir.path()), results(local.path()));
    // The nodes' POST scripts recorded every result: a run reuses them all.
    let again = common::output(condor.mustbuild(dir.path()).args([
        "run",
        "pipeline.kdl",
        "--store",
        "store",
    ]));
    assert!(
        again.stdout.starts_with("executed 0, cached 4"),
        "{}",
        again.stdout
    );
}

#[test]
fn a_job_held_past_the_timeout_fails_its_step_with_htcondors_reason() {
    let Some(condor) = common::condor() else {
        return;
    };
    let dir = workspace(
        r#"pipeline "held"
step stuck {
    out x="x.txt"
    run "sleep 60; echo late > {out.x}"
}
"#,
    );
    // The settings of mustbuild.kdl: an extra submit command that holds the
    // job at once, and a short held timeout.
    std::fs::write(
        dir.path().join("mustbuild.kdl"),
        "executor \"htcondor\" {\n    submit \"periodic_hold = true\"\n    submit \"periodic_hold_reason = \\\"held for the test\\\"\"\n    held-timeout 3\n}\n",
    )
    .unwrap();
    // `executor "htcondor"` in mustbuild.kdl: no flag needed.
    let r = common::output(condor.mustbuild(dir.path()).args([
        "run",
        "pipeline.kdl",
        "--store",
        "store",
    ]));
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("warning: stuck is held by htcondor: held for the test (it fails if still held after 3 s)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("FAILED   stuck: held by the batch system too long: held for the test"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("x.txt").exists());
}
