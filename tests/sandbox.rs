//! Sandboxed steps (the default; `--no-sandbox` turns it off): a step sees its
//! inputs, its tools and the system, and nothing else (Landlock). Run on this
//! machine's kernel; with `CI` set, a kernel without Landlock fails these
//! tests instead of skipping.

mod common;

use common::{FAN_OUT, results, workspace};

/// Whether the kernel enforces Landlock (with `CI` set, it must).
fn landlock() -> bool {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import ctypes; print(ctypes.CDLL(None).syscall(444, None, 0, 1))",
        ])
        .output()
        .expect("python3 runs");
    let abi: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(-1);
    if abi < 1 && std::env::var_os("CI").is_some() {
        panic!("CI is set and this kernel has no Landlock: the sandbox cannot be tested");
    }
    abi >= 1
}

fn sandboxed(dir: &std::path::Path, extra: &[&str]) -> common::Run {
    let mut args = vec!["run", "pipeline.kdl", "--store", "store"];
    args.extend(extra);
    common::run(dir, &args)
}

fn unsandboxed(dir: &std::path::Path) -> common::Run {
    common::run(
        dir,
        &["run", "pipeline.kdl", "--store", "store", "--no-sandbox"],
    )
}

#[test]
fn a_pipeline_that_keeps_to_its_inputs_runs_sandboxed_with_the_same_bytes() {
    if !landlock() {
        return;
    }
    let free = workspace(FAN_OUT);
    let r = unsandboxed(free.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let boxed = workspace(FAN_OUT);
    let r = sandboxed(boxed.path(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(results(boxed.path()), results(free.path()));
    // Each run record says whether its step ran sandboxed.
    let sandboxed_runs = |dir: &std::path::Path| {
        let r = common::run(dir, &["stats", "--json", "--store", "store"]);
        common::sandboxed_runs(&r.stdout)
    };
    assert_eq!(sandboxed_runs(boxed.path()), (4, 4));
    assert_eq!(sandboxed_runs(free.path()), (0, 4));
}

#[test]
fn reading_or_writing_outside_the_steps_folder_fails_and_names_the_path() {
    if !landlock() {
        return;
    }
    let dir = workspace("");
    let secret = dir.path().join("data/secret.txt");
    std::fs::write(&secret, "not declared\n").unwrap();
    let outside = std::env::temp_dir().join(common::unique("outside"));
    // A declared input outside the pipeline's folder is read where it is.
    let elsewhere = tempfile::tempdir().unwrap();
    let declared = elsewhere.path().join("declared.txt");
    std::fs::write(&declared, "declared\n").unwrap();
    let pipeline = format!(
        r#"pipeline "walls"
input samples glob="data/samples/*.fastq"
input outside_input "{declared}"
step absolute {{
    out x="a.txt"
    run "cat {secret} > {{out.x}}"
}}
step parent {{
    out x="b.txt"
    run "cat ../../../data/secret.txt > {{out.x}}"
}}
step tmp {{
    out x="c.txt"
    run "echo x > {outside}; echo x > {{out.x}}"
}}
step declared {{
    in d=outside_input
    out x="e.txt"
    run "cat {{in.d}} > {{out.x}}"
}}
step fine {{
    in samples=samples
    out x="d.txt"
    run "cat {{in.samples}} | wc -l > {{out.x}}; python3 -c 'print(1)' >> {{out.x}}"
}}
"#,
        secret = secret.display(),
        outside = outside.display(),
        declared = declared.display(),
    );
    std::fs::write(dir.path().join("pipeline.kdl"), &pipeline).unwrap();
    let r = sandboxed(dir.path(), &["--keep-going"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let denied = |path: &str| format!("{path}: Permission denied");
    assert!(
        r.stderr.contains(&denied(&secret.display().to_string())),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&denied("../../../data/secret.txt")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&denied(&outside.display().to_string())),
        "{}",
        r.stderr
    );
    assert!(!outside.exists());
    assert!(!dir.path().join("a.txt").exists());
    // And is told what to do about it.
    assert!(
        r.stderr.contains(&format!(
            "warning: `absolute` ran sandboxed, which refused {}; declare",
            secret.display()
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("declare it as an input: in x=(file)\"data/secret.txt\""),
        "{}",
        r.stderr
    );
    // Declared inputs and the system's tools are there.
    assert!(r.stderr.contains("FAILED   absolute"), "{}", r.stderr);
    assert!(!r.stderr.contains("FAILED   fine"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("e.txt")).unwrap(),
        "declared\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("d.txt")).unwrap(),
        "12000\n1\n"
    );
    // The same steps, unsandboxed, do what they like.
    let r = unsandboxed(dir.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(outside.exists());
    let _ = std::fs::remove_file(&outside);
}

#[test]
fn the_network_is_off_in_the_sandbox() {
    if !landlock() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = workspace(&format!(
        r#"pipeline "offline"
step call {{
    out x="x.txt"
    run "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=5)' && echo reached > {{out.x}}"
}}
"#
    ));
    let r = sandboxed(dir.path(), &[]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("PermissionError"), "{}", r.stderr);
    let r = unsandboxed(dir.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    drop(listener);
}

#[test]
fn udp_is_off_in_the_sandbox_too_and_on_with_network_true() {
    if !landlock() {
        return;
    }
    let listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pipeline = |network: &str| {
        format!(
            r#"pipeline "datagrams"
step send {{
    out x="x.txt"
    run "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"hi\", (\"127.0.0.1\", {port}))' && echo sent > {{out.x}}"
    {network}
}}
"#
        )
    };
    let dir = workspace(&pipeline(""));
    let r = sandboxed(dir.path(), &[]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("PermissionError"), "{}", r.stderr);
    listener
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(listener.recv(&mut buf).is_err(), "nothing came through");
    std::fs::write(dir.path().join("pipeline.kdl"), pipeline("network #true")).unwrap();
    let r = sandboxed(dir.path(), &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(listener.recv(&mut buf).unwrap(), 2);
    assert_eq!(&buf[..2], b"hi");
}

/// `sandbox { read … }`, `network #true` and `sandbox #false`: each step
/// declares what it may reach, the key holds the reads and the impurity, and
/// `why` and `audit` say so.
#[test]
fn a_step_declares_what_its_sandbox_allows_and_the_key_holds_it() {
    if !landlock() {
        return;
    }
    let refs = tempfile::tempdir().unwrap();
    std::fs::write(refs.path().join("genome.fa"), ">chr1\nACGT\n").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let outside = std::env::temp_dir().join(common::unique("unsandboxed"));
    let pipeline = |read_line: &str| {
        format!(
            r#"pipeline "allowances"
step reads {{
    out x="genome-copy.fa"
    run "cat {refs}/genome.fa > {{out.x}}"
    {read_line}
}}
step fetch {{
    out x="fetched.txt"
    run "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=5)' && echo reached > {{out.x}}"
    network #true
}}
step free {{
    out x="free.txt"
    run "echo x > {outside}; echo ok > {{out.x}}"
    sandbox #false
}}
"#,
            refs = refs.path().display(),
            outside = outside.display(),
        )
    };
    let read_line = format!("sandbox {{ read \"{}\" }}", refs.path().display());
    let dir = workspace(&pipeline(&read_line));
    let r = sandboxed(dir.path(), &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("genome-copy.fa")).unwrap(),
        ">chr1\nACGT\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("fetched.txt")).unwrap(),
        "reached\n"
    );
    assert!(outside.exists(), "`sandbox #false` lets it write anywhere");
    let _ = std::fs::remove_file(&outside);
    let stats = common::run(dir.path(), &["stats", "--json", "--store", "store"]);
    assert_eq!(common::sandboxed_runs(&stats.stdout), (2, 3));

    // `why` says which result may depend on more than its key, and which was
    // made unsandboxed.
    let why = common::run(dir.path(), &["why", "fetch", "--store", "store"]);
    assert_eq!(why.code, 0, "{}", why.stderr);
    assert!(
        why.stdout.contains("fetch is impure (network)"),
        "{}",
        why.stdout
    );
    let json = common::run(dir.path(), &["why", "fetch", "--json", "--store", "store"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["explanation"]["impure"], serde_json::json!(["network"]));
    assert_eq!(v["explanation"]["made_by"]["sandboxed"], true);
    let why = common::run(dir.path(), &["why", "free", "--store", "store"]);
    assert!(why.stdout.contains("made unsandboxed"), "{}", why.stdout);
    let why = common::run(dir.path(), &["why", "reads", "--store", "store"]);
    assert!(!why.stdout.contains("impure"), "{}", why.stdout);
    assert!(!why.stdout.contains("unsandboxed"), "{}", why.stdout);

    // `audit` runs them as `run` does (the network step reaches the port
    // again) and marks the impure one.
    let audit = common::run(dir.path(), &["audit", "pipeline.kdl", "--store", "store"]);
    assert_eq!(audit.code, 0, "{}\n{}", audit.stdout, audit.stderr);
    assert!(
        audit
            .stdout
            .contains("reproducible  fetch (impure: network)"),
        "{}",
        audit.stdout
    );
    assert!(
        audit.stdout.contains("reproducible  reads\n"),
        "{}",
        audit.stdout
    );
    let _ = std::fs::remove_file(&outside);

    // The declared folder is in the key: without it the step runs again (it
    // is not reused), and the sandbox refuses the read, saying what to add.
    std::fs::write(dir.path().join("pipeline.kdl"), pipeline("")).unwrap();
    let r = sandboxed(dir.path(), &["--keep-going"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("FAILED   reads"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "or its folder as read (`sandbox {{ read \"{}\" }}`)",
            refs.path().display()
        )),
        "{}",
        r.stderr
    );
    assert!(!outside.exists(), "free was reused, not run again");
    drop(listener);
}

/// `--sandbox-report`: a refused step runs again with what it was refused,
/// until all it needs is known, and the report gives each path's line;
/// nothing of it is stored.
#[test]
fn the_sandbox_report_lists_everything_a_step_needs_at_once() {
    if !landlock() {
        return;
    }
    let dir = workspace("");
    let secret = dir.path().join("data/secret.txt");
    std::fs::write(&secret, "not declared\n").unwrap();
    let refs = tempfile::tempdir().unwrap();
    std::fs::write(refs.path().join("genome.fa"), ">chr1\n").unwrap();
    let outside = std::env::temp_dir().join(common::unique("report"));
    std::fs::create_dir(&outside).unwrap();
    let pipeline = format!(
        r#"pipeline "report"
step greedy {{
    out x="a.txt"
    run "cat {secret} > {{out.x}}; cat {refs}/genome.fa >> {{out.x}}; echo x > {outside}/made.txt"
}}
"#,
        secret = secret.display(),
        refs = refs.path().display(),
        outside = outside.display(),
    );
    std::fs::write(dir.path().join("pipeline.kdl"), &pipeline).unwrap();
    let r = sandboxed(dir.path(), &["--sandbox-report"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let expect = [
        "sandbox report: `greedy` needs what its sandbox refuses (with all of it allowed, it succeeds".to_string(),
        format!(
            "read  {}: declare it as an input: in x=(file)\"data/secret.txt\"",
            secret.display()
        ),
        format!(
            "read  {}: declare it as an input (in x=(file)\"{}\"), or its folder as read (`sandbox {{ read \"{}\" }}`)",
            refs.path().join("genome.fa").display(),
            refs.path().join("genome.fa").display(),
            refs.path().display()
        ),
        format!("write {}: a step writes only in its own folder", outside.join("made.txt").display()),
    ];
    for e in &expect {
        assert!(r.stderr.contains(e.as_str()), "{e}\n{}", r.stderr);
    }
    // The step's own log is the refused run's, and nothing was stored.
    assert!(
        r.stderr
            .contains(&format!("{}: Permission denied", secret.display()))
    );
    assert!(!dir.path().join("a.txt").exists());
    // One execution recorded: the refused one, sandboxed, failed.
    let stats = common::run(dir.path(), &["stats", "--json", "--store", "store"]);
    assert_eq!(
        common::sandboxed_runs(&stats.stdout),
        (1, 1),
        "{}",
        stats.stdout
    );
    let v: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(v["steps"][0]["failed"], 1, "{}", stats.stdout);
    let _ = std::fs::remove_dir_all(&outside);
    // Not with a batch executor.
    let r = sandboxed(dir.path(), &["--sandbox-report", "--executor", "slurm"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--sandbox-report watches steps on this machine only")
    );
}

#[test]
fn the_quickstart_example_gives_the_same_bytes_sandboxed() {
    if !landlock() {
        return;
    }
    let results = |extra: &[&str]| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("qs");
        common::copy_dir(&common::root().join("examples/quickstart"), &dir);
        let mut args = vec!["run", "pipeline.kdl", "--store", "../store"];
        args.extend(extra);
        let r = common::run(&dir, &args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let stats = common::run(&dir, &["stats", "--json", "--store", "../store"]);
        (
            tree(&dir.join("results")),
            common::sandboxed_runs(&stats.stdout),
            tmp,
        )
    };
    let (boxed, (sandboxed, runs), _a) = results(&[]);
    let (free, (unsandboxed, _), _b) = results(&["--no-sandbox"]);
    assert_eq!((sandboxed, unsandboxed), (runs, 0));
    assert!(runs > 0 && boxed.len() >= 4, "{boxed:?}");
    assert_eq!(boxed, free);
}

/// Every file below `dir`, by relative path, with its bytes.
fn tree(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Runs `mustbuild ARGS` in `dir` as on a kernel without Landlock: a
/// seccomp filter, set by python3 before it becomes mustbuild, answers the
/// three Landlock calls with ENOSYS, as such a kernel does (x86-64 numbers).
fn without_landlock(dir: &std::path::Path, args: &[&str]) -> common::Run {
    const NO_LANDLOCK: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
ins = lambda code, jt, jf, k: struct.pack("HBBI", code, jt, jf, k)
prog = [
    ins(0x20, 0, 0, 4), ins(0x15, 0, 5, 0xC000003E),          # x86-64, else allow
    ins(0x20, 0, 0, 0),                                        # the call's number
    ins(0x15, 2, 0, 444), ins(0x15, 1, 0, 445), ins(0x15, 0, 1, 446),
    ins(0x06, 0, 0, 0x00050000 | 38),                          # ENOSYS
    ins(0x06, 0, 0, 0x7FFF0000),                               # allow
]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
code = ctypes.create_string_buffer(b"".join(prog))
p = Prog(len(prog), ctypes.cast(code, ctypes.c_void_p))
assert libc.prctl(38, 1, 0, 0, 0) == 0                         # no new privileges
assert libc.syscall(317, 1, 0, ctypes.byref(p)) == 0           # seccomp(SET_MODE_FILTER)
os.execv(sys.argv[1], sys.argv[1:])
"#;
    let cmd = common::mustbuild(dir);
    let mut python = std::process::Command::new("python3");
    python
        .current_dir(dir)
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(["-c", NO_LANDLOCK])
        .arg(cmd.get_program())
        .args(args);
    common::output(&mut python)
}

#[test]
fn without_landlock_a_run_says_so_once_and_records_it_and_can_refuse() {
    if std::env::consts::ARCH != "x86_64" {
        return; // The filter above knows x86-64's call numbers only.
    }
    let dir = workspace(FAN_OUT);
    let r = without_landlock(dir.path(), &["run", "pipeline.kdl", "--store", "store"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warning = "warning: steps run unsandboxed: this kernel has no Landlock";
    assert_eq!(r.stderr.matches(warning).count(), 1, "{}", r.stderr);
    let stats = common::run(dir.path(), &["stats", "--json", "--store", "store"]);
    assert_eq!(common::sandboxed_runs(&stats.stdout), (0, 4));
    // Asked to require it: an error, and nothing runs.
    let again = workspace(FAN_OUT);
    let r = without_landlock(
        again.path(),
        &[
            "run",
            "pipeline.kdl",
            "--store",
            "store",
            "--require-sandbox",
        ],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("error: steps cannot be sandboxed: this kernel has no Landlock"),
        "{}",
        r.stderr
    );
    assert!(!again.path().join("results").exists());
}

#[test]
fn a_batch_node_without_landlock_fails_a_step_whose_run_requires_the_sandbox() {
    if std::env::consts::ARCH != "x86_64" {
        return; // As above.
    }
    let job = |require_sandbox: bool| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(mustbuild_engine::worker::WORK)).unwrap();
        let spec = mustbuild_engine::worker::Spec {
            label: "step".into(),
            command: "echo made > out.txt".into(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            outputs: vec!["out.txt".into()],
            time_limit_ms: None,
            gpus: 0,
            tools: Vec::new(),
            core_watts: 10.0,
            memory_watts_per_gb: 0.4,
            sandbox: true,
            allows: Default::default(),
            outside: Vec::new(),
            require_sandbox,
        };
        let path = dir.path().join(mustbuild_engine::worker::SPEC);
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        let r = without_landlock(dir.path(), &["worker", path.to_str().unwrap()]);
        let result = dir.path().join(mustbuild_engine::worker::RESULT);
        let result: serde_json::Value =
            serde_json::from_slice(&std::fs::read(result).expect(&r.stderr)).unwrap();
        (result, dir)
    };
    let (r, _dir) = job(false);
    assert_eq!(
        (r["outcome"].as_str(), r["sandboxed"].as_bool()),
        (Some("succeeded"), Some(false))
    );
    let (r, dir) = job(true);
    assert_eq!(r["outcome"], "infrastructure", "{r}");
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("this node cannot sandbox the step"),
        "{detail}"
    );
    assert!(!dir.path().join("work/out.txt").exists(), "it did not run");
}

/// A declared tool found on `PATH` through a link into an installation
/// elsewhere (a conda environment's `bin/`) runs, and reads its own
/// installation, sandboxed.
#[test]
fn a_declared_tool_linked_from_path_runs_with_its_installation() {
    if !landlock() {
        return;
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let env = elsewhere.path().join("env");
    std::fs::create_dir_all(env.join("bin")).unwrap();
    std::fs::create_dir_all(env.join("share")).unwrap();
    std::fs::write(env.join("share/greeting.txt"), "hello from the env\n").unwrap();
    let tool = env.join("bin/greet");
    std::fs::write(
        &tool,
        format!("#!/bin/sh\ncat {}/share/greeting.txt\n", env.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let on_path = elsewhere.path().join("path");
    std::fs::create_dir(&on_path).unwrap();
    std::os::unix::fs::symlink(&tool, on_path.join("greet")).unwrap();
    let dir = workspace(
        r#"pipeline "tools"
tool greet
step hello {
    out x="hello.txt"
    run "greet > {out.x}"
}
"#,
    );
    let path = format!("{}:/usr/bin:/bin", on_path.display());
    let r = common::output(common::mustbuild(dir.path()).env("PATH", &path).args([
        "run",
        "pipeline.kdl",
        "--store",
        "store",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hello.txt")).unwrap(),
        "hello from the env\n"
    );
    let stats = common::run(dir.path(), &["stats", "--json", "--store", "store"]);
    assert_eq!(common::sandboxed_runs(&stats.stdout), (1, 1));
}

/// A result made unsandboxed may read what the sandbox refuses: its audit
/// (sandboxed, as a run is) fails, and says what was refused and what to do.
#[test]
fn an_audit_of_a_result_made_unsandboxed_says_what_the_sandbox_refused() {
    if !landlock() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "undeclared\n").unwrap();
    let pipeline = format!(
        r#"pipeline "peeks"
step peek {{
    out t="t.txt"
    run "cat {secret} > {{out.t}}"
}}
"#,
        secret = secret.display()
    );
    std::fs::write(dir.path().join("pipeline.kdl"), pipeline).unwrap();
    let r = unsandboxed(dir.path());
    assert_eq!(r.code, 0, "{}", r.stderr);

    let audit = common::run(dir.path(), &["audit", "pipeline.kdl", "--store", "store"]);
    assert_eq!(audit.code, 1, "{}\n{}", audit.stdout, audit.stderr);
    assert!(
        audit
            .stdout
            .contains("failed        peek: Failed { exit_code: 1 }\n"),
        "{}",
        audit.stdout
    );
    let refused = format!("`peek` ran sandboxed, which refused {}", secret.display());
    assert!(audit.stdout.contains(&refused), "{}", audit.stdout);
    assert!(audit.stdout.contains("--no-sandbox"), "{}", audit.stdout);
    let json = common::run(
        dir.path(),
        &["audit", "pipeline.kdl", "--store", "store", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["verdict"], "failed", "{v}");
    assert_eq!(v["sandboxed"], true, "{v}");
    assert_eq!(
        v["refused"],
        serde_json::json!([secret.display().to_string()]),
        "{v}"
    );
    assert!(v["advice"].as_str().unwrap().contains(&refused), "{v}");

    // Unsandboxed, as it was made, it is reproducible (and nothing is refused).
    let audit = common::run(
        dir.path(),
        &["audit", "pipeline.kdl", "--store", "store", "--no-sandbox"],
    );
    assert_eq!(audit.code, 0, "{}\n{}", audit.stdout, audit.stderr);
    assert!(
        audit.stdout.contains("reproducible  peek\n"),
        "{}",
        audit.stdout
    );
}
