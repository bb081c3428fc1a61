//! The remote cache through a plain folder (`file://`, the same client code as
//! S3): what one store pushes another takes, checked; what is tampered with,
//! unsigned or signed by a stranger is not taken.

use mustbuild_store::remote::sign::{PublicKey, SecretKey, Verdict};
use mustbuild_store::remote::{Pulled, Remote};
use mustbuild_store::{Digest, Ingest, LocalStore, Output, OutputKind};
use std::os::unix::fs::PermissionsExt as _;

struct Two {
    _tmp: tempfile::TempDir,
    a: LocalStore,
    b: LocalStore,
    remote: Remote,
    folder: std::path::PathBuf,
    secret: SecretKey,
    key: Digest,
    outputs: Vec<Output>,
}

/// Store A with one realisation (a 300 KB file and a folder holding an
/// executable, a subfolder and a link), pushed to a folder cache.
fn two() -> Two {
    let tmp = tempfile::tempdir().unwrap();
    let a = LocalStore::open(tmp.path().join("a")).unwrap();
    let b = LocalStore::open(tmp.path().join("b")).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("tree/sub")).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(work.join("big.bin"), &big).unwrap();
    std::fs::write(work.join("tree/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        work.join("tree/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(work.join("tree/sub/data.txt"), "data\n").unwrap();
    std::os::unix::fs::symlink("sub/data.txt", work.join("tree/link")).unwrap();
    let file = a.add_path(&work.join("big.bin"), Ingest::Copy).unwrap();
    let tree = a.add_path(&work.join("tree"), Ingest::Copy).unwrap();
    assert_eq!(tree.kind, OutputKind::Tree);
    let outputs = vec![
        Output {
            name: "big".into(),
            digest: file.digest,
            kind: file.kind,
        },
        Output {
            name: "tree".into(),
            digest: tree.digest,
            kind: tree.kind,
        },
    ];
    let key = Digest::of(b"a derivation");
    a.realise(&key, &outputs).unwrap();
    let folder = tmp.path().join("cache");
    let remote = Remote::open(&format!("file://{}", folder.display())).unwrap();
    let secret = SecretKey::generate("lab").unwrap();
    remote
        .push_realisation(&a, &key, &outputs, &secret)
        .unwrap();
    Two {
        _tmp: tmp,
        a,
        b,
        remote,
        folder,
        secret,
        key,
        outputs,
    }
}

#[test]
fn what_one_store_pushes_another_takes_byte_for_byte() {
    let t = two();
    assert_eq!(t.remote.keys().unwrap(), [t.key]);
    let trusted = [t.secret.public()];
    assert_eq!(
        t.remote.pull(&t.b, &t.key, &trusted).unwrap(),
        Pulled::Taken(t.outputs.clone())
    );
    assert_eq!(t.b.realisation(&t.key).unwrap().unwrap().len(), 2);
    // Every object below the outputs is in B, with the same bytes as in A.
    for o in &t.outputs {
        assert!(t.b.has_object(&o.digest).unwrap());
    }
    let tree = t.b.read_tree(&t.outputs[1].digest).unwrap();
    assert_eq!(tree, t.a.read_tree(&t.outputs[1].digest).unwrap());
    assert!(t.b.verify(false).unwrap().is_clean());
    // Pushing again sends nothing new and changes nothing.
    t.remote
        .push_realisation(&t.a, &t.key, &t.outputs, &t.secret)
        .unwrap();
    let other = Digest::of(b"never pushed");
    assert_eq!(
        t.remote.pull(&t.b, &other, &trusted).unwrap(),
        Pulled::Absent
    );
}

#[test]
fn a_tampered_object_is_detected_and_nothing_is_realised() {
    let t = two();
    let hex = t.outputs[0].digest.to_hex();
    let path = t
        .folder
        .join(format!("mustbuild/v1/objects/{}/{hex}.zst", &hex[..2]));
    let evil = zstd::bulk::compress(b"not what was built", 3).unwrap();
    std::fs::write(&path, evil).unwrap();
    let err = t
        .remote
        .pull(&t.b, &t.key, &[t.secret.public()])
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    assert!(t.b.realisation(&t.key).unwrap().is_none());
    assert!(!t.b.has_object(&t.outputs[0].digest).unwrap());
}

#[test]
fn unsigned_untrusted_and_forged_records_are_refused() {
    let t = two();
    let stranger = SecretKey::generate("stranger").unwrap();
    // Signed by a key nobody here trusts.
    assert_eq!(
        t.remote.pull(&t.b, &t.key, &[stranger.public()]).unwrap(),
        Pulled::Refused(Verdict::Untrusted(vec!["lab".into()]))
    );
    // A record whose signature was made for other outputs, under the trusted name.
    let record_path = t
        .folder
        .join(format!("mustbuild/v1/realisations/{}.json", t.key.to_hex()));
    let text = std::fs::read_to_string(&record_path).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["outputs"][0]["digest"] = Digest::of(b"other").to_hex().into();
    std::fs::write(&record_path, record.to_string()).unwrap();
    assert_eq!(
        t.remote.pull(&t.b, &t.key, &[t.secret.public()]).unwrap(),
        Pulled::Refused(Verdict::BadSignature("lab".into()))
    );
    // No signature at all.
    record["signatures"] = serde_json::json!([]);
    std::fs::write(&record_path, record.to_string()).unwrap();
    assert_eq!(
        t.remote.pull(&t.b, &t.key, &[t.secret.public()]).unwrap(),
        Pulled::Refused(Verdict::Unsigned)
    );
    assert!(t.b.realisation(&t.key).unwrap().is_none());
    let _ = PublicKey::parse(&t.secret.public().to_text()).unwrap();
}

#[test]
fn urls_are_checked() {
    for (url, why) in [
        ("http://x", "not s3://"),
        ("file://relative", "absolute path"),
        ("s3:///prefix", "no bucket"),
        ("s3://b/p?colour=red", "unknown parameter `colour`"),
    ] {
        let err = Remote::open(url).unwrap_err().to_string();
        assert!(err.contains(why), "{url}: {err}");
    }
}
