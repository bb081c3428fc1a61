//! What the store remembers of past runs, read back: sessions, what each did
//! with each instance, run records. The queries behind `mustbuild runs`, `why`,
//! `show` and `log`; read-only, each answered from indexes.

use crate::digest::Digest;
use crate::error::Result;
use crate::local::{LocalStore, Output, OutputKind};
use rusqlite::{OptionalExtension, Row, params};

/// One run of a pipeline (a session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: i64,
    pub pipeline: String,
    pub started_ms: i64,
    /// `None` while it runs, or when it was killed.
    pub finished_ms: Option<i64>,
    /// The engine's description of the run (JSON).
    pub info: Option<String>,
    /// A no-op run: it used exactly the derivations of this earlier session.
    pub alias_of: Option<i64>,
}

/// What a session meant to do with one instance: its key, and whether it was
/// `reused` (realised when looked up), to `run`, or `forced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub session: i64,
    pub step: String,
    pub instance: String,
    pub key: Digest,
    pub planned: String,
}

/// One execution of a derivation, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub session: Option<i64>,
    pub key: Digest,
    pub step: String,
    pub instance: Option<String>,
    pub host: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub user_cpu_ms: Option<i64>,
    pub sys_cpu_ms: Option<i64>,
    pub max_rss_bytes: Option<i64>,
    pub log: Option<Digest>,
    pub read_bytes: Option<i64>,
    pub write_bytes: Option<i64>,
    pub energy_joules: Option<f64>,
    pub energy_method: Option<String>,
    pub cpu_model: Option<String>,
    pub gpus: Option<String>,
    pub memory_method: Option<String>,
    /// The bytes of its inputs, where recorded (schema 8 on).
    pub input_bytes: Option<i64>,
    /// Whether it ran sandboxed, where recorded (schema 8 on).
    pub sandboxed: Option<bool>,
}

/// How many instances a session reused, ran and forced, and how its executions ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub reused: u64,
    pub to_run: u64,
    pub forced: u64,
    pub succeeded: u64,
    pub failed: u64,
}

const SESSION: &str = "SELECT s.id, s.pipeline, s.started_ms, s.finished_ms, s.info, a.uses_from
     FROM sessions s LEFT JOIN session_aliases a ON a.session = s.id";
const INSTANCE: &str = "SELECT session, step, instance, key, planned FROM recorded_instances";
pub(crate) const RUN: &str =
    "SELECT id, session, key, step, instance, host, started_ms, finished_ms, outcome,
     exit_code, user_cpu_ms, sys_cpu_ms, max_rss_bytes, log, read_bytes, write_bytes, energy_j,
     energy_method, cpu_model, gpus, memory_method, input_bytes, sandboxed FROM runs";

fn digest_at(r: &Row<'_>, i: usize) -> rusqlite::Result<Digest> {
    let bytes: Vec<u8> = r.get(i)?;
    Digest::from_slice(&bytes).ok_or(rusqlite::Error::InvalidColumnType(
        i,
        "digest".into(),
        rusqlite::types::Type::Blob,
    ))
}

fn session_row(r: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        pipeline: r.get(1)?,
        started_ms: r.get(2)?,
        finished_ms: r.get(3)?,
        info: r.get(4)?,
        alias_of: r.get(5)?,
    })
}

fn instance_row(r: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        session: r.get(0)?,
        step: r.get(1)?,
        instance: r.get(2)?,
        key: digest_at(r, 3)?,
        planned: r.get(4)?,
    })
}

pub(crate) fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    let log: Option<Vec<u8>> = r.get(13)?;
    Ok(RunRow {
        id: r.get(0)?,
        session: r.get(1)?,
        key: digest_at(r, 2)?,
        step: r.get(3)?,
        instance: r.get(4)?,
        host: r.get(5)?,
        started_ms: r.get(6)?,
        finished_ms: r.get(7)?,
        outcome: r.get(8)?,
        exit_code: r.get(9)?,
        user_cpu_ms: r.get(10)?,
        sys_cpu_ms: r.get(11)?,
        max_rss_bytes: r.get(12)?,
        log: log.as_deref().and_then(Digest::from_slice),
        read_bytes: r.get(14)?,
        write_bytes: r.get(15)?,
        energy_joules: r.get(16)?,
        energy_method: r.get(17)?,
        cpu_model: r.get(18)?,
        gpus: r.get(19)?,
        memory_method: r.get(20)?,
        input_bytes: r.get(21)?,
        sandboxed: r.get(22)?,
    })
}

impl LocalStore {
    /// Rows of `sql` (bound to `params`), each made by `row`.
    pub(crate) fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut q = conn.prepare_cached(sql)?;
        let out = q.query_map(params, row)?.collect::<rusqlite::Result<_>>()?;
        Ok(out)
    }

    /// The latest sessions, newest first (`limit` of them at most).
    pub fn sessions(&self, limit: usize) -> Result<Vec<SessionRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.rows(
            &format!("{SESSION} ORDER BY s.id DESC LIMIT ?1"),
            [limit],
            session_row,
        )
    }

    pub fn session(&self, id: i64) -> Result<Option<SessionRow>> {
        Ok(self
            .rows(&format!("{SESSION} WHERE s.id = ?1"), [id], session_row)?
            .pop())
    }

    /// The latest session of `pipeline` before `before` that recorded its
    /// instances (a no-op session did not: it is its alias's).
    pub fn session_before(&self, pipeline: &str, before: i64) -> Result<Option<SessionRow>> {
        Ok(self
            .rows(
                &format!(
                    "{SESSION} WHERE s.pipeline = ?1 AND s.id < ?2 AND a.uses_from IS NULL
                     ORDER BY s.id DESC LIMIT 1"
                ),
                params![pipeline, before],
                session_row,
            )?
            .pop())
    }

    pub fn session_counts(&self, session: i64) -> Result<SessionCounts> {
        let conn = self.conn();
        let mut counts = SessionCounts::default();
        let mut q = conn.prepare_cached(
            "SELECT planned, COUNT(*) FROM recorded_instances WHERE session = ?1 GROUP BY planned",
        )?;
        for r in q.query_map([session], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (planned, n) = r?;
            let n = n.max(0) as u64;
            match planned.as_str() {
                "reused" => counts.reused = n,
                "run" => counts.to_run = n,
                _ => counts.forced = n,
            }
        }
        // An instance retried counts once, by its last attempt.
        let mut q = conn.prepare_cached(
            "SELECT outcome = 'succeeded', COUNT(*) FROM runs WHERE id IN
                 (SELECT MAX(id) FROM runs WHERE session = ?1 GROUP BY key)
             GROUP BY 1",
        )?;
        for r in q.query_map([session], |r| {
            Ok((r.get::<_, bool>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (ok, n) = r?;
            let n = n.max(0) as u64;
            if ok {
                counts.succeeded = n;
            } else {
                counts.failed = n;
            }
        }
        Ok(counts)
    }

    /// Every instance a session recorded, in step and instance order.
    pub fn session_instances(&self, session: i64) -> Result<Vec<InstanceRow>> {
        self.rows(
            &format!("{INSTANCE} WHERE session = ?1 ORDER BY step, instance"),
            [session],
            instance_row,
        )
    }

    /// The instances of `step` a session recorded, in instance order.
    pub fn session_step_instances(&self, session: i64, step: &str) -> Result<Vec<InstanceRow>> {
        self.rows(
            &format!("{INSTANCE} WHERE session = ?1 AND step = ?2 ORDER BY instance"),
            params![session, step],
            instance_row,
        )
    }

    /// One instance as `session` recorded it.
    pub fn session_instance(
        &self,
        session: i64,
        step: &str,
        instance: &str,
    ) -> Result<Option<InstanceRow>> {
        Ok(self
            .rows(
                &format!("{INSTANCE} WHERE session = ?1 AND step = ?2 AND instance = ?3"),
                params![session, step, instance],
                instance_row,
            )?
            .pop())
    }

    /// The latest session of `pipeline` before `before` that recorded this
    /// instance, as it did.
    pub fn instance_before(
        &self,
        pipeline: &str,
        step: &str,
        instance: &str,
        before: i64,
    ) -> Result<Option<InstanceRow>> {
        Ok(self
            .rows(
                "SELECT si.session, si.step, si.instance, si.key, si.planned
                 FROM recorded_instances si JOIN sessions s ON s.id = si.session
                 WHERE si.step = ?2 AND si.instance = ?3 AND si.session < ?4 AND s.pipeline = ?1
                 ORDER BY si.session DESC LIMIT 1",
                params![pipeline, step, instance, before],
                instance_row,
            )?
            .pop())
    }

    /// Whether a session of `pipeline` before `before` recorded any instance of `step`.
    pub fn step_seen_before(&self, pipeline: &str, step: &str, before: i64) -> Result<bool> {
        let conn = self.conn();
        let mut q = conn.prepare_cached(
            "SELECT 1 FROM recorded_instances si JOIN sessions s ON s.id = si.session
             WHERE si.step = ?2 AND si.session < ?3 AND s.pipeline = ?1 LIMIT 1",
        )?;
        Ok(q.query_row(params![pipeline, step, before], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Every instance recorded with `key`, newest session first.
    pub fn instances_with_key(&self, key: &Digest) -> Result<Vec<InstanceRow>> {
        self.rows(
            &format!("{INSTANCE} WHERE key = ?1 ORDER BY session DESC"),
            [key.as_bytes()],
            instance_row,
        )
    }

    /// The instances of `session` whose realisation has an output with content
    /// `digest`, and that output's name. (`CROSS JOIN`, and not through the
    /// `recorded_instances` view: SQLite then looks the digest up first, rather
    /// than walking every instance of the session.)
    pub fn producers_in(
        &self,
        session: i64,
        digest: &Digest,
    ) -> Result<Vec<(InstanceRow, String)>> {
        self.rows(
            "SELECT si.session, si.step, si.instance, si.key, si.planned, r.output
             FROM realisations r CROSS JOIN session_instances si ON si.key = r.key
             WHERE r.digest = ?1 AND si.session = ?2
             UNION ALL
             SELECT b.session, si.step, si.instance, si.key, 'reused', r.output
             FROM realisations r CROSS JOIN session_instances si ON si.key = r.key
                  JOIN session_bases b ON b.base = si.session
             WHERE r.digest = ?1 AND b.session = ?2 AND NOT EXISTS (
                 SELECT 1 FROM session_instances o
                 WHERE o.session = b.session AND o.step = si.step AND o.instance = si.instance)
             ORDER BY 2, 3",
            params![digest.as_bytes(), session],
            |r| Ok((instance_row(r)?, r.get(5)?)),
        )
    }

    /// Every instance of `session` with a realised output, and that output's digest.
    pub fn session_outputs(&self, session: i64) -> Result<Vec<(InstanceRow, Digest)>> {
        self.rows(
            "SELECT si.session, si.step, si.instance, si.key, si.planned, r.digest
             FROM recorded_instances si JOIN realisations r ON r.key = si.key
             WHERE si.session = ?1",
            [session],
            |r| Ok((instance_row(r)?, digest_at(r, 5)?)),
        )
    }

    /// The derivations with an output of content `digest`, and that output's name.
    pub fn realisations_of(&self, digest: &Digest) -> Result<Vec<(Digest, String)>> {
        self.rows(
            "SELECT key, output FROM realisations WHERE digest = ?1 ORDER BY added_ms",
            [digest.as_bytes()],
            |r| Ok((digest_at(r, 0)?, r.get(1)?)),
        )
    }

    /// A key's realised outputs, by name, without leasing them (to show, not
    /// to use: gc may remove them at any time after).
    pub fn realised(&self, key: &Digest) -> Result<Vec<Output>> {
        let mut out = self.rows(
            "SELECT output, digest, kind FROM realisations WHERE key = ?1",
            [key.as_bytes()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    digest_at(r, 1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        out.sort();
        Ok(out
            .into_iter()
            .filter_map(|(name, digest, kind)| {
                Some(Output {
                    name,
                    digest,
                    kind: OutputKind::parse(&kind)?,
                })
            })
            .collect())
    }

    /// Stores what `mustbuild audit` found for `key`: `verdict` (reproducible,
    /// differs, failed) and its detail (JSON chosen by the engine).
    pub fn add_audit(&self, key: &Digest, verdict: &str, detail: &str) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO audits (key, at_ms, verdict, detail) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                key.as_bytes(),
                crate::local::now_ms(),
                verdict,
                detail
            ])?;
        Ok(())
    }

    /// The latest audit of `key`: when, its verdict and detail.
    pub fn latest_audit(&self, key: &Digest) -> Result<Option<(i64, String, String)>> {
        Ok(self
            .rows(
                "SELECT at_ms, verdict, detail FROM audits WHERE key = ?1 ORDER BY id DESC LIMIT 1",
                [key.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .pop())
    }

    /// The workspace paths (absolute) where outputs of `key` were last put, and their content.
    pub fn materialised_of(&self, key: &Digest) -> Result<Vec<(String, Digest)>> {
        self.rows(
            "SELECT path, digest FROM materialised WHERE key = ?1 ORDER BY path",
            [key.as_bytes()],
            |r| Ok((r.get(0)?, digest_at(r, 1)?)),
        )
    }

    /// Every execution of `key`, oldest first.
    pub fn runs_of(&self, key: &Digest) -> Result<Vec<RunRow>> {
        self.rows(
            &format!("{RUN} WHERE key = ?1 ORDER BY id"),
            [key.as_bytes()],
            run_row,
        )
    }

    /// The size of a content by its digest: of a stored object, or of a source
    /// file as it was when hashed (its earlier versions are not in the store).
    pub fn content_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let conn = self.conn();
        let mut q = conn.prepare_cached(
            "SELECT size FROM objects WHERE digest = ?1
             UNION ALL SELECT size FROM content_sizes WHERE digest = ?1 LIMIT 1",
        )?;
        Ok(q.query_row([digest.as_bytes()], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|n| n.max(0) as u64))
    }

    /// The latest session that recorded an instance of `step` (any instance
    /// when `instance` is `None`), or used such a session's derivations (a no-op).
    pub fn latest_session_of(&self, step: &str, instance: Option<&str>) -> Result<Option<i64>> {
        let conn = self.conn();
        let mut q = conn.prepare_cached(
            "SELECT MAX(session) FROM recorded_instances WHERE step = ?1 AND (?2 IS NULL OR instance = ?2)",
        )?;
        let found: Option<i64> = q.query_row(params![step, instance], |r| r.get(0))?;
        let Some(found) = found else { return Ok(None) };
        let mut q =
            conn.prepare_cached("SELECT MAX(session) FROM session_aliases WHERE uses_from = ?1")?;
        let alias: Option<i64> = q.query_row([found], |r| r.get(0))?;
        Ok(Some(alias.unwrap_or(found)))
    }
}
