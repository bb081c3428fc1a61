//! Errors of the store, as lowercase fragments for the binary to render.

use crate::digest::Digest;
use crate::encoding::DecodeError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("object {0} is not in the store")]
    MissingObject(Digest),
    #[error(
        "output `{output}`: object {digest} is a file where a folder is declared, or the reverse"
    )]
    KindMismatch { digest: Digest, output: String },
    #[error("the store at {} has layout version {found}; this mustbuild reads version {expected}", path.display())]
    Version {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{}: {what}", path.display())]
    Unsupported { path: PathBuf, what: &'static str },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `map_err` helper: `.map_err(io("read", &path))`.
pub fn io<P: Into<PathBuf>>(
    action: &'static str,
    path: P,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}
