//! `mustbuild why`, `show`, `log` and `runs` on real runs: each cause of a
//! rerun named, down to its root, in words (snapshots) and in JSON.

mod common;

use common::{Run, mustbuild, output};
use std::path::{Path, PathBuf};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: String,
    tmp: String,
}

impl Fixture {
    fn new(pipeline: &str, files: &[(&str, &str)]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        std::fs::create_dir_all(&dir).unwrap();
        let f = Fixture {
            store: tmp.path().join("store").to_string_lossy().into_owned(),
            tmp: tmp.path().to_string_lossy().into_owned(),
            dir,
            _tmp: tmp,
        };
        f.write("pipeline.kdl", pipeline);
        for (p, c) in files {
            f.write(p, c);
        }
        f
    }

    fn write(&self, path: &str, content: &str) {
        let p = self.dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = mustbuild(&self.dir);
        cmd.args(args).env("MUSTBUILD_STORE", &self.store);
        cmd
    }

    /// `mustbuild run pipeline.kdl ARGS…`, which must succeed.
    fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["run", "pipeline.kdl"];
        all.extend_from_slice(args);
        let r = output(&mut self.command(&all));
        assert_eq!(r.code, 0, "{}{}", r.stderr, r.stdout);
        r
    }

    /// `mustbuild ARGS…`, which must succeed; its stdout, the temporary folder
    /// written `[TMP]`.
    fn ok(&self, args: &[&str]) -> String {
        let r = output(&mut self.command(args));
        assert_eq!(r.code, 0, "{}{}", r.stderr, r.stdout);
        r.stdout.replace(&self.tmp, "[TMP]")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

const CHAIN: &str = r#"pipeline "chain"
param width 3
step a {
  in src=(file)"data/in.txt"
  out o="a.txt"
  run "cut -c 1-{param.width} {in.src} > {out.o}"
}
step b {
  in x=a.o
  out o="b.txt"
  run "tr a-z A-Z < {in.x} > {out.o}"
}
step c {
  in x=b.o
  out o="c.txt"
  run "wc -l < {in.x} > {out.o}"
}
"#;

fn chain() -> Fixture {
    let f = Fixture::new(CHAIN, &[("data/in.txt", "alpha\nbeta\n")]);
    f.run(&[]);
    f
}

fn root_cause_kinds(v: &serde_json::Value) -> Vec<(String, String)> {
    v["root_causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["at"].as_str().unwrap().to_string(),
                r["cause"]["cause"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_source_change_is_the_root_cause_three_steps_down() {
    let f = chain();
    f.write("data/in.txt", "alpha\nbeta\ngamma\n");
    f.run(&[]);
    let text = f.ok(&["why", "c.txt"]);
    insta::assert_snapshot!("source_three_steps", text);
    let v = f.json(&["why", "c.txt"]);
    assert_eq!(root_cause_kinds(&v), [("a".into(), "source".into())]);
    let root = &v["root_causes"][0];
    assert_eq!(root["via"], serde_json::json!(["b", "c"]));
    assert_eq!(root["cause"]["path"], "data/in.txt");
    assert_eq!(root["cause"]["before"]["size"], 11);
    assert_eq!(root["cause"]["after"]["size"], 17);
    assert_eq!(v["explanation"]["status"], "executed");
    assert_eq!(v["explanation"]["run"], 2);
    assert_eq!(v["explanation"]["compared_with_run"], 1);
    // The step, named as a target, is the same instance.
    assert_eq!(f.json(&["why", "c"])["root_causes"], v["root_causes"]);
}

#[test]
fn a_param_two_steps_upstream_is_named_with_its_values() {
    let f = chain();
    f.run(&["--param", "width=2"]);
    let text = f.ok(&["why", "c"]);
    insta::assert_snapshot!("param_upstream", text);
    let v = f.json(&["why", "c"]);
    assert_eq!(root_cause_kinds(&v), [("a".into(), "param".into())]);
    let cause = &v["root_causes"][0]["cause"];
    assert_eq!(cause["name"], "width");
    assert_eq!(cause["before"], "3");
    assert_eq!(cause["after"], "2");
    assert_eq!(cause["override_after"], true);
}

#[test]
fn a_command_edit_gives_a_line_diff() {
    let f = chain();
    f.write(
        "pipeline.kdl",
        &CHAIN.replace("tr a-z A-Z", "tr a-z A-Z | sort -r"),
    );
    f.run(&[]);
    let text = f.ok(&["why", "c.txt"]);
    insta::assert_snapshot!("command_edit", text);
    let v = f.json(&["why", "c.txt"]);
    let kinds = root_cause_kinds(&v);
    assert!(kinds.contains(&("b".into(), "command".into())), "{kinds:?}");
    assert!(
        kinds.contains(&("b".into(), "pipeline_text".into())),
        "{kinds:?}"
    );
}

#[test]
fn nothing_changed_means_reused_and_says_which_run_made_it() {
    let f = chain();
    f.write("data/in.txt", "alpha\nbeta\ngamma\n");
    f.run(&[]);
    f.run(&[]);
    let v = f.json(&["why", "a.txt"]);
    // The third run was a no-op: it is explained by what the second left.
    assert_eq!(v["run"], 3);
    assert_eq!(v["same_as_run"], 2);
    f.run(&["--param", "width=4"]);
    f.write("pipeline.kdl", &CHAIN.replace("wc -l", "wc -c"));
    f.run(&["--param", "width=4"]);
    let v = f.json(&["why", "a"]);
    assert_eq!(v["explanation"]["status"], "reused");
    assert_eq!(v["explanation"]["made_by"]["run"], 4);
    assert!(v["root_causes"].as_array().unwrap().is_empty());
    insta::assert_snapshot!("reused", f.ok(&["why", "a"]));
}

#[test]
fn a_tool_replaced_on_path_names_both_paths() {
    let tool = |dir: &Path, word: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("greet");
        std::fs::write(&p, format!("#!/bin/sh\necho {word}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let f = Fixture::new(
        r#"pipeline "tools"
step hello {
  tool "greet"
  out o="hello.txt"
  run "greet > {out.o}"
}
step shout {
  in x=hello.o
  out o="shout.txt"
  run "tr a-z A-Z < {in.x} > {out.o}"
}
"#,
        &[],
    );
    let (one, two) = (f.dir.join("../bin1"), f.dir.join("../bin2"));
    tool(&one, "hello");
    tool(&two, "bonjour");
    let path = |bin: &Path| format!("{}:/usr/bin:/bin", bin.canonicalize().unwrap().display());
    let with_path = |bin: &Path| {
        let r = output(f.command(&["run", "pipeline.kdl"]).env("PATH", path(bin)));
        assert_eq!(r.code, 0, "{}", r.stderr);
        r
    };
    with_path(&one);
    let second = with_path(&two);
    assert!(
        second.stdout.contains("mustbuild why hello"),
        "the summary points at why: {}",
        second.stdout
    );
    let text = f.ok(&["why", "shout.txt"]);
    insta::assert_snapshot!("tool_replaced", text);
    let v = f.json(&["why", "shout.txt"]);
    assert_eq!(root_cause_kinds(&v), [("hello".into(), "tool".into())]);
    let cause = &v["root_causes"][0]["cause"];
    assert!(
        cause["before"]["path"]
            .as_str()
            .unwrap()
            .ends_with("bin1/greet")
    );
    assert!(
        cause["after"]["path"]
            .as_str()
            .unwrap()
            .ends_with("bin2/greet")
    );
    assert_ne!(cause["before"]["digest"], cause["after"]["digest"]);
}

const FANOUT: &str = r#"pipeline "fan"
step count {
  foreach sample "x" "y"
  out o="counts/{sample}.txt"
  run "echo {sample} > {out.o}"
}
"#;

#[test]
fn a_new_fan_out_value_and_never_built_are_told_apart() {
    let f = Fixture::new(FANOUT, &[]);
    f.run(&[]);
    let v = f.json(&["why", "count[x]"]);
    assert_eq!(
        root_cause_kinds(&v),
        [("count[x]".into(), "never_built".into())]
    );
    f.write(
        "pipeline.kdl",
        &FANOUT.replace(r#""x" "y""#, r#""x" "y" "z""#),
    );
    f.run(&[]);
    let text = f.ok(&["why", "count[z]"]);
    insta::assert_snapshot!("new_value", text);
    let v = f.json(&["why", "counts/z.txt"]);
    assert_eq!(
        root_cause_kinds(&v),
        [("count[z]".into(), "new_value".into())]
    );
    assert_eq!(
        f.json(&["why", "count[x]"])["explanation"]["status"],
        "reused"
    );
    // A step of several instances needs a value.
    let r = output(&mut f.command(&["why", "count"]));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("ambiguous", r.stderr);
}

#[test]
fn forced_and_failed_last_time() {
    let flag = tempfile::tempdir().unwrap();
    let flag = flag.path().join("ready");
    let f = Fixture::new(
        &format!(
            r#"pipeline "flaky"
step make {{
  out o="made.txt"
  run "test -e {} && echo made > {{out.o}}"
}}
"#,
            flag.display()
        ),
        &[],
    );
    let r = output(&mut f.command(&["run", "pipeline.kdl"]));
    assert_eq!(r.code, 1);
    std::fs::write(&flag, "").unwrap();
    f.run(&[]);
    let v = f.json(&["why", "make"]);
    assert_eq!(
        root_cause_kinds(&v),
        [("make".into(), "failed_last_time".into())]
    );
    let cause = &v["root_causes"][0]["cause"];
    assert_eq!(cause["run"], 1);
    assert_eq!(cause["exit_code"], 1);
    let log = f.ok(&["log", "make", "--run", "1"]);
    assert_eq!(log, "", "the failed command wrote nothing");
    f.run(&["--force", "make"]);
    let v = f.json(&["why", "made.txt"]);
    assert_eq!(root_cause_kinds(&v), [("make".into(), "forced".into())]);
    insta::assert_snapshot!("forced", f.ok(&["why", "made.txt"]));
}

#[test]
fn runs_show_and_log() {
    let f = Fixture::new(
        r#"pipeline "talk"
step say {
  in src=(file)"in.txt"
  out o="said.txt"
  run "echo saying; cat {in.src} > {out.o}"
}
"#,
        &[("in.txt", "words\n")],
    );
    f.run(&[]);
    f.run(&[]);
    let runs = f.json(&["runs"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run"], 2);
    assert_eq!(runs[0]["noop"], true);
    assert_eq!(runs[0]["cached"], 1);
    assert_eq!(runs[1]["executed"], 1);
    assert_eq!(runs[1]["cached"], 0);
    let table = f.ok(&["runs"]);
    assert!(table.starts_with("  RUN  STARTED (UTC)"), "{table}");
    assert!(table.contains("(no-op)"), "{table}");
    let show = f.json(&["show", "said.txt"]);
    assert_eq!(show["step"], "say");
    assert_eq!(show["inputs"][0]["path"], "in.txt");
    assert_eq!(show["inputs"][0]["content"]["size"], 6);
    assert_eq!(show["outputs"][0]["content"]["size"], 6);
    assert_eq!(show["made_by"]["run"], 1);
    assert!(
        show["command"]
            .as_str()
            .unwrap()
            .contains("cat in.txt > said.txt")
    );
    let text = f.ok(&["show", "say"]);
    assert!(text.contains("made by   run 1 on "), "{text}");
    assert_eq!(f.ok(&["log", "said.txt"]), "saying\n");
    // Not an output, not a step: a clear error.
    let r = output(&mut f.command(&["why", "in.txt"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("`in.txt` is not an output"),
        "{}",
        r.stderr
    );
}

#[test]
fn depends_lists_the_paths_across_a_fan_out() {
    let f = Fixture::new(
        r#"pipeline "diamond"
step split {
  in src=(file)"in.txt"
  out o="split.txt"
  run "cat {in.src} > {out.o}"
}
step part {
  foreach n "1" "2" "3"
  in x=split.o
  out o="part/{n}.txt"
  run "head -n {n} {in.x} > {out.o}"
}
step join {
  in parts=part.o
  out o="join.txt"
  run "cat {in.parts} > {out.o}"
}
step other {
  out o="other.txt"
  run "echo other > {out.o}"
}
"#,
        &[("in.txt", "one\ntwo\nthree\n")],
    );
    f.run(&[]);
    let text = f.ok(&["why", "--depends", "split", "join.txt"]);
    insta::assert_snapshot!("depends", text);
    let v = f.json(&["why", "--depends", "split", "join"]);
    assert_eq!(
        v["paths"],
        serde_json::json!([
            ["split", "part[1]", "join"],
            ["split", "part[2]", "join"],
            ["split", "part[3]", "join"]
        ])
    );
    assert_eq!(
        f.json(&["why", "--depends", "part[2]", "join"])["paths"],
        serde_json::json!([["part[2]", "join"]])
    );
    let r = output(&mut f.command(&["why", "--depends", "other", "join"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("join does not read what other makes"),
        "{}",
        r.stdout
    );
}

#[test]
fn audit_flags_a_step_that_writes_the_time_and_not_a_deterministic_one() {
    let f = Fixture::new(
        r#"pipeline "audited"
step steady {
  in src=(file)"in.txt"
  out o="steady.txt"
  run "sort {in.src} > {out.o}"
}
step clock {
  in x=steady.o
  out o="clock.txt"
  run "cat {in.x} > {out.o}; date +%s%N >> {out.o}"
}
"#,
        &[("in.txt", "b\na\n")],
    );
    f.run(&[]);
    let before: Vec<u8> = std::fs::read(f.dir.join("clock.txt")).unwrap();
    let r = output(&mut f.command(&["audit", "pipeline.kdl"]));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("reproducible  steady"), "{}", r.stdout);
    assert!(
        r.stdout.contains("DIFFERS       clock: `clock.txt`"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("line 3:"), "{}", r.stdout);
    assert!(
        r.stdout.contains("audited 2: 1 reproducible, 1 not"),
        "{}",
        r.stdout
    );
    // The workspace and the store's result are left alone.
    assert_eq!(std::fs::read(f.dir.join("clock.txt")).unwrap(), before);
    assert!(f.run(&[]).stdout.contains("executed 0, cached 2"));
    // The verdict is kept, and told.
    assert_eq!(f.json(&["show", "clock"])["audit"]["verdict"], "differs");
    assert_eq!(
        f.json(&["why", "steady.txt"])["audit"]["verdict"],
        "reproducible"
    );
    assert!(f.ok(&["why", "clock"]).contains("NOT reproducible"));
    // Only what a target needs.
    let r = output(&mut f.command(&["audit", "pipeline.kdl", "steady", "--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line: serde_json::Value = serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["step"], "steady");
    assert_eq!(line["verdict"], "reproducible");
}

#[test]
fn a_run_exports_as_a_provenance_run_crate_that_validates() {
    let f = chain();
    f.write("data/in.txt", "alpha\nbeta\ngamma\n");
    f.run(&["--param", "width=2"]);
    // Beside the workspace (roc-validator misreads a path with `..` in it).
    let out = PathBuf::from(&f.tmp).join("crate");
    let out_s = out.to_string_lossy().into_owned();
    let license = "https://spdx.org/licenses/CC-BY-4.0";
    f.ok(&["export", "ro-crate", "-o", &out_s, "--license", license]);
    let text = std::fs::read_to_string(out.join("ro-crate-metadata.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let graph = doc["@graph"].as_array().unwrap();
    let of_type = |t: &str| -> Vec<&serde_json::Value> {
        graph
            .iter()
            .filter(|e| {
                e["@type"] == t
                    || e["@type"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == t))
            })
            .collect()
    };
    // The run, and each of its three executions with its command and files.
    let actions = of_type("CreateAction");
    assert_eq!(actions.len(), 4, "{text}");
    let a = actions.iter().find(|x| x["name"] == "run a").unwrap();
    assert_eq!(a["description"], "cut -c 1-2 data/in.txt > a.txt");
    assert!(
        a["object"][0]["@id"]
            .as_str()
            .unwrap()
            .ends_with("/p/data/in.txt")
    );
    assert!(
        a["result"][0]["@id"]
            .as_str()
            .unwrap()
            .ends_with("/p/a.txt")
    );
    assert_eq!(of_type("ControlAction").len(), 3);
    assert_eq!(of_type("OrganizeAction").len(), 1);
    assert!(out.join("pipeline.kdl").is_file());
    match std::env::var_os("MUSTBUILD_RO_CRATE_VALIDATOR") {
        Some(validator) => {
            let r = std::process::Command::new(validator)
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                r.status.success(),
                "roc-validator: {}{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            );
        }
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but MUSTBUILD_RO_CRATE_VALIDATOR is not: scripts/test-all installs it"
            )
        }
        None => eprintln!("roc-validator not installed (scripts/test-all does): not validated"),
    }
}

#[test]
fn an_env_var_is_a_root_cause_and_the_summary_says_so() {
    let pipeline = r#"pipeline "env"
step sorted {
  env LC_ALL "C"
  in src=(file)"words.txt"
  out o="sorted.txt"
  run "sort {in.src} > {out.o}"
}
"#;
    let f = Fixture::new(pipeline, &[("words.txt", "b\nB\na\n")]);
    f.run(&[]);
    f.write("pipeline.kdl", &pipeline.replace(r#""C""#, r#""C.UTF-8""#));
    let r = f.run(&[]);
    assert!(
        r.stdout.contains("note: 1 step ran again only because env.LC_ALL changed; `mustbuild why sorted` tells more"),
        "{}",
        r.stdout
    );
    let v = f.json(&["why", "sorted.txt"]);
    assert_eq!(
        root_cause_kinds(&v),
        [
            ("sorted".into(), "env".into()),
            ("sorted".into(), "pipeline_text".into())
        ]
    );
    let cause = &v["root_causes"][0]["cause"];
    assert_eq!(cause["name"], "LC_ALL");
    assert_eq!(cause["before"], "C");
    assert_eq!(cause["after"], "C.UTF-8");
}

const THREE: &str = r#"pipeline "three"
step a1 {
  in src=(file)"data/1.txt"
  out o="1.out"
  run "cat {in.src} > {out.o}"
}
step a2 {
  in src=(file)"data/2.txt"
  out o="2.out"
  run "cat {in.src} > {out.o}"
}
step a3 {
  in src=(file)"data/3.txt"
  out o="3.out"
  run "cat {in.src} > {out.o}"
}
"#;

/// How many instance rows a run wrote, and the run its others are based on.
fn rows_and_base(f: &Fixture, run: i64) -> (i64, Option<i64>) {
    let db = rusqlite::Connection::open(Path::new(&f.store).join("meta.sqlite")).unwrap();
    let rows = db
        .query_row(
            "SELECT COUNT(*) FROM session_instances WHERE session = ?1",
            [run],
            |r| r.get(0),
        )
        .unwrap();
    let base = db
        .query_row(
            "SELECT base FROM session_bases WHERE session = ?1",
            [run],
            |r| r.get(0),
        )
        .ok();
    (rows, base)
}

#[test]
fn reruns_that_take_the_record_are_explained_from_its_run_and_survive_gc() {
    let files = [
        ("data/1.txt", "one\n"),
        ("data/2.txt", "two\n"),
        ("data/3.txt", "three\n"),
    ];
    let f = Fixture::new(THREE, &files);
    f.run(&[]);
    f.write("data/1.txt", "one, edited\n");
    f.run(&[]);
    f.write("data/2.txt", "two, edited\n");
    f.run(&[]);
    // Run 2 wrote a1's row and is based on run 1; run 3 wrote a2's, copied
    // run 2's a1 (a base has no base) and is based on run 1.
    assert_eq!(rows_and_base(&f, 2), (1, Some(1)));
    assert_eq!(rows_and_base(&f, 3), (2, Some(1)));
    let runs = f.json(&["runs"]);
    let counts = |run: i64| {
        let r = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run"] == run)
            .unwrap();
        (
            r["executed"].as_i64().unwrap(),
            r["cached"].as_i64().unwrap(),
        )
    };
    assert_eq!([counts(1), counts(2), counts(3)], [(3, 0), (1, 2), (1, 2)]);
    let status = |target: &str, run: Option<&str>| {
        let mut args = vec!["why", target];
        if let Some(run) = run {
            args.extend(["--run", run]);
        }
        let v = f.json(&args);
        let e = &v["explanation"];
        (
            e["status"].as_str().unwrap().to_string(),
            e["made_by"]["run"].as_i64(),
        )
    };
    assert_eq!(status("1.out", None), ("reused".into(), Some(2)));
    assert_eq!(status("2.out", None).0, "executed");
    assert_eq!(status("3.out", None), ("reused".into(), Some(1)));
    assert_eq!(status("a3", Some("2")), ("reused".into(), Some(1)));
    assert_eq!(status("a1", Some("2")).0, "executed");
    let v = f.json(&["why", "2.out"]);
    assert_eq!(root_cause_kinds(&v), [("a2".into(), "source".into())]);
    // gc keeps the last run, and the run it is based on (run 2 goes).
    f.ok(&["store", "gc", "--keep-last", "1"]);
    let left: Vec<i64> = f
        .json(&["runs"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_i64().unwrap())
        .collect();
    assert_eq!(left, [3, 1]);
    assert_eq!(status("3.out", None), ("reused".into(), Some(1)));
    assert_eq!(status("1.out", None).0, "reused");
    // What a run after gc takes from run 3's record is run 3's and run 1's.
    f.write("data/3.txt", "three, edited\n");
    f.run(&[]);
    assert_eq!(rows_and_base(&f, 4), (3, Some(1)));
    assert_eq!(status("1.out", None).0, "reused");
    assert_eq!(status("3.out", None).0, "executed");
}

#[test]
fn a_result_the_store_lost_and_a_run_killed_midway_are_told_apart() {
    let flag = tempfile::tempdir().unwrap();
    let flag = flag.path().join("quick");
    let f = Fixture::new(
        &format!(
            r#"pipeline "lost"
step big {{
  in src=(file)"in.txt"
  out o="big.txt"
  run "head -c 20000 /dev/zero | tr '\\0' x > {{out.o}}; cat {{in.src}} >> {{out.o}}"
}}
step slow {{
  out o="slow.txt"
  run "test -e {} || sleep 30; echo done > {{out.o}}"
}}
"#,
            flag.display()
        ),
        &[("in.txt", "in\n")],
    );
    let first = output(&mut f.command(&["run", "pipeline.kdl", "--json", "big"]));
    assert_eq!(first.code, 0, "{}", first.stderr);
    // The store loses big's output: verify --repair forgets its realisation
    // once its object file is corrupt; the run history stays.
    let objects = Path::new(&f.store).join("objects");
    let files: Vec<PathBuf> = std::fs::read_dir(&objects)
        .unwrap()
        .flat_map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one object over 16 KiB: {files:?}");
    let mut perms = std::fs::metadata(&files[0]).unwrap().permissions();
    #[expect(
        clippy::permissions_set_readonly_false,
        reason = "a test corrupts a store file"
    )]
    perms.set_readonly(false);
    std::fs::set_permissions(&files[0], perms).unwrap();
    std::fs::write(&files[0], "corrupt").unwrap();
    f.ok(&["store", "verify", "--repair"]);
    let second = output(&mut f.command(&["run", "pipeline.kdl", "big"]));
    assert_eq!(second.code, 0, "{}", second.stderr);
    let v = f.json(&["why", "big.txt"]);
    assert_eq!(root_cause_kinds(&v), [("big".into(), "collected".into())]);
    assert_eq!(v["root_causes"][0]["cause"]["made_in"], 1);
    // A run killed while `slow` runs: the next run of it was interrupted last time.
    use std::os::unix::process::CommandExt;
    let mut child = f
        .command(&["run", "pipeline.kdl", "slow"])
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let db = Path::new(&f.store).join("meta.sqlite");
    let planned = || {
        rusqlite::Connection::open(&db)
            .and_then(|db| {
                db.query_row(
                    "SELECT COUNT(*) FROM session_instances WHERE step = 'slow'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while planned() == 0 {
        assert!(start.elapsed().as_secs() < 30, "slow was never planned");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let group = format!("-{}", child.id());
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    // The same derivation, quick this time (the flag is outside its key).
    std::fs::write(&flag, "").unwrap();
    let third = output(&mut f.command(&["run", "pipeline.kdl", "slow"]));
    assert_eq!(third.code, 0, "{}", third.stderr);
    let v = f.json(&["why", "slow.txt"]);
    assert_eq!(
        root_cause_kinds(&v),
        [("slow".into(), "interrupted".into())]
    );
    let killed_run = v["root_causes"][0]["cause"]["run"].as_i64().unwrap();
    assert_eq!(killed_run, 3);
    insta::assert_snapshot!("interrupted", f.ok(&["why", "slow.txt"]));
}
