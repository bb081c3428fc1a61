//! The local store: ingestion, trees, records, materialisation, the file digest
//! cache, verify and gc.

use mustbuild_store::{
    Digest, Field, INLINE_MAX, Ingest, KeyMaterial, LocalStore, NoopRecord, Output, OutputKind,
    Root, RunRecord, Source, Tree,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `head` then `line` repeated: content too big to live in the database, so that
/// the store keeps it as a file in `objects/`.
fn large(head: &str, line: &str) -> Vec<u8> {
    let mut text = head.to_string();
    while text.len() as u64 <= INLINE_MAX {
        text.push_str(line);
    }
    text.into_bytes()
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// One file output named `name`.
fn file_output(name: &str, digest: Digest) -> [Output; 1] {
    [Output {
        name: name.into(),
        digest,
        kind: OutputKind::File,
    }]
}

fn material(n: u64) -> KeyMaterial {
    let mut m = KeyMaterial::default();
    m.insert("command", Field::Text(format!("step {n}")));
    m.insert("n", Field::Integer(n));
    m
}

/// A folder with nested folders, an executable, and links inside and outside it.
fn sample_tree(dir: &Path) {
    write(&dir.join("a.txt"), b"alpha\n");
    write(&dir.join("sub/b.csv"), b"x,y\n1,2\n");
    write(&dir.join("sub/deeper/c.bin"), &[0u8, 1, 2, 255]);
    write(&dir.join("run.sh"), b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("sub/b.csv", dir.join("link-in")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link-out")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
}

#[test]
fn a_file_is_stored_once_read_only_and_materialised_by_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let src = tmp.path().join("result.csv");
    let content = large("a,b\n", "1,2\n");
    write(&src, &content);
    let s = store.add_path(&src, Ingest::Copy).unwrap();
    assert_eq!(s.digest, Digest::of(&content));
    assert_eq!((s.kind, s.size), (OutputKind::File, content.len() as u64));
    assert!(store.has_object(&s.digest).unwrap());
    assert_eq!(
        store.add_path(&src, Ingest::Copy).unwrap(),
        s,
        "adding again changes nothing"
    );
    let object = store.object_path(&s.digest);
    assert_eq!(
        std::fs::metadata(&object).unwrap().permissions().mode() & 0o777,
        0o444
    );

    let out = tmp.path().join("ws/out/result.csv");
    let m = store.materialize(&s.digest, s.kind, &out).unwrap();
    assert_eq!(m.reflinked + m.copied, 1);
    assert_eq!(std::fs::read(&out).unwrap(), content);
    // Editing the workspace copy can never change the store.
    std::fs::write(&out, b"edited").unwrap();
    assert_eq!(std::fs::read(&object).unwrap(), content);
    assert!(store.verify(false).unwrap().is_clean());
    // Materialising again restores the content over the edit.
    store.materialize(&s.digest, s.kind, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content);
}

#[test]
fn a_small_file_is_kept_in_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = LocalStore::open(&root).unwrap();
    let src = tmp.path().join("scratch/summary.csv");
    write(&src, b"a,b\n1,2\n");
    let s = store.add_path(&src, Ingest::Move).unwrap();
    assert_eq!((s.digest, s.size), (Digest::of(b"a,b\n1,2\n"), 8));
    assert!(store.has_object(&s.digest).unwrap());
    assert!(
        !store.object_path(&s.digest).exists(),
        "no file in objects/"
    );
    assert_eq!(
        std::fs::read(&src).unwrap(),
        b"a,b\n1,2\n",
        "a small file moved in is read, and left for the caller"
    );
    // Stored again from elsewhere: one object.
    write(&tmp.path().join("again.csv"), b"a,b\n1,2\n");
    assert_eq!(
        store
            .add_path(&tmp.path().join("again.csv"), Ingest::Copy)
            .unwrap(),
        s
    );
    assert_eq!(store.info().unwrap().objects, 1);

    let out = tmp.path().join("ws/out/summary.csv");
    store.materialize(&s.digest, s.kind, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"a,b\n1,2\n");
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o644
    );
    std::fs::write(&out, b"edited").unwrap();
    store.materialize(&s.digest, s.kind, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"a,b\n1,2\n");

    // A damaged row is found by verify and forgotten by repair, with what used it.
    let key = store.put_derivation(&material(1)).unwrap();
    store.realise(&key, &file_output("o", s.digest)).unwrap();
    assert!(store.verify(false).unwrap().is_clean());
    let db = rusqlite::Connection::open(root.join("meta.sqlite")).unwrap();
    db.execute(
        "UPDATE objects SET inline = ?1 WHERE digest = ?2",
        rusqlite::params![b"a,b\n1,9\n".as_slice(), s.digest.as_bytes().as_slice()],
    )
    .unwrap();
    drop(db);
    let report = store.verify(false).unwrap();
    assert_eq!(report.corrupt, vec![s.digest]);
    let repaired = store.verify(true).unwrap();
    assert_eq!(repaired.dropped_realisations, 1);
    assert_eq!(
        std::fs::read(root.join("quarantine").join(s.digest.to_hex())).unwrap(),
        b"a,b\n1,9\n",
        "the bad bytes are kept aside"
    );
    assert_eq!(store.realisation(&key).unwrap(), None);
    assert!(store.verify(false).unwrap().is_clean());
}

#[test]
fn moving_a_file_in_takes_it_from_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let src = tmp.path().join("scratch/out.txt");
    let content = large("moved\n", "and more\n");
    write(&src, &content);
    let s = store.add_path(&src, Ingest::Move).unwrap();
    assert!(!src.exists());
    assert_eq!(
        std::fs::read(store.object_path(&s.digest)).unwrap(),
        content
    );
}

#[test]
fn folders_are_merkle_trees_with_modes_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let dir = tmp.path().join("figures");
    sample_tree(&dir);
    let s = store.add_path(&dir, Ingest::Copy).unwrap();
    assert_eq!(s.kind, OutputKind::Tree);
    // The same content elsewhere has the same digest.
    let copy = tmp.path().join("again");
    sample_tree(&copy);
    assert_eq!(
        store.add_path(&copy, Ingest::Copy).unwrap().digest,
        s.digest
    );
    // A changed executable bit changes it.
    std::fs::set_permissions(copy.join("run.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_ne!(
        store.add_path(&copy, Ingest::Copy).unwrap().digest,
        s.digest
    );

    let tree: Tree = store.read_tree(&s.digest).unwrap();
    let names: Vec<String> = tree
        .entries
        .iter()
        .map(|e| String::from_utf8(e.name.clone()).unwrap())
        .collect();
    assert_eq!(
        names,
        ["a.txt", "empty", "link-in", "link-out", "run.sh", "sub"]
    );

    let out = tmp.path().join("ws/figures");
    std::fs::create_dir_all(&out).unwrap();
    write(&out.join("stale.txt"), b"from an older run");
    store.materialize(&s.digest, s.kind, &out).unwrap();
    assert!(!out.join("stale.txt").exists());
    assert_eq!(
        std::fs::read(out.join("sub/deeper/c.bin")).unwrap(),
        [0u8, 1, 2, 255]
    );
    assert_eq!(
        std::fs::metadata(out.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111,
        0o111
    );
    assert_eq!(
        std::fs::read_link(out.join("link-out")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(std::fs::read(out.join("link-in")).unwrap(), b"x,y\n1,2\n");
    assert!(out.join("empty").is_dir());
}

#[test]
fn realisations_name_only_stored_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let key = store.put_derivation(&material(1)).unwrap();
    assert_eq!(store.derivation(&key).unwrap(), Some(material(1)));
    let absent = Digest::of(b"never stored");
    let err = store.realise(&key, &file_output("out", absent));
    assert!(err.is_err());
    assert_eq!(store.realisation(&key).unwrap(), None);
    let d = store.add_bytes(b"result").unwrap();
    let outputs = vec![Output {
        name: "out".into(),
        digest: d,
        kind: OutputKind::File,
    }];
    store.realise(&key, &outputs).unwrap();
    assert_eq!(store.realisation(&key).unwrap(), Some(outputs));
    let run = RunRecord {
        session: None,
        key,
        step: "s".into(),
        instance: None,
        host: mustbuild_store::hostname(),
        started_ms: 1,
        finished_ms: 2,
        outcome: "succeeded".into(),
        exit_code: Some(0),
        user_cpu_ms: Some(1),
        sys_cpu_ms: Some(0),
        max_rss_bytes: Some(1 << 20),
        read_bytes: None,
        write_bytes: None,
        energy_joules: Some(0.5),
        energy_method: Some("modelled".into()),
        log: Some(d),
        cpu_model: Some("a CPU".into()),
        gpus: None,
        memory_method: Some("wait4 (largest process)".into()),
        input_bytes: Some(4096),
        sandboxed: Some(true),
    };
    let id = store.add_run(&run).unwrap();
    assert!(id > 0);
    assert_eq!(store.info().unwrap().runs, 1);
    store
        .set_run_energies(&[(id, 7.25, "measured (rapl)")])
        .unwrap();
    let row = store.runs_of(&run.key).unwrap().pop().unwrap();
    assert_eq!(row.energy_joules, Some(7.25));
    assert_eq!(row.energy_method.as_deref(), Some("measured (rapl)"));
    assert_eq!(row.cpu_model.as_deref(), Some("a CPU"));
    assert_eq!(row.input_bytes, Some(4096));
    assert_eq!(row.sandboxed, Some(true));
}

#[test]
fn the_file_digest_cache_catches_a_change_hidden_by_touch_r() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let f = tmp.path().join("input.csv");
    write(&f, b"1,2,3\n");
    // Entries younger than the timestamp granularity are not trusted.
    std::thread::sleep(std::time::Duration::from_millis(120));
    let (d1, _, src) = store.file_digest(&f).unwrap();
    assert_eq!((d1, src), (Digest::of(b"1,2,3\n"), Source::Hashed));
    let (again, _, src) = store.file_digest(&f).unwrap();
    assert_eq!(
        (again, src),
        (d1, Source::Cache),
        "an unchanged file is not read again"
    );

    // Same size, new content, mtime put back as it was (`touch -r`).
    let reference = tmp.path().join("reference");
    let status = std::process::Command::new("touch")
        .arg("-r")
        .arg(&f)
        .arg(&reference)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(&f, b"1,2,4\n").unwrap();
    let status = std::process::Command::new("touch")
        .arg("-r")
        .arg(&reference)
        .arg(&f)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::metadata(&f).unwrap().modified().unwrap(),
        std::fs::metadata(&reference).unwrap().modified().unwrap()
    );
    std::thread::sleep(std::time::Duration::from_millis(120));
    let (d2, _, src) = store.file_digest(&f).unwrap();
    assert_eq!(
        (d2, src),
        (Digest::of(b"1,2,4\n"), Source::Hashed),
        "ctime gave the change away"
    );
}

#[test]
fn verify_finds_corrupt_and_missing_objects_and_repair_drops_what_used_them() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let dir = tmp.path().join("d");
    sample_tree(&dir);
    let table = large("x,y\n", "1,2\n");
    write(&dir.join("sub/table.csv"), &table);
    let tree = store.add_path(&dir, Ingest::Copy).unwrap();
    let lone = store
        .add_bytes(&large("lonely blob\n", "and more\n"))
        .unwrap();
    let key_tree = store.put_derivation(&material(1)).unwrap();
    store
        .realise(
            &key_tree,
            &[Output {
                name: "dir".into(),
                digest: tree.digest,
                kind: OutputKind::Tree,
            }],
        )
        .unwrap();
    let key_lone = store.put_derivation(&material(2)).unwrap();
    store.realise(&key_lone, &file_output("f", lone)).unwrap();
    let untouched = store.add_bytes(b"untouched").unwrap();
    let key_ok = store.put_derivation(&material(3)).unwrap();
    store
        .realise(&key_ok, &file_output("f", untouched))
        .unwrap();
    assert!(store.verify(false).unwrap().is_clean());

    // Corrupt a file inside the tree, delete the lone blob (both big enough to
    // be files in objects/).
    let inner = Digest::of(&table);
    let p = store.object_path(&inner);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&p, large("x,y\n", "1,9\n")).unwrap();
    std::fs::remove_file(store.object_path(&lone)).unwrap();

    let report = store.verify(false).unwrap();
    assert_eq!(report.corrupt, vec![inner]);
    assert_eq!(report.missing, vec![lone]);
    assert!(!report.repaired);

    let repaired = store.verify(true).unwrap();
    assert!(repaired.repaired);
    assert!(repaired.broken_trees.contains(&tree.digest));
    assert_eq!(repaired.dropped_realisations, 2);
    assert!(
        tmp.path()
            .join("store/quarantine")
            .join(inner.to_hex())
            .exists()
    );
    assert_eq!(store.realisation(&key_tree).unwrap(), None);
    assert_eq!(store.realisation(&key_lone).unwrap(), None);
    assert!(
        store.realisation(&key_ok).unwrap().is_some(),
        "a healthy realisation stays"
    );
    assert!(store.verify(false).unwrap().is_clean());
    // The content can be stored again.
    let again = store.add_path(&dir, Ingest::Copy).unwrap();
    assert_eq!(again.digest, tree.digest);
    assert!(store.verify(false).unwrap().is_clean());
}

#[test]
fn gc_keeps_roots_and_the_last_runs_and_frees_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = LocalStore::open(&root).unwrap();
    let mut keys = Vec::new();
    for i in 0..4u64 {
        let session = store.begin_session("pipe", None).unwrap();
        let key = store.put_derivation(&material(i)).unwrap();
        let d = store.add_bytes(format!("output {i}").as_bytes()).unwrap();
        store.realise(&key, &file_output("o", d)).unwrap();
        store.use_derivation(session, &key).unwrap();
        store.finish_session(session).unwrap();
        keys.push((key, d));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let pinned = store.add_bytes(b"pinned forever").unwrap();
    store.pin("keep-me", Root::Object(pinned)).unwrap();
    let loose = store.add_bytes(b"nobody needs me").unwrap();
    // This process's leases protect everything it wrote: let them go, as a finished run would.
    store.release_leases().unwrap();

    let dry = store.gc(2, true).unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.objects_removed, 3, "{dry:?}");
    assert!(
        store.has_object(&loose).unwrap(),
        "a dry run removes nothing"
    );

    let report = store.gc(2, false).unwrap();
    assert_eq!(
        (
            report.objects_removed,
            report.sessions_removed,
            report.realisations_removed
        ),
        (3, 2, 2),
        "{report:?}"
    );
    assert_eq!(
        report.bytes_freed,
        ("output 0".len() + "output 1".len() + "nobody needs me".len()) as u64
    );
    assert!(!store.has_object(&loose).unwrap());
    assert!(!store.object_path(&loose).exists());
    assert!(!store.has_object(&keys[0].1).unwrap());
    assert!(store.has_object(&keys[3].1).unwrap());
    assert!(store.has_object(&pinned).unwrap());
    assert_eq!(store.realisation(&keys[0].0).unwrap(), None);
    assert!(store.realisation(&keys[2].0).unwrap().is_some());
    assert!(store.verify(false).unwrap().is_clean());
}

#[test]
fn leases_of_a_live_process_survive_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let writer = LocalStore::open(&root).unwrap();
    let d = writer.add_bytes(b"about to be realised").unwrap();
    let collector = LocalStore::open(&root).unwrap();
    let report = collector.gc(1, false).unwrap();
    assert_eq!(report.objects_removed, 0);
    // The writer can still realise it.
    let key = writer.put_derivation(&material(7)).unwrap();
    writer.realise(&key, &file_output("o", d)).unwrap();
    drop(writer);
    // Gone, with its owner: nothing roots it any more.
    assert_eq!(collector.gc(1, false).unwrap().objects_removed, 1);
}

#[test]
fn a_store_of_another_layout_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(LocalStore::open(&root).unwrap());
    std::fs::write(root.join("VERSION"), "mustbuild-store 99\n").unwrap();
    let err = LocalStore::open(&root).unwrap_err().to_string();
    assert!(err.contains("layout version mustbuild-store 99"), "{err}");
}

/// Set by `scripts/test-all`, which mounts a small XFS file system with reflinks.
const REFLINK_VAR: &str = "MUSTBUILD_TEST_REFLINK_DIR";

#[test]
fn materialisation_reflinks_where_the_file_system_allows_and_copies_elsewhere() {
    let Some(dir) = std::env::var_os(REFLINK_VAR) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test on a reflink-capable file system: run scripts/test-all (as root), which mounts one and sets {REFLINK_VAR}"
        );
        eprintln!(
            "skipped: {REFLINK_VAR} is not set (scripts/test-all sets it up when run as root)"
        );
        return;
    };
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let src = tmp.path().join("big.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    write(&src, &content);
    let s = store.add_path(&src, Ingest::Copy).unwrap();

    // Same file system: a reflink, sharing blocks until either side is written.
    let ws = tmp.path().join("ws/big.bin");
    let m = store.materialize(&s.digest, s.kind, &ws).unwrap();
    assert_eq!((m.reflinked, m.copied), (1, 0));
    let mut edited = std::fs::read(&ws).unwrap();
    edited[0] ^= 0xFF;
    std::fs::write(&ws, &edited).unwrap();
    assert_eq!(
        std::fs::read(store.object_path(&s.digest)).unwrap(),
        content,
        "the store's copy is unchanged"
    );
    assert!(store.verify(false).unwrap().is_clean());

    // Another file system: a copy.
    let elsewhere = tempfile::tempdir().unwrap();
    let m = store
        .materialize(&s.digest, s.kind, &elsewhere.path().join("big.bin"))
        .unwrap();
    assert_eq!((m.reflinked, m.copied), (0, 1));
    assert_eq!(
        std::fs::read(elsewhere.path().join("big.bin")).unwrap(),
        content
    );
}

#[test]
fn a_failed_move_puts_every_file_back() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let dir = tmp.path().join("out");
    for i in 0..20 {
        write(
            &dir.join(format!("f{i:02}")),
            format!("file {i}").as_bytes(),
        );
    }
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("zz-fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        store.add_path(&dir, Ingest::Move).is_err(),
        "a FIFO cannot be stored"
    );
    for i in 0..20 {
        assert_eq!(
            std::fs::read(dir.join(format!("f{i:02}"))).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
}

#[test]
fn a_hard_linked_file_is_copied_not_moved_in() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let out = tmp.path().join("out.txt");
    let content = large("result\n", "more\n");
    write(&out, &content);
    std::fs::hard_link(&out, tmp.path().join("alias.txt")).unwrap();
    let s = store.add_path(&out, Ingest::Move).unwrap();
    std::fs::write(tmp.path().join("alias.txt"), b"EDITED").unwrap();
    assert_eq!(
        std::fs::read(store.object_path(&s.digest)).unwrap(),
        content
    );
    assert!(store.verify(false).unwrap().is_clean());
}

#[test]
fn gc_keeps_running_sessions_and_any_number_of_last_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let mut keys = Vec::new();
    for i in 0..3u64 {
        let session = store.begin_session("p", None).unwrap();
        let key = store.put_derivation(&material(i)).unwrap();
        let d = store.add_bytes(format!("o{i}").as_bytes()).unwrap();
        store.realise(&key, &file_output("o", d)).unwrap();
        store.use_derivation(session, &key).unwrap();
        if i < 2 {
            store.finish_session(session).unwrap();
        }
        keys.push(key);
    }
    store.release_leases().unwrap();
    assert_eq!(
        store.gc(usize::MAX, false).unwrap().objects_removed,
        0,
        "keep everything"
    );
    let r = store.gc(0, false).unwrap();
    assert_eq!((r.sessions_removed, r.objects_removed), (2, 2), "{r:?}");
    assert!(
        store.realisation(&keys[2]).unwrap().is_some(),
        "the session still running keeps its results"
    );
}

#[test]
fn a_realisation_must_declare_the_right_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let dir = tmp.path().join("d");
    write(&dir.join("x"), b"x");
    let tree = store.add_path(&dir, Ingest::Copy).unwrap();
    let key = store.put_derivation(&material(1)).unwrap();
    let wrong = store.realise(&key, &file_output("o", tree.digest));
    assert!(
        wrong
            .unwrap_err()
            .to_string()
            .contains("is a file where a folder is declared")
    );
}

#[test]
fn outputs_with_long_names_materialise() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let d = store.add_bytes(b"long").unwrap();
    let dest = tmp.path().join("x".repeat(250));
    store.materialize(&d, OutputKind::File, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"long");
}

#[test]
fn a_folder_digest_without_storing_matches_the_stored_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let dir = tmp.path().join("d");
    sample_tree(&dir);
    let (d, _, is_dir) = store.path_digest(&dir).unwrap();
    assert!(is_dir);
    assert!(!store.has_object(&d).unwrap(), "nothing was stored");
    assert_eq!(store.add_path(&dir, Ingest::Copy).unwrap().digest, d);
    let (f, size, is_dir) = store.path_digest(&dir.join("a.txt")).unwrap();
    assert_eq!((f, size, is_dir), (Digest::of(b"alpha\n"), 6, false));
}

#[test]
fn no_op_sessions_keep_the_derivations_of_the_run_they_repeat() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let session = store.begin_session("p", None).unwrap();
    let key = store.put_derivation(&material(7)).unwrap();
    let d = store.add_bytes(b"the result").unwrap();
    store.realise(&key, &file_output("o", d)).unwrap();
    store.use_derivation(session, &key).unwrap();
    store.finish_session(session).unwrap();
    let generation = store.generation().unwrap();
    let record = save_noop_record(&store, session, generation);
    assert_eq!((record.session, record.uses), (session, 1));
    // Three no-op runs: three sessions that name the first one's derivations.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(store.reuse_session("p", &record, None).unwrap().is_some());
    }
    store.release_leases().unwrap();
    // Keeping the last two sessions keeps what the first one used.
    let report = store.gc(2, false).unwrap();
    assert_eq!(report.objects_removed, 0, "{report:?}");
    assert!(store.has_object(&d).unwrap());
    assert!(store.realisation(&key).unwrap().is_some());
    // gc removed a session (the oldest alias) and so bumped the generation: the
    // record no longer vouches for the store.
    assert_eq!(report.sessions_removed, 1, "{report:?}");
    assert!(store.reuse_session("p", &record, None).unwrap().is_none());
    // With no session kept, the derivation and its output go.
    store.release_leases().unwrap();
    let report = store.gc(0, false).unwrap();
    assert!(!store.has_object(&d).unwrap(), "{report:?}");
    assert_eq!(store.realisation(&key).unwrap(), None);
}

#[test]
fn a_store_of_schema_1_is_upgraded_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let old = {
        let store = LocalStore::open(&root).unwrap();
        let d = store
            .add_bytes(&large("stored by schema 1\n", "x\n"))
            .unwrap();
        drop(store);
        // What schema 1 was: no inline column, no-op records in one piece.
        let db = rusqlite::Connection::open(root.join("meta.sqlite")).unwrap();
        db.execute_batch("ALTER TABLE objects DROP COLUMN inline; PRAGMA user_version = 1;")
            .unwrap();
        noop_records_of_schema_2(&db);
        d
    };
    let store = LocalStore::open(&root).unwrap();
    let small = store.add_bytes(b"small").unwrap();
    assert!(!store.object_path(&small).exists());
    assert!(store.object_path(&old).exists());
    assert!(store.verify(false).unwrap().is_clean());
    no_op_records_are_those_of_schema_3(&store, &root);
}

/// Schema 2's no-op records (the record in one piece), with one record.
fn noop_records_of_schema_2(db: &rusqlite::Connection) {
    db.execute_batch(
        "DROP TABLE noop_records;
         CREATE TABLE noop_records (
             pipeline TEXT PRIMARY KEY, session INTEGER NOT NULL,
             generation INTEGER NOT NULL, uses INTEGER NOT NULL, body BLOB NOT NULL);
         INSERT INTO noop_records VALUES ('/p/pipeline.kdl', 1, 0, 0, x'626f6479');",
    )
    .unwrap();
}

/// After an upgrade: the current schema (8: schema 3's no-op records, and what
/// `why` reads), with no record left from before, and records in two parts.
fn no_op_records_are_those_of_schema_3(store: &LocalStore, root: &std::path::Path) {
    let db = rusqlite::Connection::open(root.join("meta.sqlite")).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 8);
    assert_eq!(store.noop_record("/p/pipeline.kdl").unwrap(), None);
    // Schema 4's and 5's columns, tables and view are there.
    for sql in [
        "SELECT info FROM sessions",
        "SELECT instance FROM runs",
        "SELECT key FROM materialised",
        "SELECT planned FROM session_instances",
        "SELECT size FROM content_sizes",
        "SELECT verdict FROM audits",
        "SELECT base FROM session_bases",
        "SELECT planned FROM recorded_instances",
        "SELECT cpu_model, gpus, memory_method, input_bytes, sandboxed FROM runs",
        "SELECT cache, signer, session FROM fetched",
    ] {
        db.prepare(sql).unwrap();
    }
    let session = store.begin_session("p", None).unwrap();
    save_noop_record(store, session, 0);
}

/// Saves a no-op record of /p/pipeline.kdl, and reads both its parts back.
fn save_noop_record(store: &LocalStore, session: i64, generation: i64) -> NoopRecord {
    let pipeline = "/p/pipeline.kdl";
    store
        .save_noop_record(pipeline, session, generation, b"body", b"detail")
        .unwrap();
    let record = store.noop_record(pipeline).unwrap().unwrap();
    assert_eq!(record.body, b"body");
    let detail = store.noop_record_detail(pipeline).unwrap().unwrap();
    assert_eq!(detail, b"detail");
    record
}

/// The store at `root` (made if new), its schema version set to `version`;
/// the database, for more changes.
fn store_set_to_schema(root: &std::path::Path, version: i64) -> rusqlite::Connection {
    drop(LocalStore::open(root).unwrap());
    let db = rusqlite::Connection::open(root.join("meta.sqlite")).unwrap();
    db.pragma_update(None, "user_version", version).unwrap();
    db
}

#[test]
fn a_store_left_at_schema_0_by_an_older_mustbuild_gets_the_new_records() {
    // A mustbuild of schema 2 makes the tables outside the schema (its no-op
    // records among them) before it sets the schema: stopped in between, it
    // leaves a store at 0 with the old table.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    noop_records_of_schema_2(&store_set_to_schema(&root, 0));
    let store = LocalStore::open(&root).unwrap();
    no_op_records_are_those_of_schema_3(&store, &root);
}

#[test]
fn a_store_of_a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    drop(store_set_to_schema(&root, 9));
    match LocalStore::open(&root) {
        Ok(_) => panic!("a store of schema 9 was opened"),
        Err(e) => assert!(e.to_string().contains("database schema 9"), "{e}"),
    }
}

#[test]
fn a_store_of_schema_2_is_upgraded_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let d = LocalStore::open(&root)
        .unwrap()
        .add_bytes(b"stored by schema 2")
        .unwrap();
    let db = store_set_to_schema(&root, 2);
    noop_records_of_schema_2(&db);
    drop(db);
    let store = LocalStore::open(&root).unwrap();
    assert!(store.has_object(&d).unwrap());
    no_op_records_are_those_of_schema_3(&store, &root);
}

#[test]
fn a_small_output_is_recorded_with_its_run_and_only_if_it_succeeded() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::open(tmp.path().join("store")).unwrap();
    let record = |key: Digest, outcome: &str| RunRecord {
        session: None,
        key,
        step: "s".into(),
        instance: None,
        host: mustbuild_store::hostname(),
        started_ms: 1,
        finished_ms: 2,
        outcome: outcome.into(),
        exit_code: None,
        user_cpu_ms: None,
        sys_cpu_ms: None,
        max_rss_bytes: None,
        read_bytes: None,
        write_bytes: None,
        energy_joules: None,
        energy_method: None,
        log: None,
        cpu_model: None,
        gpus: None,
        memory_method: None,
        input_bytes: None,
        sandboxed: None,
    };
    let small = tmp.path().join("small.txt");
    write(&small, b"small\n");
    let (s, unrecorded) = store.add_path_unrecorded(&small, Ingest::Move).unwrap();
    // Read, left in place, not recorded: its bytes are in memory only.
    assert!(small.exists());
    assert!(!store.has_object(&s.digest).unwrap());
    assert_eq!(unrecorded.bytes(&s.digest), Some(&b"small\n"[..]));
    // Materialised from memory before it is recorded.
    let copy = tmp.path().join("copy.txt");
    store
        .materialize_with(&s.digest, OutputKind::File, &copy, &unrecorded)
        .unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), b"small\n");
    // A failed run records nothing of it.
    let failed = store.put_derivation(&material(1)).unwrap();
    store
        .finish_run(&record(failed, "failed"), None, &[], &unrecorded)
        .unwrap();
    assert!(!store.has_object(&s.digest).unwrap());
    // A run that succeeded records it with its realisation, in one transaction.
    let key = store.put_derivation(&material(2)).unwrap();
    let outputs = file_output("o", s.digest);
    store
        .finish_run(&record(key, "succeeded"), Some(&outputs), &[], &unrecorded)
        .unwrap();
    assert!(store.has_object(&s.digest).unwrap());
    assert_eq!(store.realisation(&key).unwrap(), Some(outputs.to_vec()));
    // A folder, or a file too big for the database, is recorded at once.
    let big = tmp.path().join("big.txt");
    write(&big, &large("big\n", "more\n"));
    let (b, none) = store.add_path_unrecorded(&big, Ingest::Copy).unwrap();
    assert!(store.has_object(&b.digest).unwrap());
    assert_eq!(none.bytes(&b.digest), None);
    let dir = tmp.path().join("tree");
    sample_tree(&dir);
    let (t, _) = store.add_path_unrecorded(&dir, Ingest::Copy).unwrap();
    assert_eq!(t.kind, OutputKind::Tree);
    assert!(store.has_object(&t.digest).unwrap());
}

#[test]
fn a_store_of_schema_3_gets_what_why_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let db = store_set_to_schema(&root, 3);
    // What schema 3 did not have (its columns cannot be dropped from a table
    // with an index on them; the upgrade adds only those missing).
    db.execute_batch(
        "DROP VIEW recorded_instances; DROP TABLE session_bases;
         DROP TABLE session_instances; DROP TABLE content_sizes; DROP TABLE audits;
         ALTER TABLE sessions DROP COLUMN info; ALTER TABLE runs DROP COLUMN instance;",
    )
    .unwrap();
    drop(db);
    let store = LocalStore::open(&root).unwrap();
    let session = store.begin_session("p", Some("{}")).unwrap();
    assert_eq!(
        store.session(session).unwrap().unwrap().info.as_deref(),
        Some("{}")
    );
    assert!(store.session_instances(session).unwrap().is_empty());
}

#[test]
fn a_store_of_schema_4_gets_session_bases_and_what_runs_measure() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let db = store_set_to_schema(&root, 4);
    db.execute_batch(
        "DROP VIEW recorded_instances; DROP TABLE session_bases;
         ALTER TABLE runs DROP COLUMN cpu_model; ALTER TABLE runs DROP COLUMN gpus;
         ALTER TABLE runs DROP COLUMN memory_method; ALTER TABLE runs DROP COLUMN input_bytes;
         ALTER TABLE runs DROP COLUMN sandboxed;",
    )
    .unwrap();
    drop(db);
    let store = LocalStore::open(&root).unwrap();
    no_op_records_are_those_of_schema_3(&store, &root);
}

#[test]
fn a_store_of_schema_6_gets_where_fetched_results_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let db = store_set_to_schema(&root, 6);
    db.execute_batch("DROP TABLE fetched;").unwrap();
    drop(db);
    let store = LocalStore::open(&root).unwrap();
    no_op_records_are_those_of_schema_3(&store, &root);
}
