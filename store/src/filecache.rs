//! File digests by identity: a file whose (device, inode, size, mtime, ctime) are
//! unchanged since it was hashed is not read again, so a no-op run only stats
//! files. `touch -r` can put an old mtime back, but the kernel sets ctime on every
//! change and no user can set it back: a changed file is caught by its size or
//! its ctime.
//!
//! A file changed within the timestamp granularity after it was hashed could keep
//! all five values (the "racy git" problem); entries whose timestamps are that
//! close to the moment of hashing are therefore not cached.

use crate::digest::Digest;
use crate::error::{Result, io};
use crate::hashing::hash_file_read;
use crate::local::LocalStore;
use rusqlite::{OptionalExtension, params};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Timestamps this close to the hashing time make an entry racy (kernel file
/// times are coarse: a few milliseconds).
const RACY_NS: i64 = 50_000_000;

/// What identifies a file's state without reading it: device, inode, size and
/// the modification and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub dev: i64,
    pub ino: i64,
    pub size: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// The identity of a file from its metadata.
pub fn identity(m: &std::fs::Metadata) -> Identity {
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Identity {
        dev: m.dev() as i64,
        ino: m.ino() as i64,
        size: m.size() as i64,
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    }
}

/// The time (ns since the epoch) from which a file hashed with this identity is
/// cached: its timestamps must be older than the file system's granularity
/// allows a change to hide in. On file systems with whole-second timestamps
/// (nanoseconds all zero) a change in the same second is invisible: the window
/// is then a second.
pub fn trusted_from(id: &Identity) -> i64 {
    let coarse = id.mtime_ns % 1_000_000_000 == 0 && id.ctime_ns % 1_000_000_000 == 0;
    let window = if coarse {
        1_000_000_000 + RACY_NS
    } else {
        RACY_NS
    };
    id.mtime_ns
        .max(id.ctime_ns)
        .saturating_add(window)
        .saturating_add(1)
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Whether a digest came from the cache or from reading the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Hashed,
}

/// A file hashed outside the cache: its digest, size, and the identity under
/// which the cache may keep it (`None`: it changed while read, or is too new).
fn hash_uncached(path: &Path, id: Identity) -> Result<((Digest, u64), Option<Identity>)> {
    let started = now_ns();
    let hashed = hash_file_read(path).map_err(io("hash", path))?;
    let after = std::fs::metadata(path).map(|m| identity(&m)).ok();
    let keep = after == Some(id) && started >= trusted_from(&id);
    Ok((hashed, keep.then_some(id)))
}

/// Digest and size, where they came from, and the identity to cache them under.
type Hashed = ((Digest, u64), Source, Option<Identity>);

const REMEMBER: &str =
    "INSERT OR REPLACE INTO file_digests (dev, ino, size, mtime_ns, ctime_ns, digest)
                        VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// The size of a content, kept after its file changes (`mustbuild why` tells
/// old → new sizes of source files).
const REMEMBER_SIZE: &str = "INSERT OR IGNORE INTO content_sizes (digest, size) VALUES (?1, ?2)";

const LOOK_UP: &str = "SELECT digest FROM file_digests
                       WHERE dev = ?1 AND ino = ?2 AND size = ?3 AND mtime_ns = ?4 AND ctime_ns = ?5";

/// Files to hash, or bytes in them, from which `file_digests` uses threads.
const PARALLEL_FILES: usize = 64;
const PARALLEL_BYTES: i64 = 1 << 20;

impl LocalStore {
    /// The digests of many files, as `file_digest` gives them: those not in the
    /// cache are read on several threads, and what they add to the cache is
    /// written in one transaction.
    pub fn file_digests(&self, paths: &[&Path]) -> Vec<Result<(Digest, u64, Source)>> {
        use rayon::prelude::*;
        let ids: Vec<Option<Identity>> = paths
            .iter()
            .map(|p| std::fs::metadata(p).ok().map(|m| identity(&m)))
            .collect();
        let known: Vec<Option<Digest>> = {
            let ok: Vec<Identity> = ids.iter().flatten().copied().collect();
            let mut found = match self.cached_digests(&ok) {
                Ok(found) => found.into_iter(),
                Err(_) => vec![None; ok.len()].into_iter(),
            };
            ids.iter()
                .map(|i| i.and_then(|_| found.next().flatten()))
                .collect()
        };
        let one = |((path, id), known): ((&&Path, &Option<Identity>), &Option<Digest>)| {
            let Some(id) = id else {
                let e = std::fs::metadata(path).err();
                return Err(io("read", path)(
                    e.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
                ));
            };
            if let Some(d) = known {
                return Ok(((*d, id.size.max(0) as u64), Source::Cache, None));
            }
            let (hashed, keep) = hash_uncached(path, *id)?;
            Ok((hashed, Source::Hashed, keep))
        };
        // Threads only for enough to read: starting them costs more than
        // hashing a few small files (a no-op rerun reads its fresh files).
        let (count, bytes) = ids
            .iter()
            .zip(&known)
            .filter(|(id, known)| id.is_some() && known.is_none())
            .fold((0usize, 0i64), |(n, b), (id, _)| {
                (n + 1, b + id.map_or(0, |i| i.size))
            });
        let results: Vec<Result<Hashed>> = if count >= PARALLEL_FILES || bytes >= PARALLEL_BYTES {
            paths
                .par_iter()
                .zip(ids.par_iter())
                .zip(known.par_iter())
                .map(one)
                .collect()
        } else {
            paths.iter().zip(&ids).zip(&known).map(one).collect()
        };
        let remember: Vec<(Identity, Digest)> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter_map(|((d, _), _, keep)| keep.map(|id| (id, *d)))
            .collect();
        // Sizes of every content hashed, fresh files' too (`why` tells them).
        let sizes: Vec<(Digest, u64)> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|(_, source, _)| *source == Source::Hashed)
            .map(|((d, size), _, _)| (*d, *size))
            .collect();
        if !remember.is_empty() || !sizes.is_empty() {
            // The cache is an optimisation: failing to fill it fails nothing.
            let _ = (|| -> Result<()> {
                let mut conn = self.conn();
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                {
                    let mut insert = tx.prepare_cached(REMEMBER)?;
                    let mut size = tx.prepare_cached(REMEMBER_SIZE)?;
                    for (d, n) in &sizes {
                        size.execute(params![d.as_bytes(), *n as i64])?;
                    }
                    for (id, d) in &remember {
                        insert.execute(params![
                            id.dev,
                            id.ino,
                            id.size,
                            id.mtime_ns,
                            id.ctime_ns,
                            d.as_bytes()
                        ])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })();
        }
        results
            .into_iter()
            .map(|r| r.map(|((d, size), source, _)| (d, size, source)))
            .collect()
    }

    /// The content digest and size of a file, from the cache when it is unchanged.
    pub fn file_digest(&self, path: &Path) -> Result<(Digest, u64, Source)> {
        let meta = std::fs::metadata(path).map_err(io("read", path))?;
        let id = identity(&meta);
        {
            let conn = self.conn();
            let cached: Option<Vec<u8>> = conn
                .prepare_cached(LOOK_UP)?
                .query_row(
                    params![id.dev, id.ino, id.size, id.mtime_ns, id.ctime_ns],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(d) = cached.as_deref().and_then(Digest::from_slice) {
                return Ok((d, meta.size(), Source::Cache));
            }
        }
        let ((digest, size), keep) = hash_uncached(path, id)?;
        let conn = self.conn();
        conn.prepare_cached(REMEMBER_SIZE)?
            .execute(params![digest.as_bytes(), size as i64])?;
        if keep.is_some() {
            conn.prepare_cached(REMEMBER)?.execute(params![
                id.dev,
                id.ino,
                id.size,
                id.mtime_ns,
                id.ctime_ns,
                digest.as_bytes()
            ])?;
        }
        Ok((digest, size, Source::Hashed))
    }
}

impl LocalStore {
    /// The digest the cache holds for each identity, if any (one read transaction).
    /// A hit proves the file had that content when it had that identity.
    pub fn cached_digests(&self, ids: &[Identity]) -> Result<Vec<Option<Digest>>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(ids.len());
        {
            let mut q = tx.prepare_cached(LOOK_UP)?;
            for id in ids {
                let d: Option<Vec<u8>> = q
                    .query_row(
                        params![id.dev, id.ino, id.size, id.mtime_ns, id.ctime_ns],
                        |r| r.get(0),
                    )
                    .optional()?;
                out.push(d.as_deref().and_then(Digest::from_slice));
            }
        }
        tx.commit()?;
        Ok(out)
    }
}

impl LocalStore {
    /// The digest a file or folder would have in the store, without storing it:
    /// a blob digest for a file, a tree digest for a folder (files through the
    /// digest cache; symbolic links as links, not followed).
    pub fn path_digest(&self, path: &Path) -> Result<(Digest, u64, bool)> {
        let meta = std::fs::symlink_metadata(path).map_err(io("read", path))?;
        if meta.is_dir() {
            let (tree, size) = self.tree_of(path, 0)?;
            return Ok((tree.digest(), size, true));
        }
        let (d, size, _) = self.file_digest(path)?;
        Ok((d, size, false))
    }

    fn tree_of(&self, dir: &Path, depth: usize) -> Result<(crate::tree::Tree, u64)> {
        use crate::tree::{EntryKind, Tree, TreeEntry};
        use std::os::unix::ffi::OsStringExt;
        use std::os::unix::fs::PermissionsExt;
        if depth > 256 {
            return Err(crate::StoreError::Unsupported {
                path: dir.to_path_buf(),
                what: "folders nested more than 256 deep",
            });
        }
        let mut entries = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let item = item.map_err(io("list", dir))?;
            let path = item.path();
            let ft = item.file_type().map_err(io("read", &path))?;
            let kind = if ft.is_symlink() {
                EntryKind::Symlink {
                    target: std::fs::read_link(&path)
                        .map_err(io("read link", &path))?
                        .into_os_string()
                        .into_vec(),
                }
            } else if ft.is_dir() {
                let (t, size) = self.tree_of(&path, depth + 1)?;
                EntryKind::Dir {
                    size,
                    digest: t.digest(),
                }
            } else if ft.is_file() {
                let (digest, size, _) = self.file_digest(&path)?;
                let executable = std::fs::metadata(&path)
                    .map_err(io("read", &path))?
                    .permissions()
                    .mode()
                    & 0o111
                    != 0;
                EntryKind::File {
                    executable,
                    size,
                    digest,
                }
            } else {
                return Err(crate::StoreError::Unsupported {
                    path,
                    what: "only files, folders and symbolic links can be hashed",
                });
            };
            entries.push(TreeEntry {
                name: item.file_name().into_vec(),
                kind,
            });
        }
        let tree = Tree::new(entries).ok_or(crate::StoreError::Unsupported {
            path: dir.to_path_buf(),
            what: "a file name that cannot be stored",
        })?;
        let size = tree.total_size();
        Ok((tree, size))
    }
}
