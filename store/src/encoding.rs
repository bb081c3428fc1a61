//! The canonical encodings of everything mustbuild hashes. They are documented
//! here (and in ARCHITECTURE.md) so that another implementation could recompute
//! every digest; each starts with a version, and each kind of record is hashed in
//! its own BLAKE3 key-derivation context, so a blob can never pass for a tree or a
//! derivation.
//!
//! ```text
//! blob digest        = BLAKE3(content)                         (as `b3sum` prints it)
//! tree digest        = BLAKE3-derive-key("mustbuild 2026-11 tree v1", tree encoding)
//! derivation key     = BLAKE3-derive-key("mustbuild 2026-11 derivation v1", material encoding)
//!
//! u8, u32, u64       little-endian
//! bytes              u64 length, then the bytes
//!
//! tree encoding      "mbtree" u8:1 (version) u64:count entry*       entries sorted by name bytes
//! entry              u8:kind bytes:name payload                     name: no '/', not "", ".", ".."
//!   kind 'f' / 'x'   (file / executable file)  u64:size digest[32]
//!   kind 'd'         (directory)               u64:total size below  digest[32] (its tree)
//!   kind 'l'         (symbolic link)           bytes:target          (never followed)
//!
//! material encoding  "mbdrv" u8:1 (version) field                  a map at the top
//! field              'T' bytes (text) | 'H' digest[32] | 'I' u64 (integer)
//!                    | 'L' u64:count field* | 'M' u64:count (bytes:key field)*   keys sorted, unique
//! ```

use crate::digest::Digest;

pub const TREE_CONTEXT: &str = "mustbuild 2026-11 tree v1";
pub const DERIVATION_CONTEXT: &str = "mustbuild 2026-11 derivation v1";

/// Hashes `bytes` in a key-derivation context.
pub fn hash_in_context(context: &str, bytes: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(bytes);
    h.finalize().into()
}

/// Appends canonical primitives.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn digest(&mut self, d: &Digest) {
        self.buf.extend_from_slice(d.as_bytes());
    }

    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
}

/// Reads canonical primitives; every read checks bounds.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Why bytes are not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} encoding at byte {at}: {why}")]
pub struct DecodeError {
    pub what: &'static str,
    pub at: usize,
    pub why: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn error(&self, what: &'static str, why: &'static str) -> DecodeError {
        DecodeError {
            what,
            at: self.pos,
            why,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.error(what, "truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| self.error(what, "length too large"))?;
        self.take(n, what)
    }

    pub fn digest(&mut self, what: &'static str) -> Result<Digest, DecodeError> {
        let b = self.take(32, what)?;
        Digest::from_slice(b).ok_or_else(|| self.error(what, "bad digest"))
    }

    pub fn expect(&mut self, magic: &[u8], what: &'static str) -> Result<(), DecodeError> {
        if self.take(magic.len(), what)? == magic {
            Ok(())
        } else {
            Err(self.error(what, "wrong magic or version"))
        }
    }

    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.error(what, "trailing bytes"))
        }
    }
}
