//! A shared cache on object storage: S3 (`s3://bucket/prefix?endpoint=…&region=…`,
//! path-style, credentials from the standard AWS environment) or a plain folder
//! (`file:///path`), through `object_store`, on a current-thread runtime of its
//! own (async only here).
//!
//! Layout, version 1, under the URL's prefix:
//!
//! ```text
//! mustbuild/v1/objects/ab/abcdef….zst       an object (a file's bytes, or a tree's
//!                                           encoding), zstd-compressed; named by the
//!                                           BLAKE3 digest of what it holds uncompressed
//! mustbuild/v1/realisations/KEY.json        a derivation's outputs, signed (below)
//! ```
//!
//! A realisation record is JSON: `{"format": "mustbuild-realisation-v1", "key",
//! "outputs": [{"name", "digest", "kind", "size"}], "signatures": [{"key",
//! "signature"}]}`; a signature (ed25519, [`sign`]) covers the key and every
//! output's name, digest and kind. Readers use a record only if a key they
//! trust signed it, and every byte fetched is checked against its digest as it
//! streams in: what does not match is discarded, never stored.

pub mod sign;

use crate::digest::Digest;
use crate::local::{Ingest, LocalStore, ObjectData, Output, OutputKind};
use crate::tree::{EntryKind, Tree};
use futures::StreamExt as _;
use object_store::path::Path as RemotePath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the remote cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cache URL `{url}`: {why}")]
    Url { url: String, why: String },
    #[error("cache {cache}: {why}")]
    Remote { cache: String, why: String },
    #[error("cache {cache}: {what} does not match its digest (discarded)")]
    Corrupt { cache: String, what: String },
    #[error(transparent)]
    Local(#[from] crate::StoreError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, RemoteError>;

/// One realisation as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub format: String,
    pub key: String,
    pub outputs: Vec<RecordOutput>,
    #[serde(default)]
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordOutput {
    pub name: String,
    pub digest: String,
    pub kind: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signature {
    pub key: String,
    pub signature: String,
}

pub const RECORD_FORMAT: &str = "mustbuild-realisation-v1";
const ROOT: &str = "mustbuild/v1";

impl Record {
    /// The record's key and outputs, when they are well formed.
    pub fn parsed(&self) -> Option<(Digest, Vec<Output>)> {
        if self.format != RECORD_FORMAT {
            return None;
        }
        let key = Digest::from_hex(&self.key)?;
        let outputs = self
            .outputs
            .iter()
            .map(|o| {
                Some(Output {
                    name: o.name.clone(),
                    digest: Digest::from_hex(&o.digest)?,
                    kind: OutputKind::parse(&o.kind)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some((key, outputs))
    }

    pub fn signatures(&self) -> Vec<(String, String)> {
        self.signatures
            .iter()
            .map(|s| (s.key.clone(), s.signature.clone()))
            .collect()
    }
}

/// A remote cache, opened.
pub struct Remote {
    /// The URL as given (it never holds credentials: they come from the environment).
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

/// `?name=value&…` of a URL, decoded only as far as our values need.
fn query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.replace("%3A", ":").replace("%2F", "/"))
        })
        .collect()
}

impl Remote {
    pub fn open(url: &str) -> Result<Remote> {
        let bad = |why: &str| RemoteError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(&format!("cannot start its I/O runtime: {e}")))?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(path) =
            url.strip_prefix("file://")
        {
            if !path.starts_with('/') {
                return Err(bad("a file:// URL needs an absolute path (file:///…)"));
            }
            std::fs::create_dir_all(path).map_err(|e| bad(&format!("cannot create it: {e}")))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
                .map_err(|e| bad(&e.to_string()))?;
            (Arc::new(fs), String::new())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (location, q) = rest.split_once('?').unwrap_or((rest, ""));
            let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket: s3://BUCKET/PREFIX?endpoint=…"));
            }
            // A few quick retries, not object_store's three minutes: a cache
            // that does not answer is dropped and the run goes on.
            let retry = object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(15),
                ..Default::default()
            };
            let client = object_store::ClientOptions::new()
                .with_connect_timeout(std::time::Duration::from_secs(5))
                .with_timeout(std::time::Duration::from_secs(120));
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .with_retry(retry)
                .with_client_options(client);
            for (k, v) in query(q) {
                b = match k.as_str() {
                    "endpoint" => b.with_allow_http(v.starts_with("http://")).with_endpoint(v),
                    "region" => b.with_region(v),
                    other => {
                        return Err(bad(&format!(
                            "unknown parameter `{other}` (endpoint, region)"
                        )));
                    }
                };
            }
            let s3 = b.build().map_err(|e| bad(&e.to_string()))?;
            (Arc::new(s3), prefix.trim_matches('/').to_string())
        } else {
            return Err(bad("not s3://… or file:///…"));
        };
        Ok(Remote {
            url: url.to_string(),
            store,
            prefix,
            rt,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rest: &str) -> RemotePath {
        if self.prefix.is_empty() {
            RemotePath::from(format!("{ROOT}/{rest}"))
        } else {
            RemotePath::from(format!("{}/{ROOT}/{rest}", self.prefix))
        }
    }

    fn object_path(&self, d: &Digest) -> RemotePath {
        let hex = d.to_hex();
        self.path(&format!("objects/{}/{hex}.zst", &hex[..2]))
    }

    fn record_path(&self, key: &Digest) -> RemotePath {
        self.path(&format!("realisations/{}.json", key.to_hex()))
    }

    fn failed(&self, e: object_store::Error) -> RemoteError {
        RemoteError::Remote {
            cache: self.url.clone(),
            why: e.to_string(),
        }
    }

    pub fn has_object(&self, d: &Digest) -> Result<bool> {
        match self.rt.block_on(self.store.head(&self.object_path(d))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Puts `bytes` (compressed) at `path` unless something is there already
    /// (content-addressed: what is there is the same).
    fn put_new(&self, path: &RemotePath, bytes: Vec<u8>) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .rt
            .block_on(self.store.put_opts(path, PutPayload::from(bytes), opts))
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Sends one object of `local` (and, for a tree, everything below it).
    pub fn push_object(&self, local: &LocalStore, d: &Digest, tree: bool) -> Result<()> {
        if tree {
            for child in local.read_tree(d)?.entries {
                match child.kind {
                    EntryKind::File { digest, .. } => self.push_object(local, &digest, false)?,
                    EntryKind::Dir { digest, .. } => self.push_object(local, &digest, true)?,
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        if self.has_object(d)? {
            return Ok(());
        }
        let bytes = match local.object_data(d)? {
            ObjectData::Inline(b) => b,
            ObjectData::File(p) => std::fs::read(&p).map_err(|source| RemoteError::Io {
                action: "read",
                path: p.clone(),
                source,
            })?,
        };
        let compressed = zstd::bulk::compress(&bytes, 3).map_err(|source| RemoteError::Io {
            action: "compress",
            path: PathBuf::from(d.to_hex()),
            source,
        })?;
        self.put_new(&self.object_path(d), compressed)
    }

    /// Sends a realisation: its objects first, then its record, signed by `key`.
    pub fn push_realisation(
        &self,
        local: &LocalStore,
        key: &Digest,
        outputs: &[Output],
        signer: &sign::SecretKey,
    ) -> Result<()> {
        let mut listed = Vec::with_capacity(outputs.len());
        for o in outputs {
            let tree = o.kind == OutputKind::Tree;
            self.push_object(local, &o.digest, tree)?;
            let size = local.content_size(&o.digest)?.unwrap_or(0);
            listed.push(RecordOutput {
                name: o.name.clone(),
                digest: o.digest.to_hex(),
                kind: o.kind.as_str().to_string(),
                size,
            });
        }
        let record = Record {
            format: RECORD_FORMAT.to_string(),
            key: key.to_hex(),
            outputs: listed,
            signatures: vec![Signature {
                key: signer.name.clone(),
                signature: signer.sign(key, outputs),
            }],
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        let path = self.record_path(key);
        self.rt
            .block_on(self.store.put(&path, PutPayload::from(json)))
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// The record of `key`, if the cache has one (`None` too when it is not
    /// JSON of our format: such a record is nobody's).
    pub fn record(&self, key: &Digest) -> Result<Option<Record>> {
        let got = match self.rt.block_on(self.store.get(&self.record_path(key))) {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(e)),
        };
        let bytes = self.rt.block_on(got.bytes()).map_err(|e| self.failed(e))?;
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Every realisation key the cache holds.
    pub fn keys(&self) -> Result<Vec<Digest>> {
        let prefix = self.path("realisations");
        let mut out = Vec::new();
        self.rt.block_on(async {
            let mut list = self.store.list(Some(&prefix));
            while let Some(meta) = list.next().await {
                let meta = meta.map_err(|e| self.failed(e))?;
                if let Some(name) = meta.location.filename()
                    && let Some(hex) = name.strip_suffix(".json")
                    && let Some(d) = Digest::from_hex(hex)
                {
                    out.push(d);
                }
            }
            Ok::<(), RemoteError>(())
        })?;
        out.sort();
        Ok(out)
    }

    /// Fetches object `d` into the file `dest`, decompressing and hashing as
    /// it streams in; a mismatch removes `dest` and is an error.
    fn fetch_to(&self, d: &Digest, dest: &Path) -> Result<()> {
        let io = |action: &'static str| {
            let path = dest.to_path_buf();
            move |source| RemoteError::Io {
                action,
                path,
                source,
            }
        };
        let file = std::fs::File::create(dest).map_err(io("create"))?;
        let sink = Hashing {
            file: std::io::BufWriter::new(file),
            hasher: blake3::Hasher::new(),
        };
        let got = self
            .rt
            .block_on(self.store.get(&self.object_path(d)))
            .map_err(|e| self.failed(e))?;
        let mut decoder = zstd::stream::write::Decoder::new(sink).map_err(io("decompress"))?;
        self.rt.block_on(async {
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.failed(e))?;
                decoder.write_all(&chunk).map_err(io("decompress"))?;
            }
            Ok::<(), RemoteError>(())
        })?;
        decoder.flush().map_err(io("write"))?;
        let mut sink = decoder.into_inner();
        sink.file.flush().map_err(io("write"))?;
        if Digest::from(sink.hasher.finalize()) != *d {
            let _ = std::fs::remove_file(dest);
            return Err(RemoteError::Corrupt {
                cache: self.url.clone(),
                what: format!("object {}", d.short()),
            });
        }
        Ok(())
    }

    /// Recreates object `d` at `dest` (a file, or a folder for a tree),
    /// checking every object on the way.
    fn fetch_into(&self, d: &Digest, kind: EntryKind, dest: &Path) -> Result<()> {
        match kind {
            EntryKind::File { executable, .. } => {
                self.fetch_to(d, dest)?;
                if executable {
                    use std::os::unix::fs::PermissionsExt as _;
                    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
                        .map_err(|source| RemoteError::Io {
                            action: "set the mode of",
                            path: dest.to_path_buf(),
                            source,
                        })?;
                }
                Ok(())
            }
            EntryKind::Dir { .. } => {
                let encoded = dest.with_extension("mustbuild-tree");
                self.fetch_to_tree(d, &encoded)?;
                let bytes = std::fs::read(&encoded).map_err(|source| RemoteError::Io {
                    action: "read",
                    path: encoded.clone(),
                    source,
                })?;
                let _ = std::fs::remove_file(&encoded);
                let tree = Tree::decode(&bytes).map_err(crate::StoreError::from)?;
                if tree.digest() != *d {
                    return Err(RemoteError::Corrupt {
                        cache: self.url.clone(),
                        what: format!("tree {}", d.short()),
                    });
                }
                std::fs::create_dir(dest).map_err(|source| RemoteError::Io {
                    action: "create",
                    path: dest.to_path_buf(),
                    source,
                })?;
                for e in tree.entries {
                    let name = std::ffi::OsStr::from_bytes(&e.name);
                    let path = dest.join(name);
                    match e.kind {
                        EntryKind::Symlink { target } => {
                            let target = std::ffi::OsStr::from_bytes(&target);
                            std::os::unix::fs::symlink(target, &path).map_err(|source| {
                                RemoteError::Io {
                                    action: "link",
                                    path: path.clone(),
                                    source,
                                }
                            })?;
                        }
                        EntryKind::File { digest, .. } | EntryKind::Dir { digest, .. } => {
                            self.fetch_into(&digest, e.kind.clone(), &path)?;
                        }
                    }
                }
                Ok(())
            }
            EntryKind::Symlink { .. } => Ok(()),
        }
    }

    /// A tree's encoding is fetched as bytes (hashing a tree is not BLAKE3
    /// of its bytes: [`Tree::digest`] checks it instead).
    fn fetch_to_tree(&self, d: &Digest, dest: &Path) -> Result<()> {
        let got = self
            .rt
            .block_on(self.store.get(&self.object_path(d)))
            .map_err(|e| self.failed(e))?;
        let compressed = self.rt.block_on(got.bytes()).map_err(|e| self.failed(e))?;
        let bytes =
            zstd::bulk::decompress(&compressed, 64 << 20).map_err(|source| RemoteError::Io {
                action: "decompress",
                path: dest.to_path_buf(),
                source,
            })?;
        std::fs::write(dest, bytes).map_err(|source| RemoteError::Io {
            action: "write",
            path: dest.to_path_buf(),
            source,
        })
    }

    /// Takes a realisation the cache holds into `local`: if a key in `trusted`
    /// signed it, each output is fetched (checked as it streams), stored, and
    /// realised locally. The verdict, and the outputs when taken.
    pub fn pull(
        &self,
        local: &LocalStore,
        key: &Digest,
        trusted: &[sign::PublicKey],
    ) -> Result<Pulled> {
        let Some(record) = self.record(key)? else {
            return Ok(Pulled::Absent);
        };
        let Some((recorded, outputs)) = record.parsed() else {
            return Ok(Pulled::Refused(sign::Verdict::Unsigned));
        };
        if recorded != *key {
            return Ok(Pulled::Refused(sign::Verdict::Unsigned));
        }
        match sign::judge(key, &outputs, &record.signatures(), trusted) {
            sign::Verdict::Trusted(_) => {}
            other => return Ok(Pulled::Refused(other)),
        }
        let scratch = local.root().join("tmp");
        std::fs::create_dir_all(&scratch).map_err(|source| RemoteError::Io {
            action: "create",
            path: scratch.clone(),
            source,
        })?;
        let dir = tempdir_in(&scratch)?;
        let result = (|| {
            for (i, o) in outputs.iter().enumerate() {
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
                self.fetch_into(&o.digest, kind, &dest)?;
                let stored = local.add_path(&dest, Ingest::Move)?;
                if stored.digest != o.digest {
                    return Err(RemoteError::Corrupt {
                        cache: self.url.clone(),
                        what: format!("output `{}`", o.name),
                    });
                }
            }
            local.realise(key, &outputs)?;
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result.map(|()| Pulled::Taken(outputs))
    }
}

/// What [`Remote::pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The cache has no record of the key.
    Absent,
    /// It has one that is not trusted here.
    Refused(sign::Verdict),
    /// Fetched, checked, stored and realised.
    Taken(Vec<Output>),
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    for n in 0..1000u32 {
        let dir = parent.join(format!("pull-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(RemoteError::Io {
                    action: "create",
                    path: dir,
                    source,
                });
            }
        }
    }
    Err(RemoteError::Io {
        action: "create",
        path: parent.join("pull-*"),
        source: std::io::Error::other("no free name"),
    })
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
