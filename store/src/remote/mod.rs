//! A shared cache on object storage: S3 (`s3://bucket/prefix?endpoint=…&region=…`,
//! path-style, credentials from the standard AWS environment, else the AWS shared
//! files and `AWS_PROFILE`: [`profile`]) or a plain folder
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
//! "outputs": [{"name", "digest", "kind", "size", "content"?}], "signatures":
//! [{"key", "signature"}]}`; a signature (ed25519, [`sign`]) covers the key and
//! every output's name, digest and kind. A file output of up to 16 KiB travels
//! in its record (`content`, base64) instead of as an object: one request per
//! small result, each way. Readers use a record only if a key they
//! trust signed it, and every byte fetched is checked against its digest as it
//! streams in: what does not match is discarded, never stored.

mod profile;
mod pull;
mod push;
pub mod sign;

pub use pull::Pulled;

use crate::digest::Digest;
use crate::local::{Output, OutputKind};
use futures::StreamExt as _;
use object_store::path::Path as RemotePath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Requests in flight at once (lookups, small transfers): loopback and LAN
/// round trips, not bandwidth, bound small objects (s5cmd uses 256).
const CONCURRENCY: usize = 64;
/// Large objects in flight at once (each holds a few parts in memory).
const LARGE_AT_ONCE: usize = 2;

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
    /// A small file's bytes (base64), so that taking it costs no request of
    /// its own; checked against `digest` like any object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
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
    /// Bounds the objects in transfer at once (a small object being sent
    /// takes a permit per MiB it holds, so at most ~64 MiB wait in memory),
    /// and the large ones.
    transfers: Semaphore,
    large: Semaphore,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

/// What an S3 server's refusal means, in words, from object_store's message
/// (which carries the server's XML answer: its `Code` and `Message`).
fn explain(error: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = error.find(&open)? + open.len();
        let len = error[start..].find(&format!("</{name}>"))?;
        Some(error[start..start + len].to_string())
    };
    match tag("Code").as_deref() {
        Some("SignatureDoesNotMatch") => {
            "the server refused the secret key (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY"
                .to_string()
        }
        Some("InvalidAccessKeyId") => {
            "the server does not know the access key (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID"
                .to_string()
        }
        Some("AccessDenied") => {
            "access denied (AccessDenied): these credentials may not use this bucket or prefix"
                .to_string()
        }
        Some("NoSuchBucket") => "the bucket does not exist (NoSuchBucket)".to_string(),
        Some(code) => match tag("Message") {
            Some(message) => format!("{code}: {message}"),
            None => code.to_string(),
        },
        None if error.contains("169.254.169.254") => "no credentials: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (the instance-metadata service, tried next, did not answer)"
            .to_string(),
        None if error.contains("error sending request") || error.contains("Connection refused") => {
            "nothing answers at its endpoint (the request could not be sent, retries included)"
                .to_string()
        }
        None => error.to_string(),
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
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
                && let Some(p) = profile::from_files()
            {
                b = b
                    .with_access_key_id(p.access_key_id)
                    .with_secret_access_key(p.secret_access_key);
                if let Some(token) = p.session_token {
                    b = b.with_token(token);
                }
                if let Some(region) = p.region {
                    b = b.with_region(region);
                }
            }
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
            transfers: Semaphore::new(CONCURRENCY),
            large: Semaphore::new(LARGE_AT_ONCE),
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
            why: explain(&e.to_string()),
        }
    }

    /// Whether the cache holds object `d`.
    async fn has_object_async(&self, d: &Digest) -> Result<bool> {
        match self.store.head(&self.object_path(d)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The record of `key`, if the cache has one (`None` too when it is not
    /// JSON of our format: such a record is nobody's).
    pub fn record(&self, key: &Digest) -> Result<Option<Record>> {
        self.rt.block_on(self.record_async(key))
    }

    async fn record_async(&self, key: &Digest) -> Result<Option<Record>> {
        let got = match self.store.get(&self.record_path(key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(e)),
        };
        let bytes = got.bytes().await.map_err(|e| self.failed(e))?;
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
}
