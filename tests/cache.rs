//! The shared cache through the real binary, on a folder cache (`file://`:
//! the same client code as S3; the S3 server tests come with SeaweedFS): two
//! separate stores share results, signed and checked; what is tampered with
//! or signed by a stranger is not used, and the run still succeeds; a cache
//! that does not answer degrades to local work, or fails with --require-cache.

mod common;

use common::{mustbuild, output};
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

struct Lab {
    tmp: tempfile::TempDir,
    cache: PathBuf,
    public: String,
}

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
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
        let cache = tmp.path().join("cache");
        Lab { tmp, cache, public }
    }

    /// A workspace of its own (folder and store), configured for the cache.
    fn workspace(&self, name: &str, trusted: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pipeline.kdl"), PIPELINE).unwrap();
        std::fs::write(dir.join("in.txt"), "pear\napple\nfig\n").unwrap();
        std::fs::write(
            dir.join("mustbuild.kdl"),
            format!(
                "cache {{\n  url \"file://{}\"\n  trusted-keys \"{trusted}\"\n  secret-key-file \"{}\"\n}}\n",
                self.cache.display(),
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
            mustbuild(dir)
                .args(&args)
                .env("MUSTBUILD_STORE", dir.join("store")),
        );
        assert_eq!(r.code, 0, "{}{}", r.stderr, r.stdout);
        let summary = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
        (summary, r.stdout)
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

#[test]
fn two_stores_share_results_and_a_tampered_or_strange_one_is_not_used() {
    let lab = Lab::new();
    let a = lab.workspace("a", &lab.public);
    let (s, _) = lab.run(&a, &[]);
    assert_eq!(s["executed"], 3);
    // Another workspace and store: everything comes from the cache, the same bytes.
    let b = lab.workspace("b", &lab.public);
    let (s, events) = lab.run(&b, &[]);
    assert_eq!(
        (s["executed"].as_u64(), s["cached"].as_u64()),
        (Some(0), Some(3)),
        "{events}"
    );
    for f in ["sorted.txt", "count.txt", "big.bin"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(warnings(&events).is_empty(), "{events}");
    let url = format!("file://{}", lab.cache.display());
    let r = output(mustbuild(&b).args(["cache", "ls", &url]));
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    assert!(r.stdout.contains("signed by lab"), "{}", r.stdout);
    let r = output(mustbuild(&b).args(["cache", "verify"]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("3 realisations: 3 intact and trusted"),
        "{}",
        r.stdout
    );

    // big.bin's object replaced in the cache: detected, not used, run here.
    let digest = blake3::hash(&std::fs::read(a.join("big.bin")).unwrap())
        .to_hex()
        .to_string();
    let object = lab.cache.join(format!(
        "mustbuild/v1/objects/{}/{digest}.zst",
        &digest[..2]
    ));
    std::fs::write(&object, zstd::bulk::compress(b"forged", 3).unwrap()).unwrap();
    let r = output(mustbuild(&b).args(["cache", "verify"]));
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("1 damaged"), "{}", r.stdout);
    let c = lab.workspace("c", &lab.public);
    let (s, events) = lab.run(&c, &[]);
    assert_eq!(
        (s["executed"].as_u64(), s["cached"].as_u64()),
        (Some(1), Some(2)),
        "{events}"
    );
    let w = warnings(&events);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("does not match its digest; discarded, the step runs here"),
        "{w:?}"
    );
    assert_ne!(std::fs::read(c.join("big.bin")).unwrap(), b"forged");
    // Run here, it was pushed again: the cache is whole once more.
    let r = output(mustbuild(&b).args(["cache", "verify"]));
    assert_eq!(r.code, 0, "{}", r.stdout);

    // Trusting another key only: the lab's records are ignored, with one warning.
    let other = {
        let r = output(mustbuild(lab.tmp.path()).args(["cache", "keygen", "other", "-o", "keys"]));
        r.stdout.trim().to_string()
    };
    let d = lab.workspace("d", &other);
    let (s, events) = lab.run(&d, &["--cache", &url]);
    assert_eq!(s["executed"], 3);
    let w = warnings(&events);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("ignoring records signed by `lab`, which trusted-keys does not list"),
        "{w:?}"
    );
}

#[test]
fn a_cache_that_does_not_answer_degrades_to_local_work_or_fails_when_required() {
    let lab = Lab::new();
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
