//! `mustbuild check`: every kind of diagnostic, snapshot-tested on the real
//! binary's output, and bad files that must give a clear error, never a panic.

mod common;

use common::{root, run};
use std::io::Write;

/// Checks a fixture and snapshots what a user sees.
fn snapshot_check(fixture: &str, expected_code: i32) {
    let path = format!("tests/fixtures/check/{fixture}");
    let r = run(&root(), &["check", &path]);
    assert_eq!(
        r.code, expected_code,
        "exit code of check {path}\n{}{}",
        r.stdout, r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let name = fixture.trim_end_matches(".kdl").replace('/', "__");
    insta::assert_snapshot!(name, format!("{}{}", r.stderr, r.stdout));
}

#[test]
fn syntax_errors_are_all_reported_with_recovery() {
    snapshot_check("syntax.kdl", 1);
}

#[test]
fn unknown_node_and_property_names_suggest_the_right_one() {
    snapshot_check("unknown_names.kdl", 1);
}

#[test]
fn duplicate_steps_inputs_outputs_and_params() {
    snapshot_check("duplicates.kdl", 1);
}

#[test]
fn a_step_of_many_inputs_reports_repeats_and_unknown_names_the_same() {
    snapshot_check("many_inputs.kdl", 1);
}

#[test]
fn unknown_steps_outputs_inputs_and_fan_out_sources() {
    snapshot_check("unknown_references.kdl", 1);
}

#[test]
fn placeholders_that_name_nothing() {
    snapshot_check("placeholders.kdl", 1);
}

#[test]
fn dependency_cycles_print_the_cycle() {
    snapshot_check("cycle.kdl", 1);
}

#[test]
fn output_collisions_nesting_and_clobbered_sources() {
    snapshot_check("output_conflicts.kdl", 1);
}

#[test]
fn fan_out_outputs_must_differ_per_instance() {
    snapshot_check("fanout_same_path.kdl", 1);
}

#[test]
fn absolute_and_escaping_output_paths() {
    snapshot_check("output_paths.kdl", 1);
}

#[test]
fn malformed_resources() {
    snapshot_check("resources.kdl", 1);
}

#[test]
fn empty_and_malformed_fan_out() {
    snapshot_check("foreach_empty.kdl", 1);
}

#[test]
fn shared_fan_out_variables_must_agree() {
    snapshot_check("fanout_mismatch.kdl", 1);
}

#[test]
fn missing_and_empty_run() {
    snapshot_check("run_missing.kdl", 1);
}

#[test]
fn include_cycles_and_missing_includes() {
    snapshot_check("include_cycle/main.kdl", 1);
}

#[test]
fn warnings_alone_pass() {
    snapshot_check("warnings.kdl", 0);
}

#[test]
fn a_good_pipeline_gets_a_one_line_summary() {
    let r = run(&root(), &["check", "examples/quickstart/pipeline.kdl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "examples/quickstart/pipeline.kdl: ok: pipeline `quickstart`, 4 steps, 8 derivations, 7 edges\n"
    );
    assert_eq!(r.stderr, "");
}

#[test]
fn json_lists_every_diagnostic_with_its_position() {
    let r = run(
        &root(),
        &["check", "--json", "tests/fixtures/check/resources.kdl"],
    );
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    assert_eq!(v["ok"], false);
    let diags = v["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 10);
    let first = &diags[0];
    assert_eq!(first["file"], "tests/fixtures/check/resources.kdl");
    assert_eq!(first["line"], 6);
    assert_eq!(first["column"], 20);
    assert_eq!(first["severity"], "error");
    assert_eq!(first["message"], "cpus must be at least 1, not 0");
    let memory = &diags[1];
    assert_eq!(memory["column"], 29);
    assert!(memory["hint"].as_str().unwrap().contains("512MiB"));

    let ok = run(
        &root(),
        &["check", "--json", "examples/quickstart/pipeline.kdl"],
    );
    let v: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(
        (
            v["ok"].as_bool(),
            v["steps"].as_u64(),
            v["derivations"].as_u64(),
            v["edges"].as_u64()
        ),
        (Some(true), Some(4), Some(8), Some(7))
    );
}

#[test]
fn missing_unreadable_and_directory_files() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &["check", "nope.kdl"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot read `nope.kdl`: file not found"),
        "{}",
        r.stderr
    );
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    let r = run(dir.path(), &["check", "adir"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("it is a directory, not a file"),
        "{}",
        r.stderr
    );
}

#[test]
fn binary_garbage_is_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // Invalid UTF-8.
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("garbage.kdl"), &bytes).unwrap();
    let r = run(dir.path(), &["check", "garbage.kdl"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("is not a text file"), "{}", r.stderr);
    // Valid UTF-8 full of control characters.
    let text: String = (0..4096u32)
        .map(|i| char::from_u32(i % 40).unwrap())
        .collect();
    std::fs::write(dir.path().join("controls.kdl"), text).unwrap();
    let r = run(dir.path(), &["check", "controls.kdl"]);
    assert_eq!(r.code, 1);
    assert!(!r.stderr.contains("panicked"));
    assert!(
        r.stderr.contains("unexpected character U+0000"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_50_mb_file_ends_in_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.kdl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, "pipeline \"big\"").unwrap();
    let line = "step = this is not how a step looks ( [ at all\n";
    for _ in 0..(50 << 20) / line.len() {
        f.write_all(line.as_bytes()).unwrap();
    }
    drop(f);
    let r = run(dir.path(), &["check", "big.kdl"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("too many syntax errors"),
        "{}",
        &r.stderr[..r.stderr.len().min(2000)]
    );
}

#[test]
fn deep_nesting_is_refused_without_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "pipeline \"deep\"\n{}{}",
        "a {".repeat(200_000),
        "}".repeat(200_000)
    );
    std::fs::write(dir.path().join("deep.kdl"), text).unwrap();
    let r = run(dir.path(), &["check", "deep.kdl"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nested too deeply"), "{}", r.stderr);
}

#[test]
fn kdl_v1_files_are_accepted_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("v1.kdl"),
        "pipeline \"old\"\nparam \"verbose\" true\nstep \"a\" {\n    out t=\"a.txt\"\n    run r\"echo {param.verbose} > {out.t}\"\n}\n",
    )
    .unwrap();
    let r = run(dir.path(), &["check", "v1.kdl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("this file is KDL 1.0"), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("ok: pipeline `old`, 1 step, 1 derivation, 0 edges"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_huge_line_with_thousands_of_errors_gives_a_bounded_report() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<String> = (0..50_000).map(|i| format!("k{i}={i}")).collect();
    std::fs::write(
        dir.path().join("long.kdl"),
        format!("pipeline \"x\" {}\n", entries.join(" ")),
    )
    .unwrap();
    let r = run(dir.path(), &["check", "long.kdl"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.len() < 100_000,
        "{} bytes of report",
        r.stderr.len()
    );
    assert!(
        r.stderr
            .contains("long.kdl:1:14: unknown property `k0` of `pipeline`"),
        "{}",
        &r.stderr[..2000]
    );
    // The checker keeps the first 1,000 errors and counts the rest.
    assert!(
        r.stderr.contains("901 errors not shown"),
        "{}",
        &r.stderr[r.stderr.len() - 500..]
    );
    let json = run(dir.path(), &["check", "--json", "long.kdl"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let diags = v["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 1001);
    assert!(diags.iter().any(
        |d| d["message"] == "49000 more problems were found but not kept (the first 1000 are)"
    ));
}

#[test]
fn a_step_with_a_syntax_error_is_still_known_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.kdl"),
        "pipeline \"p\"\nstep a (oops {\n    out t=\"a.txt\"\n}\nstep b {\n    in x=a.t\n    out u=\"b.txt\"\n    run \"cp {in.x} {out.u}\"\n}\n",
    )
    .unwrap();
    let r = run(dir.path(), &["check", "p.kdl"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("unclosed type annotation"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("unknown step"), "{}", r.stderr);
    assert!(!r.stderr.contains("needs a name"), "{}", r.stderr);
}

#[test]
fn a_panic_in_the_kdl_v1_parser_is_contained() {
    // Found by the fuzzer: the kdl crate's v1 parser panics on this input.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.kdl"), b"(true\0\0\0").unwrap();
    let r = run(dir.path(), &["check", "p.kdl"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        !r.stderr.contains("crashed") && !r.stderr.contains("panicked"),
        "{}",
        r.stderr
    );
}

#[test]
fn paths_made_from_values_and_contradictory_outputs() {
    snapshot_check("more_paths.kdl", 1);
}

#[test]
fn outputs_that_clash_with_sources_or_other_outputs() {
    snapshot_check("outputs_vs_sources.kdl", 1);
}

#[test]
fn malformed_sandbox_and_network_lines() {
    snapshot_check("sandbox.kdl", 1);
}

#[test]
fn a_sandbox_may_not_read_the_pipelines_own_folder_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let top = std::fs::canonicalize(dir.path()).unwrap();
    let w = top.join("w");
    std::fs::create_dir_all(w.join("data")).unwrap();
    // Links outside the pipeline's folder: into it, above it, elsewhere.
    std::os::unix::fs::symlink(w.join("data"), top.join("into")).unwrap();
    std::os::unix::fs::symlink(&top, top.join("above")).unwrap();
    std::os::unix::fs::symlink("/usr", top.join("elsewhere")).unwrap();
    let pipeline = format!(
        r#"pipeline "reads"
sandbox {{ read "{into}" }}
step a {{
    out t="a.txt"
    run "touch {{out.t}}"
    sandbox {{ read "{above}" "{elsewhere}" }}
}}
"#,
        into = top.join("into").display(),
        above = top.join("above").display(),
        elsewhere = top.join("elsewhere").display(),
    );
    std::fs::write(w.join("pipeline.kdl"), pipeline).unwrap();
    let r = run(&w, &["check", "pipeline.kdl"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let into = format!(
        "`{}` leads to `{}`, which is in the pipeline's folder",
        top.join("into").display(),
        w.join("data").display()
    );
    assert!(r.stderr.contains(&into), "{}", r.stderr);
    let above = format!(
        "`{}` leads to `{}`, which holds the pipeline's folder",
        top.join("above").display(),
        top.display()
    );
    assert!(r.stderr.contains(&above), "{}", r.stderr);
    assert!(
        r.stderr.ends_with("pipeline.kdl: 2 errors\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_sandbox_may_not_read_the_pipelines_own_folder() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w");
    std::fs::create_dir(&w).unwrap();
    let pipeline = format!(
        r#"pipeline "reads"
step a {{
    out t="a.txt"
    run "touch {{out.t}}"
    sandbox {{ read "{inside}" "{above}" "/opt/elsewhere" }}
    network #true
}}
"#,
        inside = w.join("data").display(),
        above = dir.path().display(),
    );
    std::fs::write(w.join("pipeline.kdl"), pipeline).unwrap();
    let r = run(&w, &["check", "pipeline.kdl"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("is in the pipeline's folder"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("holds the pipeline's folder"),
        "{}",
        r.stderr
    );
    // A folder elsewhere is fine.
    assert!(
        r.stderr.ends_with("pipeline.kdl: 2 errors\n"),
        "{}",
        r.stderr
    );
}
