//! `mustbuild store info|verify|gc` on a real store.

mod common;

use common::run;
use mustbuild_store::{Field, Ingest, KeyMaterial, LocalStore, Output, OutputKind};

fn populate(
    root: &std::path::Path,
    work: &std::path::Path,
) -> (mustbuild_store::Digest, mustbuild_store::Digest) {
    let store = LocalStore::open(root).unwrap();
    std::fs::create_dir_all(work.join("fig")).unwrap();
    std::fs::write(work.join("fig/a.svg"), "<svg/>").unwrap();
    std::fs::write(work.join("table.csv"), "a,b\n1,2\n").unwrap();
    let session = store.begin_session("demo", None).unwrap();
    let mut m = KeyMaterial::default();
    m.insert("command", Field::Text("plot".into()));
    let key = store.put_derivation(&m).unwrap();
    let fig = store.add_path(&work.join("fig"), Ingest::Copy).unwrap();
    let table = store
        .add_path(&work.join("table.csv"), Ingest::Copy)
        .unwrap();
    store
        .realise(
            &key,
            &[
                Output {
                    name: "fig".into(),
                    digest: fig.digest,
                    kind: OutputKind::Tree,
                },
                Output {
                    name: "table".into(),
                    digest: table.digest,
                    kind: OutputKind::File,
                },
            ],
        )
        .unwrap();
    store.use_derivation(session, &key).unwrap();
    store.finish_session(session).unwrap();
    store.add_bytes(b"garbage nobody roots").unwrap();
    (table.digest, fig.digest)
}

#[test]
fn info_verify_and_gc_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (table, _) = populate(&root, &tmp.path().join("work"));
    let store_arg = root.to_str().unwrap();

    let info = run(
        tmp.path(),
        &["store", "--store", store_arg, "info", "--json"],
    );
    assert_eq!(info.code, 0, "{}", info.stderr);
    let v: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    assert_eq!(
        (
            v["objects"].as_u64(),
            v["trees"].as_u64(),
            v["realisations"].as_u64()
        ),
        (Some(4), Some(1), Some(1))
    );

    let clean = run(tmp.path(), &["store", "--store", store_arg, "verify"]);
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);
    assert!(
        clean.stdout.contains("checked 4 objects"),
        "{}",
        clean.stdout
    );

    let dry = run(
        tmp.path(),
        &["store", "--store", store_arg, "gc", "--dry-run"],
    );
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("would remove 1 objects (20 B)"),
        "{}",
        dry.stdout
    );
    let gc = run(
        tmp.path(),
        &["store", "--store", store_arg, "gc", "--keep-last", "1"],
    );
    assert!(
        gc.stdout.contains("removed 1 objects (20 B)"),
        "{}",
        gc.stdout
    );
    assert!(gc.stdout.contains("kept 3 objects"), "{}", gc.stdout);

    // Corrupt the table: verify fails, names it, and --repair forgets it. The
    // table is small, so it lives in the database, not in objects/.
    assert!(
        !root
            .join("objects")
            .join(&table.to_hex()[..2])
            .join(&table.to_hex()[2..])
            .exists()
    );
    let db = rusqlite::Connection::open(root.join("meta.sqlite")).unwrap();
    let changed = db
        .execute(
            "UPDATE objects SET inline = ?1 WHERE digest = ?2",
            rusqlite::params![b"a,b\n1,3\n".as_slice(), table.as_bytes().as_slice()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    let bad = run(tmp.path(), &["store", "--store", store_arg, "verify"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stdout.contains(&format!("corrupt  {table}")),
        "{}",
        bad.stdout
    );
    let repaired = run(
        tmp.path(),
        &["store", "--store", store_arg, "verify", "--repair"],
    );
    assert_eq!(repaired.code, 0, "{}", repaired.stderr);
    assert!(
        repaired.stdout.contains("1 realisations forgotten"),
        "{}",
        repaired.stdout
    );
    assert_eq!(
        run(tmp.path(), &["store", "--store", store_arg, "verify"]).code,
        0
    );
}

#[test]
fn the_store_location_comes_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("from-env");
    let out = common::mustbuild(tmp.path())
        .env("MUSTBUILD_STORE", &root)
        .args(["store", "info"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("store:        {}", root.display()))
    );
    assert!(root.join("VERSION").exists());
}

#[test]
fn an_unusable_store_is_an_environment_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a-file"), "not a folder").unwrap();
    let r = run(tmp.path(), &["store", "--store", "a-file", "info"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot open the store at a-file"),
        "{}",
        r.stderr
    );
}
