//! The metadata database: SQLite in WAL mode, so that several `mustbuild`
//! processes read at once and write one at a time. Every write is an `IMMEDIATE`
//! transaction (it takes the write lock at once), so that a check and the write
//! that depends on it can never interleave with another process's.

use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// Bumped with every incompatible schema change.
pub const SCHEMA_VERSION: i64 = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    digest   BLOB PRIMARY KEY,
    kind     TEXT NOT NULL CHECK (kind IN ('blob', 'tree')),
    size     INTEGER NOT NULL,   -- blob: content bytes; tree: bytes of all files below
    stored   INTEGER NOT NULL,   -- bytes kept (the encoding, for a tree)
    added_ms INTEGER NOT NULL,
    inline   BLOB                -- the content of a small object; NULL: in objects/
) WITHOUT ROWID;

-- Tree edges, for reachability (gc) and for trees made invalid by a bad child (verify).
CREATE TABLE IF NOT EXISTS tree_refs (
    tree  BLOB NOT NULL,
    child BLOB NOT NULL,
    PRIMARY KEY (tree, child)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tree_refs_child ON tree_refs (child);

CREATE TABLE IF NOT EXISTS derivations (
    key      BLOB PRIMARY KEY,
    material BLOB NOT NULL,      -- canonical key material; key = hash of it
    added_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS realisations (
    key        BLOB NOT NULL,
    output     TEXT NOT NULL,
    digest     BLOB NOT NULL REFERENCES objects (digest),
    kind       TEXT NOT NULL CHECK (kind IN ('file', 'executable', 'tree')),
    added_ms   INTEGER NOT NULL,
    PRIMARY KEY (key, output)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS realisations_digest ON realisations (digest);

-- One `mustbuild run` of a pipeline.
CREATE TABLE IF NOT EXISTS sessions (
    id          INTEGER PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    owner       TEXT,                -- the process running it (while it runs)
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_pipeline ON sessions (pipeline, started_ms);

-- The derivations a session executed or reused: the roots of its last runs.
CREATE TABLE IF NOT EXISTS session_uses (
    session INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    key     BLOB NOT NULL,
    PRIMARY KEY (session, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY,
    session       INTEGER REFERENCES sessions (id) ON DELETE SET NULL,
    key           BLOB NOT NULL,
    step          TEXT NOT NULL,
    host          TEXT NOT NULL,
    started_ms    INTEGER NOT NULL,
    finished_ms   INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    exit_code     INTEGER,
    user_cpu_ms   INTEGER,
    sys_cpu_ms    INTEGER,
    max_rss_bytes INTEGER,
    read_bytes    INTEGER,
    write_bytes   INTEGER,
    energy_j      REAL,
    energy_method TEXT,
    log           BLOB
);
CREATE INDEX IF NOT EXISTS runs_key ON runs (key);

-- Named pins: an object or all outputs of a derivation.
CREATE TABLE IF NOT EXISTS roots (
    name     TEXT PRIMARY KEY,
    kind     TEXT NOT NULL CHECK (kind IN ('object', 'derivation')),
    target   BLOB NOT NULL,
    added_ms INTEGER NOT NULL
);

-- Processes that use the store, and the objects each may be about to reference:
-- gc keeps them while the process lives.
CREATE TABLE IF NOT EXISTS owners (
    id         TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    proc_start INTEGER,          -- start time in clock ticks (/proc/PID/stat), against pid reuse
    started_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    owner  TEXT NOT NULL REFERENCES owners (id) ON DELETE CASCADE,
    digest BLOB NOT NULL,
    PRIMARY KEY (owner, digest)
) WITHOUT ROWID;

-- Digests of files by identity and change markers: an unchanged file is never reread.
CREATE TABLE IF NOT EXISTS file_digests (
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    digest   BLOB NOT NULL,
    PRIMARY KEY (dev, ino)
) WITHOUT ROWID;
";

/// The last key of each instance of each step of each pipeline: what `--dry-run`
/// and `why` compare a new key with.
const LAST_KEYS: &str = "
CREATE TABLE IF NOT EXISTS last_keys (
    pipeline TEXT NOT NULL,
    step     TEXT NOT NULL,
    instance TEXT NOT NULL,
    key      BLOB NOT NULL,
    added_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline, step, instance)
) WITHOUT ROWID;

-- What was last materialised at each workspace path: a different content there
-- later means the user edited it.
CREATE TABLE IF NOT EXISTS materialised (
    path   TEXT PRIMARY KEY,
    digest BLOB NOT NULL
) WITHOUT ROWID;

-- A session that used exactly the derivations of an earlier one (a no-op run):
-- gc keeps that one's derivations, and that one, while this one is kept.
CREATE TABLE IF NOT EXISTS session_aliases (
    session   INTEGER PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    uses_from INTEGER NOT NULL
);

-- Counters: 'generation' goes up whenever gc or repair removes anything, so that
-- what was known of the store before (a no-op record) can tell it is stale.
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- Per pipeline file: what its last complete run left, to tell a no-op rerun
-- without computing keys (engine::noop), and the session whose derivations it used.
CREATE TABLE IF NOT EXISTS noop_records (
    pipeline   TEXT PRIMARY KEY,
    session    INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    uses       INTEGER NOT NULL,   -- rows of that session in session_uses
    body       BLOB NOT NULL,      -- what every rerun reads
    detail     BLOB NOT NULL       -- what a rerun reads when something changed
);
";

/// Schema 4: what `mustbuild why`, `runs`, `show` and `log` read. Per session, a
/// description of the run (`info`, JSON chosen by the engine); per instance of
/// each session, its key and what the run meant to do with it; per run record,
/// the instance; the size of each source file's content, by digest (a source
/// file's earlier versions are not in the store).
/// Schema 4's and 6's new columns of older tables: added where missing (a store
/// some test or interrupted binary left at an older version may have them
/// already). Schema 6: what a run measured of its host and memory. Schema 8:
/// the size of its inputs (what memory advice scales with), and whether it
/// ran sandboxed.
const PROVENANCE_COLUMNS: [(&str, &str, &str); 8] = [
    ("sessions", "info", "TEXT"),
    ("runs", "instance", "TEXT"),
    ("materialised", "key", "BLOB"),
    ("runs", "cpu_model", "TEXT"),
    ("runs", "gpus", "TEXT"),
    ("runs", "memory_method", "TEXT"),
    ("runs", "input_bytes", "INTEGER"),
    ("runs", "sandboxed", "INTEGER"),
];

const PROVENANCE: &str = "
CREATE TABLE IF NOT EXISTS session_instances (
    session  INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    step     TEXT NOT NULL,
    instance TEXT NOT NULL,
    key      BLOB NOT NULL,
    planned  TEXT NOT NULL CHECK (planned IN ('reused', 'run', 'forced')),
    PRIMARY KEY (session, step, instance)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS session_instances_history ON session_instances (step, instance, session);
CREATE INDEX IF NOT EXISTS session_instances_key ON session_instances (key);
-- Schema 5: a run that took instances from the last complete run's record
-- (engine::noop) writes rows only for those it computed; the others are its
-- base's, as reused. A base has no base (a run copies its base's own rows
-- instead), so one join finds any session's instances: `recorded_instances`.
CREATE TABLE IF NOT EXISTS session_bases (
    session INTEGER PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    base    INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS session_bases_base ON session_bases (base);
CREATE VIEW IF NOT EXISTS recorded_instances (session, step, instance, key, planned) AS
    SELECT session, step, instance, key, planned FROM session_instances
    UNION ALL
    SELECT b.session, si.step, si.instance, si.key, 'reused'
    FROM session_bases b JOIN session_instances si ON si.session = b.base
    WHERE NOT EXISTS (SELECT 1 FROM session_instances o
                      WHERE o.session = b.session AND o.step = si.step AND o.instance = si.instance);
CREATE INDEX IF NOT EXISTS runs_session ON runs (session);
CREATE TABLE IF NOT EXISTS audits (
    id      INTEGER PRIMARY KEY,
    key     BLOB NOT NULL,
    at_ms   INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('reproducible', 'differs', 'failed')),
    detail  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audits_key ON audits (key, id);
CREATE TABLE IF NOT EXISTS content_sizes (
    digest BLOB PRIMARY KEY,
    size   INTEGER NOT NULL
) WITHOUT ROWID;
-- Schema 7: realisations taken from a remote cache, and from which (kept as
-- provenance when gc drops the realisation; the last fetch of a key wins).
CREATE TABLE IF NOT EXISTS fetched (
    key     BLOB PRIMARY KEY,
    cache   TEXT NOT NULL,       -- its URL (never credentials: they are not in it)
    signer  TEXT NOT NULL,       -- the trusted key that signed its record
    session INTEGER,             -- the run that fetched it (NULL: `cache verify`)
    at_ms   INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Records that gc or repair removed something (inside their transaction).
pub(crate) fn bump_generation(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('generation', 1)
         ON CONFLICT (name) DO UPDATE SET value = value + 1",
        [],
    )?;
    Ok(())
}

/// How many times gc or repair removed something from this store.
pub(crate) fn generation(conn: &Connection) -> rusqlite::Result<i64> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'generation'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Opens (and creates or migrates) the database; gives its schema version too
/// (newer than [`SCHEMA_VERSION`] when a newer mustbuild made it).
pub fn open(path: &Path) -> rusqlite::Result<(Connection, i64)> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Other processes hold the write lock for short transactions; wait for them.
    conn.busy_timeout(Duration::from_secs(120))?;
    // The last connection to close would checkpoint the WAL and delete it, with
    // two fsyncs: milliseconds on every run. Checkpoints happen as the WAL grows
    // (every 1,000 pages) instead.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    // Switching to WAL and creating the schema can meet another process doing the
    // same on a new store; SQLite then answers "busy" at once, without waiting.
    let mut attempt = 0;
    loop {
        match initialise(&conn) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && attempt < 600 =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map(|version| (conn, version)),
        }
    }
}

fn initialise(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a commit survives a crash of the process; a power cut may
    // lose the last commits but never corrupts the database, and since objects are
    // made durable before the rows that name them, a lost commit loses only a cache
    // entry, never content that a row points at. (gc raises it to FULL.)
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(version);
    }
    // Added within schema 1: created on stores made before it (parsing the
    // statements on every open costs more than asking whether they are needed).
    let present: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN
         ('last_keys', 'materialised', 'session_aliases', 'meta', 'noop_records')",
        [],
        |r| r.get(0),
    )?;
    if present < 5 {
        conn.execute_batch(LAST_KEYS)?;
    }
    // Schema 3 splits no-op records in two: older ones are dropped (a record is
    // only a shortcut, and the next complete run leaves a new one). A store left
    // at 0 by a binary of schema 2 may hold its noop_records, made above.
    let noop_records = format!("DROP TABLE IF EXISTS noop_records; {LAST_KEYS}");
    let upgrade = match version {
        0 => {
            format!("{SCHEMA} {noop_records} {PROVENANCE} PRAGMA user_version = {SCHEMA_VERSION};")
        }
        // Schema 2 keeps small objects in the database.
        1 => format!(
            "ALTER TABLE objects ADD COLUMN inline BLOB; {noop_records} {PROVENANCE}
             PRAGMA user_version = {SCHEMA_VERSION};"
        ),
        2 => format!("{noop_records} {PROVENANCE} PRAGMA user_version = {SCHEMA_VERSION};"),
        3..=7 => format!("{PROVENANCE} PRAGMA user_version = {SCHEMA_VERSION};"),
        // Not a schema of ours: the store reports it.
        _ => return Ok(version),
    };
    // Under the write lock, asking again: another process may have just done it.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = (|| {
        let now: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now == version {
            conn.execute_batch(&upgrade)?;
            for (table, column, kind) in PROVENANCE_COLUMNS {
                let present: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                    [table, column],
                    |r| r.get(0),
                )?;
                if present == 0 {
                    conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
                }
            }
            conn.execute_batch(
                "CREATE INDEX IF NOT EXISTS materialised_key ON materialised (key)",
            )?;
        }
        conn.execute_batch("COMMIT")?;
        Ok(if now == version { SCHEMA_VERSION } else { now })
    })();
    if done.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}
