//! Helpers shared by the end-to-end tests: run the real binary.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]
#![expect(
    clippy::expect_used,
    reason = "a test helper that cannot run the binary fails the test"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (tests run the binary from there, so paths in messages are short).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `mustbuild` with a plain, fixed-width, colourless output.
pub fn mustbuild(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mustbuild"));
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env_remove("CLICOLOR_FORCE");
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(dir: &Path, args: &[&str]) -> Run {
    output(mustbuild(dir).args(args))
}

/// Runs `cmd` (made by [`mustbuild`], then given its arguments) to its end.
pub fn output(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("the binary runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The S3 server `scripts/test-all` starts (SeaweedFS on loopback), from the
/// `MUSTBUILD_TEST_S3_*` variables it exports. Without one the test is skipped,
/// saying so; with `CI` set it fails instead.
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

pub fn s3() -> Option<S3> {
    let var = |name: &str| std::env::var(format!("MUSTBUILD_TEST_S3_{name}")).ok();
    match (
        var("ENDPOINT"),
        var("BUCKET"),
        var("ACCESS_KEY"),
        var("SECRET_KEY"),
    ) {
        (Some(endpoint), Some(bucket), Some(access_key), Some(secret_key)) => Some(S3 {
            endpoint,
            bucket,
            access_key,
            secret_key,
        }),
        _ => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "CI is set but no S3 server is: scripts/test-all starts one (MUSTBUILD_TEST_S3_*)"
            );
            eprintln!("skipped: no S3 server (scripts/test-all starts one: MUSTBUILD_TEST_S3_*)");
            None
        }
    }
}

impl S3 {
    /// A cache URL under a prefix of the bucket of its own (one per test).
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&region=us-east-1",
            self.bucket, self.endpoint
        )
    }

    /// The credentials, as the standard AWS variables.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    /// curl, signing its request with the server's keys.
    fn curl(&self) -> Command {
        let mut curl = Command::new("curl");
        curl.args(["-sf", "--aws-sigv4", "aws:amz:us-east-1:s3", "-u"])
            .arg(format!("{}:{}", self.access_key, self.secret_key));
        curl
    }

    /// Puts `bytes` at `key` of the bucket, behind mustbuild's back (curl signs it).
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(file.path(), bytes).expect("written");
        let status = self
            .curl()
            .arg("-T")
            .arg(file.path())
            .arg(format!("{}/{}/{key}", self.endpoint, self.bucket))
            .status()
            .expect("curl runs");
        assert!(status.success(), "curl could not put {key}");
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl S3 {
    /// The object at `key` of the bucket, behind mustbuild's back.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let out = self
            .curl()
            .arg(format!("{}/{}/{key}", self.endpoint, self.bucket))
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "curl could not get {key}");
        out.stdout
    }
}

/// The HTCondor pool `scripts/test-all` starts (scripts/htcondor-pool: HTCondor
/// 23 in a Debian 13 root), from the `MUSTBUILD_TEST_CONDOR_*` variables it
/// exports. Without one the test is skipped, saying so; with `CI` set it fails.
pub struct Condor {
    /// Wrappers of condor_submit, condor_q, condor_rm… that enter the pool's root.
    pub bin: PathBuf,
    /// The ordinary user jobs run as (the same uid inside the root and out).
    pub user: String,
}

pub fn condor() -> Option<Condor> {
    let var = |name: &str| std::env::var(format!("MUSTBUILD_TEST_CONDOR_{name}")).ok();
    match (var("BIN"), var("USER")) {
        (Some(bin), Some(user)) => Some(Condor {
            bin: PathBuf::from(bin),
            user,
        }),
        _ => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "CI is set but no HTCondor pool is: scripts/test-all starts one (MUSTBUILD_TEST_CONDOR_*)"
            );
            eprintln!(
                "skipped: no HTCondor pool (scripts/test-all starts one: MUSTBUILD_TEST_CONDOR_*)"
            );
            None
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Condor {
    /// A `PATH` that finds the pool's tools first.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Makes `dir` (and all in it) the pool user's, as a user's own workspace
    /// and store are on MUST (root cannot submit jobs).
    pub fn own(&self, dir: &Path) {
        if is_root() {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{0}:{0}", self.user))
                .arg(dir)
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown {}", dir.display());
        }
    }

    /// `program` as the pool's user: through setpriv when root (it execs, so
    /// signals reach the program), else as is.
    fn as_user(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if !is_root() {
            return Command::new(program);
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &self.user, "--regid", &self.user])
            .args(["--init-groups", "--"])
            .arg(program);
        c
    }

    /// `mustbuild` as the pool's user, in `dir` (made the user's), with the
    /// pool's tools on its PATH.
    pub fn mustbuild(&self, dir: &Path) -> Command {
        self.own(dir);
        let mut cmd = self.as_user(env!("CARGO_BIN_EXE_mustbuild"));
        cmd.current_dir(dir)
            .env("PATH", self.path())
            .env("HOME", dir)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .env_remove("CLICOLOR_FORCE")
            .env_remove("MUSTBUILD_CONFIG");
        cmd
    }

    /// A pool tool (condor_q…) as the pool's user; its standard output.
    pub fn tool(&self, name: &str, args: &[&str]) -> String {
        let mut cmd = self.as_user(self.bin.join(name));
        let out = cmd
            .args(args)
            .current_dir("/tmp")
            .env("PATH", self.path())
            .output()
            .expect("the pool's tool runs");
        assert!(
            out.status.success(),
            "{name} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The single-node Slurm `scripts/test-all` starts (scripts/slurm-node), from
/// `SLURM_CONF` and `MUSTBUILD_TEST_SLURM_PARTITION`. Without one the test is
/// skipped, saying so; with `CI` set it fails.
pub fn slurm() -> Option<String> {
    match (
        std::env::var("SLURM_CONF"),
        std::env::var("MUSTBUILD_TEST_SLURM_PARTITION"),
    ) {
        (Ok(_), Ok(partition)) => Some(partition),
        _ => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "CI is set but no Slurm is: scripts/test-all starts one (SLURM_CONF, MUSTBUILD_TEST_SLURM_PARTITION)"
            );
            eprintln!("skipped: no Slurm (scripts/test-all starts one: SLURM_CONF)");
            None
        }
    }
}

/// Base composition of each sample's reads (real yeast reads of the Snakemake
/// tutorial), then one table of all: coreutils only, so that a batch system's
/// nodes (the HTCondor pool's Debian 13) give this machine's bytes.
pub const FAN_OUT: &str = r#"pipeline "bases"
input samples glob="data/samples/*.fastq"
env LC_ALL "C"
step bases {
    foreach sample from=samples
    in reads=sample
    out table="results/{sample.stem}.bases"
    run "sed -n '2~4p' {in.reads} | fold -w1 | sort | uniq -c > {out.table}"
}
step all {
    in tables=bases.table
    out table="results/all.bases"
    run "head -n 100 {in.tables} > {out.table}"
}
"#;

/// Of a `stats --json` answer: how many executions ran sandboxed, of how many.
pub fn sandboxed_runs(stats_json: &str) -> (u64, u64) {
    let stats: serde_json::Value = serde_json::from_str(stats_json).expect("stats JSON");
    let steps = stats["steps"].as_array().expect("steps").clone();
    (steps.iter())
        .map(|s| {
            let n = |k: &str| s[k].as_u64().expect("a count");
            (n("sandboxed"), n("executions"))
        })
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

/// A temporary folder with the quickstart's samples in `data/samples/` and
/// `pipeline` as `pipeline.kdl`.
pub fn workspace(pipeline: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let samples = tmp.path().join("data/samples");
    std::fs::create_dir_all(&samples).expect("made");
    let from = root().join("examples/quickstart/data/samples");
    for e in std::fs::read_dir(from).expect("the quickstart's samples") {
        let e = e.expect("listed");
        std::fs::copy(e.path(), samples.join(e.file_name())).expect("copied");
    }
    std::fs::write(tmp.path().join("pipeline.kdl"), pipeline).expect("written");
    tmp
}

/// Every file under `dir/results`, by name, sorted.
pub fn results(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("results"))
        .expect("results")
        .map(|e| {
            let e = e.expect("listed");
            let bytes = std::fs::read(e.path()).expect("read");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// Waits until `done()` holds, looking every `every`; after `within`, the test
/// fails with `why()`.
pub fn wait_until(
    within: std::time::Duration,
    every: std::time::Duration,
    mut done: impl FnMut() -> bool,
    why: impl Fn() -> String,
) {
    let until = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < until, "{}", why());
        std::thread::sleep(every);
    }
}

/// Ctrl-C for `child` (SIGINT), then what it said once it ended.
pub fn interrupt(child: std::process::Child) -> Output {
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "kill -INT {}", child.id());
    child.wait_with_output().expect("the binary ends")
}

/// A copy of the folder `src` at `dest`, but for a `results/` a local run of
/// an example leaves in it.
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dest.join(e.file_name());
        // A local run of the example leaves results/ in the repository: not sources.
        if e.file_name() == "results" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::write(&to, std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}
