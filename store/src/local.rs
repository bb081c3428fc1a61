//! The local store: content files under `objects/`, metadata in SQLite.
//!
//! ```text
//! STORE/
//!   VERSION              "mustbuild-store 1"
//!   meta.sqlite          (+ -wal, -shm)
//!   objects/ab/cdef…     one read-only file per object, named by its digest
//!                        (objects up to INLINE_MAX bytes live in meta.sqlite instead)
//!   tmp/                 files being ingested (OWNER-N), removed by gc when their owner is gone
//!   quarantine/          objects `verify --repair` found corrupt
//! ```
//!
//! Crash safety: content is written to `tmp/`, fsynced, hashed, then — inside an
//! `IMMEDIATE` transaction that holds the database's write lock — renamed into
//! `objects/`, its folder fsynced, and only then is its row inserted and the
//! transaction committed. A row therefore always names a durable, complete file.
//! A realisation is inserted only in a transaction that first checks every object
//! it names has its row. A kill at any point leaves at worst a temporary file or an
//! object file without a row, which gc removes.
//!
//! Small objects (most logs, tables, summaries and folder listings) are kept in
//! their row: content and row are then one SQLite commit, atomic and durable
//! together (a power cut loses both or neither), with no file, rename or fsync of
//! their own. SQLite reads and writes blobs this small faster than the file system
//! creates, fsyncs and opens files.

use crate::db;
use crate::digest::Digest;
use crate::error::{Result, StoreError, io};
use crate::hashing::hash_file;
use crate::material::KeyMaterial;
use crate::tree::{EntryKind, Tree, TreeEntry};
use rusqlite::{Connection, OptionalExtension, params};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub const LAYOUT_VERSION: &str = "mustbuild-store 1";

/// Objects up to this size are kept in the database, not in `objects/`.
pub const INLINE_MAX: u64 = 16 * 1024;

/// Where an object's content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectData {
    /// In the database: the bytes.
    Inline(Vec<u8>),
    /// In `objects/`: its read-only file.
    File(PathBuf),
}

/// A realisation taken from a remote cache: which, who signed it, and the run
/// that took it (`None`: taken outside a run, e.g. by `cache verify`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fetched {
    pub cache: String,
    pub signer: String,
    pub session: Option<i64>,
}

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Blob,
    Tree,
}

impl ObjectKind {
    fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blob",
            ObjectKind::Tree => "tree",
        }
    }
}

/// How an output is to be recreated: a file (executable or not) or a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    File,
    Executable,
    Tree,
}

impl OutputKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OutputKind::File => "file",
            OutputKind::Executable => "executable",
            OutputKind::Tree => "tree",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<OutputKind> {
        match s {
            "file" => Some(OutputKind::File),
            "executable" => Some(OutputKind::Executable),
            "tree" => Some(OutputKind::Tree),
            _ => None,
        }
    }
}

/// A stored file or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stored {
    pub digest: Digest,
    pub kind: OutputKind,
    /// Bytes of content (all files below, for a folder).
    pub size: u64,
}

/// Whether ingestion copies the source or moves it into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// Copy (reflink where the file system allows); the source stays.
    Copy,
    /// Take the file: rename it into the store (same file system), falling back
    /// to a copy. A file small enough to be kept in the database is read, and left
    /// where it is for the caller to reuse or remove.
    Move,
}

/// An object written to `tmp/`, durable, hashed, waiting for its transaction.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The durable temporary file; unused when `inline` holds the content.
    pub temp: PathBuf,
    /// The content of an object kept in the database.
    pub inline: Option<Vec<u8>>,
    pub digest: Digest,
    pub kind: ObjectKind,
    pub size: u64,
    pub stored: u64,
    pub children: Vec<Digest>,
    /// Where a moved file came from: it goes back there if the add fails.
    pub origin: Option<PathBuf>,
}

/// Objects read and hashed but not recorded yet (`add_path_unrecorded`): kept in
/// memory until `finish_run` records them.
#[derive(Debug, Default)]
pub struct Unrecorded(Vec<Pending>);

impl Unrecorded {
    /// The content of the object `digest`, when it is one of these.
    pub fn bytes(&self, digest: &Digest) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|p| p.digest == *digest)
            .and_then(|p| p.inline.as_deref())
    }

    /// Takes the objects of `other` too.
    pub fn append(&mut self, other: Unrecorded) {
        self.0.extend(other.0);
    }
}

/// A run to record (`finish_runs`): the run; its outputs when it succeeded;
/// what it put in the workspace; the objects it made, not recorded yet.
#[derive(Debug, Clone, Copy)]
pub struct FinishedRun<'a> {
    pub run: &'a RunRecord,
    pub realised: Option<&'a [Output]>,
    pub materialised: &'a [Placed],
    pub objects: &'a Unrecorded,
}

/// What was put at a workspace path: the path (absolute), the content's
/// digest, and the derivation whose output it is (`None`: not told).
pub type Placed = (PathBuf, Digest, Option<Digest>);

/// One output of a realisation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Output {
    pub name: String,
    pub digest: Digest,
    pub kind: OutputKind,
}

/// A local, embedded store.
#[derive(Debug)]
pub struct LocalStore {
    pub(crate) root: PathBuf,
    pub(crate) conn: Mutex<Connection>,
    pub(crate) owner: String,
    host: String,
    started_ms: i64,
    temp_counter: AtomicU64,
    /// Whether this process's row is in `owners` (written when first needed: a
    /// process that only reads, or a no-op run, writes none).
    registered: std::sync::atomic::AtomicBool,
}

/// Statements that more than one method runs (one wording, one behaviour).
const INSERT_DERIVATION: &str =
    "INSERT OR IGNORE INTO derivations (key, material, added_ms) VALUES (?1, ?2, ?3)";
/// A key's realised outputs, in no order: with an ORDER BY, SQLite plans the
/// query for each value of ?1, so that a cached statement is prepared again on
/// every use (most of the time a rerun spends asking for realisations).
const REALISATION: &str = "SELECT output, digest, kind FROM realisations WHERE key = ?1";
const INSERT_USE: &str = "INSERT OR IGNORE INTO session_uses (session, key) VALUES (?1, ?2)";
const INSERT_INSTANCE: &str = "INSERT OR REPLACE INTO session_instances (session, step, instance, key, planned) VALUES (?1, ?2, ?3, ?4, ?5)";
const SET_LAST_KEY: &str = "INSERT OR REPLACE INTO last_keys (pipeline, step, instance, key, added_ms) VALUES (?1, ?2, ?3, ?4, ?5)";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// This machine's name.
pub fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".to_string())
    })
    .clone()
}

/// This process's start time (read once).
fn own_start() -> Option<i64> {
    static START: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    *START.get_or_init(|| proc_start(std::process::id()))
}

/// The start time of a process in clock ticks since boot (against pid reuse).
pub(crate) fn proc_start(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// One instance's key material, as a run first records it (`use_keys`).
#[derive(Debug, Clone, Copy)]
pub struct KeyUse<'a> {
    pub material: &'a KeyMaterial,
    /// Whose last key it becomes: pipeline, step, instance.
    pub pipeline: &'a str,
    pub step: &'a str,
    pub instance: &'a str,
    /// Whether to look up its realisation.
    pub lookup: bool,
}

/// What `use_keys` found for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsed {
    pub key: Digest,
    pub realised: Option<Vec<Output>>,
    /// The instance's last key before this one, when it was another.
    pub previous: Option<Digest>,
}

/// A key a run knows without its material (`use_known_keys`), and whose.
#[derive(Debug, Clone, Copy)]
pub struct KnownKey<'a> {
    pub key: Digest,
    pub step: &'a str,
    pub instance: &'a str,
}

/// What a pipeline's last complete run left (see `save_noop_record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoopRecord {
    /// The session whose derivations a no-op rerun uses again.
    pub session: i64,
    /// The store's generation when that run began.
    pub generation: i64,
    /// How many derivations that session used.
    pub uses: i64,
    /// The engine's description of the run's inputs and outputs: what every
    /// rerun reads (the rest, [`LocalStore::noop_record_detail`], only when
    /// something changed).
    pub body: Vec<u8>,
}

impl LocalStore {
    /// The store used when none is named: `$MUSTBUILD_STORE`, else
    /// `$XDG_CACHE_HOME/mustbuild/store`, else `~/.cache/mustbuild/store`.
    pub fn default_location() -> PathBuf {
        if let Some(p) = std::env::var_os("MUSTBUILD_STORE").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".mustbuild-cache"));
        cache.join("mustbuild").join("store")
    }

    /// Opens the store at `root`, creating it if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore> {
        let root = root.into();
        for sub in ["objects", "tmp", "quarantine"] {
            std::fs::create_dir_all(root.join(sub)).map_err(io("create", root.join(sub)))?;
        }
        let version_file = root.join("VERSION");
        match std::fs::read_to_string(&version_file) {
            Ok(v) if v.trim() == LAYOUT_VERSION => {}
            Ok(v) => {
                return Err(StoreError::Version {
                    path: root,
                    found: v.trim().to_string(),
                    expected: LAYOUT_VERSION.to_string(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Several processes may create a new store at once: each writes its own
                // file and renames it into place (the same content either way).
                let temp = root.join(format!("VERSION.{}", std::process::id()));
                let _ = std::fs::remove_file(&temp);
                write_durably(&temp, format!("{LAYOUT_VERSION}\n").as_bytes())?;
                std::fs::rename(&temp, &version_file).map_err(io("create", &version_file))?;
                sync_dir(&root)?;
            }
            Err(e) => return Err(io("read", version_file)(e)),
        }
        // Shard folders (objects/ab/) are made when a first object goes in
        // (commit_objects): most objects are small and live in the database.
        let (conn, schema) = db::open(&root.join("meta.sqlite"))?;
        if schema != db::SCHEMA_VERSION {
            return Err(StoreError::Version {
                path: root,
                found: format!("database schema {schema}"),
                expected: format!("database schema {}", db::SCHEMA_VERSION),
            });
        }
        let started = now_ms();
        let host = hostname();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let owner = format!("{host}:{}:{started}:{nanos:08x}", std::process::id());
        let store = LocalStore {
            root,
            conn: Mutex::new(conn),
            owner,
            host,
            started_ms: started,
            temp_counter: AtomicU64::new(0),
            registered: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(store)
    }

    /// Records this process as a user of the store (again, if a gc judged it gone).
    pub(crate) fn register_owner(&self, conn: &Connection) -> Result<()> {
        let pid = std::process::id();
        conn.prepare_cached(
            "INSERT OR IGNORE INTO owners (id, host, pid, proc_start, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![self.owner, self.host, pid, own_start(), self.started_ms])?;
        self.registered.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolls
        // back an unfinished transaction when the next one begins.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the file of an object lives.
    pub fn object_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    pub(crate) fn new_temp(&self) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let safe_owner: String = self
            .owner
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        self.root.join("tmp").join(format!("{safe_owner}-{n}"))
    }

    /// Whether the store has the object (its row, hence its complete file).
    pub fn has_object(&self, d: &Digest) -> Result<bool> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT 1 FROM objects WHERE digest = ?1",
                [d.as_bytes()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Leases an object if the store has it (gc keeps it while this process lives);
    /// whether it has it.
    fn lease_if_present(&self, d: &Digest) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let present = tx
            .query_row(
                "SELECT 1 FROM objects WHERE digest = ?1",
                [d.as_bytes()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if present {
            self.register_owner(&tx)?;
            tx.prepare_cached("INSERT OR IGNORE INTO leases (owner, digest) VALUES (?1, ?2)")?
                .execute(params![self.owner, d.as_bytes()])?;
        }
        tx.commit()?;
        Ok(present)
    }

    // ---- ingestion ----------------------------------------------------------------------

    /// Stores a file or a folder (recursively; symbolic links as links).
    pub fn add_path(&self, path: &Path, how: Ingest) -> Result<Stored> {
        let mut pending = Vec::new();
        let prepared = self.prepare(path, how, &mut pending, 0);
        self.commit_prepared(path, how, prepared, pending)
    }

    /// Records what `prepare` made of `path`; on any error, puts every moved
    /// file back where it was.
    fn commit_prepared(
        &self,
        path: &Path,
        how: Ingest,
        prepared: Result<Stored>,
        pending: Vec<Pending>,
    ) -> Result<Stored> {
        let result = prepared.and_then(|s| self.commit_objects(&pending).map(|()| s));
        match result {
            Ok(s) => {
                if how == Ingest::Move && s.kind == OutputKind::Tree {
                    // Its files now live in the store; the emptied folders (and the
                    // links, stored as links) go.
                    let _ = std::fs::remove_dir_all(path);
                }
                Ok(s)
            }
            Err(e) => {
                // Nothing was stored: every moved file goes back where it was.
                for p in pending {
                    match &p.origin {
                        Some(origin) if std::fs::rename(&p.temp, origin).is_err() => {
                            let _ = std::fs::copy(self.object_path(&p.digest), origin);
                        }
                        Some(_) => {}
                        None => p.discard(),
                    }
                }
                Err(e)
            }
        }
    }

    /// Like `add_path`, but a file small enough to live in the database is not
    /// recorded yet: it comes back as `Unrecorded`, for `finish_run` to record
    /// in its own transaction (one transaction per job rather than two). Until
    /// then nothing in the store names it, and nothing is lost if it never is.
    /// Anything else (a folder, a bigger file) is recorded at once.
    pub fn add_path_unrecorded(&self, path: &Path, how: Ingest) -> Result<(Stored, Unrecorded)> {
        let mut pending = Vec::new();
        let prepared = self.prepare(path, how, &mut pending, 0);
        let small_file = prepared.as_ref().is_ok_and(|s| s.kind != OutputKind::Tree)
            && pending.iter().all(|p| p.inline.is_some());
        if small_file {
            return prepared.map(|s| (s, Unrecorded(pending)));
        }
        self.commit_prepared(path, how, prepared, pending)
            .map(|s| (s, Unrecorded(Vec::new())))
    }

    /// Stores bytes (logs, small records) as a blob.
    pub fn add_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        Ok(self.add_many_bytes(&[bytes])?[0])
    }

    /// Stores many blobs in one transaction.
    pub fn add_many_bytes(&self, items: &[&[u8]]) -> Result<Vec<Digest>> {
        use rayon::prelude::*;
        // Blobs already stored (an empty log, the same log again) are not rewritten;
        // the commit still leases them.
        if let [bytes] = items {
            let digest = Digest::of(bytes);
            if self.lease_if_present(&digest)? {
                return Ok(vec![digest]);
            }
        }
        // fsyncs on several threads at once let the file system commit them together.
        let prepared: Vec<Result<Pending>> = items
            .par_iter()
            .map(|bytes| {
                if bytes.len() as u64 <= INLINE_MAX {
                    return Ok(Pending::inline(
                        Digest::of(bytes),
                        ObjectKind::Blob,
                        bytes.len() as u64,
                        bytes.to_vec(),
                    ));
                }
                let temp = self.new_temp();
                write_durably(&temp, bytes)?;
                Ok(Pending {
                    temp,
                    inline: None,
                    digest: Digest::of(bytes),
                    kind: ObjectKind::Blob,
                    size: bytes.len() as u64,
                    stored: bytes.len() as u64,
                    children: Vec::new(),
                    origin: None,
                })
            })
            .collect();
        let mut pending = Vec::with_capacity(prepared.len());
        let mut failure = None;
        for p in prepared {
            match p {
                Ok(p) => pending.push(p),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            pending.iter().for_each(Pending::discard);
            return Err(e);
        }
        let digests = pending.iter().map(|p| p.digest).collect();
        if let Err(e) = self.commit_objects(&pending) {
            pending.iter().for_each(Pending::discard);
            return Err(e);
        }
        Ok(digests)
    }

    /// Writes `path` (and what is below it) to temporary files, hashed and durable.
    fn prepare(
        &self,
        path: &Path,
        how: Ingest,
        pending: &mut Vec<Pending>,
        depth: usize,
    ) -> Result<Stored> {
        const MAX_DEPTH: usize = 256;
        let meta = std::fs::symlink_metadata(path).map_err(io("read", path))?;
        let ft = meta.file_type();
        let executable = meta.permissions().mode() & 0o111 != 0;
        let stored_file = |digest, size| Stored {
            digest,
            kind: if executable {
                OutputKind::Executable
            } else {
                OutputKind::File
            },
            size,
        };
        if ft.is_file() && meta.len() <= INLINE_MAX {
            let bytes = read_small(path).map_err(io("read", path))?;
            if let Some(bytes) = bytes {
                let (digest, size) = (Digest::of(&bytes), bytes.len() as u64);
                pending.push(Pending::inline(digest, ObjectKind::Blob, size, bytes));
                return Ok(stored_file(digest, size));
            }
        }
        if ft.is_file() {
            let temp = self.new_temp();
            let origin = self.bring(path, &temp, how)?;
            let (digest, size) = match hash_file(&temp) {
                Ok(h) => h,
                Err(e) => {
                    match &origin {
                        Some(o) => drop(std::fs::rename(&temp, o)),
                        None => drop(std::fs::remove_file(&temp)),
                    }
                    return Err(io("hash", &temp)(e));
                }
            };
            pending.push(Pending {
                temp,
                inline: None,
                digest,
                kind: ObjectKind::Blob,
                size,
                stored: size,
                children: Vec::new(),
                origin,
            });
            return Ok(stored_file(digest, size));
        }
        if !ft.is_dir() {
            let what = if ft.is_symlink() {
                "a symbolic link cannot be stored by itself, only inside a folder"
            } else {
                "only files, folders and symbolic links can be stored"
            };
            return Err(StoreError::Unsupported {
                path: path.to_path_buf(),
                what,
            });
        }
        if depth > MAX_DEPTH {
            return Err(StoreError::Unsupported {
                path: path.to_path_buf(),
                what: "folders nested more than 256 deep",
            });
        }
        let mut entries = Vec::new();
        let listing = std::fs::read_dir(path).map_err(io("list", path))?;
        for item in listing {
            let item = item.map_err(io("list", path))?;
            let name = item.file_name().into_vec();
            let child = item.path();
            let ft = item.file_type().map_err(io("read", &child))?;
            let kind = if ft.is_symlink() {
                let target = std::fs::read_link(&child).map_err(io("read link", &child))?;
                EntryKind::Symlink {
                    target: target.into_os_string().into_vec(),
                }
            } else {
                let s = self.prepare(&child, how, pending, depth + 1)?;
                match s.kind {
                    OutputKind::Tree => EntryKind::Dir {
                        size: s.size,
                        digest: s.digest,
                    },
                    k => EntryKind::File {
                        executable: k == OutputKind::Executable,
                        size: s.size,
                        digest: s.digest,
                    },
                }
            };
            entries.push(TreeEntry { name, kind });
        }
        let tree = Tree::new(entries).ok_or(StoreError::Unsupported {
            path: path.to_path_buf(),
            what: "a file name that cannot be stored",
        })?;
        let encoded = tree.encode();
        let digest = tree.digest();
        let size = tree.total_size();
        let children: Vec<Digest> = tree.children().collect();
        if encoded.len() as u64 <= INLINE_MAX {
            let mut p = Pending::inline(digest, ObjectKind::Tree, size, encoded);
            p.children = children;
            pending.push(p);
            return Ok(Stored {
                digest,
                kind: OutputKind::Tree,
                size,
            });
        }
        let temp = self.new_temp();
        write_durably(&temp, &encoded)?;
        pending.push(Pending {
            temp,
            inline: None,
            digest,
            kind: ObjectKind::Tree,
            size,
            stored: encoded.len() as u64,
            children,
            origin: None,
        });
        Ok(Stored {
            digest,
            kind: OutputKind::Tree,
            size,
        })
    }

    /// Puts a source file's content at `temp`, durably.
    fn bring(&self, src: &Path, temp: &Path, how: Ingest) -> Result<Option<PathBuf>> {
        use std::os::unix::fs::MetadataExt;
        // A file with other hard links (or that someone else may still write through
        // one) is copied: moving its inode in would let them change the store.
        let sole = std::fs::symlink_metadata(src).is_ok_and(|m| m.nlink() == 1);
        if how == Ingest::Move && sole && std::fs::rename(src, temp).is_ok() {
            let f = std::fs::File::open(temp).map_err(io("open", temp))?;
            f.sync_all().map_err(io("sync", temp))?;
            return Ok(Some(src.to_path_buf()));
        }
        crate::materialize::clone_or_copy(src, temp).map_err(io("copy", src))?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(temp)
            .map_err(io("open", temp))?;
        f.sync_all().map_err(io("sync", temp))?;
        Ok(None)
    }

    /// Moves durable temporary files into `objects/` and records them, in one
    /// transaction. Children before parents: `pending` is in that order.
    pub(crate) fn commit_objects(&self, pending: &[Pending]) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        self.commit_objects_in(&tx, pending, true)?;
        tx.commit()?;
        Ok(())
    }

    /// `commit_objects` inside the caller's transaction, which must commit for
    /// the objects to be recorded (their files are in `objects/` by then). With
    /// `lease`, this process leases them (gc keeps them while it lives); without,
    /// the caller names them in the same transaction (a realisation of a key its
    /// running session uses).
    fn commit_objects_in(&self, tx: &Connection, pending: &[Pending], lease: bool) -> Result<()> {
        if lease {
            self.register_owner(tx)?;
        }
        let mut dirs_to_sync = std::collections::BTreeSet::new();
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM objects WHERE digest = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO objects (digest, kind, size, stored, added_ms, inline)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut refs =
                tx.prepare_cached("INSERT OR IGNORE INTO tree_refs (tree, child) VALUES (?1, ?2)")?;
            let mut leased =
                tx.prepare_cached("INSERT OR IGNORE INTO leases (owner, digest) VALUES (?1, ?2)")?;
            let now = now_ms();
            for p in pending {
                let d = p.digest.as_bytes();
                if lease {
                    leased.execute(params![self.owner, d])?;
                }
                if exists.query_row([d], |_| Ok(())).optional()?.is_some() {
                    p.discard();
                    continue;
                }
                if p.inline.is_none() {
                    let dest = self.object_path(&p.digest);
                    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
                    std::fs::set_permissions(&p.temp, std::fs::Permissions::from_mode(0o444))
                        .map_err(io("protect", &p.temp))?;
                    if let Err(e) = std::fs::rename(&p.temp, &dest) {
                        if e.kind() != std::io::ErrorKind::NotFound || !p.temp.exists() {
                            return Err(io("store", &dest)(e));
                        }
                        // The shard's first object: its folder, durably, then again.
                        match std::fs::create_dir(&dir) {
                            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                                return Err(io("create", &dir)(e));
                            }
                            _ => sync_dir(&self.root.join("objects"))?,
                        }
                        std::fs::rename(&p.temp, &dest).map_err(io("store", &dest))?;
                    }
                    dirs_to_sync.insert(dir);
                }
                insert.execute(params![
                    d,
                    p.kind.as_str(),
                    p.size as i64,
                    p.stored as i64,
                    now,
                    p.inline.as_deref()
                ])?;
                for c in &p.children {
                    refs.execute(params![d, c.as_bytes()])?;
                }
            }
        }
        // The renames must be durable before the rows that name them.
        for dir in &dirs_to_sync {
            sync_dir(dir)?;
        }
        Ok(())
    }

    // ---- trees --------------------------------------------------------------------------

    pub fn read_tree(&self, d: &Digest) -> Result<Tree> {
        let bytes = match self.object_data(d)? {
            ObjectData::Inline(bytes) => bytes,
            ObjectData::File(path) => std::fs::read(&path).map_err(io("read", &path))?,
        };
        Ok(Tree::decode(&bytes)?)
    }

    /// Where an object's content is: its bytes (a small object) or its file.
    pub fn object_data(&self, d: &Digest) -> Result<ObjectData> {
        let inline: Option<Option<Vec<u8>>> = self
            .conn()
            .prepare_cached("SELECT inline FROM objects WHERE digest = ?1")?
            .query_row([d.as_bytes()], |r| r.get(0))
            .optional()?;
        match inline {
            None => Err(StoreError::MissingObject(*d)),
            Some(Some(bytes)) => Ok(ObjectData::Inline(bytes)),
            Some(None) => Ok(ObjectData::File(self.object_path(d))),
        }
    }

    // ---- records ------------------------------------------------------------------------

    /// Records a derivation's key material; returns its key.
    pub fn put_derivation(&self, material: &KeyMaterial) -> Result<Digest> {
        let key = material.key();
        let conn = self.conn();
        conn.execute(
            INSERT_DERIVATION,
            params![key.as_bytes(), material.encode(), now_ms()],
        )?;
        Ok(key)
    }

    pub fn derivation(&self, key: &Digest) -> Result<Option<KeyMaterial>> {
        let conn = self.conn();
        let bytes: Option<Vec<u8>> = conn
            .query_row(
                "SELECT material FROM derivations WHERE key = ?1",
                [key.as_bytes()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match bytes {
            Some(b) => Some(KeyMaterial::decode(&b)?),
            None => None,
        })
    }

    /// Records that derivation `key` produced `outputs`. Every object must be in the
    /// store already: the check and the insert are one transaction.
    pub fn realise(&self, key: &Digest, outputs: &[Output]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        realise_in(&tx, key, outputs)?;
        tx.commit()?;
        Ok(())
    }

    /// Realises `key` as a remote cache gave it (its objects stored already),
    /// remembering which cache and signer, and the run that fetched it.
    pub fn realise_fetched(
        &self,
        key: &Digest,
        outputs: &[Output],
        fetched: &Fetched,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        realise_in(&tx, key, outputs)?;
        tx.execute(
            "INSERT OR REPLACE INTO fetched (key, cache, signer, session, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.as_bytes(), fetched.cache, fetched.signer, fetched.session, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Where the realisation of `key` was last fetched from, if it came from
    /// a remote cache.
    pub fn fetched(&self, key: &Digest) -> Result<Option<Fetched>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT cache, signer, session FROM fetched WHERE key = ?1")?
            .query_row([key.as_bytes()], |r| {
                Ok(Fetched {
                    cache: r.get(0)?,
                    signer: r.get(1)?,
                    session: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Records a run and, when it succeeded, the objects it made that were not
    /// recorded yet, its realisation and what it put in the workspace
    /// (`set_materialised`), in one transaction. The run's id.
    pub fn finish_run(
        &self,
        run: &RunRecord,
        realised: Option<&[Output]>,
        materialised: &[Placed],
        objects: &Unrecorded,
    ) -> Result<i64> {
        let ids = self.finish_runs(&[FinishedRun {
            run,
            realised,
            materialised,
            objects,
        }])?;
        Ok(ids[0])
    }

    /// `finish_run` for several runs, in one transaction (a commit costs more
    /// than the rows of one run). Their ids, in order. Objects recorded here are
    /// not leased: the realisation names them in the same commit, and gc keeps
    /// the realisations of keys a running or recent session uses.
    pub fn finish_runs(&self, runs: &[FinishedRun<'_>]) -> Result<Vec<i64>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut ids = Vec::with_capacity(runs.len());
        for r in runs {
            if r.realised.is_some() && !r.objects.0.is_empty() {
                // Named at once by the realisation of a key the run's session
                // uses: a gc root, no lease needed.
                self.commit_objects_in(&tx, &r.objects.0, false)?;
            }
            ids.push(add_run_in(&tx, r.run)?);
            if let Some(outputs) = r.realised {
                realise_in(&tx, &r.run.key, outputs)?;
            }
            set_materialised_in(&tx, r.materialised)?;
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Changes what `session` recorded it meant to do with an instance (a key
    /// found in a remote cache after `use_keys` planned to run it: reused).
    pub fn set_planned(
        &self,
        session: i64,
        step: &str,
        instance: &str,
        planned: &str,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE session_instances SET planned = ?4 WHERE session = ?1 AND step = ?2 AND instance = ?3",
            params![session, step, instance, planned],
        )?;
        Ok(())
    }

    /// For keys a run knows without their material (from its no-op record): in
    /// one transaction, each one's realisation, recorded as used by `session`
    /// when there is one (gc keeps it, as a derivation of a running session).
    /// Their instances are recorded at the end, by [`Self::inherit_instances`].
    pub fn use_known_keys(
        &self,
        session: i64,
        keys: &[Digest],
    ) -> Result<Vec<Option<Vec<Output>>>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(keys.len());
        {
            let mut used = tx.prepare_cached(INSERT_USE)?;
            for key in keys {
                let realised = self.realisation_in(&tx, key, false)?;
                if realised.is_some() {
                    used.execute(params![session, key.as_bytes()])?;
                }
                out.push(realised);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Records, at the end of `session`, the instances it took from the record
    /// of session `base` (`taken`: each with the key `base` gave it). When every
    /// instance of the run has a row or was taken (`complete`), `session` is
    /// based on `base` (one row, not one per instance: a one-change rerun of
    /// 10,000 steps would otherwise write 10,000, into indexes that grow with
    /// history); a base has no base, so `base`'s own rows are copied when it
    /// has one. Otherwise, or when `base` is gone, the taken rows are written.
    pub fn inherit_instances(
        &self,
        session: i64,
        base: i64,
        taken: &[KnownKey<'_>],
        complete: bool,
    ) -> Result<()> {
        if taken.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists = |id: i64| -> rusqlite::Result<bool> {
            tx.prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?
                .query_row([id], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
        };
        let root = if complete && exists(base)? {
            let further: Option<i64> = tx
                .prepare_cached("SELECT base FROM session_bases WHERE session = ?1")?
                .query_row([base], |r| r.get(0))
                .optional()?;
            match further {
                Some(root) if exists(root)? => {
                    // Its own rows, as reused, where this session has none.
                    tx.execute(
                        "INSERT OR IGNORE INTO session_instances (session, step, instance, key, planned)
                         SELECT ?1, step, instance, key, 'reused' FROM session_instances WHERE session = ?2",
                        params![session, base],
                    )?;
                    Some(root)
                }
                Some(_) => None,
                None => Some(base),
            }
        } else {
            None
        };
        match root {
            Some(root) => {
                tx.execute(
                    "INSERT OR REPLACE INTO session_bases (session, base) VALUES (?1, ?2)",
                    params![session, root],
                )?;
            }
            None => {
                let mut instance = tx.prepare_cached(INSERT_INSTANCE)?;
                for k in taken {
                    instance.execute(params![
                        session,
                        k.step,
                        k.instance,
                        k.key.as_bytes(),
                        "reused"
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// What a run does first with instances' key materials, in one transaction:
    /// stores each, records that `session` uses it (as its instance's: reused,
    /// to run, or forced), makes it its instance's last key, and (when `lookup`)
    /// finds its realisation. For each: the key, the realised outputs (gc keeps
    /// them, as the derivations of a running session) and the instance's last
    /// key before, when it differs.
    pub fn use_keys(&self, session: i64, uses: &[KeyUse<'_>]) -> Result<Vec<KeyUsed>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(uses.len());
        {
            let mut known = tx.prepare_cached("SELECT 1 FROM derivations WHERE key = ?1")?;
            let mut insert = tx.prepare_cached(INSERT_DERIVATION)?;
            let mut used = tx.prepare_cached(INSERT_USE)?;
            let mut before = tx.prepare_cached(
                "SELECT key FROM last_keys WHERE pipeline = ?1 AND step = ?2 AND instance = ?3",
            )?;
            let mut last = tx.prepare_cached(SET_LAST_KEY)?;
            let mut instance = tx.prepare_cached(INSERT_INSTANCE)?;
            let now = now_ms();
            for u in uses {
                let key = u.material.key();
                let k = key.as_bytes();
                if known.query_row([k], |_| Ok(())).optional()?.is_none() {
                    insert.execute(params![k, u.material.encode(), now])?;
                }
                used.execute(params![session, k])?;
                let previous: Option<Vec<u8>> = before
                    .query_row(params![u.pipeline, u.step, u.instance], |r| r.get(0))
                    .optional()?;
                let previous = previous.as_deref().and_then(Digest::from_slice);
                if previous != Some(key) {
                    last.execute(params![u.pipeline, u.step, u.instance, k, now])?;
                }
                let realised = if u.lookup {
                    self.realisation_in(&tx, &key, false)?
                } else {
                    None
                };
                let planned = match (u.lookup, &realised) {
                    (false, _) => "forced",
                    (true, Some(_)) => "reused",
                    (true, None) => "run",
                };
                instance.execute(params![session, u.step, u.instance, k, planned])?;
                out.push(KeyUsed {
                    key,
                    realised,
                    previous: previous.filter(|p| *p != key),
                });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// The outputs of a realised derivation; they are leased to this process so that
    /// a concurrent gc keeps them while it materialises them.
    /// Whether a key has a realisation (a read: no write lock, no lease).
    pub fn is_realised(&self, key: &Digest) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM realisations WHERE key = ?1 LIMIT 1")?
            .query_row([key.as_bytes()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn realisation(&self, key: &Digest) -> Result<Option<Vec<Output>>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let outputs = self.realisation_in(&tx, key, true)?;
        tx.commit()?;
        Ok(outputs)
    }

    /// A key's realised outputs, leased by this process when `lease` (inside a
    /// write transaction).
    fn realisation_in(
        &self,
        tx: &Connection,
        key: &Digest,
        lease: bool,
    ) -> Result<Option<Vec<Output>>> {
        let mut q = tx.prepare_cached(REALISATION)?;
        let rows = q.query_map([key.as_bytes()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut outputs = Vec::new();
        for row in rows {
            let (name, digest, kind) = row?;
            let (Some(digest), Some(kind)) =
                (Digest::from_slice(&digest), OutputKind::parse(&kind))
            else {
                continue;
            };
            outputs.push(Output { name, digest, kind });
        }
        outputs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        if outputs.is_empty() || !lease {
            return Ok((!outputs.is_empty()).then_some(outputs));
        }
        self.register_owner(tx)?;
        let mut lease =
            tx.prepare_cached("INSERT OR IGNORE INTO leases (owner, digest) VALUES (?1, ?2)")?;
        for o in &outputs {
            lease.execute(params![self.owner, o.digest.as_bytes()])?;
        }
        Ok(Some(outputs))
    }

    /// Starts a session (one run of a pipeline); its derivations are gc roots while it
    /// is among the last runs of that pipeline.
    /// `info`: the engine's description of the run (`mustbuild runs`, `why`).
    pub fn begin_session(&self, pipeline: &str, info: Option<&str>) -> Result<i64> {
        let conn = self.conn();
        // gc tells a running session by its owner's row.
        self.register_owner(&conn)?;
        conn.execute(
            "INSERT INTO sessions (pipeline, owner, started_ms, info) VALUES (?1, ?2, ?3, ?4)",
            params![pipeline, self.owner, now_ms(), info],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn use_derivation(&self, session: i64, key: &Digest) -> Result<()> {
        self.conn()
            .execute(INSERT_USE, params![session, key.as_bytes()])?;
        Ok(())
    }

    /// How many times gc or repair removed something from this store.
    pub fn generation(&self) -> Result<i64> {
        Ok(crate::db::generation(&self.conn())?)
    }

    /// The no-op record of a pipeline file, if its last complete run left one.
    pub fn noop_record(&self, pipeline: &str) -> Result<Option<NoopRecord>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT session, generation, uses, body FROM noop_records WHERE pipeline = ?1",
            )?
            .query_row([pipeline], |r| {
                Ok(NoopRecord {
                    session: r.get(0)?,
                    generation: r.get(1)?,
                    uses: r.get(2)?,
                    body: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// The rest of a pipeline file's no-op record, as saved with its body.
    pub fn noop_record_detail(&self, pipeline: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT detail FROM noop_records WHERE pipeline = ?1")?
            .query_row([pipeline], |r| r.get(0))
            .optional()?)
    }

    /// Saves the no-op record of a complete run (`generation`: as read before the
    /// run looked anything up): its body, which every rerun reads, and its detail.
    pub fn save_noop_record(
        &self,
        pipeline: &str,
        session: i64,
        generation: i64,
        body: &[u8],
        detail: &[u8],
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let uses: i64 = tx.query_row(
            "SELECT COUNT(*) FROM session_uses WHERE session = ?1",
            [session],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO noop_records (pipeline, session, generation, uses, body, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![pipeline, session, generation, uses, body, detail],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a pipeline's no-op record (its last run was not a complete one).
    pub fn forget_noop_record(&self, pipeline: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM noop_records WHERE pipeline = ?1", [pipeline])?;
        Ok(())
    }

    /// A no-op run, recorded: a new, finished session that uses every derivation
    /// the record's session used (an alias of it, which gc follows), provided
    /// nothing was removed from the store since (same generation, and that
    /// session's uses all still there). `None` when the store changed.
    pub fn reuse_session(
        &self,
        name: &str,
        record: &NoopRecord,
        info: Option<&str>,
    ) -> Result<Option<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let uses: i64 = tx.query_row(
            "SELECT COUNT(*) FROM session_uses WHERE session = ?1",
            [record.session],
            |r| r.get(0),
        )?;
        if crate::db::generation(&tx)? != record.generation || uses != record.uses {
            return Ok(None);
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO sessions (pipeline, owner, started_ms, finished_ms, info) VALUES (?1, NULL, ?2, ?2, ?3)",
            params![name, now, info],
        )?;
        let session = tx.last_insert_rowid();
        // The same derivations as the record's session: named, not copied (a
        // no-op over 100,000 instances would add as many rows).
        tx.execute(
            "INSERT INTO session_aliases (session, uses_from) VALUES (?1, ?2)",
            params![session, record.session],
        )?;
        tx.commit()?;
        Ok(Some(session))
    }

    pub fn finish_session(&self, session: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE sessions SET finished_ms = ?2 WHERE id = ?1",
            params![session, now_ms()],
        )?;
        Ok(())
    }

    /// Remembers `key` as the latest of an instance (`instance`: its fan-out values).
    pub fn set_last_key(
        &self,
        pipeline: &str,
        step: &str,
        instance: &str,
        key: &Digest,
    ) -> Result<()> {
        self.conn().prepare_cached(SET_LAST_KEY)?.execute(params![
            pipeline,
            step,
            instance,
            key.as_bytes(),
            now_ms()
        ])?;
        Ok(())
    }

    /// The latest key of an instance, if it ever had one.
    pub fn last_key(&self, pipeline: &str, step: &str, instance: &str) -> Result<Option<Digest>> {
        let bytes: Option<Vec<u8>> = self
            .conn()
            .prepare_cached(
                "SELECT key FROM last_keys WHERE pipeline = ?1 AND step = ?2 AND instance = ?3",
            )?
            .query_row(params![pipeline, step, instance], |r| r.get(0))
            .optional()?;
        Ok(bytes.as_deref().and_then(Digest::from_slice))
    }

    /// Remembers what was materialised at a workspace path.
    pub fn set_materialised(&self, path: &Path, digest: &Digest) -> Result<()> {
        self.set_materialised_many(&[(path.to_path_buf(), *digest, None)])
    }

    /// `set_materialised` for many paths (and whose outputs they are), in one transaction.
    pub fn set_materialised_many(&self, items: &[Placed]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        set_materialised_in(&tx, items)?;
        tx.commit()?;
        Ok(())
    }

    /// What was last materialised at a workspace path.
    pub fn materialised(&self, path: &Path) -> Result<Option<Digest>> {
        let bytes: Option<Vec<u8>> = self
            .conn()
            .prepare_cached("SELECT digest FROM materialised WHERE path = ?1")?
            .query_row([path.to_string_lossy()], |r| r.get(0))
            .optional()?;
        Ok(bytes.as_deref().and_then(Digest::from_slice))
    }

    /// What was last materialised at a workspace path, and the derivation whose
    /// output it is when that was recorded.
    pub fn materialised_from(&self, path: &Path) -> Result<Option<(Digest, Option<Digest>)>> {
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = self
            .conn()
            .prepare_cached("SELECT digest, key FROM materialised WHERE path = ?1")?
            .query_row([path.to_string_lossy()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.and_then(|(d, k)| {
            Some((
                Digest::from_slice(&d)?,
                k.as_deref().and_then(Digest::from_slice),
            ))
        }))
    }

    /// Records one execution of a derivation.
    /// Sets the energy of runs already recorded (measured once every step
    /// that shared the machine with them had ended), in one transaction.
    pub fn set_run_energies(&self, energies: &[(i64, f64, &str)]) -> Result<()> {
        if energies.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut set = tx.prepare_cached(
                "UPDATE runs SET energy_j = ?2, energy_method = ?3 WHERE id = ?1",
            )?;
            for (id, joules, method) in energies {
                set.execute(params![id, joules, method])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces run records' figures with a batch system's own accounting,
    /// each where it has one (its memory and energy with their methods).
    pub fn set_run_accounting(&self, runs: &[Accounted<'_>]) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut set = tx.prepare_cached(
                "UPDATE runs SET
                    max_rss_bytes = COALESCE(?2, max_rss_bytes),
                    memory_method = CASE WHEN ?2 IS NULL THEN memory_method ELSE ?3 END,
                    user_cpu_ms = COALESCE(?4, user_cpu_ms),
                    sys_cpu_ms = COALESCE(?5, sys_cpu_ms),
                    energy_j = COALESCE(?6, energy_j),
                    energy_method = CASE WHEN ?6 IS NULL THEN energy_method ELSE ?7 END
                 WHERE id = ?1",
            )?;
            for r in runs {
                set.execute(params![
                    r.id,
                    r.max_rss_bytes,
                    r.memory_method,
                    r.user_cpu_ms,
                    r.sys_cpu_ms,
                    r.energy_joules,
                    r.energy_method
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn add_run(&self, run: &RunRecord) -> Result<i64> {
        add_run_in(&self.conn(), run)
    }

    /// Pins an object or a derivation's outputs under a name (gc keeps them).
    pub fn pin(&self, name: &str, root: Root) -> Result<()> {
        let (kind, target) = match root {
            Root::Object(d) => ("object", d),
            Root::Derivation(d) => ("derivation", d),
        };
        self.conn().execute(
            "INSERT OR REPLACE INTO roots (name, kind, target, added_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, kind, target.as_bytes(), now_ms()],
        )?;
        Ok(())
    }

    pub fn unpin(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM roots WHERE name = ?1", [name])?
            > 0)
    }

    /// Forgets this process's leases (they also go when it ends).
    pub fn release_leases(&self) -> Result<()> {
        self.conn()
            .execute("DELETE FROM leases WHERE owner = ?1", [&self.owner])?;
        Ok(())
    }
}

/// A WAL larger than this is checkpointed when a process closes the store.
const WAL_FOLD_BYTES: u64 = 256 << 10;

impl Drop for LocalStore {
    fn drop(&mut self) {
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *self.registered.get_mut() {
            let _ = conn.execute("DELETE FROM owners WHERE id = ?1", [&self.owner]);
        }
        // Connections do not checkpoint on close (two fsyncs on every run); a
        // large WAL is folded into the database here, so that opening it stays
        // quick (an opener reads the whole WAL when no one else has it open).
        let wal = self.root.join("meta.sqlite-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_FOLD_BYTES) {
            // Not worth waiting for: another process's gc may hold the lock.
            let _ = conn.busy_timeout(std::time::Duration::from_millis(50));
            let folded: rusqlite::Result<i64> =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
            // The first write to an emptied WAL writes its header and syncs it
            // and the folder (SQLite's rule): done here, at the end of a run, not
            // at the start of the next one (a no-op rerun's only write). Writing
            // the schema version back, unchanged, is the smallest write there is.
            if folded.is_ok_and(|busy| busy == 0) {
                let _ = (|| -> rusqlite::Result<()> {
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
                    tx.pragma_update(None, "user_version", version)?;
                    tx.commit()
                })();
            }
        }
    }
}

/// A gc root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Object(Digest),
    Derivation(Digest),
}

/// One execution of a derivation: where, when, what it cost, how it ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRecord {
    pub session: Option<i64>,
    pub key: Digest,
    pub step: String,
    /// The instance among its step's (its fan-out values, as the engine names them).
    pub instance: Option<String>,
    pub host: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// `succeeded`, `failed`, `killed`, `cancelled`, `infrastructure`.
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub user_cpu_ms: Option<i64>,
    pub sys_cpu_ms: Option<i64>,
    pub max_rss_bytes: Option<i64>,
    pub read_bytes: Option<i64>,
    pub write_bytes: Option<i64>,
    pub energy_joules: Option<f64>,
    /// How `energy_joules` was found: `measured (rapl)`, `measured (nvml)`,
    /// `modelled`… (`mustbuild_executors::energy::Method`).
    pub energy_method: Option<String>,
    pub log: Option<Digest>,
    /// The host's CPU, as `/proc/cpuinfo` names it.
    pub cpu_model: Option<String>,
    /// The GPUs the step was given, comma-separated (as `CUDA_VISIBLE_DEVICES`).
    pub gpus: Option<String>,
    /// How `max_rss_bytes` was found (e.g. `wait4`: the largest process's peak).
    pub memory_method: Option<String>,
    /// The bytes of the inputs put in its folder.
    pub input_bytes: Option<i64>,
    /// Whether its command ran sandboxed (its reads and writes confined).
    pub sandboxed: Option<bool>,
}

/// A batch system's own figures for a run record (`set_run_accounting`):
/// `None` keeps the record's.
#[derive(Debug, Clone, PartialEq)]
pub struct Accounted<'a> {
    pub id: i64,
    pub max_rss_bytes: Option<i64>,
    pub memory_method: &'a str,
    pub user_cpu_ms: Option<i64>,
    pub sys_cpu_ms: Option<i64>,
    pub energy_joules: Option<f64>,
    pub energy_method: &'a str,
}

/// A regular file's bytes if it holds at most `INLINE_MAX` of them (`None`: it
/// grew, or is no longer a regular file). Links are not followed, and a FIFO put
/// in its place cannot block the read.
fn read_small(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(
            rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32,
        )
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    f.take(INLINE_MAX + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= INLINE_MAX).then_some(bytes))
}

impl Pending {
    /// An object kept in the database: its bytes, no temporary file.
    fn inline(digest: Digest, kind: ObjectKind, size: u64, bytes: Vec<u8>) -> Pending {
        Pending {
            temp: PathBuf::new(),
            digest,
            kind,
            size,
            stored: bytes.len() as u64,
            inline: Some(bytes),
            children: Vec::new(),
            origin: None,
        }
    }

    /// Removes its temporary file, if it has one (an inline object has none).
    fn discard(&self) {
        if self.inline.is_none() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes a file and makes it durable.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(bytes).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

/// Makes the entries of a folder (renames into it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("sync", dir))
}

/// Turns a tree entry name into a path component.
pub(crate) fn entry_path(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(std::ffi::OsStr::from_bytes(name))
}

fn set_materialised_in(tx: &Connection, items: &[Placed]) -> Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO materialised (path, digest, key) VALUES (?1, ?2, ?3)",
    )?;
    for (path, digest, key) in items {
        insert.execute(params![
            path.to_string_lossy(),
            digest.as_bytes(),
            key.as_ref().map(|k| k.as_bytes().to_vec())
        ])?;
    }
    Ok(())
}

fn add_run_in(conn: &Connection, run: &RunRecord) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO runs (session, key, step, host, started_ms, finished_ms, outcome, exit_code,
            user_cpu_ms, sys_cpu_ms, max_rss_bytes, read_bytes, write_bytes, energy_j, energy_method, log,
            instance, cpu_model, gpus, memory_method, input_bytes, sandboxed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
            ?21, ?22)",
    )?
    .execute(params![
            run.session,
            run.key.as_bytes(),
            run.step,
            run.host,
            run.started_ms,
            run.finished_ms,
            run.outcome,
            run.exit_code,
            run.user_cpu_ms,
            run.sys_cpu_ms,
            run.max_rss_bytes,
            run.read_bytes,
            run.write_bytes,
            run.energy_joules,
            run.energy_method,
            run.log.map(|d| d.0.to_vec()),
            run.instance,
            run.cpu_model,
            run.gpus,
            run.memory_method,
            run.input_bytes,
            run.sandboxed,
        ])?;
    Ok(conn.last_insert_rowid())
}

/// Records a derivation's outputs, each of which must be stored with its kind.
fn realise_in(tx: &Connection, key: &Digest, outputs: &[Output]) -> Result<()> {
    let mut exists = tx.prepare_cached("SELECT kind FROM objects WHERE digest = ?1")?;
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO realisations (key, output, digest, kind, added_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let now = now_ms();
    for o in outputs {
        let kind: Option<String> = exists
            .query_row([o.digest.as_bytes()], |r| r.get(0))
            .optional()?;
        match kind.as_deref() {
            None => return Err(StoreError::MissingObject(o.digest)),
            Some(k) if (k == "tree") != (o.kind == OutputKind::Tree) => {
                return Err(StoreError::KindMismatch {
                    digest: o.digest,
                    output: o.name.clone(),
                });
            }
            Some(_) => {}
        }
        insert.execute(params![
            key.as_bytes(),
            o.name,
            o.digest.as_bytes(),
            o.kind.as_str(),
            now
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_for_realisations_does_not_prepare_the_query_again() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path().join("store")).unwrap();
        let conn = store.conn();
        for i in 0..3u8 {
            let none = store.realisation_in(&conn, &Digest::of(&[i]), false);
            assert_eq!(none.unwrap(), None);
        }
        let q = conn.prepare_cached(REALISATION).unwrap();
        assert_eq!(q.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}
