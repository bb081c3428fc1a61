//! `verify`, `gc` and `info`.

use crate::digest::Digest;
use crate::encoding::{TREE_CONTEXT, hash_in_context};
use crate::error::{Result, StoreError, io};
use crate::hashing::hash_file;
use crate::local::{LocalStore, ObjectData, ObjectKind, hostname, proc_start};
use crate::tree::Tree;
use rayon::prelude::*;
use rusqlite::{Connection, OptionalExtension};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// Objects whose file does not hash to their digest (or a tree that does not decode).
    pub corrupt: Vec<Digest>,
    /// Objects whose file is gone.
    pub missing: Vec<Digest>,
    /// Objects that could not be read (an I/O error other than "not found"): reported,
    /// never repaired, since the content may well be fine.
    pub unreadable: Vec<Digest>,
    /// With repair: trees dropped because something below them was bad.
    pub broken_trees: Vec<Digest>,
    /// With repair: realisations dropped because they named a bad object.
    pub dropped_realisations: u64,
    /// Realisations naming an object the store has no row for (never expected).
    pub dangling_realisations: u64,
    pub repaired: bool,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.missing.is_empty()
            && self.unreadable.is_empty()
            && self.dangling_realisations == 0
    }
}

/// What `gc` removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub objects_removed: u64,
    pub bytes_freed: u64,
    pub realisations_removed: u64,
    pub derivations_removed: u64,
    pub sessions_removed: u64,
    pub stray_files_removed: u64,
    pub objects_kept: u64,
    pub dry_run: bool,
    /// The objects removed, with their sizes.
    pub removed: Vec<(Digest, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreInfo {
    pub location: PathBuf,
    pub objects: u64,
    pub blobs: u64,
    pub trees: u64,
    pub bytes: u64,
    pub derivations: u64,
    pub realisations: u64,
    pub runs: u64,
    pub sessions: u64,
    pub roots: u64,
    pub database_bytes: u64,
}

fn digests(conn: &Connection, sql: &str) -> Result<Vec<Digest>> {
    let mut q = conn.prepare(sql)?;
    let rows = q.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for r in rows {
        if let Some(d) = Digest::from_slice(&r?) {
            out.push(d);
        }
    }
    Ok(out)
}

enum Check {
    Good,
    Corrupt,
    Missing,
    Unreadable,
}

impl LocalStore {
    /// Whether an object's file holds exactly its content.
    /// `data`: where the object is, as its row says (`object_data`).
    fn check_object(&self, d: &Digest, kind: ObjectKind, data: Result<ObjectData>) -> Check {
        let path = match data {
            Ok(ObjectData::File(path)) => path,
            Ok(ObjectData::Inline(bytes)) => {
                let got = match kind {
                    ObjectKind::Blob => Digest::of(&bytes),
                    ObjectKind::Tree if Tree::decode(&bytes).is_ok() => {
                        hash_in_context(TREE_CONTEXT, &bytes)
                    }
                    ObjectKind::Tree => return Check::Corrupt,
                };
                return if got == *d {
                    Check::Good
                } else {
                    Check::Corrupt
                };
            }
            Err(StoreError::MissingObject(_)) => return Check::Missing,
            Err(_) => return Check::Unreadable,
        };
        let io_error = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => Check::Missing,
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => Check::Corrupt,
            _ => Check::Unreadable,
        };
        match kind {
            ObjectKind::Blob => match hash_file(&path) {
                Ok((got, _)) if got == *d => Check::Good,
                Ok(_) => Check::Corrupt,
                Err(e) => io_error(e),
            },
            ObjectKind::Tree => match std::fs::read(&path) {
                Ok(b) if hash_in_context(TREE_CONTEXT, &b) == *d && Tree::decode(&b).is_ok() => {
                    Check::Good
                }
                Ok(_) => Check::Corrupt,
                Err(e) => io_error(e),
            },
        }
    }

    /// Rehashes every object, in parallel. With `repair`, moves bad files to
    /// `quarantine/`, forgets their rows (and the trees above them) and drops the
    /// realisations that named any of them.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let objects: Vec<(Digest, ObjectKind, u64)> = {
            let conn = self.conn();
            let mut q = conn.prepare("SELECT digest, kind, stored FROM objects")?;
            let rows = q.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (d, kind, stored) = row?;
                if let Some(d) = Digest::from_slice(&d) {
                    let kind = if kind == "tree" {
                        ObjectKind::Tree
                    } else {
                        ObjectKind::Blob
                    };
                    out.push((d, kind, stored.max(0) as u64));
                }
            }
            out
        };
        let results: Vec<(Digest, Check)> = objects
            .par_iter()
            .map(|(d, kind, _)| (*d, self.check_object(d, *kind, self.object_data(d))))
            .collect();
        let dangling: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM realisations r WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE o.digest = r.digest)",
            [],
            |r| r.get(0),
        )?;
        let mut report = VerifyReport {
            dangling_realisations: dangling.max(0) as u64,
            checked: objects.len() as u64,
            bytes: objects.iter().map(|o| o.2).sum(),
            ..VerifyReport::default()
        };
        for (d, c) in results {
            match c {
                Check::Good => {}
                Check::Corrupt => report.corrupt.push(d),
                Check::Missing => report.missing.push(d),
                Check::Unreadable => report.unreadable.push(d),
            }
        }
        report.corrupt.sort();
        report.missing.sort();
        report.unreadable.sort();
        if repair && !(report.corrupt.is_empty() && report.missing.is_empty()) {
            self.repair(&mut report)?;
        }
        Ok(report)
    }

    fn repair(&self, report: &mut VerifyReport) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Look again under the write lock: a gc or a writer may have acted since.
        let still_bad = |ds: &[Digest], want: fn(&Check) -> bool| -> Result<Vec<Digest>> {
            let mut q = tx.prepare_cached("SELECT kind, inline FROM objects WHERE digest = ?1")?;
            let mut out = Vec::new();
            for d in ds {
                let row: Option<(String, Option<Vec<u8>>)> = q
                    .query_row([d.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let Some((kind, inline)) = row else { continue };
                let kind = if kind == "tree" {
                    ObjectKind::Tree
                } else {
                    ObjectKind::Blob
                };
                let data = Ok(match inline {
                    Some(bytes) => ObjectData::Inline(bytes),
                    None => ObjectData::File(self.object_path(d)),
                });
                if want(&self.check_object(d, kind, data)) {
                    out.push(*d);
                }
            }
            Ok(out)
        };
        report.corrupt = still_bad(&report.corrupt, |c| matches!(c, Check::Corrupt))?;
        report.missing = still_bad(&report.missing, |c| matches!(c, Check::Missing))?;
        let bad: Vec<Digest> = report
            .corrupt
            .iter()
            .chain(&report.missing)
            .copied()
            .collect();
        for d in &report.corrupt {
            let to = self.root.join("quarantine").join(d.to_hex());
            // A small object's bad bytes are kept there too, for a look.
            let inline: Option<Option<Vec<u8>>> = tx
                .query_row(
                    "SELECT inline FROM objects WHERE digest = ?1",
                    [d.as_bytes()],
                    |r| r.get(0),
                )
                .optional()?;
            match inline {
                Some(Some(bytes)) => drop(std::fs::write(&to, bytes)),
                _ => drop(std::fs::rename(self.object_path(d), &to)),
            }
        }
        // Trees above a bad object can no longer be materialised.
        let mut seen: HashSet<Digest> = bad.iter().copied().collect();
        let mut queue: VecDeque<Digest> = bad.iter().copied().collect();
        {
            let mut parents = tx.prepare_cached("SELECT tree FROM tree_refs WHERE child = ?1")?;
            while let Some(d) = queue.pop_front() {
                let rows = parents.query_map([d.as_bytes()], |r| r.get::<_, Vec<u8>>(0))?;
                for r in rows {
                    if let Some(t) = Digest::from_slice(&r?)
                        && seen.insert(t)
                    {
                        report.broken_trees.push(t);
                        queue.push_back(t);
                    }
                }
            }
        }
        report.broken_trees.sort();
        for d in &seen {
            report.dropped_realisations +=
                tx.execute("DELETE FROM realisations WHERE digest = ?1", [d.as_bytes()])? as u64;
            tx.execute("DELETE FROM tree_refs WHERE tree = ?1", [d.as_bytes()])?;
            tx.execute("DELETE FROM objects WHERE digest = ?1", [d.as_bytes()])?;
        }
        crate::db::bump_generation(&tx)?;
        tx.commit()?;
        report.repaired = true;
        Ok(())
    }

    /// Removes what no root reaches. Roots: pinned objects and derivations, the
    /// derivations used by the last `keep_last` finished sessions of each pipeline
    /// (and by sessions still running), and the objects leased by live processes.
    ///
    /// Two transactions, each holding the write lock: the first decides and forgets
    /// the garbage (durably), the second deletes the files that still have no row.
    /// A kill in between leaves only files without rows, which the next gc removes;
    /// no row ever names a deleted file. Writers rename objects into place only
    /// inside their own write transactions, so none can be halfway through.
    pub fn gc(&self, keep_last: usize, dry_run: bool) -> Result<GcReport> {
        let mut conn = self.conn();
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        // This commit must survive a power cut before any file goes.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let decided = self.gc_decide(&mut conn, keep_last, dry_run, &mut report);
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let garbage = decided?;
        if dry_run {
            return Ok(report);
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM objects WHERE digest = ?1")?;
            for d in &garbage {
                // Stored again since the first transaction? Then it stays.
                if exists
                    .query_row([d.as_bytes()], |_| Ok(()))
                    .optional()?
                    .is_some()
                {
                    continue;
                }
                let p = self.object_path(d);
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(io("remove", p)(e));
                }
            }
        }
        let strays = self.stray_files(&tx)?;
        report.stray_files_removed = strays.len() as u64;
        for p in &strays {
            let _ = std::fs::remove_file(p);
        }
        tx.commit()?;
        Ok(report)
    }

    /// The first transaction of gc: find the garbage and forget it.
    fn gc_decide(
        &self,
        conn: &mut Connection,
        keep_last: usize,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<Vec<Digest>> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        forget_dead_owners(&tx)?;
        // Finished sessions beyond the last `keep_last` of their pipeline. A session
        // whose process still runs is never old.
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS gc_old (id INTEGER PRIMARY KEY); DELETE FROM gc_old;",
        )?;
        tx.execute(
            "INSERT INTO gc_old SELECT id FROM (
                 SELECT s.id, s.finished_ms, s.owner,
                        ROW_NUMBER() OVER (PARTITION BY s.pipeline ORDER BY s.started_ms DESC, s.id DESC) AS n
                 FROM sessions s)
             WHERE n > ?1 AND NOT (finished_ms IS NULL AND owner IN (SELECT id FROM owners))",
            [i64::try_from(keep_last).unwrap_or(i64::MAX)],
        )?;
        // A kept no-op session keeps the session whose derivations it used.
        tx.execute(
            "DELETE FROM gc_old WHERE id IN (SELECT uses_from FROM session_aliases
                 WHERE session NOT IN (SELECT id FROM gc_old))",
            [],
        )?;
        // A kept session keeps the record of the session its instances are
        // based on (after the aliases: a no-op may alias a based session; a base
        // has no base), but not that session's derivations: the based session
        // uses (session_uses) those it took, and the base's others may go.
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS gc_base_only (id INTEGER PRIMARY KEY);
             DELETE FROM gc_base_only;",
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO gc_base_only SELECT base FROM session_bases
                 WHERE session NOT IN (SELECT id FROM gc_old) AND base IN (SELECT id FROM gc_old)",
            [],
        )?;
        tx.execute(
            "DELETE FROM gc_old WHERE id IN (SELECT id FROM gc_base_only)",
            [],
        )?;
        report.sessions_removed = tx
            .query_row("SELECT COUNT(*) FROM gc_old", [], |r| r.get::<_, i64>(0))?
            .max(0) as u64;
        let kept_keys: HashSet<Digest> = digests(
            &tx,
            "SELECT key FROM session_uses WHERE session NOT IN (SELECT id FROM gc_old)
                 AND session NOT IN (SELECT id FROM gc_base_only)
             UNION SELECT target FROM roots WHERE kind = 'derivation'",
        )?
        .into_iter()
        .collect();
        // Reachable objects: outputs of kept derivations, pinned objects, leases, logs
        // of kept runs, and everything below them.
        let mut queue: VecDeque<Digest> = VecDeque::new();
        {
            let mut outputs =
                tx.prepare_cached("SELECT digest FROM realisations WHERE key = ?1")?;
            for k in &kept_keys {
                let rows = outputs.query_map([k.as_bytes()], |r| r.get::<_, Vec<u8>>(0))?;
                for r in rows {
                    if let Some(d) = Digest::from_slice(&r?) {
                        queue.push_back(d);
                    }
                }
            }
        }
        queue.extend(digests(
            &tx,
            "SELECT target FROM roots WHERE kind = 'object'
             UNION SELECT digest FROM leases
             UNION SELECT log FROM runs WHERE log IS NOT NULL AND (session IS NULL OR session NOT IN (SELECT id FROM gc_old))",
        )?);
        let mut reachable: HashSet<Digest> = HashSet::new();
        {
            let mut children = tx.prepare_cached("SELECT child FROM tree_refs WHERE tree = ?1")?;
            while let Some(d) = queue.pop_front() {
                if !reachable.insert(d) {
                    continue;
                }
                let rows = children.query_map([d.as_bytes()], |r| r.get::<_, Vec<u8>>(0))?;
                for r in rows {
                    if let Some(c) = Digest::from_slice(&r?) {
                        queue.push_back(c);
                    }
                }
            }
        }
        let all: Vec<(Digest, u64)> = {
            let mut q = tx.prepare("SELECT digest, stored FROM objects")?;
            let rows = q.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for r in rows {
                let (d, size) = r?;
                if let Some(d) = Digest::from_slice(&d) {
                    out.push((d, size.max(0) as u64));
                }
            }
            out
        };
        let mut garbage: Vec<(Digest, u64)> = all
            .iter()
            .filter(|(d, _)| !reachable.contains(d))
            .copied()
            .collect();
        garbage.sort();
        report.objects_kept = (all.len() - garbage.len()) as u64;
        report.objects_removed = garbage.len() as u64;
        report.bytes_freed = garbage.iter().map(|g| g.1).sum();
        report.removed = garbage.clone();
        // Derivations of live processes' unfinished work stay with their sessions.
        let stale_realisations: Vec<Digest> =
            digests(&tx, "SELECT DISTINCT key FROM realisations")?
                .into_iter()
                .filter(|k| !kept_keys.contains(k))
                .collect();
        report.realisations_removed = stale_realisations.len() as u64;
        let stale_derivations: Vec<Digest> = digests(&tx, "SELECT key FROM derivations")?
            .into_iter()
            .filter(|k| !kept_keys.contains(k))
            .collect();
        report.derivations_removed = stale_derivations.len() as u64;
        if dry_run {
            return Ok(Vec::new());
        }
        for k in &stale_realisations {
            tx.execute("DELETE FROM realisations WHERE key = ?1", [k.as_bytes()])?;
        }
        for k in &stale_derivations {
            tx.execute("DELETE FROM derivations WHERE key = ?1", [k.as_bytes()])?;
        }
        for (d, _) in &garbage {
            tx.execute("DELETE FROM tree_refs WHERE tree = ?1", [d.as_bytes()])?;
            tx.execute("DELETE FROM objects WHERE digest = ?1", [d.as_bytes()])?;
        }
        let sessions_gone = tx.execute(
            "DELETE FROM sessions WHERE id IN (SELECT id FROM gc_old)",
            [],
        )?;
        if sessions_gone > 0
            || !stale_realisations.is_empty()
            || !stale_derivations.is_empty()
            || !garbage.is_empty()
        {
            crate::db::bump_generation(&tx)?;
        }
        tx.commit()?;
        Ok(garbage.into_iter().map(|g| g.0).collect())
    }

    /// Files in `objects/` without a row (a writer killed between its rename and
    /// its commit, or a gc killed between its two transactions) or whose row holds
    /// the content itself, and temporary files of processes that are gone. Called
    /// with the write lock held.
    fn stray_files(&self, tx: &Connection) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let objects = self.root.join("objects");
        let mut exists =
            tx.prepare_cached("SELECT 1 FROM objects WHERE digest = ?1 AND inline IS NULL")?;
        for dir in std::fs::read_dir(&objects)
            .map_err(io("list", &objects))?
            .flatten()
        {
            let prefix = dir.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = format!("{prefix}{}", f.file_name().to_string_lossy());
                let known = match name.parse::<Digest>() {
                    Ok(d) => exists
                        .query_row([d.as_bytes()], |_| Ok(()))
                        .optional()?
                        .is_some(),
                    Err(_) => false,
                };
                if !known {
                    out.push(f.path());
                }
            }
        }
        let tmp = self.root.join("tmp");
        let owners: Vec<String> = {
            let mut q = tx.prepare("SELECT id FROM owners")?;
            let rows = q.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map(|id| id.replace('/', "_")))
                .collect::<rusqlite::Result<_>>()?
        };
        for f in std::fs::read_dir(&tmp).map_err(io("list", &tmp))?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !owners.iter().any(|o| name.starts_with(&format!("{o}-"))) {
                out.push(f.path());
            }
        }
        Ok(out)
    }

    /// Counts of what the store holds.
    pub fn info(&self) -> Result<StoreInfo> {
        let conn = self.conn();
        let count = |sql: &str| -> Result<u64> {
            Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))?.max(0) as u64)
        };
        let db_bytes = ["meta.sqlite", "meta.sqlite-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.root.join(f)).ok())
            .map(|m| m.len())
            .sum();
        Ok(StoreInfo {
            location: self.root.clone(),
            objects: count("SELECT COUNT(*) FROM objects")?,
            blobs: count("SELECT COUNT(*) FROM objects WHERE kind = 'blob'")?,
            trees: count("SELECT COUNT(*) FROM objects WHERE kind = 'tree'")?,
            bytes: count("SELECT COALESCE(SUM(stored), 0) FROM objects")?,
            derivations: count("SELECT COUNT(*) FROM derivations")?,
            realisations: count("SELECT COUNT(DISTINCT key) FROM realisations")?,
            runs: count("SELECT COUNT(*) FROM runs")?,
            sessions: count("SELECT COUNT(*) FROM sessions")?,
            roots: count("SELECT COUNT(*) FROM roots")?,
            database_bytes: db_bytes,
        })
    }
}

/// Drops owners whose process is gone: on this host, a process whose pid is not
/// running or was reused (its start time differs). Owners on other hosts are kept:
/// their liveness cannot be seen from here, and a store is meant for one host (SQLite
/// locking is not safe over network file systems).
fn forget_dead_owners(conn: &Connection) -> Result<()> {
    let here = hostname();
    let owners: Vec<(String, String, i64, Option<i64>)> = {
        let mut q = conn.prepare("SELECT id, host, pid, proc_start FROM owners")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, host, pid, start) in owners {
        if host != here {
            continue;
        }
        let alive = u32::try_from(pid)
            .ok()
            .and_then(proc_start)
            .is_some_and(|s| start.is_none_or(|want| want == s));
        if !alive {
            conn.execute("DELETE FROM owners WHERE id = ?1", [&id])?;
        }
    }
    Ok(())
}
