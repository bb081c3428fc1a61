//! `mustbuild run` on a terminal: the live status line, under a pseudo-terminal
//! made by util-linux's `script`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// util-linux's `script`, which runs a command on a pseudo-terminal. Missing, the
/// test is skipped, except under CI, where it fails.
fn script() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("script"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "`script` (util-linux, Debian package bsdutils) is missing: the terminal test cannot run"
        );
        eprintln!("skipped: `script` (util-linux) is missing");
    }
    found
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `mustbuild run pipeline.kdl --store STORE ARGS…` in `dir` on a 200-column
/// pseudo-terminal; its exit code and everything it wrote (stdout and stderr mixed).
fn on_a_terminal(script: &Path, dir: &Path, term: &str, args: &[&str]) -> (i32, String) {
    let mut cmd = vec![
        env!("CARGO_BIN_EXE_mustbuild").to_string(),
        "run".into(),
        "pipeline.kdl".into(),
        "--store".into(),
        dir.join("store").display().to_string(),
    ];
    cmd.extend(args.iter().map(|a| a.to_string()));
    let line = format!(
        "stty cols 200 rows 50 && exec {}",
        cmd.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    );
    let out = Command::new(script)
        .args(["-qfec", &line, "/dev/null"])
        .current_dir(dir)
        .env("TERM", term)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_terminal_gets_a_status_line_then_the_summary() {
    let Some(script) = script() else { return };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("pipeline.kdl"),
        r#"pipeline "t"
step a {
    foreach v "x" "y"
    out o="a/{v}.txt"
    run "sleep 0.5; echo {v} > {out.o}"
}
step bad {
    out o="bad.txt"
    run "sleep 0.5; echo oops >&2; exit 4"
}
step b {
    in parts=a.o
    out o="b.txt"
    run "cat {in.parts} > {out.o}"
}
"#,
    )
    .unwrap();

    // One at a time: a (x) runs, then a (y) while the line says one executed, one
    // running, and what is left.
    let (code, out) = on_a_terminal(&script, tmp.path(), "xterm", &["-j", "1", "--keep-going"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("/4  executed 1 · cached 0 · running 1 · failed 0 · ETA 0:0"),
        "{out}"
    );
    assert!(out.contains("▸ a (y)"), "{out}");
    // Executed steps and failures go above the line; starts only show on it.
    assert!(out.contains("done     a (x) in "), "{out}");
    assert!(
        out.contains("FAILED   bad: Failed { exit_code: 4 }"),
        "{out}"
    );
    assert!(out.contains("    | oops"), "{out}");
    assert!(!out.contains("run      a"), "{out}");
    assert!(
        out.contains("executed 3, cached 0, failed 1, skipped 0 in "),
        "{out}"
    );

    // Again: the cached instances are counted, not listed, while `bad` runs.
    let (code, out) = on_a_terminal(&script, tmp.path(), "xterm", &["-j", "2", "--keep-going"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("executed 0 · cached 3 · running 1 · failed 0  ▸ bad"),
        "{out}"
    );
    assert!(!out.contains("cached   a"), "{out}");
    assert!(
        out.contains("executed 0, cached 3, failed 1, skipped 0 in "),
        "{out}"
    );

    // A dumb terminal gets the plain lines.
    let (code, out) = on_a_terminal(&script, tmp.path(), "dumb", &["--keep-going"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cached   a (x)\n"), "{out}");
    assert!(out.contains("run      bad\n"), "{out}");
    assert!(!out.contains(" · "), "{out}");
}
