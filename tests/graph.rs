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
