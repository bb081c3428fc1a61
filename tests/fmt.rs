//! `mustbuild fmt`: canonical layout, comments kept, `--check`, KDL 1.0 → 2.0.

mod common;

use common::run;

const MESSY: &str = "// Quality statistics\npipeline   \"demo\"   // its name\n\n\n\nparam bins 20;input reads \"data/r.fq\"\nstep count {   // counts lines\n  in r=reads\n      out n=\"n.txt\"\n\n\n  /* the command */ run \\ // long\n     \"wc -l < {in.r} > {out.n}\"\n}\n";

const CANONICAL: &str = "// Quality statistics\npipeline \"demo\" // its name\n\nparam bins 20\ninput reads \"data/r.fq\"\nstep count { // counts lines\n    in r=reads\n    out n=\"n.txt\"\n\n    /* the command */\n    run \\ // long\n        \"wc -l < {in.r} > {out.n}\"\n}\n";

#[test]
fn rewrites_in_place_keeping_comments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.kdl"), MESSY).unwrap();
    let r = run(dir.path(), &["fmt", "p.kdl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr, "formatted p.kdl\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("p.kdl")).unwrap(),
        CANONICAL
    );
    // A second run changes nothing and says nothing.
    let r = run(dir.path(), &["fmt", "p.kdl"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
}

#[test]
fn check_mode_changes_nothing_and_fails_on_unformatted_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("messy.kdl"), MESSY).unwrap();
    std::fs::write(dir.path().join("clean.kdl"), CANONICAL).unwrap();
    let r = run(dir.path(), &["fmt", "--check", "clean.kdl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(dir.path(), &["fmt", "--check", "clean.kdl", "messy.kdl"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("messy.kdl: not formatted"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("clean.kdl"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("messy.kdl")).unwrap(),
        MESSY
    );
}

#[test]
fn syntax_errors_leave_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broken = "pipeline \"x\"\nstep a {\n    run \"unterminated\n}\n";
    std::fs::write(dir.path().join("b.kdl"), broken).unwrap();
    let r = run(dir.path(), &["fmt", "b.kdl"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("unterminated string"), "{}", r.stderr);
    assert!(r.stderr.contains("b.kdl:3:9"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("b.kdl")).unwrap(),
        broken
    );
}

#[test]
fn kdl_v1_becomes_v2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("v1.kdl"), "// old\npipeline \"old\"\nparam \"verbose\" true\nstep \"a\" {\n  out t=\"a.txt\"\n  run r\"echo {param.verbose} > {out.t}\"\n}\n").unwrap();
    let r = run(dir.path(), &["fmt", "v1.kdl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v2 = std::fs::read_to_string(dir.path().join("v1.kdl")).unwrap();
    // The kdl crate's translation writes plain words bare; the meaning is unchanged.
    assert_eq!(
        v2,
        "// old\npipeline old\nparam verbose #true\nstep a {\n    out t=a.txt\n    run \"echo {param.verbose} > {out.t}\"\n}\n"
    );
    let r = run(dir.path(), &["check", "v1.kdl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("KDL 1.0"), "{}", r.stderr);
}

#[test]
fn standard_input_to_standard_output() {
    use std::io::Write;
    let mut child = common::mustbuild(&common::root())
        .args(["fmt", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(MESSY.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), CANONICAL);
}
