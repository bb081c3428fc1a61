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
use std::sync::Mutex;

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
}

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

    fn drop_remote(&self, i: usize, e: &RemoteError) -> Result<(), Required> {
        if let Ok(mut d) = self.down.lock() {
            d[i] = true;
        }
        let url = self.remotes[i].url().to_string();
        self.warn(
            format!("down {url}"),
            format!("{e}; going on without that cache for this run"),
        );
        Ok(())
    }

    /// Looks `key` up in the caches in order; the outputs and the cache's URL
    /// when one had it, trusted and intact (it is then realised locally).
    pub fn fetch(
        &self,
        store: &LocalStore,
        key: &Digest,
    ) -> Result<Option<(Vec<Output>, String)>, Required> {
        for (i, remote) in self.remotes.iter().enumerate() {
            if self.is_down(i) {
                continue;
            }
            match remote.pull(store, key, &self.trusted) {
                Ok(Pulled::Taken(outputs)) => return Ok(Some((outputs, remote.url().to_string()))),
                Ok(Pulled::Absent) => {}
                Ok(Pulled::Refused(verdict)) => {
                    let (topic, why) = match &verdict {
                        Verdict::Unsigned => {
                            ("unsigned".to_string(), "unsigned records".to_string())
                        }
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
                        Verdict::Trusted(_) => continue,
                    };
                    self.warn(
                        format!("{} {topic}", remote.url()),
                        format!("cache {}: ignoring {why}", remote.url()),
                    );
                }
                Err(RemoteError::Corrupt { cache, what }) => {
                    self.warn(
                        format!("corrupt {cache} {what}"),
                        format!("cache {cache}: {what} does not match its digest; discarded, the step runs here"),
                    );
                }
                Err(e) if self.require => return Err(Required(e)),
                Err(e) => self.drop_remote(i, &e)?,
            }
        }
        Ok(None)
    }

    /// Sends a result made here to the first cache that is up, when the
    /// policy is `always` and a secret key is set.
    pub fn after_success(
        &self,
        store: &LocalStore,
        key: &Digest,
        outputs: &[Output],
    ) -> Result<(), Required> {
        if self.push != Push::Always {
            return Ok(());
        }
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        for (i, remote) in self.remotes.iter().enumerate() {
            if self.is_down(i) {
                continue;
            }
            return match remote.push_realisation(store, key, outputs, signer) {
                Ok(()) => Ok(()),
                Err(e) if self.require => Err(Required(e)),
                Err(e) => self.drop_remote(i, &e),
            };
        }
        Ok(())
    }
}
