//! The no-op record (engine::noop): a rerun with nothing changed is told without
//! computing keys, and any change of what keys depend on, of the outputs in the
//! workspace, or of the store sends the run down the full path.

mod common;

use std::path::Path;

/// `mustbuild run --json` in `dir`; (executed, cached, told from the record).
fn go(dir: &Path, store: &str, extra: &[&str]) -> (u64, u64, bool) {
    // Files written less than 50 ms before they are hashed are not trusted by the
    // digest cache (nor by the record): leave them time to settle.
    std::thread::sleep(std::time::Duration::from_millis(120));
    let mut args = vec!["run", "pipeline.kdl", "--json", "--store", store];
    args.extend_from_slice(extra);
    let r = common::run(dir, &args);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let last = r.stdout.lines().last().unwrap();
    let s: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(s["event"], "summary");
    let cached_events = r
        .stdout
        .lines()
        .filter(|l| l.contains(r#""event":"cached""#))
        .count();
    assert_eq!(
        cached_events as u64,
        s["cached"].as_u64().unwrap(),
        "one event per cached instance"
    );
    (
        s["executed"].as_u64().unwrap(),
        s["cached"].as_u64().unwrap(),
        s["noop_record"].as_bool().unwrap(),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const PIPELINE: &str = r#"pipeline "n"
param n 2
input parts glob="parts/*.txt"
tool cat
step head {
    foreach part from=parts
    in p=part
    out o="out/{part.stem}.txt"
    run "head -n {param.n} {in.p} > {out.o}"
}
step all {
    in h=head.o
    out o="all.txt"
    run "cat {in.h} > {out.o}"
}
"#;

/// PIPELINE in `base/p` with two parts; (the pipeline's folder, a store folder).
fn two_parts(base: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = base.join("p");
    write(&dir.join("pipeline.kdl"), PIPELINE);
    write(&dir.join("parts/a.txt"), "a1\na2\na3\n");
    write(&dir.join("parts/b.txt"), "b1\nb2\nb3\n");
    (dir, base.join("store"))
}

#[test]
fn a_rerun_is_told_from_the_record_only_when_nothing_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store) = two_parts(tmp.path());
    let store = store.to_str().unwrap();
    assert_eq!(go(&dir, store, &[]), (3, 0, false));
    // The full path leaves the record (waiting, if needed, until its newest
    // outputs are old enough to trust); the next rerun uses it.
    assert_eq!(go(&dir, store, &[]), (0, 3, true));
    assert_eq!(go(&dir, store, &[]), (0, 3, true));

    // A source byte changed (same size): not a no-op.
    write(&dir.join("parts/a.txt"), "a1\nA2\na3\n");
    assert_eq!(go(&dir, store, &[]), (2, 1, false));
    assert_eq!(
        std::fs::read_to_string(dir.join("all.txt")).unwrap(),
        "a1\nA2\nb1\nb2\n"
    );
    assert_eq!(go(&dir, store, &[]), (0, 3, true));

    // `touch` alone: the identity changed, the content did not: the full path,
    // which finds everything cached.
    let f = std::fs::File::options()
        .append(true)
        .open(dir.join("parts/b.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    assert_eq!(go(&dir, store, &[]), (0, 3, false));
    assert_eq!(go(&dir, store, &[]), (0, 3, true));

    // A new file for the glob.
    write(&dir.join("parts/c.txt"), "c1\nc2\n");
    assert_eq!(go(&dir, store, &[]), (2, 2, false));
    assert_eq!(go(&dir, store, &[]), (0, 4, true));

    // A deleted output is put back; an edited one kept aside and replaced.
    std::fs::remove_file(dir.join("out/a.txt")).unwrap();
    assert_eq!(go(&dir, store, &[]), (0, 4, false));
    assert_eq!(
        std::fs::read_to_string(dir.join("out/a.txt")).unwrap(),
        "a1\nA2\n"
    );
    write(&dir.join("all.txt"), "edited\n");
    assert_eq!(go(&dir, store, &[]), (0, 4, false));
    assert_eq!(
        std::fs::read_to_string(dir.join("all.txt.edited")).unwrap(),
        "edited\n"
    );
    assert_ne!(
        std::fs::read_to_string(dir.join("all.txt")).unwrap(),
        "edited\n"
    );
    assert_eq!(go(&dir, store, &[]), (0, 4, true));

    // A --param override, then back without it.
    assert_eq!(go(&dir, store, &["--param", "n=1"]), (4, 0, false));
    assert_eq!(go(&dir, store, &["--param", "n=1"]), (0, 4, true));
    assert!(!go(&dir, store, &[]).2);

    // The pipeline file edited (a comment only: same keys, but not provably so
    // without reading it).
    let text = std::fs::read_to_string(dir.join("pipeline.kdl")).unwrap();
    write(&dir.join("pipeline.kdl"), &format!("// a comment\n{text}"));
    assert_eq!(go(&dir, store, &[]), (0, 4, false));
    assert_eq!(go(&dir, store, &[]), (0, 4, true));

    // A tool found elsewhere on PATH.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/cat", bin.join("cat")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let r = common::mustbuild(&dir)
        .args(["run", "pipeline.kdl", "--json", "--store", store])
        .env("PATH", &path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.lines()
            .last()
            .unwrap()
            .contains(r#""noop_record":false"#),
        "{out}"
    );

    // gc that removes everything: nothing may be claimed from the record.
    assert!(!go(&dir, store, &[]).2);
    assert!(go(&dir, store, &[]).2);
    let r = common::run(&dir, &["store", "--store", store, "gc", "--keep-last", "0"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(go(&dir, store, &[]), (4, 0, false));
}

#[test]
fn pipelines_with_folder_outputs_get_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    write(
        &tmp.path().join("pipeline.kdl"),
        "pipeline \"d\"\nstep s {\n    out o=(dir)\"out/\"\n    run \"echo x > {out.o}/x.txt\"\n}\n",
    );
    assert_eq!(go(tmp.path(), store, &[]), (1, 0, false));
    assert_eq!(go(tmp.path(), store, &[]), (0, 1, false));
    // A file added inside the folder output is not seen by a folder's identity
    // alone: the full path runs and puts the folder back as it was.
    write(&tmp.path().join("out/extra.txt"), "x");
    assert_eq!(go(tmp.path(), store, &[]), (0, 1, false));
    assert!(tmp.path().join("out.edited/extra.txt").exists());
    assert!(!tmp.path().join("out/extra.txt").exists());
    // A second edit keeps the first backup.
    write(&tmp.path().join("out/x.txt"), "changed");
    assert_eq!(go(tmp.path(), store, &[]), (0, 1, false));
    assert!(tmp.path().join("out.edited/extra.txt").exists());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("out.edited.1/x.txt")).unwrap(),
        "changed"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("out/x.txt")).unwrap(),
        "x\n"
    );
}

#[test]
fn a_pipeline_file_linked_into_two_folders_has_a_record_per_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let shared = tmp.path().join("shared.kdl");
    write(
        &shared,
        "pipeline \"l\"\ninput i \"in.txt\"\nstep s {\n    in i=i\n    out o=\"out.txt\"\n    run \"cat {in.i} > {out.o}\"\n}\n",
    );
    for d in ["p1", "p2"] {
        let dir = tmp.path().join(d);
        write(&dir.join("in.txt"), d);
        std::os::unix::fs::symlink(&shared, dir.join("pipeline.kdl")).unwrap();
    }
    let p1 = tmp.path().join("p1");
    let p2 = tmp.path().join("p2");
    assert_eq!(go(&p1, store, &[]), (1, 0, false));
    assert_eq!(go(&p1, store, &[]), (0, 1, true));
    // Same pipeline file, another folder: its own inputs, its own outputs.
    assert_eq!(go(&p2, store, &[]), (1, 0, false));
    assert_eq!(std::fs::read_to_string(p2.join("out.txt")).unwrap(), "p2");
}

#[test]
fn outputs_too_new_to_trust_are_read_again_by_the_next_run() {
    fresh_outputs_are_read_again(two_parts, 3);
}

#[test]
fn big_outputs_too_new_to_trust_are_read_again_through_the_digest_cache() {
    // Over 1 MiB of fresh outputs: checked through the digest cache, which then
    // spares the next no-op reading them.
    fresh_outputs_are_read_again(
        |base| {
            let dir = base.join("p");
            write(
                &dir.join("pipeline.kdl"),
                "pipeline \"big\"\ninput i \"in.txt\"\nstep s {\n    in i=i\n    out o=\"big.bin\"\n    run \"head -c 1500000 /dev/zero > {out.o}\"\n}\n",
            );
            write(&dir.join("in.txt"), "x");
            (dir, base.join("store"))
        },
        1,
    );
}

fn fresh_outputs_are_read_again(
    setup: impl Fn(&Path) -> (std::path::PathBuf, std::path::PathBuf),
    steps: u64,
) {
    // A run that ends right after its last outputs were written records them as
    // fresh rather than wait for them to become old enough to trust. Whether they
    // are still that new when the record is written depends on the machine's
    // load: up to three tries.
    for attempt in 1..=3 {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, store_dir) = setup(tmp.path());
        let store = store_dir.to_str().unwrap();
        assert_eq!(go(&dir, store, &[]), (steps, 0, false));
        let db = rusqlite::Connection::open(store_dir.join("meta.sqlite")).unwrap();
        let body: Vec<u8> = db
            .query_row("SELECT body FROM noop_records", [], |r| r.get(0))
            .unwrap();
        let body = String::from_utf8(body).unwrap();
        if !body.lines().any(|l| l.starts_with("fresh\t")) {
            assert!(attempt < 3, "no output recorded as fresh in 3 runs: {body}");
            continue;
        }
        assert_eq!(go(&dir, store, &[]), (0, steps, true));

        // A fresh file's identity proves nothing: the next run reads it and
        // compares it with the digest recorded. Here the record says other bytes
        // than the workspace holds, so the rerun takes the full path (which finds
        // every output in place). The record's detail names the body it goes
        // with: it is made to name the new one.
        use mustbuild_store::Digest;
        let other = Digest::of(b"other bytes").to_hex();
        let tampered: String = body
            .lines()
            .map(|l| match l.split('\t').collect::<Vec<_>>().as_slice() {
                ["fresh", _, path] => format!("fresh\t{other}\t{path}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        let detail: Vec<u8> = db
            .query_row("SELECT detail FROM noop_records", [], |r| r.get(0))
            .unwrap();
        let detail = String::from_utf8(detail).unwrap();
        let (first, rest) = detail.split_once('\n').unwrap();
        let (magic, _) = first.split_once('\t').unwrap();
        let detail = format!(
            "{magic}\t{}\n{rest}",
            Digest::of(tampered.as_bytes()).to_hex()
        );
        db.execute(
            "UPDATE noop_records SET body = ?1, detail = ?2",
            [tampered.as_bytes(), detail.as_bytes()],
        )
        .unwrap();
        drop(db);
        assert_eq!(go(&dir, store, &[]), (0, steps, false));
        assert_eq!(go(&dir, store, &[]), (0, steps, true));
        return;
    }
}

#[test]
fn files_outside_the_folder_and_at_its_top_are_checked_too() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("elsewhere/data.txt");
    write(&outside, "one\n");
    let dir = tmp.path().join("p");
    // An input by absolute path, outside the pipeline's folder; an output at the
    // folder's top (the record names it without a folder).
    write(
        &dir.join("pipeline.kdl"),
        &format!(
            r#"pipeline "top"
input data "{}"
step copy {{
    in d=data
    out o="copy.txt"
    run "cat {{in.d}} > {{out.o}}"
}}
"#,
            outside.display()
        ),
    );
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    assert_eq!(go(&dir, store, &[]), (1, 0, false));
    assert_eq!(go(&dir, store, &[]), (0, 1, true));
    // The outside input changes: not a no-op.
    write(&outside, "two\n");
    assert_eq!(go(&dir, store, &[]), (1, 0, false));
    assert_eq!(
        std::fs::read_to_string(dir.join("copy.txt")).unwrap(),
        "two\n"
    );
    assert_eq!(go(&dir, store, &[]), (0, 1, true));
    // The output at the top goes: not a no-op either (it is put back).
    std::fs::remove_file(dir.join("copy.txt")).unwrap();
    assert_eq!(go(&dir, store, &[]), (0, 1, false));
    assert_eq!(
        std::fs::read_to_string(dir.join("copy.txt")).unwrap(),
        "two\n"
    );
}
