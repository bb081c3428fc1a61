//! `mustbuild graph`: the step graph of the quickstart in both formats.

mod common;

use common::{root, run};

#[test]
fn dot_of_the_quickstart() {
    let r = run(&root(), &["graph", "examples/quickstart/pipeline.kdl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!("quickstart_dot", r.stdout);
}

#[test]
fn mermaid_of_the_quickstart() {
    let r = run(
        &root(),
        &[
            "graph",
            "examples/quickstart/pipeline.kdl",
            "--format",
            "mermaid",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!("quickstart_mermaid", r.stdout);
}

#[test]
fn an_invalid_pipeline_draws_nothing() {
    let r = run(&root(), &["graph", "tests/fixtures/check/cycle.kdl"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("dependency cycle"));
}

#[test]
fn a_closed_pipe_is_not_a_crash() {
    let mut child = common::mustbuild(&root())
        .args(["graph", "examples/quickstart/pipeline.kdl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
