//! What `mustbuild stats` and the resource advice read: the run records of a
//! session, what the results a session reused cost when they were made, and a
//! step's measured history.

use crate::error::Result;
use crate::history::{RUN, RunRow, run_row};
use crate::local::LocalStore;
use rusqlite::{OptionalExtension as _, params};

impl LocalStore {
    /// The derivations `session` used (executed or reused; a no-op session:
    /// those of the session it aliases), in key order.
    pub fn session_keys(&self, session: i64) -> Result<Vec<crate::Digest>> {
        let conn = self.conn();
        let of: i64 = conn
            .prepare_cached("SELECT uses_from FROM session_aliases WHERE session = ?1")?
            .query_row([session], |r| r.get(0))
            .optional()?
            .unwrap_or(session);
        let mut q =
            conn.prepare_cached("SELECT key FROM session_uses WHERE session = ?1 ORDER BY key")?;
        let keys: Vec<Vec<u8>> = q
            .query_map([of], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(keys
            .iter()
            .filter_map(|k| crate::Digest::from_slice(k))
            .collect())
    }

    /// Every execution recorded in `session`, oldest first.
    pub fn runs_in(&self, session: i64) -> Result<Vec<RunRow>> {
        self.rows(
            &format!("{RUN} WHERE session = ?1 ORDER BY id"),
            [session],
            run_row,
        )
    }

    /// For each instance `session` reused (a no-op session: those of the
    /// session it aliases), its step and the first successful execution of its
    /// key (what the reuse avoided); `None` where no execution is recorded any
    /// more (gc'd, or made by another store's run); and the remote cache it
    /// came from when `session` fetched it.
    pub fn reused_makers(&self, session: i64) -> Result<Vec<Reuse>> {
        let conn = self.conn();
        let alias: Option<i64> = conn
            .prepare_cached("SELECT uses_from FROM session_aliases WHERE session = ?1")?
            .query_row([session], |r| r.get(0))
            .optional()?;
        let (of, every) = match alias {
            Some(a) => (a, true),
            None => (session, false),
        };
        let mut q = conn.prepare_cached(
            "SELECT si.step, (SELECT MIN(id) FROM runs r WHERE r.key = si.key AND r.outcome = 'succeeded'),
                    (SELECT cache FROM fetched f WHERE f.key = si.key AND f.session = ?3)
             FROM recorded_instances si WHERE si.session = ?1 AND (?2 OR si.planned = 'reused')",
        )?;
        type Found = (String, Option<i64>, Option<String>);
        let found: Vec<Found> = q
            .query_map(params![of, every, session], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        drop(q);
        let mut run = conn.prepare_cached(&format!("{RUN} WHERE id = ?1"))?;
        let mut out = Vec::with_capacity(found.len());
        for (step, id, fetched_from) in found {
            let maker = match id {
                Some(id) => Some(run.query_row([id], run_row)?),
                None => None,
            };
            out.push(Reuse {
                step,
                maker,
                fetched_from,
            });
        }
        Ok(out)
    }

    /// The successful executions in the last `sessions` runs of `pipeline` (a
    /// session's pipeline name), newest first: what advice is drawn from.
    pub fn pipeline_history(&self, pipeline: &str, sessions: usize) -> Result<Vec<RunRow>> {
        let sessions = i64::try_from(sessions).unwrap_or(i64::MAX);
        self.rows(
            &format!(
                "{RUN} WHERE outcome = 'succeeded' AND session IN
                     (SELECT id FROM sessions WHERE pipeline = ?1
                        AND id NOT IN (SELECT session FROM session_aliases)
                      ORDER BY id DESC LIMIT ?2)
                 ORDER BY id DESC"
            ),
            params![pipeline, sessions],
            run_row,
        )
    }

    /// Each step's mean wall time, in seconds, over its successful runs in
    /// the last `sessions` sessions of `pipeline`: what the dispatcher
    /// predicts a step's next run takes. One aggregate query, so that a
    /// run of a big pipeline does not read its whole history to start.
    pub fn step_walls(&self, pipeline: &str, sessions: usize) -> Result<Vec<(String, f64)>> {
        let sessions = i64::try_from(sessions).unwrap_or(i64::MAX);
        self.rows(
            "SELECT step, avg(finished_ms - started_ms) / 1000.0 FROM runs
              WHERE outcome = 'succeeded' AND session IN
                    (SELECT id FROM sessions WHERE pipeline = ?1
                        AND id NOT IN (SELECT session FROM session_aliases)
                      ORDER BY id DESC LIMIT ?2)
              GROUP BY step",
            params![pipeline, sessions],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }
}

/// One instance a session reused: see [`LocalStore::reused_makers`].
#[derive(Debug, Clone)]
pub struct Reuse {
    pub step: String,
    pub maker: Option<RunRow>,
    /// The remote cache the session took it from.
    pub fetched_from: Option<String>,
}
