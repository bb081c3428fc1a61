//! `mustbuild run` (first version) on the quickstart: incremental by content.

mod common;

use common::run;
use std::path::{Path, PathBuf};

/// A writable copy of the quickstart and a fresh store.
fn quickstart() -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("qs");
    copy_dir(&common::root().join("examples/quickstart"), &dest);
    let store = tmp.path().join("store").to_str().unwrap().to_string();
    (tmp, dest, store)
}

fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else if e.file_name() != "results" {
            std::fs::write(&to, std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

/// Runs the pipeline; returns the summary line and the names of the steps that ran.
fn go(dir: &Path, store: &str) -> (String, Vec<String>) {
    let r = run(dir, &["run", "pipeline.kdl", "--store", store]);
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
    let (summary, ran) = go(&dir, &store);
    assert_eq!(
        ran,
        [
            "read_stats (data/samples/B.fastq)",
            "gc_histogram (data/samples/B.fastq)",
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
    let r = run(
        tmp.path(),
        &["run", "pipeline.kdl", "--store", store.to_str().unwrap()],
    );
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
    let again = run(
        tmp.path(),
        &["run", "pipeline.kdl", "--store", store.to_str().unwrap()],
    );
    assert!(again.stderr.contains("run      bad"), "{}", again.stderr);
}
