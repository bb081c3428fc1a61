//! The remote cache through a plain folder (`file://`, the same client code as
//! S3): what one store pushes another takes, checked; what is tampered with,
//! unsigned or signed by a stranger is not taken.

use mustbuild_store::remote::sign::{PublicKey, SecretKey, Verdict};
use mustbuild_store::remote::{Pulled, Remote, RemoteError};
use mustbuild_store::{Digest, Ingest, LocalStore, ObjectData, Output, OutputKind};
use std::os::unix::fs::PermissionsExt as _;

struct Two {
    tmp: tempfile::TempDir,
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
        tmp,
        a,
        b,
        remote,
        folder,
        secret,
        key,
        outputs,
    }
}

impl Two {
    fn tmp_path(&self) -> &std::path::Path {
        self.tmp.path()
    }

    /// `file` stored in A as the one output `name` of a derivation keyed by
    /// the digest of `key`.
    fn realise_in_a(
        &self,
        file: &std::path::Path,
        name: &str,
        key: &[u8],
    ) -> (mustbuild_store::Stored, Digest, Vec<Output>) {
        let stored = self.a.add_path(file, Ingest::Copy).unwrap();
        let outputs = vec![Output {
            name: name.into(),
            digest: stored.digest,
            kind: stored.kind,
        }];
        let key = Digest::of(key);
        self.a.realise(&key, &outputs).unwrap();
        (stored, key, outputs)
    }
}

#[test]
fn what_one_store_pushes_another_takes_byte_for_byte() {
    let t = two();
    assert_eq!(t.remote.keys().unwrap(), [t.key]);
    let trusted = [t.secret.public()];
    assert_eq!(
        t.remote.pull(&t.b, &t.key, &trusted, None).unwrap(),
        Pulled::Taken {
            outputs: t.outputs.clone(),
            signer: "lab".into()
        }
    );
    assert_eq!(t.b.realisation(&t.key).unwrap().unwrap().len(), 2);
    let fetched = t.b.fetched(&t.key).unwrap().unwrap();
    assert_eq!(
        (fetched.cache, fetched.signer, fetched.session),
        (t.remote.url().to_string(), "lab".to_string(), None)
    );
    assert!(t.a.fetched(&t.key).unwrap().is_none());
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
        t.remote.pull(&t.b, &other, &trusted, None).unwrap(),
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
        .pull(&t.b, &t.key, &[t.secret.public()], None)
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    assert!(t.b.realisation(&t.key).unwrap().is_none());
    assert!(!t.b.has_object(&t.outputs[0].digest).unwrap());
}

#[test]
fn bytes_that_are_not_zstd_are_damage_not_a_failure_of_the_cache() {
    let t = two();
    let hex = t.outputs[0].digest.to_hex();
    let path = t
        .folder
        .join(format!("mustbuild/v1/objects/{}/{hex}.zst", &hex[..2]));
    std::fs::write(&path, b"plain text, never compressed").unwrap();
    let err = t
        .remote
        .pull(&t.b, &t.key, &[t.secret.public()], None)
        .unwrap_err();
    assert!(matches!(err, RemoteError::Corrupt { .. }), "{err}");
}

#[test]
fn a_large_object_goes_in_parts_and_comes_back_whole() {
    let t = two();
    // 40 MiB that zstd cannot shrink much: several 8 MiB parts.
    let mut big = vec![0u8; 40 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let file = t.tmp_path().join("large.bin");
    std::fs::write(&file, &big).unwrap();
    let (stored, key, outputs) = t.realise_in_a(&file, "large", b"a large derivation");
    let results = t
        .remote
        .push_many(&t.a, &[(key, outputs.clone())], &t.secret);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let hex = stored.digest.to_hex();
    let sent = std::fs::metadata(
        t.folder
            .join(format!("mustbuild/v1/objects/{}/{hex}.zst", &hex[..2])),
    )
    .unwrap()
    .len();
    assert!(sent > 20 << 20, "{sent}");
    let pulled = t
        .remote
        .pull_many(&t.b, &[key, t.key], &[t.secret.public()], Some(7));
    assert!(
        pulled.iter().all(|p| matches!(p, Ok(Pulled::Taken { .. }))),
        "{pulled:?}"
    );
    let ObjectData::File(path) = t.b.object_data(&stored.digest).unwrap() else {
        panic!("a 40 MiB object is a file")
    };
    assert!(std::fs::read(path).unwrap() == big);
    assert_eq!(t.b.fetched(&key).unwrap().unwrap().session, Some(7));
}

#[test]
fn unsigned_untrusted_and_forged_records_are_refused() {
    let t = two();
    let stranger = SecretKey::generate("stranger").unwrap();
    // Signed by a key nobody here trusts.
    assert_eq!(
        t.remote
            .pull(&t.b, &t.key, &[stranger.public()], None)
            .unwrap(),
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
        t.remote
            .pull(&t.b, &t.key, &[t.secret.public()], None)
            .unwrap(),
        Pulled::Refused(Verdict::BadSignature("lab".into()))
    );
    // No signature at all.
    record["signatures"] = serde_json::json!([]);
    std::fs::write(&record_path, record.to_string()).unwrap();
    assert_eq!(
        t.remote
            .pull(&t.b, &t.key, &[t.secret.public()], None)
            .unwrap(),
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

#[test]
fn a_small_output_travels_in_its_record_and_is_checked_there() {
    let t = two();
    let file = t.tmp_path().join("small.txt");
    std::fs::write(&file, "a small result\n").unwrap();
    let (stored, key, outputs) = t.realise_in_a(&file, "small", b"a small derivation");
    t.remote
        .push_realisation(&t.a, &key, &outputs, &t.secret)
        .unwrap();
    let hex = stored.digest.to_hex();
    let object = t
        .folder
        .join(format!("mustbuild/v1/objects/{}/{hex}.zst", &hex[..2]));
    assert!(!object.exists(), "a carried output is not also an object");
    let record_path = t
        .folder
        .join(format!("mustbuild/v1/realisations/{}.json", key.to_hex()));
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    assert!(record["outputs"][0]["content"].is_string(), "{record}");
    // Other bytes under the same (signed) digest: damage, nothing realised.
    record["outputs"][0]["content"] = "Zm9yZ2VkCg==".into();
    std::fs::write(&record_path, record.to_string()).unwrap();
    let err = t
        .remote
        .pull(&t.b, &key, &[t.secret.public()], None)
        .unwrap_err();
    assert!(matches!(err, RemoteError::Corrupt { .. }), "{err}");
    assert!(t.b.realisation(&key).unwrap().is_none());
    // Pushed again, it comes back whole.
    t.remote
        .push_realisation(&t.a, &key, &outputs, &t.secret)
        .unwrap();
    assert_eq!(
        t.remote
            .pull(&t.b, &key, &[t.secret.public()], None)
            .unwrap(),
        Pulled::Taken {
            outputs,
            signer: "lab".into()
        }
    );
}
