//! The remote caches a run uses (`--cache URL`, or `cache { url … }` in the
//! configuration), tried in order: a key missing locally is looked up in them
//! and, when a trusted key signed its record, taken (every byte checked); a
//! result made here is pushed after it succeeds, signed, when a secret key is
//! set and the policy says so. A cache that is down, slow or refuses the
//! credentials is dropped for the rest of the run with one warning, and the
//! run goes on locally; `require` makes that an error instead.

use mustbuild_store::remote::sign::{PublicKey, SecretKey, Verdict};
use mustbuild_store::remote::{Pulled, Remote, RemoteError};
use mustbuild_store::{Digest, LocalStore, Output};
use std::collections::BTreeSet;
use std::sync::{Mutex, mpsc};

/// When results go to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Push {
    /// After every success (needs a secret key).
    #[default]
    Always,
    /// Only with `mustbuild cache push`.
    OnDemand,
    Never,
}

#[derive(Debug)]
pub struct Cache {
    remotes: Vec<Remote>,
    trusted: Vec<PublicKey>,
    signer: Option<SecretKey>,
    push: Push,
    require: bool,
    /// Per remote: dropped for the rest of the run.
    down: Mutex<Vec<bool>>,
    /// What was already warned of (one warning each).
    warned: Mutex<BTreeSet<String>>,
    warnings: Mutex<Vec<String>>,
    /// A push failure that `require` makes fatal (pushes run on a thread of
    /// their own; the run reports it at its end).
    required: Mutex<Option<Required>>,
}

/// The most results sent in one batch (a batch is sent a bounded number at once).
const PUSH_BATCH: usize = 256;

/// A remote failure that `require` makes fatal.
#[derive(Debug, thiserror::Error)]
#[error("{0} (--require-cache: the run stops)")]
pub struct Required(pub RemoteError);

impl Cache {
    pub fn new(
        remotes: Vec<Remote>,
        trusted: Vec<PublicKey>,
        signer: Option<SecretKey>,
        push: Push,
        require: bool,
    ) -> Cache {
        let n = remotes.len();
        Cache {
            remotes,
            trusted,
            signer,
            push,
            require,
            down: Mutex::new(vec![false; n]),
            warned: Mutex::new(BTreeSet::new()),
            warnings: Mutex::new(Vec::new()),
            required: Mutex::new(None),
        }
    }

    fn warn(&self, topic: String, message: String) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.insert(topic) {
            self.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(message);
        }
    }

    /// The warnings not yet told (each once per run).
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn is_down(&self, i: usize) -> bool {
        self.down.lock().map(|d| d[i]).unwrap_or(true)
    }

    fn drop_remote(&self, i: usize, e: &RemoteError) {
        if let Ok(mut d) = self.down.lock() {
            d[i] = true;
        }
        let url = self.remotes[i].url().to_string();
        self.warn(
            format!("down {url}"),
            format!("{e}; going on without that cache for this run"),
        );
    }

    /// Looks `keys` up in the caches in order, many at once; for each key,
    /// its outputs when a cache had it, trusted and intact (it is then
    /// realised locally, with the cache and run `session` it came in).
    pub fn fetch_many(
        &self,
        store: &LocalStore,
        keys: &[Digest],
        session: i64,
    ) -> Result<Vec<Option<Vec<Output>>>, Required> {
        let mut found: Vec<Option<Vec<Output>>> = vec![None; keys.len()];
        for (i, remote) in self.remotes.iter().enumerate() {
            let missing: Vec<usize> = (0..keys.len()).filter(|k| found[*k].is_none()).collect();
            if missing.is_empty() || self.is_down(i) {
                continue;
            }
            let wanted: Vec<Digest> = missing.iter().map(|k| keys[*k]).collect();
            let pulled = remote.pull_many(store, &wanted, &self.trusted, Some(session));
            for (k, pulled) in missing.into_iter().zip(pulled) {
                match pulled {
                    Ok(Pulled::Taken { outputs, .. }) => found[k] = Some(outputs),
                    Ok(Pulled::Absent) => {}
                    Ok(Pulled::Refused(verdict)) => self.refused(remote, &verdict),
                    Err(RemoteError::Corrupt { cache, what }) => self.warn(
                        format!("corrupt {cache} {what}"),
                        format!(
                            "cache {cache}: {what} does not match its digest; discarded, the step runs here"
                        ),
                    ),
                    Err(e) if self.require => return Err(Required(e)),
                    Err(e) => {
                        // The rest of this batch would fail the same way.
                        self.drop_remote(i, &e);
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// One warning per kind of record a cache holds that is not trusted here.
    fn refused(&self, remote: &Remote, verdict: &Verdict) {
        let (topic, why) = match verdict {
            Verdict::Unsigned => ("unsigned".to_string(), "unsigned records".to_string()),
            Verdict::BadSignature(k) => (
                format!("bad {k}"),
                format!("records whose signature by `{k}` does not verify"),
            ),
            Verdict::Untrusted(keys) => (
                format!("untrusted {}", keys.join(",")),
                format!(
                    "records signed by {}, which trusted-keys does not list",
                    keys.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Verdict::Trusted(_) => return,
        };
        self.warn(
            format!("{} {topic}", remote.url()),
            format!("cache {}: ignoring {why}", remote.url()),
        );
    }

    /// Whether results made here go to a cache as they are made: the policy
    /// is `always`, a secret key is set and there is a cache.
    pub fn pushes(&self) -> bool {
        self.push == Push::Always && self.signer.is_some() && !self.remotes.is_empty()
    }

    /// Sends what arrives on `results` to the first cache that is up, in
    /// batches (what arrived while the last batch was sent), until the
    /// channel closes; after `stopped` says so, what is left is not sent.
    pub fn push_from(
        &self,
        store: &LocalStore,
        results: &mpsc::Receiver<(Digest, Vec<Output>)>,
        stopped: impl Fn() -> bool,
    ) {
        while let Ok(first) = results.recv() {
            let mut batch = vec![first];
            batch.extend(results.try_iter().take(PUSH_BATCH - 1));
            if stopped() {
                continue;
            }
            if let Err(e) = self.push_batch(store, &batch) {
                self.set_required(e);
            }
        }
    }

    fn push_batch(
        &self,
        store: &LocalStore,
        batch: &[(Digest, Vec<Output>)],
    ) -> Result<(), Required> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        for (i, remote) in self.remotes.iter().enumerate() {
            if self.is_down(i) {
                continue;
            }
            for pushed in remote.push_many(store, batch, signer) {
                match pushed {
                    Ok(()) => {}
                    Err(e) if self.require => return Err(Required(e)),
                    Err(e) => {
                        self.drop_remote(i, &e);
                        break;
                    }
                }
            }
            return Ok(());
        }
        Ok(())
    }

    fn set_required(&self, e: Required) {
        let mut slot = self.required.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(e);
    }

    /// The failure that `--require-cache` makes fatal, if pushing met one.
    pub fn take_required(&self) -> Option<Required> {
        self.required
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
