//! Directory trees as Merkle nodes: sorted entries with name, kind, executable
//! bit, size and digest. Symbolic links are stored as links (their target text),
//! never followed.

use crate::digest::Digest;
use crate::encoding::{DecodeError, Reader, TREE_CONTEXT, Writer, hash_in_context};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File {
        executable: bool,
        size: u64,
        digest: Digest,
    },
    Dir {
        size: u64,
        digest: Digest,
    },
    Symlink {
        target: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// A file name (bytes, as Unix has them).
    pub name: Vec<u8>,
    pub kind: EntryKind,
}

/// One directory level. Entries are sorted by name and unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: Vec<TreeEntry>,
}

const MAGIC: &[u8] = b"mbtree\x01";

/// Whether `name` can be an entry name.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

impl Tree {
    /// Builds a tree from entries in any order; `None` if two share a name or a
    /// name is invalid.
    pub fn new(mut entries: Vec<TreeEntry>) -> Option<Tree> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let unique = entries.windows(2).all(|w| w[0].name != w[1].name);
        (unique && entries.iter().all(|e| valid_name(&e.name))).then_some(Tree { entries })
    }

    /// Bytes of all files below (symbolic links count their target's length).
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { size, .. } | EntryKind::Dir { size, .. } => *size,
                EntryKind::Symlink { target } => target.len() as u64,
            })
            .sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(MAGIC);
        w.u64(self.entries.len() as u64);
        for e in &self.entries {
            match &e.kind {
                EntryKind::File {
                    executable,
                    size,
                    digest,
                } => {
                    w.u8(if *executable { b'x' } else { b'f' });
                    w.bytes(&e.name);
                    w.u64(*size);
                    w.digest(digest);
                }
                EntryKind::Dir { size, digest } => {
                    w.u8(b'd');
                    w.bytes(&e.name);
                    w.u64(*size);
                    w.digest(digest);
                }
                EntryKind::Symlink { target } => {
                    w.u8(b'l');
                    w.bytes(&e.name);
                    w.bytes(target);
                }
            }
        }
        w.buf
    }

    pub fn digest(&self) -> Digest {
        hash_in_context(TREE_CONTEXT, &self.encode())
    }

    /// Decodes and checks the canonical form (sorted, unique, valid names).
    pub fn decode(bytes: &[u8]) -> Result<Tree, DecodeError> {
        const WHAT: &str = "tree";
        let mut r = Reader::new(bytes);
        r.expect(MAGIC, WHAT)?;
        let count = r.u64(WHAT)?;
        let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
        for _ in 0..count {
            let kind = r.u8(WHAT)?;
            let name = r.bytes(WHAT)?.to_vec();
            let kind = match kind {
                b'f' | b'x' => EntryKind::File {
                    executable: kind == b'x',
                    size: r.u64(WHAT)?,
                    digest: r.digest(WHAT)?,
                },
                b'd' => EntryKind::Dir {
                    size: r.u64(WHAT)?,
                    digest: r.digest(WHAT)?,
                },
                b'l' => EntryKind::Symlink {
                    target: r.bytes(WHAT)?.to_vec(),
                },
                _ => return Err(r.error(WHAT, "unknown entry kind")),
            };
            if !valid_name(&name) {
                return Err(r.error(WHAT, "invalid entry name"));
            }
            if entries.last().is_some_and(|p: &TreeEntry| p.name >= name) {
                return Err(r.error(WHAT, "entries not sorted or not unique"));
            }
            entries.push(TreeEntry { name, kind });
        }
        r.finish(WHAT)?;
        Ok(Tree { entries })
    }

    /// The digests this tree refers to directly (files and subtrees).
    pub fn children(&self) -> impl Iterator<Item = Digest> + '_ {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File { digest, .. } | EntryKind::Dir { digest, .. } => Some(*digest),
            EntryKind::Symlink { .. } => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(name: &str, kind: EntryKind) -> TreeEntry {
        TreeEntry {
            name: name.as_bytes().to_vec(),
            kind,
        }
    }

    #[test]
    fn order_does_not_change_the_digest() {
        let a = entry(
            "a",
            EntryKind::File {
                executable: false,
                size: 1,
                digest: Digest::of(b"a"),
            },
        );
        let b = entry(
            "b",
            EntryKind::Symlink {
                target: b"../x".to_vec(),
            },
        );
        let t1 = Tree::new(vec![a.clone(), b.clone()]).unwrap();
        let t2 = Tree::new(vec![b, a]).unwrap();
        assert_eq!(t1.digest(), t2.digest());
        assert_eq!(Tree::decode(&t1.encode()).unwrap(), t1);
        // A tree never has the digest of its encoding as a blob.
        assert_ne!(t1.digest(), Digest::of(&t1.encode()));
    }

    #[test]
    fn the_executable_bit_changes_the_digest() {
        let f = |x| {
            Tree::new(vec![entry(
                "run.sh",
                EntryKind::File {
                    executable: x,
                    size: 3,
                    digest: Digest::of(b"abc"),
                },
            )])
            .unwrap()
        };
        assert_ne!(f(true).digest(), f(false).digest());
    }

    #[test]
    fn duplicate_or_bad_names_are_refused() {
        let e = |n: &str| entry(n, EntryKind::Symlink { target: vec![] });
        assert!(Tree::new(vec![e("a"), e("a")]).is_none());
        assert!(Tree::new(vec![e("a/b")]).is_none());
        assert!(Tree::new(vec![e("..")]).is_none());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Tree::decode(&bytes);
        }
    }
}
