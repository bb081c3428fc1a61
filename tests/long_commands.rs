//! Commands longer than Linux lets a program's argument be: gathers over
//! thousands of files, as Seismology and Montage workflows have them.

mod common;

use std::path::Path;

/// `n` source files in `dir/data`, with paths of 63 bytes as a seismic archive
/// names its traces (1,000 per folder), each holding its own path; their paths,
/// sorted as a glob gives them.
fn traces(dir: &Path, n: usize) -> Vec<String> {
    let paths: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "data/seis/net_{:03}/IU.ANMO.00.BHZ.2026-12-06T00-00-00.{i:06}.sac",
                i / 1000
            )
        })
        .collect();
    for p in &paths {
        let path = dir.join(p);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, format!("{p}\n")).unwrap();
    }
    paths
}

/// `mustbuild run pipeline.kdl --store STORE --json ARGS…` in `dir`, with
/// `MUSTBUILD_COMMAND_FILE` set as given.
fn run(dir: &Path, command_file: Option<&str>, args: &[&str]) -> common::Run {
    let store = dir.join("store");
    let mut cmd = common::mustbuild(dir);
    cmd.args([
        "run",
        "pipeline.kdl",
        "--store",
        store.to_str().unwrap(),
        "--json",
    ])
    .args(args);
    match command_file {
        Some(how) => cmd.env("MUSTBUILD_COMMAND_FILE", how),
        None => cmd.env_remove("MUSTBUILD_COMMAND_FILE"),
    };
    common::output(&mut cmd)
}

/// A folder with `n` traces (see [`traces`]) and `pipeline` as its
/// `pipeline.kdl`; the traces' paths.
fn archive(n: usize, pipeline: &str) -> (tempfile::TempDir, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let paths = traces(tmp.path(), n);
    std::fs::write(tmp.path().join("pipeline.kdl"), pipeline).unwrap();
    (tmp, paths)
}

/// The run's summary counts: executed and cached.
fn counts(r: &common::Run) -> (u64, u64) {
    assert_eq!(r.code, 0, "{}", r.stderr);
    let last = r.stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last).unwrap();
    (
        summary["executed"].as_u64().unwrap(),
        summary["cached"].as_u64().unwrap(),
    )
}

fn read(dir: &Path, path: &str) -> String {
    std::fs::read_to_string(dir.join(path)).unwrap()
}

/// Each of `n` paths reaches a command through bash (`printf`, once per
/// instance of a fan-out over two values) and a command started without it
/// (`cat`); a rerun runs nothing; the keys are the same when every command goes
/// through the command file.
fn gather(n: usize) {
    let (tmp, paths) = archive(
        n,
        r##"pipeline "gather"
input traces glob="data/**/*.sac"
step listed {
    foreach mode "names" "again"
    in all=traces
    out list="lists/{mode}.txt"
    run #"printf '{mode} %s\n' {in.all} > {out.list}"#
}
step merged {
    in all=traces
    out all="merged.txt"
    run "cat {in.all} > {out.all}"
}
"##,
    );
    let dir = tmp.path();
    // Through the file whatever the length, as a cluster executor would.
    assert_eq!(counts(&run(dir, Some("always"), &[])), (3, 0));
    let all: String = paths.iter().map(|p| format!("{p}\n")).collect();
    assert_eq!(read(dir, "merged.txt"), all);
    for mode in ["names", "again"] {
        let listed: String = paths.iter().map(|p| format!("{mode} {p}\n")).collect();
        assert_eq!(read(dir, &format!("lists/{mode}.txt")), listed, "{mode}");
    }
    // The way a command starts is not in its key.
    assert_eq!(counts(&run(dir, None, &[])), (0, 3));
    // Nor in its results: run again, each the way its length takes it.
    let forced = run(dir, None, &["--force", "listed", "--force", "merged"]);
    assert_eq!(counts(&forced), (3, 0));
    assert_eq!(read(dir, "merged.txt"), all);
    let listed: String = paths.iter().map(|p| format!("names {p}\n")).collect();
    assert_eq!(read(dir, "lists/names.txt"), listed);
    assert_eq!(counts(&run(dir, None, &[])), (0, 3));
}

#[test]
fn a_gather_over_3000_files_is_over_what_one_argument_may_be() {
    // 3,000 paths of 63 bytes: 192 KB, over 128 KiB.
    gather(3_000);
}

#[test]
fn a_gather_over_20000_files_is_over_a_mebibyte() {
    // 1.28 MB.
    gather(20_000);
}

#[test]
fn a_fan_out_of_3000_into_a_gather() {
    let (tmp, paths) = archive(
        3_000,
        r#"pipeline "picks"
input traces glob="data/**/*.sac"
step pick {
    foreach trace from=traces
    in trace=trace
    out pick="picks/{trace.dir}/{trace.stem}.pick"
    run "cksum {in.trace} > {out.pick}"
}
step catalogue {
    in picks=pick.pick
    out catalogue="catalogue.txt"
    run "cat {in.picks} | sort -k3 > {out.catalogue}"
}
"#,
    );
    let dir = tmp.path();
    assert_eq!(counts(&run(dir, None, &[])), (3_001, 0));
    let catalogue = read(dir, "catalogue.txt");
    let named: Vec<&str> = catalogue
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(named, paths);
    // Each line is its trace's own checksum: the file, its size and its name.
    let first = catalogue.lines().next().unwrap();
    let size = paths[0].len() + 1;
    assert!(first.ends_with(&format!(" {size} {}", paths[0])), "{first}");
    assert_eq!(counts(&run(dir, None, &[])), (0, 3_001));
}

#[test]
fn a_list_of_100000_paths() {
    let (tmp, paths) = archive(
        100_000,
        r##"pipeline "archive"
input traces glob="data/**/*.sac"
step listed {
    in all=traces
    out list="paths.txt"
    run #"printf '%s\n' {in.all} > {out.list}"#
}
"##,
    );
    let dir = tmp.path();
    // 6.4 MB of paths: through the command file, to bash's own `printf`.
    assert_eq!(counts(&run(dir, None, &[])), (1, 0));
    let all: String = paths.iter().map(|p| format!("{p}\n")).collect();
    assert_eq!(read(dir, "paths.txt"), all);
    assert_eq!(counts(&run(dir, None, &[])), (0, 1));
}

#[test]
fn a_program_no_shell_could_start_is_named_with_what_to_do() {
    // One argument of 200 KB; 400,000 of 2 bytes (8 MB with their pointers,
    // over the most Linux allows, 6 MiB).
    let word = "w".repeat(200_000);
    let words = "w ".repeat(400_000);
    let (tmp, _) = archive(
        0,
        &format!(
            "pipeline \"long\"\nparam word \"{word}\"\nparam words \"{words}\"
step echoed {{\n    out o=\"echoed.txt\"\n    run \"echo {{param.word}} | wc -c > {{out.o}}\"\n}}
step one {{\n    out o=\"one.txt\"\n    run \"cksum {{param.word}} > {{out.o}}\"\n}}
step many {{\n    out o=\"many.txt\"\n    run \"cksum {{param.words}} > {{out.o}}\"\n}}\n"
        ),
    );
    let dir = tmp.path();
    // Bash's own `echo` takes it (from the command file).
    assert_eq!(counts(&run(dir, None, &["echoed"])), (1, 0));
    assert_eq!(read(dir, "echoed.txt").trim(), "200001");
    // `cksum` cannot be given it: the step says so, and what to do.
    let store = dir.join("store");
    let failure = |step: &str| {
        let r = common::run(
            dir,
            &[
                "run",
                "pipeline.kdl",
                "--store",
                store.to_str().unwrap(),
                step,
            ],
        );
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(!dir.join(format!("{step}.txt")).exists());
        let prefix = format!("FAILED   {step}: ");
        let line = r.stderr.lines().find(|l| l.starts_with(&prefix));
        let line = line.unwrap_or_else(|| panic!("{}", r.stderr)).to_string();
        assert!(
            line.contains("printf '%s\\n' PATHS… > paths.txt")
                && line.contains("xargs cksum < paths.txt"),
            "{line}"
        );
        line
    };
    assert!(failure("one").starts_with(
        "FAILED   one: cannot start `cksum`: one argument is 200000 bytes, and Linux \
             starts no program with an argument of 131072 or more."
    ));
    let many = failure("many");
    assert!(
        many.starts_with(
            "FAILED   many: cannot start `cksum`: its arguments and environment take "
        ) && many.contains("bytes, over this machine's limit of "),
        "{many}"
    );
}
