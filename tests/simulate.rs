//! `mustbuild simulate`: a cold run replayed on N cores from predicted
//! durations (declared, then measured), nothing run.

mod common;

const PIPELINE: &str = r#"pipeline "parts"
input parts glob="data/*.txt"
step work {
    foreach part from=parts
    in x=part
    out o="out/{part.stem}.txt"
    resources time="10s"
    run "cp {in.x} {out.o}"
}
step all {
    in xs=work.o
    out o="all.txt"
    resources time="5s"
    run "cat {in.xs} > {out.o}"
}
"#;

#[test]
fn a_fan_out_and_its_gather_are_replayed_from_declared_then_measured_durations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for i in 0..4 {
        std::fs::write(dir.path().join(format!("data/{i}.txt")), format!("{i}\n")).unwrap();
    }
    std::fs::write(dir.path().join("pipeline.kdl"), PIPELINE).unwrap();
    let simulate = |extra: &[&str]| {
        let mut args = vec!["simulate", "pipeline.kdl", "--store", "store"];
        args.extend(extra);
        common::run(dir.path(), &args)
    };

    // Four 10 s steps on two cores, then the 5 s gather: 25 s, against
    // max(critical path 15 s, work 45 s / 2 cores).
    let r = simulate(&["--cores", "2", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["instances"], 5, "{v}");
    assert_eq!(v["makespan"], 25.0, "{v}");
    assert_eq!(v["critical_path"], 15.0, "{v}");
    assert_eq!(v["work"], 45.0, "{v}");
    assert_eq!(v["lower_bound"], 22.5, "{v}");
    assert_eq!(v["predicted_from_declarations"], 2, "{v}");
    // On four cores the bound is the critical path, and it is met.
    let r = simulate(&["--cores", "4", "--json"]);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (v["makespan"].as_f64(), v["lower_bound"].as_f64()),
        (Some(15.0), Some(15.0))
    );
    // Only what a target needs.
    let r = simulate(&["work", "--cores", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (v["instances"].as_u64(), v["makespan"].as_f64()),
        (Some(4), Some(20.0))
    );
    // For people.
    let r = simulate(&["--cores", "2"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("5 instances on 2 cores"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("makespan       25.0 s  (1.11 × the lower bound)"),
        "{}",
        r.stdout
    );
    // Nothing ran, and no store was made.
    assert!(!dir.path().join("all.txt").exists());
    assert!(!dir.path().join("store").exists());

    // Once it ran, history predicts: these steps take milliseconds.
    let ran = common::run(dir.path(), &["run", "pipeline.kdl", "--store", "store"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let r = simulate(&["--cores", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["predicted_from_history"], 2, "{v}");
    assert!(v["makespan"].as_f64().unwrap() < 5.0, "{v}");
}
