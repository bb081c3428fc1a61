//! Sending results to a cache: a realisation's objects first (each once,
//! compressed; a large one streamed from its file in parts, never whole in
//! memory), then its signed record, several realisations at once.

use super::{CONCURRENCY, Record, RecordOutput, Remote, RemoteError, Result, Signature, sign};
use crate::digest::Digest;
use crate::local::{INLINE_MAX, LocalStore, ObjectData, Output, OutputKind};
use crate::tree::EntryKind;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use object_store::path::Path as RemotePath;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, WriteMultipart};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// The most a record carries of its small outputs' bytes.
const CARRIED_MAX: u64 = 256 << 10;
/// Objects up to this size go in one request; larger ones in parts.
const SINGLE_PUT: u64 = 8 << 20;
/// The size of a part of a large object (S3 asks for at least 5 MiB).
const PART: usize = 8 << 20;
/// Parts of one object in flight at once: with the part being filled and the
/// compressor's buffer, a large upload holds about (3 + 2) × 8 MiB.
const PARTS_IN_FLIGHT: usize = 3;
/// zstd's level: fast enough not to slow a transfer on a loopback or LAN link.
pub(super) const LEVEL: i32 = 1;

impl Remote {
    /// Sends a realisation: its objects first, then its record, signed by `signer`.
    pub fn push_realisation(
        &self,
        local: &LocalStore,
        key: &Digest,
        outputs: &[Output],
        signer: &sign::SecretKey,
    ) -> Result<()> {
        self.rt
            .block_on(self.push_realisation_async(local, key, outputs, signer))
    }

    /// Sends several realisations, a bounded number at once; each one's
    /// outcome, in order.
    pub fn push_many(
        &self,
        local: &LocalStore,
        items: &[(Digest, Vec<Output>)],
        signer: &sign::SecretKey,
    ) -> Vec<Result<()>> {
        self.rt.block_on(
            stream::iter(items)
                .map(|(key, outputs)| self.push_realisation_async(local, key, outputs, signer))
                .buffered(CONCURRENCY)
                .collect(),
        )
    }

    async fn push_realisation_async(
        &self,
        local: &LocalStore,
        key: &Digest,
        outputs: &[Output],
        signer: &sign::SecretKey,
    ) -> Result<()> {
        let mut listed = Vec::with_capacity(outputs.len());
        let mut carried = 0;
        for o in outputs {
            let size = local.content_size(&o.digest)?.unwrap_or(0);
            let content = if o.kind != OutputKind::Tree
                && size <= INLINE_MAX
                && carried + size <= CARRIED_MAX
            {
                carried += size;
                Some(STANDARD.encode(read(local.object_data(&o.digest)?)?))
            } else {
                self.push_object(local, o.digest, o.kind == OutputKind::Tree)
                    .await?;
                None
            };
            listed.push(RecordOutput {
                name: o.name.clone(),
                digest: o.digest.to_hex(),
                kind: o.kind.as_str().to_string(),
                size,
                content,
            });
        }
        let record = Record {
            format: super::RECORD_FORMAT.to_string(),
            key: key.to_hex(),
            outputs: listed,
            signatures: vec![Signature {
                key: signer.name.clone(),
                signature: signer.sign(key, outputs),
            }],
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        self.store
            .put(&self.record_path(key), PutPayload::from(json))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Sends object `d` unless the cache has it; for a tree, everything below
    /// it first (so a tree that is there has all it names, and is skipped).
    fn push_object<'a>(
        &'a self,
        local: &'a LocalStore,
        d: Digest,
        tree: bool,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let data = local.object_data(&d)?;
            let size = match &data {
                ObjectData::Inline(bytes) => bytes.len() as u64,
                ObjectData::File(file) => std::fs::metadata(file)
                    .map_err(|source| io("read", file, source))?
                    .len(),
            };
            let path = self.object_path(&d);
            // A small file is put only if absent: one request. A tree or a
            // large file is looked for first, to save sending what is there.
            if !tree && size <= SINGLE_PUT {
                return self.put_small(&path, &read(data)?).await;
            }
            if self.has_object_async(&d).await? {
                return Ok(());
            }
            if tree {
                let children: Vec<(Digest, bool)> = local
                    .read_tree(&d)?
                    .entries
                    .into_iter()
                    .filter_map(|e| match e.kind {
                        EntryKind::File { digest, .. } => Some((digest, false)),
                        EntryKind::Dir { digest, .. } => Some((digest, true)),
                        EntryKind::Symlink { .. } => None,
                    })
                    .collect();
                stream::iter(children)
                    .map(|(child, tree)| self.push_object(local, child, tree))
                    .buffer_unordered(CONCURRENCY)
                    .try_collect::<()>()
                    .await?;
            }
            match data {
                ObjectData::File(file) if size > SINGLE_PUT => self.put_large(&path, &file).await,
                data => self.put_small(&path, &read(data)?).await,
            }
        })
    }

    /// One request, unless something is there already (content-addressed:
    /// what is there is the same).
    async fn put_small(&self, path: &RemotePath, bytes: &[u8]) -> Result<()> {
        let compressed = zstd::bulk::compress(bytes, LEVEL)
            .map_err(|source| io("compress", Path::new(path.as_ref()), source))?;
        let mib = u32::try_from((compressed.len() >> 20).clamp(1, super::CONCURRENCY)).unwrap_or(1);
        let _slot = self.transfers.acquire_many(mib).await;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(compressed), opts)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// A multipart upload, compressed as it is read: it appears whole when it
    /// completes, or not at all.
    async fn put_large(&self, path: &RemotePath, file: &Path) -> Result<()> {
        let _slot = self.large.acquire().await;
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| self.failed(e))?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART);
        match self.stream_parts(&mut parts, file).await {
            Ok(()) => {
                parts.finish().await.map_err(|e| self.failed(e))?;
                Ok(())
            }
            Err(e) => {
                let _ = parts.abort().await;
                Err(e)
            }
        }
    }

    async fn stream_parts(&self, parts: &mut WriteMultipart, file: &Path) -> Result<()> {
        let mut f = std::fs::File::open(file).map_err(|source| io("open", file, source))?;
        let mut encoder = zstd::stream::write::Encoder::new(Vec::with_capacity(PART), LEVEL)
            .map_err(|source| io("compress", file, source))?;
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|source| io("read", file, source))?;
            if n == 0 {
                break;
            }
            encoder
                .write_all(&buf[..n])
                .map_err(|source| io("compress", file, source))?;
            if encoder.get_ref().len() >= PART {
                parts
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.failed(e))?;
                parts.write(&std::mem::take(encoder.get_mut()));
            }
        }
        let rest = encoder
            .finish()
            .map_err(|source| io("compress", file, source))?;
        parts.write(&rest);
        Ok(())
    }
}

fn read(data: ObjectData) -> Result<Vec<u8>> {
    match data {
        ObjectData::Inline(bytes) => Ok(bytes),
        ObjectData::File(file) => std::fs::read(&file).map_err(|source| io("read", &file, source)),
    }
}

pub(super) fn io(action: &'static str, path: &Path, source: std::io::Error) -> RemoteError {
    RemoteError::Io {
        action,
        path: PathBuf::from(path),
        source,
    }
}
