//! Taking results from a cache: a realisation's record, trusted only when a
//! key the reader trusts signed it, then its objects, each checked against its
//! digest as it streams in (what does not match is discarded, never stored),
//! several realisations and a tree's entries at once.

use super::push::io;
use super::{CONCURRENCY, Remote, RemoteError, Result, sign};
use crate::digest::Digest;
use crate::local::{Fetched, Ingest, LocalStore, Output, OutputKind};
use crate::tree::{EntryKind, Tree};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use object_store::ObjectStoreExt as _;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// The most a tree's encoding may take (it lists names and digests only).
const MAX_TREE: usize = 64 << 20;

/// What [`Remote::pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The cache has no record of the key.
    Absent,
    /// It has one that is not trusted here.
    Refused(sign::Verdict),
    /// Fetched, checked, stored and realised; the key that signed it.
    Taken {
        outputs: Vec<Output>,
        signer: String,
    },
}

impl Remote {
    /// Takes the realisation of `key` into `local`, if the cache has one that
    /// a key in `trusted` signed: each output is fetched (checked as it
    /// streams), stored, and realised locally, with where it came from and
    /// the run (`session`) that took it.
    pub fn pull(
        &self,
        local: &LocalStore,
        key: &Digest,
        trusted: &[sign::PublicKey],
        session: Option<i64>,
    ) -> Result<Pulled> {
        self.rt
            .block_on(self.pull_async(local, key, trusted, session))
    }

    /// [`Remote::pull`] for several keys, a bounded number at once; each
    /// one's outcome, in order.
    pub fn pull_many(
        &self,
        local: &LocalStore,
        keys: &[Digest],
        trusted: &[sign::PublicKey],
        session: Option<i64>,
    ) -> Vec<Result<Pulled>> {
        self.rt.block_on(
            stream::iter(keys)
                .map(|key| self.pull_async(local, key, trusted, session))
                .buffered(CONCURRENCY)
                .collect(),
        )
    }

    async fn pull_async(
        &self,
        local: &LocalStore,
        key: &Digest,
        trusted: &[sign::PublicKey],
        session: Option<i64>,
    ) -> Result<Pulled> {
        let Some(record) = self.record_async(key).await? else {
            return Ok(Pulled::Absent);
        };
        let Some((recorded, outputs)) = record.parsed() else {
            return Ok(Pulled::Refused(sign::Verdict::Unsigned));
        };
        if recorded != *key {
            return Ok(Pulled::Refused(sign::Verdict::Unsigned));
        }
        let signer = match sign::judge(key, &outputs, &record.signatures(), trusted) {
            sign::Verdict::Trusted(name) => name,
            other => return Ok(Pulled::Refused(other)),
        };
        let scratch = local.root().join("tmp");
        std::fs::create_dir_all(&scratch).map_err(|source| io("create", &scratch, source))?;
        let dir = tempdir_in(&scratch)?;
        let result = self
            .take_outputs(local, &outputs, &record.outputs, &dir)
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        result?;
        let fetched = Fetched {
            cache: self.url.clone(),
            signer: signer.clone(),
            session,
        };
        local.realise_fetched(key, &outputs, &fetched)?;
        Ok(Pulled::Taken { outputs, signer })
    }

    async fn take_outputs(
        &self,
        local: &LocalStore,
        outputs: &[Output],
        listed: &[super::RecordOutput],
        dir: &Path,
    ) -> Result<()> {
        for (i, (o, l)) in outputs.iter().zip(listed).enumerate() {
            if let Some(content) = &l.content {
                // Checked in memory and stored as it is: no file, no second hash.
                local.add_bytes(&self.carried(o, content)?)?;
                continue;
            }
            let dest = dir.join(format!("output-{i}"));
            let kind = match o.kind {
                OutputKind::Tree => EntryKind::Dir {
                    size: 0,
                    digest: o.digest,
                },
                k => EntryKind::File {
                    executable: k == OutputKind::Executable,
                    size: 0,
                    digest: o.digest,
                },
            };
            self.fetch_into(o.digest, kind, dest.clone()).await?;
            let stored = local.add_path(&dest, Ingest::Move)?;
            if stored.digest != o.digest {
                return Err(self.corrupt(&format!("output `{}`", o.name)));
            }
        }
        Ok(())
    }

    /// The bytes of an output the record carries, checked against its digest.
    fn carried(&self, o: &Output, content: &str) -> Result<Vec<u8>> {
        match STANDARD.decode(content) {
            Ok(bytes) if o.kind != OutputKind::Tree && Digest::of(&bytes) == o.digest => Ok(bytes),
            _ => Err(self.corrupt(&format!("output `{}`", o.name))),
        }
    }

    fn corrupt(&self, what: &str) -> RemoteError {
        RemoteError::Corrupt {
            cache: self.url.clone(),
            what: what.to_string(),
        }
    }

    /// Recreates object `d` at `dest` (a file, or a folder for a tree),
    /// checking every object on the way.
    fn fetch_into(&self, d: Digest, kind: EntryKind, dest: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match kind {
                EntryKind::File { executable, .. } => {
                    self.fetch_file(&d, &dest).await?;
                    if executable {
                        make_executable(&dest)?;
                    }
                    Ok(())
                }
                EntryKind::Dir { .. } => {
                    let tree = self.fetch_tree(&d).await?;
                    std::fs::create_dir(&dest).map_err(|source| io("create", &dest, source))?;
                    let mut below = Vec::new();
                    for e in tree.entries {
                        let path = dest.join(std::ffi::OsStr::from_bytes(&e.name));
                        match e.kind {
                            EntryKind::Symlink { target } => {
                                let target = std::ffi::OsStr::from_bytes(&target);
                                std::os::unix::fs::symlink(target, &path)
                                    .map_err(|source| io("link", &path, source))?;
                            }
                            EntryKind::File { digest, .. } | EntryKind::Dir { digest, .. } => {
                                below.push((digest, e.kind, path));
                            }
                        }
                    }
                    stream::iter(below)
                        .map(|(digest, kind, path)| self.fetch_into(digest, kind, path))
                        .buffer_unordered(CONCURRENCY)
                        .try_collect::<()>()
                        .await
                }
                EntryKind::Symlink { .. } => Ok(()),
            }
        })
    }

    /// Fetches object `d` into the file `dest`, decompressing and hashing as
    /// it streams in; a mismatch removes `dest` and is an error.
    async fn fetch_file(&self, d: &Digest, dest: &Path) -> Result<()> {
        let _slot = self.transfers.acquire().await;
        let file = std::fs::File::create(dest).map_err(|source| io("create", dest, source))?;
        let sink = Hashing {
            file: std::io::BufWriter::new(file),
            hasher: blake3::Hasher::new(),
        };
        let got = self
            .store
            .get(&self.object_path(d))
            .await
            .map_err(|e| self.failed(e))?;
        let mut decoder = zstd::stream::write::Decoder::new(sink)
            .map_err(|source| io("decompress", dest, source))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.failed(e))?;
            decoder
                .write_all(&chunk)
                .map_err(|source| self.corrupt_or(d, dest, source))?;
        }
        decoder
            .flush()
            .map_err(|source| self.corrupt_or(d, dest, source))?;
        let mut sink = decoder.into_inner();
        sink.file
            .flush()
            .map_err(|source| io("write", dest, source))?;
        if Digest::from(sink.hasher.finalize()) != *d {
            let _ = std::fs::remove_file(dest);
            return Err(self.corrupt(&format!("object {}", d.short())));
        }
        Ok(())
    }

    /// A tree's encoding, checked ([`Tree::digest`]: a tree's digest is not
    /// BLAKE3 of its bytes).
    async fn fetch_tree(&self, d: &Digest) -> Result<Tree> {
        let compressed = {
            let _slot = self.transfers.acquire().await;
            let got = self
                .store
                .get(&self.object_path(d))
                .await
                .map_err(|e| self.failed(e))?;
            got.bytes().await.map_err(|e| self.failed(e))?
        };
        let corrupt = || self.corrupt(&format!("tree {}", d.short()));
        let bytes = zstd::bulk::decompress(&compressed, MAX_TREE).map_err(|_| corrupt())?;
        let tree = Tree::decode(&bytes).map_err(|_| corrupt())?;
        if tree.digest() != *d {
            return Err(corrupt());
        }
        Ok(tree)
    }

    /// Bytes that do not decompress were not what we wrote: the object is
    /// damaged (an error of the system is the reader's own).
    fn corrupt_or(&self, d: &Digest, dest: &Path, source: std::io::Error) -> RemoteError {
        if source.raw_os_error().is_some() {
            io("write", dest, source)
        } else {
            self.corrupt(&format!("object {}", d.short()))
        }
    }
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|source| io("set the mode of", path, source))
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    for n in 0..1000u32 {
        let dir = parent.join(format!("pull-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(io("create", &dir, source)),
        }
    }
    Err(io(
        "create",
        &parent.join("pull-*"),
        std::io::Error::other("no free name"),
    ))
}

/// A file that hashes what is written to it.
struct Hashing {
    file: std::io::BufWriter<std::fs::File>,
    hasher: blake3::Hasher,
}

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
