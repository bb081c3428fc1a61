//! The shared cache through the real binary, on a folder cache (`file://`)
//! and on a real S3 server (SeaweedFS, which `scripts/test-all` starts): two
//! separate stores share results, signed and checked; what is tampered with,
//! unsigned or signed by a stranger is not used, and the run still succeeds; a
//! cache that does not answer, refuses the credentials or stops mid-run
//! degrades to local work, or fails with --require-cache; a 1 GiB output goes
//! through in bounded memory.

mod common;

use common::{S3, mustbuild, output};
use std::path::{Path, PathBuf};

const PIPELINE: &str = r#"pipeline "shared"
step sort {
  in src=(file)"in.txt"
  out o="sorted.txt"
  run "sort {in.src} > {out.o}"
}
step count {
  in x=sort.o
  out o="count.txt"
  run "wc -l < {in.x} > {out.o}"
}
step big {
  out o="big.bin"
  run "head -c 100000 /dev/urandom > {out.o}"
}
"#;

/// Where the cache's bytes are, to change them behind mustbuild's back.
enum Bytes {
    Folder(PathBuf),
    S3 { server: S3, prefix: String },
}

struct Lab {
    tmp: tempfile::TempDir,
    url: String,
    bytes: Bytes,
    env: Vec<(&'static str, String)>,
    public: String,
    pipeline: String,
}

impl Lab {
    fn folder() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("cache");
        Lab::new(
            tmp,
            format!("file://{}", folder.display()),
            Bytes::Folder(folder),
            Vec::new(),
        )
    }

    /// On the S3 server of the test run (None: skipped, as `common::s3` says).
    fn s3() -> Option<Lab> {
        let server = common::s3()?;
        let prefix = common::unique("lab");
        Some(Lab::on(server, prefix))
    }

    fn on(server: S3, prefix: String) -> Lab {
        let url = server.url(&prefix);
        let env = server.env().to_vec();
        Lab::new(
            tempfile::tempdir().unwrap(),
            url,
            Bytes::S3 { server, prefix },
            env,
        )
    }

    fn new(
        tmp: tempfile::TempDir,
        url: String,
        bytes: Bytes,
        env: Vec<(&'static str, String)>,
    ) -> Lab {
        let keys = tmp.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let r = output(mustbuild(tmp.path()).args(["cache", "keygen", "lab", "-o", "keys"]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let public = r.stdout.trim().to_string();
        assert!(public.starts_with("lab:"), "{public}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(keys.join("lab.secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Lab {
            tmp,
            url,
            bytes,
            env,
            public,
            pipeline: PIPELINE.to_string(),
        }
    }

    /// `mustbuild` in `dir`, with the cache's credentials.
    fn mustbuild(&self, dir: &Path) -> std::process::Command {
        let mut cmd = mustbuild(dir);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// A workspace of its own (folder and store), configured for the cache.
    fn workspace(&self, name: &str, trusted: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pipeline.kdl"), &self.pipeline).unwrap();
        std::fs::write(dir.join("in.txt"), "pear\napple\nfig\n").unwrap();
        std::fs::write(
            dir.join("mustbuild.kdl"),
            format!(
                "cache {{\n  url \"{}\"\n  trusted-keys \"{trusted}\"\n  secret-key-file \"{}\"\n}}\n",
                self.url,
                self.tmp.path().join("keys/lab.secret").display()
            ),
        )
        .unwrap();
        dir
    }

    fn run(&self, dir: &Path, extra: &[&str]) -> (serde_json::Value, String) {
        let mut args = vec!["run", "pipeline.kdl", "--json"];
        args.extend_from_slice(extra);
        let r = output(
            self.mustbuild(dir)
                .args(&args)
                .env("MUSTBUILD_STORE", dir.join("store")),
        );
        assert_eq!(r.code, 0, "{}{}", r.stderr, r.stdout);
        let summary = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
        (summary, r.stdout)
    }

    /// The realisation key of `step` in `dir`'s last run.
    fn key_of(&self, dir: &Path, step: &str) -> String {
        let r = output(
            mustbuild(dir)
                .args(["why", step, "--json"])
                .env("MUSTBUILD_STORE", dir.join("store")),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let why: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        why["explanation"]["key"].as_str().unwrap().to_string()
    }

    fn put(&self, rel: &str, content: &[u8]) {
        match &self.bytes {
            Bytes::Folder(f) => std::fs::write(f.join(rel), content).unwrap(),
            Bytes::S3 { server, prefix } => server.put(&format!("{prefix}/{rel}"), content),
        }
    }

    fn get(&self, rel: &str) -> Vec<u8> {
        match &self.bytes {
            Bytes::Folder(f) => std::fs::read(f.join(rel)).unwrap(),
            Bytes::S3 { server, prefix } => server.get(&format!("{prefix}/{rel}")),
        }
    }
}

fn warnings(events: &str) -> Vec<String> {
    events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "warning")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

fn counts(summary: &serde_json::Value) -> (Option<u64>, Option<u64>) {
    (summary["executed"].as_u64(), summary["cached"].as_u64())
}

#[test]
fn two_stores_share_results_through_a_folder_and_refuse_what_they_cannot_trust() {
    share_and_refuse(&Lab::folder());
}

#[test]
fn two_stores_share_results_through_s3_and_refuse_what_they_cannot_trust() {
    if let Some(lab) = Lab::s3() {
        share_and_refuse(&lab);
    }
}

fn share_and_refuse(lab: &Lab) {
    let a = lab.workspace("a", &lab.public);
    let (s, _) = lab.run(&a, &[]);
    assert_eq!(s["executed"], 3);
    // Another workspace and store: everything comes from the cache, the same bytes.
    let b = lab.workspace("b", &lab.public);
    let (s, events) = lab.run(&b, &[]);
    assert_eq!(counts(&s), (Some(0), Some(3)), "{events}");
    for f in ["sorted.txt", "count.txt", "big.bin"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(warnings(&events).is_empty(), "{events}");
    // why says where it came from.
    let r = output(
        mustbuild(&b)
            .args(["why", "count"])
            .env("MUSTBUILD_STORE", b.join("store")),
    );
    assert!(
        r.stdout.contains(&format!("fetched from {}", lab.url))
            && r.stdout.contains("signed by `lab`"),
        "{}",
        r.stdout
    );
    let r = output(
        mustbuild(&b)
            .args(["stats"])
            .env("MUSTBUILD_STORE", b.join("store")),
    );
    assert!(
        r.stdout.contains(&format!("fetched from remote caches (made elsewhere, so their cost is not recorded here): 3 from {}", lab.url)),
        "{}",
        r.stdout
    );
    let r = output(
        mustbuild(&b)
            .args(["stats", "--json"])
            .env("MUSTBUILD_STORE", b.join("store")),
    );
    let stats: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(stats["totals"]["fetched_from"][&lab.url], 3, "{}", r.stdout);
    let r = output(lab.mustbuild(&b).args(["cache", "ls", &lab.url]));
    assert_eq!(r.stdout.lines().count(), 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("signed by lab"), "{}", r.stdout);
    let r = output(lab.mustbuild(&b).args(["cache", "verify"]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("3 realisations: 3 intact and trusted"),
        "{}",
        r.stdout
    );

    // `cache pull` warms a store of its own; the run then finds everything there.
    let p = lab.workspace("p", &lab.public);
    let pull = |dir: &Path| {
        let r = output(
            lab.mustbuild(dir)
                .args(["cache", "pull", "--store"])
                .arg(dir.join("store")),
        );
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        r.stdout
    };
    assert!(pull(&p).contains("3 realisations to take: 3 taken"));
    assert!(pull(&p).contains("0 realisations to take"));
    let (s, events) = lab.run(&p, &[]);
    assert_eq!(counts(&s), (Some(0), Some(3)), "{events}");
    let r = output(
        mustbuild(&p)
            .args(["stats", "--json"])
            .env("MUSTBUILD_STORE", p.join("store")),
    );
    let stats: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        stats["totals"]["fetched_from"],
        serde_json::json!({}),
        "{}",
        r.stdout
    );

    // big.bin's object replaced in the cache: detected, not used, run here.
    let digest = blake3::hash(&std::fs::read(a.join("big.bin")).unwrap())
        .to_hex()
        .to_string();
    let object = format!("mustbuild/v1/objects/{}/{digest}.zst", &digest[..2]);
    lab.put(&object, &zstd::bulk::compress(b"forged", 3).unwrap());
    let r = output(lab.mustbuild(&b).args(["cache", "verify"]));
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("1 damaged"), "{}", r.stdout);
    let c = lab.workspace("c", &lab.public);
    let (s, events) = lab.run(&c, &[]);
    assert_eq!(counts(&s), (Some(1), Some(2)), "{events}");
    let w = warnings(&events);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("does not match its digest; discarded, the step runs here"),
        "{w:?}"
    );
    assert_ne!(std::fs::read(c.join("big.bin")).unwrap(), b"forged");
    // Run here, it was pushed again: the cache is whole once more.
    let r = output(lab.mustbuild(&b).args(["cache", "verify"]));
    assert_eq!(r.code, 0, "{}", r.stdout);

    // Trusting another key only: the lab's records are ignored, with one warning.
    let other = {
        let r = output(mustbuild(lab.tmp.path()).args(["cache", "keygen", "other", "-o", "keys"]));
        r.stdout.trim().to_string()
    };
    let d = lab.workspace("d", &other);
    let (s, events) = lab.run(&d, &[]);
    assert_eq!(s["executed"], 3);
    let w = warnings(&events);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("ignoring records signed by `lab`, which trusted-keys does not list"),
        "{w:?}"
    );

    // count's record stripped of its signature: ignored, with one warning.
    let key = lab.key_of(&a, "count");
    let record_path = format!("mustbuild/v1/realisations/{key}.json");
    let mut record: serde_json::Value = serde_json::from_slice(&lab.get(&record_path)).unwrap();
    assert_eq!(record["signatures"][0]["key"], "lab");
    record["signatures"] = serde_json::json!([]);
    lab.put(&record_path, record.to_string().as_bytes());
    let e = lab.workspace("e", &lab.public);
    let (s, events) = lab.run(&e, &[]);
    assert_eq!(counts(&s), (Some(1), Some(2)), "{events}");
    let w = warnings(&events);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&format!("cache {}: ignoring unsigned records", lab.url)),
        "{w:?}"
    );
}

#[test]
fn a_cache_that_does_not_answer_degrades_to_local_work_or_fails_when_required() {
    let lab = Lab::folder();
    let dir = lab.workspace("a", &lab.public);
    // Nothing listens on port 1.
    let dead = "s3://results/lab?endpoint=http://127.0.0.1:1&region=us-east-1";
    let r = output(
        mustbuild(&dir)
            .args(["run", "pipeline.kdl", "--json", "--cache", dead])
            .env("MUSTBUILD_STORE", dir.join("store"))
            .env("AWS_ACCESS_KEY_ID", "K")
            .env("AWS_SECRET_ACCESS_KEY", "very-secret-value"),
    );
    assert_eq!(r.code, 0, "{}{}", r.stderr, r.stdout);
    let w = warnings(&r.stdout);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(dead) && w[0].contains("going on without that cache"),
        "{w:?}"
    );
    assert!(!r.stdout.contains("very-secret-value") && !r.stderr.contains("very-secret-value"));
    std::fs::remove_file(dir.join("sorted.txt")).unwrap();
    std::fs::write(dir.join("in.txt"), "changed\n").unwrap();
    let r = output(
        mustbuild(&dir)
            .args(["run", "pipeline.kdl", "--cache", dead, "--require-cache"])
            .env("MUSTBUILD_STORE", dir.join("store"))
            .env("AWS_ACCESS_KEY_ID", "K")
            .env("AWS_SECRET_ACCESS_KEY", "very-secret-value"),
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("127.0.0.1:1"), "{}", r.stderr);
    assert!(r.stderr.contains("--require-cache"), "{}", r.stderr);
    assert!(!r.stderr.contains("very-secret-value"));
}

#[test]
fn wrong_credentials_are_named_with_the_endpoint_and_never_the_secret() {
    let Some(server) = common::s3() else { return };
    let endpoint = server.endpoint.clone();
    let mut lab = Lab::on(server, common::unique("creds"));
    let dir = lab.workspace("a", &lab.public);
    let wrong = "not-the-secret-8f3a9c";
    lab.env[1].1 = wrong.to_string();
    let (s, events) = lab.run(&dir, &[]);
    assert_eq!(s["executed"], 3);
    let w = warnings(&events);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&endpoint)
            && w[0].contains("refused the secret key (SignatureDoesNotMatch)")
            && w[0].contains("going on without that cache"),
        "{w:?}"
    );
    std::fs::write(dir.join("in.txt"), "kiwi\n").unwrap();
    let r = output(
        lab.mustbuild(&dir)
            .args(["run", "pipeline.kdl", "--require-cache"])
            .env("MUSTBUILD_STORE", dir.join("store")),
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&endpoint) && r.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        r.stderr
    );
    lab.env[0].1 = "nobody".to_string();
    std::fs::write(dir.join("in.txt"), "plum\n").unwrap();
    let (_, events) = lab.run(&dir, &[]);
    let w = warnings(&events);
    assert!(
        w.len() == 1 && w[0].contains("does not know the access key"),
        "{w:?}"
    );
    for text in [&events, &r.stdout, &r.stderr] {
        assert!(!text.contains(wrong), "{text}");
    }
    // No AWS variables: the right keys from the shared files' profile are used.
    let home = lab.tmp.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    let right = common::s3().unwrap();
    let (right_key, right_secret) = (right.access_key, right.secret_key);
    std::fs::write(
        home.join(".aws/credentials"),
        format!("[default]\naws_access_key_id = nobody\naws_secret_access_key = x\n[lab]\naws_access_key_id = {right_key}\naws_secret_access_key = {right_secret}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("in.txt"), "fig\n").unwrap();
    let r = output(
        mustbuild(&dir)
            .args(["run", "pipeline.kdl", "--json", "--require-cache"])
            .env("MUSTBUILD_STORE", dir.join("store"))
            .env("HOME", &home)
            .env("AWS_PROFILE", "lab")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY"),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(warnings(&r.stdout).is_empty(), "{}", r.stdout);
    assert!(!r.stdout.contains(&right_secret) && !r.stderr.contains(&right_secret));
}

/// An S3 server of the test's own (it is stopped), as `scripts/s3-server` makes one.
struct OwnServer {
    dir: tempfile::TempDir,
    pid: u32,
}

impl OwnServer {
    fn start() -> Option<(OwnServer, S3)> {
        common::s3()?;
        let dir = tempfile::tempdir().unwrap();
        let script = common::root().join("scripts/s3-server");
        let r = std::process::Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let env = String::from_utf8_lossy(&r.stdout).into_owned();
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("MUSTBUILD_TEST_S3_{name}=")))
                .unwrap()
                .to_string()
        };
        let server = S3 {
            endpoint: var("ENDPOINT"),
            bucket: var("BUCKET"),
            access_key: var("ACCESS_KEY"),
            secret_key: var("SECRET_KEY"),
        };
        let pid = var("PID").parse().unwrap();
        Some((OwnServer { dir, pid }, server))
    }

    /// Stops it at once, as a crash or a network cut would.
    fn kill(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(common::root().join("scripts/s3-server"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_server_stopped_mid_run_degrades_to_local_work_with_one_warning() {
    let Some((own, server)) = OwnServer::start() else {
        return;
    };
    let mut lab = Lab::on(server, "mid-run".to_string());
    // `first` is pushed while `second` runs; the server dies before `second` ends.
    lab.pipeline = r#"pipeline "mid"
step first {
  out o="first.txt"
  run "echo first > {out.o}"
}
step second {
  in x=first.o
  out o="second.txt"
  run "sleep 2; cat {in.x} {in.x} > {out.o}"
}
"#
    .to_string();
    let dir = lab.workspace("a", &lab.public);
    let mut child = lab
        .mustbuild(&dir)
        .args(["run", "pipeline.kdl", "--json"])
        .env("MUSTBUILD_STORE", dir.join("store"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut events = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        if line.contains(r#""event":"started""#) && line.contains("second") {
            own.kill();
        }
        events.push_str(&line);
        events.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{events}");
    let summary: serde_json::Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    assert_eq!(summary["executed"], 2, "{events}");
    assert_eq!(
        std::fs::read_to_string(dir.join("second.txt")).unwrap(),
        "first\nfirst\n"
    );
    let w = warnings(&events);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&lab.url) && w[0].contains("going on without that cache"),
        "{w:?}"
    );
    // A new store, the server still down: everything runs here, one warning;
    // --require-cache makes it an error.
    let b = lab.workspace("b", &lab.public);
    let (s, events) = lab.run(&b, &[]);
    assert_eq!(s["executed"], 2);
    assert_eq!(warnings(&events).len(), 1, "{events}");
    let c = lab.workspace("c", &lab.public);
    let r = output(
        lab.mustbuild(&c)
            .args(["run", "pipeline.kdl", "--require-cache"])
            .env("MUSTBUILD_STORE", c.join("store")),
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--require-cache"), "{}", r.stderr);
}

#[test]
fn a_gibibyte_output_round_trips_through_s3_in_bounded_memory() {
    use wait4::Wait4 as _;
    let Some(mut lab) = Lab::s3() else { return };
    // Incompressible, so that it really goes in parts (zstd cannot shrink it).
    lab.pipeline = r#"pipeline "large"
step large {
  out o="large.bin"
  run "head -c 1073741824 /dev/urandom > {out.o}"
}
"#
    .to_string();
    let peak_of = |dir: &Path| {
        let mut child = lab
            .mustbuild(dir)
            .args(["run", "pipeline.kdl", "--json"])
            .env("MUSTBUILD_STORE", dir.join("store"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut events = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut events).unwrap();
        let used = child.wait4().unwrap();
        assert!(used.status.success(), "{events}");
        (used.rusage.maxrss, events)
    };
    let a = lab.workspace("a", &lab.public);
    let (pushed, events) = peak_of(&a);
    assert!(warnings(&events).is_empty(), "{events}");
    let b = lab.workspace("b", &lab.public);
    let (pulled, events) = peak_of(&b);
    assert!(events.contains(r#""cached":1"#), "{events}");
    eprintln!("peak RSS: pushing 1 GiB {pushed} bytes, pulling it {pulled} bytes");
    for peak in [pushed, pulled] {
        assert!(peak < 200 << 20, "peak RSS {peak} bytes");
    }
    let digest = |p: &Path| {
        let mut h = blake3::Hasher::new();
        h.update_mmap(p).unwrap();
        h.finalize()
    };
    assert_eq!(digest(&a.join("large.bin")), digest(&b.join("large.bin")));
}
