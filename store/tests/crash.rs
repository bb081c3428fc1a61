//! The store under SIGKILL and under several processes at once.
//!
//! The writer is this test binary itself, started again with `--ignored --exact
//! writer_process` and the store's path in `MUSTBUILD_TEST_STORE`: it stores
//! folders and files, records derivations and realises them, in a loop.

use mustbuild_store::{Digest, Field, Ingest, KeyMaterial, LocalStore, Output, OutputKind};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STORE_VAR: &str = "MUSTBUILD_TEST_STORE";
const SEED_VAR: &str = "MUSTBUILD_TEST_SEED";
const ROUNDS_VAR: &str = "MUSTBUILD_TEST_ROUNDS";

/// A small deterministic generator (no dependency for one test).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Started by the tests below, never on its own.
#[test]
#[ignore = "a child process of the crash and concurrency tests"]
fn writer_process() {
    let store = PathBuf::from(std::env::var(STORE_VAR).expect("started by a test"));
    let seed: u64 = std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rounds: u64 = std::env::var(ROUNDS_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let store = LocalStore::open(&store).expect("store opens");
    let work = tempfile::tempdir().expect("scratch");
    for round in 0..rounds {
        let dir = work.path().join(format!("out-{round}"));
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        for f in 0..1 + rng.below(6) {
            // Mostly small files, now and then one over 1 MiB (hashed in parallel).
            let size = if rng.below(20) == 0 {
                (1 << 20) + rng.below(1 << 20)
            } else {
                rng.below(16 << 10)
            };
            let byte = rng.below(256) as u8;
            let content: Vec<u8> = (0..size)
                .map(|i| byte.wrapping_add((i % 251) as u8))
                .collect();
            let name = if f % 2 == 0 {
                format!("f{f}")
            } else {
                format!("sub/f{f}")
            };
            std::fs::write(dir.join(name), content).expect("write");
        }
        let mut m = KeyMaterial::default();
        m.insert("seed", Field::Integer(seed));
        m.insert("round", Field::Integer(round));
        let key = store.put_derivation(&m).expect("derivation");
        let tree = store.add_path(&dir, Ingest::Move).expect("store folder");
        let log = store
            .add_bytes(format!("log of round {round}").as_bytes())
            .expect("store log");
        store
            .realise(
                &key,
                &[
                    Output {
                        name: "dir".into(),
                        digest: tree.digest,
                        kind: OutputKind::Tree,
                    },
                    Output {
                        name: "log".into(),
                        digest: log,
                        kind: OutputKind::File,
                    },
                ],
            )
            .expect("realise");
    }
}

fn writer(store: &Path, seed: u64, rounds: Option<u64>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--ignored",
        "--exact",
        "writer_process",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(STORE_VAR, store)
    .env(SEED_VAR, seed.to_string())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(r) = rounds {
        cmd.env(ROUNDS_VAR, r.to_string());
    }
    cmd.spawn().expect("writer starts")
}

/// Every object is complete, and every realisation not `checked` before names
/// objects that materialise. Returns how many derivations are realised.
fn assert_consistent(store: &LocalStore, ws: &Path, checked: &mut BTreeSet<Digest>) -> usize {
    let report = store.verify(false).expect("verify runs");
    assert!(report.is_clean(), "{report:?}");
    let keys = realised_keys(store);
    for key in keys.iter().filter(|k| !checked.contains(*k)) {
        let outputs = store.realisation(key).expect("lookup").expect("realised");
        for o in outputs {
            let dest = ws.join(o.digest.short());
            store
                .materialize(&o.digest, o.kind, &dest)
                .expect("materialises");
        }
    }
    checked.extend(keys.iter().copied());
    keys.len()
}

/// The realised derivations of the writers (seeds 0..1000, rounds in order).
fn realised_keys(store: &LocalStore) -> BTreeSet<Digest> {
    let mut keys = BTreeSet::new();
    for seed in 0..1000u64 {
        for round in 0.. {
            let mut m = KeyMaterial::default();
            m.insert("seed", Field::Integer(seed));
            m.insert("round", Field::Integer(round));
            if store.derivation(&m.key()).expect("lookup").is_none() {
                break;
            }
            if store.realisation(&m.key()).expect("lookup").is_some() {
                keys.insert(m.key());
            }
        }
    }
    keys
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_realisation_pointing_at_bad_content() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(LocalStore::open(&root).unwrap());
    let kills: u64 = std::env::var("MUSTBUILD_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut rng = Rng(0x5EED);
    let mut realised_before = 0;
    let mut checked = BTreeSet::new();
    let started = Instant::now();
    for i in 0..kills {
        let mut child = writer(&root, i % 1000, None);
        std::thread::sleep(Duration::from_millis(5 + rng.below(60)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let store = LocalStore::open(&root).expect("the store opens after a kill");
        let ws = tmp.path().join(format!("ws-{i}"));
        let realised = assert_consistent(&store, &ws, &mut checked);
        assert!(realised >= realised_before, "realisations never go away");
        realised_before = realised;
        // The next write succeeds.
        let d = store
            .add_bytes(format!("after kill {i}").as_bytes())
            .expect("write after kill");
        assert!(store.has_object(&d).unwrap());
        std::fs::remove_dir_all(&ws).ok();
    }
    eprintln!(
        "{kills} kills in {:?}; {realised_before} derivations realised",
        started.elapsed()
    );
    assert!(
        realised_before > 0,
        "the writers got far enough to realise something"
    );
    // Strays left by the kills are collected, and nothing realised is lost.
    let store = LocalStore::open(&root).unwrap();
    let report = store.gc(usize::MAX, false).unwrap();
    assert!(store.verify(false).unwrap().is_clean(), "{report:?}");
    assert!(
        std::fs::read_dir(root.join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "temporary files remain"
    );
}

#[test]
fn several_processes_write_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(LocalStore::open(&root).unwrap());
    let children: Vec<Child> = (0..4).map(|seed| writer(&root, seed, Some(8))).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let store = LocalStore::open(&root).unwrap();
    assert_eq!(
        assert_consistent(&store, &tmp.path().join("ws"), &mut BTreeSet::new()),
        32
    );
}

#[test]
fn gc_under_a_concurrent_writer_keeps_everything_it_realises() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = LocalStore::open(&root).unwrap();
    let mut child = writer(&root, 500, Some(12));
    let mut collections = 0;
    loop {
        store.gc(0, false).unwrap();
        collections += 1;
        // Let the writer take the lock between collections.
        std::thread::sleep(Duration::from_millis(30));
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the writer failed under gc");
            break;
        }
    }
    assert!(collections > 1);
    // Nothing roots the writer's results once it is gone (no session, no pin), but
    // until then every realise found its objects, and the store is consistent.
    assert!(store.verify(false).unwrap().is_clean());
}
