//! `mustbuild run` (first version) on the quickstart: incremental by content.

mod common;

use common::run;
use std::path::{Path, PathBuf};

/// A writable copy of the quickstart and a fresh store.
fn quickstart() -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("qs");
    common::copy_dir(&common::root().join("examples/quickstart"), &dest);
    let store = tmp.path().join("store").to_str().unwrap().to_string();
    (tmp, dest, store)
}

/// `mustbuild run pipeline.kdl --store STORE ARGS…` in `dir`.
fn run_with(dir: &Path, store: &str, args: &[&str]) -> common::Run {
    let mut all = vec!["run", "pipeline.kdl", "--store", store];
    all.extend_from_slice(args);
    run(dir, &all)
}

/// Runs the pipeline; returns the summary line and the names of the steps that ran.
fn go(dir: &Path, store: &str) -> (String, Vec<String>) {
    let r = run_with(dir, store, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let ran = r
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("run      "))
        .map(str::to_string)
        .collect();
    (r.stdout.trim().to_string(), ran)
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn runs_everything_once_then_only_what_changed() {
    let (_tmp, dir, store) = quickstart();
    let (summary, _) = go(&dir, &store);
    assert!(
        summary.starts_with("executed 8, cached 0, failed 0"),
        "{summary}"
    );
    let report = std::fs::read_to_string(dir.join("results/report.md")).unwrap();
    assert!(report.contains("| A | 1000 | 101000 |"), "{report}");

    // Nothing changed: nothing runs.
    let (summary, ran) = go(&dir, &store);
    assert!(summary.starts_with("executed 0, cached 8"), "{summary}");
    assert!(ran.is_empty());

    // A touch alone changes nothing.
    let status = std::process::Command::new("touch")
        .arg(dir.join("data/samples/B.fastq"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(go(&dir, &store).0.starts_with("executed 0, cached 8"));

    // The first read of sample B becomes all G: B's GC content changes, so B's cone
    // reruns, and nothing else.
    let b = dir.join("data/samples/B.fastq");
    let text = std::fs::read_to_string(&b).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1] = "G".repeat(lines[1].len());
    std::fs::write(&b, lines.join("\n") + "\n").unwrap();
    let (summary, mut ran) = go(&dir, &store);
    assert_eq!(ran.len(), 3, "{ran:?}");
    // The two of B go in the order their measured durations give (the
    // longest path first), the report after both.
    ran[..2].sort();
    assert_eq!(
        ran,
        [
            "gc_histogram (data/samples/B.fastq)",
            "read_stats (data/samples/B.fastq)",
            "report"
        ],
        "{summary}"
    );

    // A comment in a script: its steps rerun, produce the same bytes, and the
    // report downstream does not (early cutoff).
    edit(
        &dir.join("scripts/read_stats.py"),
        "\"\"\"Per-sample",
        "\"\"\"Reads: per-sample",
    );
    let (summary, ran) = go(&dir, &store);
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert!(ran.iter().all(|r| r.starts_with("read_stats")), "{ran:?}");
    assert!(summary.starts_with("executed 3, cached 5"), "{summary}");

    // A param reruns the steps that use it (and what reads their new outputs).
    edit(&dir.join("pipeline.kdl"), "param bins 20", "param bins 10");
    let (_, ran) = go(&dir, &store);
    assert_eq!(
        ran.iter().filter(|r| r.starts_with("gc_histogram")).count(),
        3,
        "{ran:?}"
    );
    assert!(
        !ran.iter()
            .any(|r| r.starts_with("read_stats") || r.starts_with("genome_stats")),
        "{ran:?}"
    );
}

#[test]
fn a_failing_step_says_why_and_realises_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("pipeline.kdl"),
        "pipeline \"f\"\nstep bad {\n    out o=\"o.txt\"\n    run \"echo partial > {out.o}; echo 'something broke' >&2; exit 3\"\n}\nstep after {\n    in x=bad.o\n    out o=\"after.txt\"\n    run \"cp {in.x} {out.o}\"\n}\n",
    )
    .unwrap();
    let store = tmp.path().join("store");
    let r = run_with(tmp.path(), store.to_str().unwrap(), &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("FAILED   bad: Failed { exit_code: 3 }"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("| something broke"), "{}", r.stderr);
    assert!(r.stderr.contains("skipped  after"), "{}", r.stderr);
    assert!(
        r.stdout
            .starts_with("executed 0, cached 0, failed 1, skipped 1"),
        "{}",
        r.stdout
    );
    assert!(
        !tmp.path().join("o.txt").exists(),
        "nothing of a failed step reaches the workspace"
    );
    // And nothing of it is realised: the next run runs it again.
    let again = run_with(tmp.path(), store.to_str().unwrap(), &[]);
    assert!(again.stderr.contains("run      bad"), "{}", again.stderr);
}

fn write_pipeline(dir: &Path, text: &str) {
    std::fs::write(dir.join("pipeline.kdl"), text).unwrap();
}

#[test]
fn retry_keep_going_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("failed-once");
    write_pipeline(
        tmp.path(),
        &format!(
            r#"pipeline "r"
step flaky {{
    out o="flaky.txt"
    retry 2
    run "if [ -e {m} ]; then echo ok > {{out.o}}; else touch {m}; exit 1; fi"
}}
step broken {{
    out o="broken.txt"
    run "exit 2"
}}
step independent {{
    out o="independent.txt"
    run "echo fine > {{out.o}}"
}}
"#,
            m = marker.display()
        ),
    );
    let store = tmp.path().join("store");
    // `flaky` leaves its marker outside its folder on purpose, which a
    // sandbox refuses (tests/sandbox.rs): unsandboxed.
    let r = run_with(
        tmp.path(),
        store.to_str().unwrap(),
        &["--keep-going", "--json", "-j", "1", "--no-sandbox"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let events: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "retrying" && e["step"] == "flaky"),
        "{}",
        r.stdout
    );
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(
        (summary["executed"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(1)),
        "{summary}"
    );
    assert!(summary["run_id"].as_i64().is_some());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("independent.txt")).unwrap(),
        "fine\n"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("flaky.txt")).unwrap(),
        "ok\n"
    );
}

/// The names of the steps in the order they started, from `--json` events.
fn start_order(stdout: &str) -> Vec<String> {
    (stdout.lines())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "started")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ready_steps_start_by_the_longest_predicted_path_to_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(
        tmp.path(),
        r#"pipeline "ranks"
step quick {
    out o="quick.txt"
    run "echo quick > {out.o}"
}
step slow {
    out o="slow.txt"
    run "sleep 0.4; echo slow > {out.o}"
}
step head {
    out o="head.txt"
    run "echo head > {out.o}"
}
step tail {
    in h=head.o
    out o="tail.txt"
    run "cat {in.h} > {out.o}"
}
"#,
    );
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    // No history: every step is predicted alike, so the head of the chain,
    // two steps from the end, goes first; the others in their order.
    let r = run_with(tmp.path(), store, &["--json", "-j", "1"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(start_order(&r.stdout), ["head", "quick", "slow", "tail"]);
    // With history, the step measured longest goes first: its path (0.4 s)
    // is longer than the chain's.
    let all = [
        "--force", "quick", "--force", "slow", "--force", "head", "--force", "tail",
    ];
    let r = run_with(
        tmp.path(),
        store,
        &[&["--json", "-j", "1"][..], &all].concat(),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let order = start_order(&r.stdout);
    assert_eq!(order.len(), 4, "{}", r.stdout);
    assert_eq!(order[0], "slow", "{}", r.stdout);
    // A declared `time` is the prediction where there is no history (a new
    // pipeline has none); a step that declares none is taken for a typical
    // one (the lower median: 1 s here), so `quick` goes first.
    let text = std::fs::read_to_string(tmp.path().join("pipeline.kdl")).unwrap();
    let text = (text.replace("pipeline \"ranks\"", "pipeline \"ranks2\""))
        .replace(
            "    run \"echo quick",
            "    resources time=\"1h\"\n    run \"echo quick",
        )
        .replace("    run \"cat", "    resources time=\"1s\"\n    run \"cat");
    write_pipeline(tmp.path(), &text);
    let r = run_with(
        tmp.path(),
        store,
        &[&["--json", "-j", "1"][..], &all].concat(),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(start_order(&r.stdout)[0], "quick", "{}", r.stdout);
}

#[test]
fn steps_take_their_cpus_out_of_j() {
    let tmp = tempfile::tempdir().unwrap();
    let times = tmp.path().join("times");
    let step = |n: u32| {
        format!(
            "step s{n} {{\n    out o=\"s{n}.txt\"\n    resources cpus=2\n    run \"echo start $(date +%s%N) >> {t}; sleep 0.3; echo end $(date +%s%N) >> {t}; echo > {{out.o}}\"\n}}\n",
            t = times.display()
        )
    };
    write_pipeline(
        tmp.path(),
        &format!("pipeline \"c\"\n{}{}", step(1), step(2)),
    );
    let store = tmp.path().join("store");
    // The steps write their times to one file outside their folders, which a
    // sandbox refuses: unsandboxed.
    let r = run_with(
        tmp.path(),
        store.to_str().unwrap(),
        &["-j", "2", "--no-sandbox"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // With 2 CPUs and 2 per step, the second starts after the first ends.
    let log = std::fs::read_to_string(&times).unwrap();
    let kinds: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(kinds, ["start", "end", "start", "end"], "{log}");
}

#[test]
fn outputs_keep_their_order_and_executable_bit_when_taken_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = |tag: &str| {
        format!(
            r#"pipeline "o"
step two {{
    out z="z.txt" a="a.txt" tool="tool.sh"
    run "echo Z > {{out.z}}; echo A > {{out.a}}; printf '#!/bin/sh\necho ran\n' > {{out.tool}}; chmod +x {{out.tool}}"
}}
step read {{
    in z=two.z t=two.tool
    out o="read.txt"
    run "cat {{in.z}} > {{out.o}}; ./{{in.t}} >> {{out.o}}; echo {tag} >> {{out.o}}"
}}
"#
        )
    };
    write_pipeline(tmp.path(), &pipeline("first"));
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let r = run_with(tmp.path(), store, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let read = || std::fs::read_to_string(tmp.path().join("read.txt")).unwrap();
    assert_eq!(read(), "Z\nran\nfirst\n");
    // `two` now comes from the store (its outputs listed by name there), `read` runs.
    write_pipeline(tmp.path(), &pipeline("second"));
    let r = run_with(tmp.path(), store, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(read(), "Z\nran\nsecond\n");
    // And from the no-op record, when only `read`'s own file changed.
    std::fs::remove_file(tmp.path().join("read.txt")).unwrap();
    let r = run_with(tmp.path(), store, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(read(), "Z\nran\nsecond\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("tool.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the workspace copy is executable");
}

#[test]
fn each_command_sees_only_its_declared_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("src/deep")).unwrap();
    std::fs::write(tmp.path().join("src/deep/in.txt"), "in\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(tmp.path().join("src/deep/in.txt"), perms).unwrap();
    }
    std::fs::write(tmp.path().join("src/other.txt"), "not read\n").unwrap();
    write_pipeline(
        tmp.path(),
        &r##"pipeline "s"
input source "src/deep/in.txt"
env GREETING "hello"
step make {
    in s=source
    out o="made/x.txt"
    run "ls -R > /dev/null; cat {in.s} > {out.o}; echo junk > junk.txt; mkdir -p stray/dir; echo > stray/dir/f; echo > $TMPDIR/t; echo > $HOME/h; echo > .mustbuild/leak; ln ABS/src/deep/in.txt $HOME/linked"
}
step look {
    foreach n "1" "2" "3" "4" "5" "6" "7" "8"
    in m=make.o
    out o="seen/{n}.txt"
    run #"l=$(find . -path ./.mustbuild -prune -o -print | sort); t=$(ls -A $TMPDIR $HOME | grep -v ':$' | grep -v '^$' || true); d=$(ls -A .mustbuild | tr '\n' ' '); { echo "$l"; echo "dot:$d"; echo "left:$t"; env | grep -v '^_=' | sort; } > {out.o}; cat {in.m} > /dev/null; echo > $TMPDIR/t{n}; echo > $HOME/h{n}; echo > leftover{n}; mkdir -p made/more"#
}
"##
        .replace("ABS", tmp.path().to_str().unwrap()),
    );
    let store = tmp.path().join("store");
    // One slot, workers reused from job to job: what one job leaves must be
    // gone. Unsandboxed: `make` hard-links a workspace file into its HOME, the
    // case this checks, which a sandbox would refuse before it happened.
    let r = run_with(
        tmp.path(),
        store.to_str().unwrap(),
        &["-j", "1", "--no-sandbox"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The user's file `make` hard-linked into its HOME was not taken for reuse
    // (made writable, emptied, overwritten by another copy).
    use std::os::unix::fs::PermissionsExt;
    let user_file = tmp.path().join("src/deep/in.txt");
    assert_eq!(std::fs::read_to_string(&user_file).unwrap(), "in\n");
    assert_eq!(
        std::fs::metadata(&user_file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    for n in ["1", "2", "3"] {
        let seen = std::fs::read_to_string(tmp.path().join(format!("seen/{n}.txt"))).unwrap();
        let lines: Vec<&str> = seen.lines().collect();
        let end = lines.iter().position(|l| l.starts_with("left:")).unwrap();
        assert_eq!(
            lines[..end - 1],
            [".", "./made", "./made/x.txt", "./seen"],
            "exactly the declared input and the output's folder: {seen}"
        );
        assert_eq!(
            lines[end - 1],
            "dot:home tmp ",
            "nothing else in .mustbuild: {seen}"
        );
        assert_eq!(lines[end], "left:", "HOME and TMPDIR start empty: {seen}");
        let names: Vec<&str> = lines[end + 1..]
            .iter()
            .map(|l| l.split('=').next().unwrap())
            .collect();
        assert!(
            lines.contains(&"CUDA_VISIBLE_DEVICES="),
            "a step that asks for no GPU sees none: {seen}"
        );
        for must in ["GREETING", "HOME", "PATH", "TMPDIR"] {
            assert!(names.contains(&must), "{must} missing: {seen}");
        }
        for name in &names {
            assert!(
                [
                    "GREETING",
                    "HOME",
                    "PATH",
                    "TMPDIR",
                    "PWD",
                    "OLDPWD",
                    "SHLVL",
                    "CUDA_VISIBLE_DEVICES"
                ]
                .contains(name),
                "a cleared environment has no {name}: {seen}"
            );
        }
    }
}

#[test]
fn steps_get_their_own_gpus_from_cuda_visible_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let times = tmp.path().join("times");
    write_pipeline(
        tmp.path(),
        &format!(
            r#"pipeline "g"
step one {{
    foreach n "a" "b" "c" "d"
    out o="one-{{n}}.txt"
    resources gpus=1
    run "echo start $(date +%s%N) $CUDA_VISIBLE_DEVICES >> {t}; sleep 0.2; echo end $(date +%s%N) $CUDA_VISIBLE_DEVICES >> {t}; echo $CUDA_VISIBLE_DEVICES > {{out.o}}"
}}
step both {{
    out o="both.txt"
    resources gpus=2
    run "echo $CUDA_VISIBLE_DEVICES > {{out.o}}"
}}
step none {{
    out o="none.txt"
    run "echo [${{{{CUDA_VISIBLE_DEVICES-unset}}}}] > {{out.o}}"
}}
"#,
            t = times.display()
        ),
    );
    let store = tmp.path().join("store");
    let r = common::mustbuild(tmp.path())
        .args([
            "run",
            "pipeline.kdl",
            "-j",
            "4",
            "--store",
            store.to_str().unwrap(),
            // The steps log their times to one file outside their folders.
            "--no-sandbox",
        ])
        .env("CUDA_VISIBLE_DEVICES", "3,GPU-5")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap();
    for n in ["a", "b", "c", "d"] {
        let got = read(&format!("one-{n}.txt"));
        assert!(["3\n", "GPU-5\n"].contains(&got.as_str()), "{n}: {got:?}");
    }
    let mut both: Vec<String> = read("both.txt")
        .trim()
        .split(',')
        .map(String::from)
        .collect();
    both.sort();
    assert_eq!(both, ["3", "GPU-5"]);
    assert_eq!(read("none.txt"), "[]\n", "a step without gpus sees none");
    // Two GPUs, four one-GPU steps, -j 4: never more than one step per GPU at once.
    let mut busy: std::collections::HashMap<String, bool> = Default::default();
    let mut events: Vec<(u128, String, String)> = read("times")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[1].parse().unwrap(), f[0].to_string(), f[2].to_string())
        })
        .collect();
    events.sort();
    for (_, kind, gpu) in &events {
        let was = busy.insert(gpu.clone(), kind == "start").unwrap_or(false);
        assert!(
            kind == "end" || !was,
            "GPU {gpu} given twice at once: {events:?}"
        );
    }

    // A step that needs more GPUs than there are is refused before anything runs.
    let r = common::mustbuild(tmp.path())
        .args([
            "run",
            "pipeline.kdl",
            "--store",
            store.to_str().unwrap(),
            "--force",
            "both",
        ])
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        stderr.contains("step `one` needs 1 GPU(s); this machine offers 0"),
        "{stderr}"
    );
}

/// A command's start is reported while it runs, not with its end: this one
/// ends only once the test has seen its `started` event.
#[test]
fn a_start_is_reported_while_the_command_still_runs() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let release = tmp.path().join("release");
    write_pipeline(
        tmp.path(),
        &format!(
            "pipeline \"s\"\nstep wait {{\n    out o=\"out.txt\"\n    run \"while [ ! -e {r} ]; do sleep 0.02; done; echo ok > {{out.o}}\"\n}}\n",
            r = release.display()
        ),
    );
    let store = tmp.path().join("store");
    let mut child = common::mustbuild(tmp.path())
        .args([
            "run",
            "pipeline.kdl",
            "--json",
            "--store",
            store.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, events) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let started = loop {
        match events.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) if line.contains(r#""event":"started""#) => break line,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("no `started` event while the command ran");
            }
        }
    };
    assert!(started.contains(r#""step":"wait""#), "{started}");
    std::fs::write(&release, "").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let rest: Vec<String> = events.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains(r#""event":"executed""#)),
        "{rest:?}"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("out.txt")).unwrap(),
        "ok\n"
    );
}

#[test]
fn sigint_stops_the_run_and_the_next_run_does_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let slow = tmp.path().join("be-slow");
    std::fs::write(&slow, "").unwrap();
    write_pipeline(
        tmp.path(),
        &format!(
            "pipeline \"i\"\nstep quick {{\n    out o=\"quick.txt\"\n    run \"echo q > {{out.o}}\"\n}}\nstep slow {{\n    in q=quick.o\n    out o=\"slow.txt\"\n    run \"if [ -e {s} ]; then sleep 30; fi; cat {{in.q}} > {{out.o}}\"\n}}\n",
            s = slow.display()
        ),
    );
    let store = tmp.path().join("store");
    let child = common::mustbuild(tmp.path())
        .args(["run", "pipeline.kdl", "--store", store.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the slow step has started (quick is done and materialised).
    let started = std::time::Instant::now();
    while !tmp.path().join("quick.txt").exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "quick never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the slow step was not stopped"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled 1"));
    // The next run takes quick from the store and runs only slow.
    std::fs::remove_file(&slow).unwrap();
    let r = run_with(tmp.path(), store.to_str().unwrap(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("executed 1, cached 1"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("slow.txt")).unwrap(),
        "q\n"
    );
    assert!(
        run(
            tmp.path(),
            &["store", "--store", store.to_str().unwrap(), "verify"]
        )
        .code
            == 0
    );
}

#[test]
fn two_runs_at_once_never_run_a_derivation_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let steps: String = (0..6)
        .map(|i| format!("step s{i} {{\n    out o=\"s{i}.txt\"\n    run \"sleep 0.2; echo {i} > {{out.o}}\"\n}}\n"))
        .collect();
    write_pipeline(tmp.path(), &format!("pipeline \"two\"\n{steps}"));
    let store = tmp.path().join("store");
    let spawn = || {
        common::mustbuild(tmp.path())
            .args([
                "run",
                "pipeline.kdl",
                "--store",
                store.to_str().unwrap(),
                "--json",
                "-j",
                "2",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let summaries: Vec<serde_json::Value> = [a, b]
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8(out.stdout).unwrap();
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
        })
        .collect();
    let executed: u64 = summaries
        .iter()
        .map(|s| s["executed"].as_u64().unwrap())
        .sum();
    let cached: u64 = summaries
        .iter()
        .map(|s| s["cached"].as_u64().unwrap())
        .sum();
    assert_eq!((executed, cached), (6, 6), "{summaries:?}");
    assert_eq!(
        run(
            tmp.path(),
            &["store", "--store", store.to_str().unwrap(), "verify"]
        )
        .code,
        0
    );
    for i in 0..6 {
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(format!("s{i}.txt"))).unwrap(),
            format!("{i}\n")
        );
    }
}

#[test]
fn targets_params_and_force() {
    let (_tmp, dir, store) = quickstart();
    let r = run_with(&dir, &store, &["read_stats"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("executed 3, cached 0"), "{}", r.stdout);
    assert!(!dir.join("results/report.md").exists());
    let r = run_with(&dir, &store, &["results/genome.tsv"]);
    assert!(r.stdout.starts_with("executed 1, cached 0"), "{}", r.stdout);
    assert!(go(&dir, &store).0.starts_with("executed 4, cached 4"));

    // --param overrides a value for this run only.
    let r = run_with(&dir, &store, &["--param", "bins=5"]);
    assert!(
        r.stdout.starts_with("executed 4, cached 4"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let hist = std::fs::read_to_string(dir.join("results/gc/A.tsv")).unwrap();
    assert_eq!(hist.lines().count(), 6, "5 bins and a header");
    // Back to the file's value: everything is in the store already.
    assert!(go(&dir, &store).0.starts_with("executed 0, cached 8"));

    // --force reruns a step's derivations even though they are realised.
    let r = run_with(&dir, &store, &["--force", "genome_stats"]);
    assert!(r.stdout.starts_with("executed 1, cached 7"), "{}", r.stdout);

    let bad = run_with(&dir, &store, &["read_stat"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains(
            "target `read_stat` is neither a step nor an output path; did you mean `read_stats`?"
        ),
        "{}",
        bad.stderr
    );
    let bad = run_with(&dir, &store, &["--param", "binz=3"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr
            .contains("the pipeline has no param `binz` (did you mean `bins`?)"),
        "{}",
        bad.stderr
    );
}

#[test]
fn dry_run_says_what_would_run_and_why() {
    let (_tmp, dir, store) = quickstart();
    let dry = run_with(&dir, &store, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("run     genome_stats: new"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("after   report: after `genome_stats` runs"),
        "{}",
        dry.stdout
    );
    assert!(!dir.join("results").exists(), "a dry run runs nothing");
    go(&dir, &store);
    edit(&dir.join("pipeline.kdl"), "param bins 20", "param bins 30");
    let dry = run_with(&dir, &store, &["--dry-run"]);
    assert!(
        dry.stdout.contains(
            "run     gc_histogram (data/samples/A.fastq): command changed, param `bins` changed"
        ),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .ends_with("would run 3, cached 4, decided after an upstream runs 1\n"),
        "{}",
        dry.stdout
    );
}

#[test]
fn an_edited_output_is_kept_aside_and_replaced() {
    let (_tmp, dir, store) = quickstart();
    go(&dir, &store);
    let report = dir.join("results/report.md");
    let original = std::fs::read_to_string(&report).unwrap();
    std::fs::write(&report, "my own notes\n").unwrap();
    let r = run_with(&dir, &store, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("executed 0, cached 8"), "{}", r.stdout);
    assert!(r.stderr.contains("`results/report.md` was edited since mustbuild wrote it: kept as `results/report.md.edited`"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&report).unwrap(), original);
    assert_eq!(
        std::fs::read_to_string(dir.join("results/report.md.edited")).unwrap(),
        "my own notes\n"
    );
    // An untouched workspace is not copied again, and no warning appears.
    let r = run_with(&dir, &store, &[]);
    assert!(!r.stderr.contains("edited"), "{}", r.stderr);
}

#[test]
fn a_fan_out_of_a_thousand() {
    let tmp = tempfile::tempdir().unwrap();
    let values: Vec<String> = (0..1000).map(|i| format!("\"v{i}\"")).collect();
    write_pipeline(
        tmp.path(),
        &format!(
            "pipeline \"wide\"\nstep each {{\n    foreach v {}\n    out o=\"out/{{v}}.txt\"\n    run \"echo {{v}} > {{out.o}}\"\n}}\nstep all {{\n    in parts=each.o\n    out n=\"count.txt\"\n    run \"cat {{in.parts}} | wc -l > {{out.n}}\"\n}}\n",
            values.join(" ")
        ),
    );
    let store = tmp.path().join("store");
    let r = run_with(tmp.path(), store.to_str().unwrap(), &["--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["executed"], 1001);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("count.txt"))
            .unwrap()
            .trim(),
        "1000"
    );
    let again = run_with(tmp.path(), store.to_str().unwrap(), &["--json"]);
    let summary: serde_json::Value =
        serde_json::from_str(again.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (summary["executed"].as_u64(), summary["cached"].as_u64()),
        (Some(0), Some(1001))
    );
}

#[test]
fn a_run_stopped_by_a_failure_does_not_wait_for_another_runs_lock() {
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(
        tmp.path(),
        r#"pipeline "stop"
step slow {
    out o="slow.txt"
    run "sleep 8; echo slow > {out.o}"
}
step bad {
    out o="bad.txt"
    run "sleep 0.5; exit 1"
}
step other {
    out o="other.txt"
    run "echo other > {out.o}"
}
"#,
    );
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    // The first run holds `slow`'s derivation for 8 s.
    let first = common::mustbuild(tmp.path())
        .args(["run", "pipeline.kdl", "--store", store, "slow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The second waits for that lock with one job, runs `bad`, which fails: it
    // stops there, without waiting for the first run to finish `slow`.
    let started = std::time::Instant::now();
    let r = run(
        tmp.path(),
        &["run", "pipeline.kdl", "--store", store, "-j", "1"],
    );
    let took = started.elapsed();
    let mut first = first;
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("bad"), "{}", r.stderr);
    assert!(
        took < std::time::Duration::from_secs(5),
        "the stopped run waited {took:?} for the other run's lock"
    );
}

#[test]
fn outputs_put_in_place_before_an_error_are_not_taken_for_edits_later() {
    let tmp = tempfile::tempdir().unwrap();
    write_pipeline(
        tmp.path(),
        r#"pipeline "edits"
param v 1
step s {
    foreach n "1" "2"
    out o="d{n}/o.txt"
    run "echo {param.v} > {out.o}"
}
"#,
    );
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let go = |v: &str| {
        run(
            tmp.path(),
            &[
                "run",
                "pipeline.kdl",
                "--store",
                store,
                "--param",
                &format!("v={v}"),
            ],
        )
    };
    assert_eq!(go("1").code, 0);
    assert_eq!(go("2").code, 0);
    // d2 is a file now: putting d2/o.txt in place fails, after d1/o.txt was.
    std::fs::remove_dir_all(tmp.path().join("d2")).unwrap();
    std::fs::write(tmp.path().join("d2"), "in the way").unwrap();
    let r = go("1");
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("d1/o.txt")).unwrap(),
        "1\n"
    );
    // mustbuild wrote d1/o.txt: it is not kept aside as someone's edit.
    std::fs::remove_file(tmp.path().join("d2")).unwrap();
    let r = go("2");
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!tmp.path().join("d1/o.txt.edited").exists(), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("d1/o.txt")).unwrap(),
        "2\n"
    );
}

#[test]
fn a_small_output_is_moved_to_the_workspace_only_when_nothing_else_links_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // One output the command also links outside its scratch folder, one it makes
    // private (umask 077): both small, so both kept in the store's database.
    write_pipeline(
        tmp.path(),
        &format!(
            r#"pipeline "moved"
step linked {{
    out o="linked.txt"
    run "echo linked > {{out.o}} && ln {{out.o}} {}/link"
}}
step private {{
    out o="private.txt"
    run "umask 077 && echo private > {{out.o}}"
}}
"#,
            outside.display()
        ),
    );
    let store = tmp.path().join("store");
    // Unsandboxed: `linked` hard-links its output from outside its folder, the
    // case this checks, which a sandbox would refuse.
    let r = run(
        tmp.path(),
        &[
            "run",
            "pipeline.kdl",
            "--store",
            store.to_str().unwrap(),
            "--no-sandbox",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The linked output was copied, not moved: writing through the command's
    // link changes neither the workspace nor the store.
    let linked = tmp.path().join("linked.txt");
    assert_eq!(std::fs::metadata(&linked).unwrap().nlink(), 1);
    std::fs::write(outside.join("link"), "changed later\n").unwrap();
    assert_eq!(std::fs::read_to_string(&linked).unwrap(), "linked\n");
    // The private one has the mode every materialised file gets.
    let private = tmp.path().join("private.txt");
    assert_eq!(std::fs::read_to_string(&private).unwrap(), "private\n");
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Both are what the store recorded: a second run executes nothing and
    // keeps nothing aside as edited.
    let r = run(
        tmp.path(),
        &[
            "run",
            "pipeline.kdl",
            "--store",
            store.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("\"executed\":0"), "{}", r.stdout);
    assert!(!r.stdout.contains("replaced"), "{}", r.stdout);
    std::fs::remove_file(&linked).unwrap();
    std::fs::remove_file(&private).unwrap();
    let r = run(
        tmp.path(),
        &[
            "run",
            "pipeline.kdl",
            "--store",
            store.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(r.stdout.contains("\"executed\":0"), "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(&linked).unwrap(), "linked\n");
    assert_eq!(std::fs::read_to_string(&private).unwrap(), "private\n");
}

#[test]
fn a_command_that_replaces_its_home_or_tmp_leaves_the_next_job_real_empty_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("home")).unwrap();
    std::fs::write(outside.join("precious"), "keep\n").unwrap();
    std::fs::write(outside.join("home/precious"), "keep\n").unwrap();
    // Twelve jobs, one at a time: every worker's scratch folder is reused. Each
    // job checks that it starts with real, empty HOME and TMPDIR, then breaks
    // them for the next: HOME a link outside and TMPDIR a file, or all of
    // `.mustbuild` a link outside.
    let values: Vec<String> = (1..=12).map(|n| format!("\"{n}\"")).collect();
    write_pipeline(
        tmp.path(),
        &format!(
            r##"pipeline "broken-home"
step s {{
    foreach n {values}
    out o="o/{{n}}.txt"
    run #"test -d "$HOME" -a ! -L "$HOME" -a -d "$TMPDIR" -a ! -L "$TMPDIR" -a ! -L .mustbuild; test -z "$(ls -A "$HOME")$(ls -A "$TMPDIR")"; echo ok > {{out.o}}; if [ $(({{n}} % 2)) = 0 ]; then rm -rf .mustbuild; ln -s {out} .mustbuild; else rm -rf "$HOME" "$TMPDIR"; ln -s {out} "$HOME"; echo x > "$TMPDIR"; fi"#
}}
"##,
            values = values.join(" "),
            out = outside.display()
        ),
    );
    let store = tmp.path().join("store");
    let r = run_with(tmp.path(), store.to_str().unwrap(), &["-j", "1"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for n in 1..=12 {
        let o = tmp.path().join(format!("o/{n}.txt"));
        assert_eq!(std::fs::read_to_string(o).unwrap(), "ok\n");
    }
    // What the links pointed at was never emptied.
    assert_eq!(
        std::fs::read_to_string(outside.join("precious")).unwrap(),
        "keep\n"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("home/precious")).unwrap(),
        "keep\n"
    );
}

#[test]
fn an_input_written_over_a_kept_file_holds_only_its_own_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    // Twelve inputs, longest first, one job at a time: each worker writes later
    // (shorter) inputs over the files earlier (longer) ones left.
    let mut values = Vec::new();
    for n in 0..12u32 {
        let text: String = (0..(12 - n) * 300)
            .map(|i| char::from(b'a' + ((i + n) % 26) as u8))
            .collect();
        let path = tmp.path().join(format!("in/{n}.txt"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{text}\n")).unwrap();
        values.push(format!("\"{n}\""));
    }
    write_pipeline(
        tmp.path(),
        &format!(
            r#"pipeline "over"
step s {{
    foreach n {}
    in i=(file)"in/{{n}}.txt"
    out o="out/{{n}}.txt"
    run "cat {{in.i}} > {{out.o}}"
}}
"#,
            values.join(" ")
        ),
    );
    let store = tmp.path().join("store");
    let r = run_with(tmp.path(), store.to_str().unwrap(), &["-j", "1"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for n in 0..12 {
        let input = std::fs::read(tmp.path().join(format!("in/{n}.txt"))).unwrap();
        let output = std::fs::read(tmp.path().join(format!("out/{n}.txt"))).unwrap();
        assert_eq!(input, output, "input {n}");
    }
}

#[test]
fn jobs_recorded_together_are_all_recorded_when_one_of_them_fails_to_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // `bad`'s output cannot be put in place: `blocker` is a file. Each command
    // marks its start, then ends after the others in the order a, b, c, bad.
    let step = |name: &str, secs: &str, out: &str| {
        format!(
            "step {name} {{\n    out o=\"{out}\"\n    run \"touch {}/{name}; sleep {secs}; echo {name} > {{out.o}}\"\n}}\n",
            marks.display()
        )
    };
    write_pipeline(
        tmp.path(),
        &format!(
            "pipeline \"batch\"\n{}{}{}{}",
            step("a", "1", "a.txt"),
            step("b", "1.3", "b.txt"),
            step("c", "1.6", "c.txt"),
            step("bad", "1.9", "blocker/bad.txt"),
        ),
    );
    std::fs::write(tmp.path().join("blocker"), "in the way\n").unwrap();
    let store = tmp.path().join("store");
    // A store made beforehand, so that it can be locked while the run goes on.
    assert_eq!(
        run(
            tmp.path(),
            &["store", "info", "--store", store.to_str().unwrap()]
        )
        .code,
        0
    );
    // The steps say they started by touching files outside their folders.
    let child = common::mustbuild(tmp.path())
        .args([
            "run",
            "pipeline.kdl",
            "-j",
            "4",
            "--json",
            "--no-sandbox",
            "--store",
        ])
        .arg(&store)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once every command runs, another process holds the store's write lock
    // until all have ended: their ends wait for the coordinator together.
    let started = std::time::Instant::now();
    while ["a", "b", "c", "bad"]
        .iter()
        .any(|n| !marks.join(n).exists())
    {
        assert!(
            started.elapsed().as_secs() < 60,
            "the commands never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let db = rusqlite::Connection::open(store.join("meta.sqlite")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3000));
    db.execute_batch("ROLLBACK").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    for name in ["a", "b", "c"] {
        let executed = stdout.lines().any(|l| {
            l.contains(r#""event":"executed""#) && l.contains(&format!(r#""step":"{name}""#))
        });
        assert!(executed, "{name} was executed and recorded: {stdout}");
    }
    // Recorded: with `blocker` gone, only `bad` runs again.
    std::fs::remove_file(tmp.path().join("blocker")).unwrap();
    let r = run(
        tmp.path(),
        &[
            "run",
            "pipeline.kdl",
            "--json",
            "--store",
            store.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["executed"], 1, "{}", r.stdout);
    assert_eq!(summary["cached"], 3, "{}", r.stdout);
}
