//! mustbuild-store: the memory of every result. It owns digests and their
//! canonical encodings, content-addressed objects (files and Merkle trees of
//! folders), derivation records (whole key material), realisations (derivation
//! key → output → object), run records, sessions and roots; materialisation into
//! a workspace; verification and garbage collection. Metadata lives in SQLite
//! (WAL) so that several processes share one store.
//!
//! It must not know about the workflow language, executors or the engine: it
//! stores bytes and records under keys it is given.
//!
//! Key design decision: a row in the database always names complete, durable
//! content. Content is made durable first and named second, inside one write
//! transaction; everything else (verify, gc, leases) follows from keeping that
//! true under crashes and concurrent processes.

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod costs;
mod db;
pub mod digest;
pub mod encoding;
pub mod error;
pub mod filecache;
pub mod hashing;
pub mod history;
pub mod local;
pub mod maintenance;
pub mod material;
pub mod materialize;
pub mod remote;
pub mod tree;

pub use digest::Digest;
pub use error::{Result, StoreError};
pub use filecache::{Identity, Source, identity};
pub use history::{InstanceRow, RunRow, SessionCounts, SessionRow};
pub use local::{
    Accounted, Fetched, FinishedRun, INLINE_MAX, Ingest, KeyUse, KeyUsed, KnownKey, LocalStore,
    NoopRecord, ObjectData, ObjectKind, Output, OutputKind, Placed, Root, RunRecord, Stored,
    Unrecorded, hostname,
};
pub use maintenance::{GcReport, StoreInfo, VerifyReport};
pub use material::{Field, FieldChange, KeyMaterial};
pub use materialize::Materialized;
pub use tree::{EntryKind, Tree, TreeEntry};
