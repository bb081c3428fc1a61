//! `mustbuild report`: one HTML file that opens in a real browser (headless
//! Chromium) with no console message, fetches nothing, and shows the steps
//! and the run's totals.

mod common;

use common::{mustbuild, output};

const PIPELINE: &str = r#"pipeline "report"
step split {
  in src=(file)"in.txt"
  out o="lines.txt"
  run "sort {in.src} > {out.o}"
}
step count {
  in x=split.o
  out o="count.txt"
  run "wc -l < {in.x} > {out.o}"
}
step shout {
  in x=split.o
  out o="shout.txt"
  run "tr a-z A-Z < {in.x} > {out.o}"
}
"#;

/// Debian's `chromium` (MUSTBUILD_CHROMIUM names another); `None` to skip,
/// which CI does not allow.
fn chromium() -> Option<std::path::PathBuf> {
    let named = std::env::var_os("MUSTBUILD_CHROMIUM").map(std::path::PathBuf::from);
    let found = named.or_else(|| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("chromium"))
                .find(|c| c.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but there is no chromium to open the report with (scripts/test-all installs it)"
        );
        eprintln!("skipped: no chromium on PATH (apt-get install chromium)");
    }
    found
}

#[test]
fn the_report_opens_in_chromium_without_errors_and_shows_steps_and_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pipeline.kdl"), PIPELINE).unwrap();
    std::fs::write(dir.join("in.txt"), "pear\napple\n<fig>\n").unwrap();
    let store = tmp.path().join("store");
    let run = |args: &[&str]| {
        let r = output(mustbuild(&dir).args(args).env("MUSTBUILD_STORE", &store));
        assert_eq!(r.code, 0, "{}{}", r.stderr, r.stdout);
        r
    };
    run(&["run", "pipeline.kdl"]);
    let report = tmp.path().join("report.html");
    let r = run(&["report", "-o", report.to_str().unwrap()]);
    assert!(r.stderr.contains("(run 1, 3 executions)"), "{}", r.stderr);
    let html = std::fs::read_to_string(&report).unwrap();
    // Self-contained: nothing to fetch.
    for fetch in ["src=\"http", "href=\"http", "<link", "@import", "url("] {
        assert!(
            !html.contains(fetch),
            "the report fetches something: {fetch}"
        );
    }
    for section in ["summary", "timeline", "graph", "steps", "energy", "memory"] {
        assert!(
            html.contains(&format!("<section id=\"{section}\"")),
            "no {section}"
        );
    }
    // The graph has the two edges out of split.
    assert_eq!(html.matches("<line ").count(), 2);
    let stats: serde_json::Value = serde_json::from_str(&run(&["stats", "--json"]).stdout).unwrap();
    let Some(chromium) = chromium() else { return };
    let opened = std::process::Command::new(&chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--log-level=0",
            "--dump-dom",
        ])
        .arg(format!("file://{}", report.display()))
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&opened.stderr);
    let dom = String::from_utf8_lossy(&opened.stdout);
    assert!(opened.status.success(), "{stderr}");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged: {console:#?}");
    assert!(dom.contains("Run 1 of"), "{dom}");
    for step in ["split", "count", "shout"] {
        assert!(dom.contains(&format!(">{step}<")), "{step} is not shown");
    }
    // The totals, as `stats` gives them.
    let energy = stats["totals"]["energy_joules"].as_f64().unwrap();
    assert!(
        dom.contains(&format!("<dd>{energy:.1} J</dd>")),
        "no total energy {energy:.1} J in the page"
    );
    assert!(dom.contains("<dt>executed</dt><dd>3</dd>"));
}
