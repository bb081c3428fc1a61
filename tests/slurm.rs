//! `mustbuild run --executor slurm` against the real single-node Slurm that
//! `scripts/test-all` starts (Debian's slurm-wlm 22.05 and munge, memory
//! enforced by a cgroup per job, as on a cluster).

mod common;

use common::{FAN_OUT, results, workspace};

use std::path::Path;

fn on_slurm(dir: &Path, args: &[&str]) -> common::Run {
    let mut all = vec![
        "run",
        "pipeline.kdl",
        "--store",
        "store",
        "--executor",
        "slurm",
    ];
    all.extend(args);
    common::run(dir, &all)
}

/// The `batch` object of a `--json` run's summary: (submits, queries).
fn calls(stdout: &str) -> (u64, u64) {
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "summary")
        .expect("a summary");
    let b = &summary["batch"];
    assert_eq!(b["system"], "slurm", "{summary}");
    (
        b["submits"].as_u64().unwrap(),
        b["queries"].as_u64().unwrap(),
    )
}

#[test]
fn a_fan_out_runs_as_slurm_array_tasks_with_the_bytes_of_a_local_run() {
    if common::slurm().is_none() {
        return;
    }
    let local = workspace(FAN_OUT);
    let r = common::run(local.path(), &["run", "pipeline.kdl", "--store", "store"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = workspace(FAN_OUT);
    let r = on_slurm(dir.path(), &["--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(results(dir.path()), results(local.path()));
    let (submits, _) = calls(&r.stdout);
    // The three samples' steps in one array, the gather in another.
    assert_eq!(submits, 2, "{}", r.stdout);
    // Each ran sandboxed on the node, as it would here.
    let stats = common::run(dir.path(), &["stats", "--json", "--store", "store"]);
    assert_eq!(
        common::sandboxed_runs(&stats.stdout),
        (4, 4),
        "{}",
        stats.stdout
    );
    let again = on_slurm(dir.path(), &[]);
    assert!(
        again.stdout.starts_with("executed 0, cached 4"),
        "{}",
        again.stdout
    );
    assert!(
        !again.stdout.contains("slurm:"),
        "a rerun submits nothing: {}",
        again.stdout
    );
}

#[test]
fn queries_do_not_grow_with_the_jobs_they_follow() {
    if common::slurm().is_none() {
        return;
    }
    let pipeline = |n: usize| {
        let values: Vec<String> = (0..n).map(|i| format!("\"{i}\"")).collect();
        format!(
            "pipeline \"many{n}\"\nstep t {{\n    foreach i {}\n    out x=\"out/{{i}}.txt\"\n    run \"echo {{i}} > {{out.x}}\"\n    resources memory=\"64MiB\"\n}}\n",
            values.join(" ")
        )
    };
    let run = |n: usize| {
        let dir = workspace(&pipeline(n));
        let r = on_slurm(dir.path(), &["--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let (submits, queries) = calls(&r.stdout);
        let summary: serde_json::Value = r
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .find(|v: &serde_json::Value| v["event"] == "summary")
            .unwrap();
        let wall = summary["wall_seconds"].as_f64().unwrap();
        (dir, submits, queries, wall)
    };
    let (_small, _, q20, wall20) = run(20);
    let (big, s200, q200, wall200) = run(200);
    eprintln!(
        "20 jobs: {q20} squeue calls in {wall20:.1} s; 200 jobs: {s200} sbatch, {q200} squeue calls in {wall200:.1} s"
    );
    // One squeue per poll for all the run's jobs, at most two polls a
    // second: the queries follow the run's length, not its jobs.
    assert!(
        q200 as f64 <= 2.0 * wall200 + 5.0,
        "{q200} queries in {wall200:.1} s"
    );
    assert!(
        q20 as f64 <= 2.0 * wall20 + 5.0,
        "{q20} queries in {wall20:.1} s"
    );
    assert!(
        q200 < 200,
        "{q200} queries for 200 jobs: fewer than one per job"
    );
    assert!(s200 < 20, "{s200} submissions for 200 jobs");
    assert_eq!(
        std::fs::read_dir(big.path().join("out")).unwrap().count(),
        200
    );
}

#[test]
fn out_of_memory_is_told_and_retried_larger_and_a_time_limit_is_told() {
    if common::slurm().is_none() {
        return;
    }
    let dir = workspace(
        r#"pipeline "limits"
step hog {
    out x="x.txt"
    run "python3 -c 'import time; x = b\"m\" * (100 << 20); time.sleep(2)'; echo ok > {out.x}"
    resources memory="64MiB"
    retry 1
}
step late {
    out x="late.txt"
    run "sleep 30; echo late > {out.x}"
    resources time="2s"
}
"#,
    );
    let r = on_slurm(dir.path(), &["--keep-going"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(
            "retry    hog (attempt 1): out of memory: Slurm ended it OUT_OF_MEMORY: above its --mem=64M"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("FAILED   late: TimedOut"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("x.txt")).unwrap(),
        "ok\n"
    );
    assert!(!dir.path().join("late.txt").exists());
}

#[test]
fn ctrl_c_cancels_the_runs_jobs() {
    if common::slurm().is_none() {
        return;
    }
    let name = common::unique("sleepers");
    let dir = workspace(&format!(
        "pipeline \"{name}\"\nstep nap {{\n    foreach i \"1\" \"2\" \"3\" \"4\" \"5\" \"6\"\n    out x=\"naps/{{i}}.txt\"\n    run \"sleep 120; echo {{i}} > {{out.x}}\"\n    resources memory=\"64MiB\"\n}}\n"
    ));
    let child = common::mustbuild(dir.path())
        .args([
            "run",
            "pipeline.kdl",
            "--store",
            "store",
            "--executor",
            "slurm",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let job_name = format!("mustbuild-{name}");
    let live = || {
        let out = std::process::Command::new("squeue")
            .args(["-h", "-n", &job_name, "-t", "PENDING,RUNNING", "-o", "%i"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let secs = std::time::Duration::from_secs;
    let millis = std::time::Duration::from_millis;
    common::wait_until(
        secs(30),
        millis(200),
        || live() > 0,
        || "no job was submitted".into(),
    );
    // Some run, the others pend (two CPUs).
    std::thread::sleep(secs(1));
    let out = common::interrupt(child);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_until(
        secs(20),
        millis(250),
        || live() == 0,
        || "jobs left running or pending after Ctrl-C".into(),
    );
}

#[test]
fn slurms_own_accounting_goes_in_the_run_record_with_its_method() {
    if common::slurm().is_none() {
        return;
    }
    // 150 MiB held while a second of CPU is burnt: long enough for Slurm's
    // sampler (every second on the test node) to see it.
    let dir = workspace(
        r#"pipeline "accounted"
step hold {
    out x="x.txt"
    run "python3 -c 'import time; b = bytearray(150 << 20); s = time.process_time()\nwhile time.process_time() - s < 1.5: pass\ntime.sleep(1)'; echo ok > {out.x}"
    resources memory="512MiB"
}
"#,
    );
    let r = on_slurm(dir.path(), &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let stats = common::run(dir.path(), &["stats", "--json", "--store", "store"]);
    let stats: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    let hold = stats["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "hold")
        .unwrap()
        .clone();
    assert_eq!(
        hold["memory_methods"],
        serde_json::json!({"slurm (sacct MaxRSS, sampled)": 1}),
        "{hold}"
    );
    let mib = hold["peak_memory_max_bytes"].as_f64().unwrap() / f64::from(1 << 20);
    assert!((140.0..200.0).contains(&mib), "{hold}");
    let cpu = hold["cpu_max_s"].as_f64().unwrap();
    assert!((1.3..2.5).contains(&cpu), "{hold}");
}
