//! Recreating stored outputs in a workspace. Files are reflinked where the file
//! system allows (copy-on-write: an edit of the copy never reaches the store) and
//! copied otherwise; never hard-linked, since a hard link shares the inode and
//! `chmod u+w` then an edit would change the store. Workspace copies are writable
//! by their owner; the store's files stay read-only.
//!
//! A materialisation is atomic per output: it is built next to its destination
//! and renamed over it.

use crate::digest::Digest;
use crate::error::{Result, StoreError, io};
use crate::local::{LocalStore, ObjectData, OutputKind, Unrecorded, entry_path};
use crate::tree::EntryKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How the files of one materialisation were made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Materialized {
    pub reflinked: u64,
    pub copied: u64,
    pub bytes: u64,
}

impl LocalStore {
    /// Recreates an output at `dest` (replacing what is there).
    pub fn materialize(
        &self,
        digest: &Digest,
        kind: OutputKind,
        dest: &Path,
    ) -> Result<Materialized> {
        self.materialize_with(digest, kind, dest, &Unrecorded::default())
    }

    /// `materialize`, for a file that may be among objects not recorded yet.
    pub fn materialize_with(
        &self,
        digest: &Digest,
        kind: OutputKind,
        dest: &Path,
        unrecorded: &Unrecorded,
    ) -> Result<Materialized> {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        // A short, unique name beside the destination (same file system, and no
        // ENAMETOOLONG for long output names).
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let staging = parent.join(format!(".mb-{unique}"));
        remove_any(&staging)?;
        let mut stats = Materialized::default();
        let made = match kind {
            OutputKind::Tree => self.materialize_tree(digest, &staging, &mut stats, 0),
            k => self.materialize_file(
                digest,
                k == OutputKind::Executable,
                &staging,
                &mut stats,
                unrecorded,
            ),
        };
        if let Err(e) = made {
            let _ = remove_any(&staging);
            return Err(e);
        }
        // A file renamed over a file replaces it atomically. Anything involving a
        // folder cannot be replaced in one step: the old output is renamed aside
        // first (a kill then leaves the old or the new output in place, and a
        // leftover to clean up, never nothing), the new one renamed in, the old removed.
        let replace_folder =
            std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir() || kind == OutputKind::Tree);
        let aside = parent.join(format!(".mb-{unique}-old"));
        if replace_folder {
            std::fs::rename(dest, &aside).map_err(io("move aside", dest))?;
        }
        if let Err(e) = std::fs::rename(&staging, dest) {
            if replace_folder {
                let _ = std::fs::rename(&aside, dest);
            }
            let _ = remove_any(&staging);
            return Err(io("replace", dest)(e));
        }
        if replace_folder {
            remove_any(&aside)?;
        }
        Ok(stats)
    }

    fn materialize_file(
        &self,
        digest: &Digest,
        executable: bool,
        dest: &Path,
        stats: &mut Materialized,
        unrecorded: &Unrecorded,
    ) -> Result<()> {
        let mode = if executable { 0o755 } else { 0o644 };
        let mut write = |bytes: &[u8]| {
            write_new(dest, bytes, mode).map_err(io("write", dest))?;
            stats.copied += 1;
            stats.bytes += bytes.len() as u64;
            Ok(())
        };
        if let Some(bytes) = unrecorded.bytes(digest) {
            return write(bytes);
        }
        match self.object_data(digest)? {
            ObjectData::Inline(bytes) => write(&bytes),
            ObjectData::File(src) => {
                if clone_or_copy(&src, dest).map_err(io("copy", &src))? {
                    stats.reflinked += 1;
                } else {
                    stats.copied += 1;
                }
                stats.bytes += std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
                std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))
                    .map_err(io("set permissions of", dest))
            }
        }
    }

    fn materialize_tree(
        &self,
        digest: &Digest,
        dest: &Path,
        stats: &mut Materialized,
        depth: usize,
    ) -> Result<()> {
        if depth > 256 {
            return Err(StoreError::Unsupported {
                path: dest.to_path_buf(),
                what: "folders nested more than 256 deep",
            });
        }
        let tree = self.read_tree(digest)?;
        std::fs::create_dir(dest).map_err(io("create", dest))?;
        for e in &tree.entries {
            let path = entry_path(dest, &e.name);
            match &e.kind {
                EntryKind::File {
                    executable, digest, ..
                } => self.materialize_file(
                    digest,
                    *executable,
                    &path,
                    stats,
                    &Unrecorded::default(),
                )?,
                EntryKind::Dir { digest, .. } => {
                    self.materialize_tree(digest, &path, stats, depth + 1)?
                }
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                        .map_err(io("link", &path))?;
                }
            }
        }
        Ok(())
    }
}

/// Removes a file, link or folder (not following links); absent is fine.
fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            make_writable(path);
            std::fs::remove_dir_all(path).map_err(io("remove", path))
        }
        Ok(_) => std::fs::remove_file(path).map_err(io("remove", path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspect", path)(e)),
    }
}

/// Gives the owner write access to every folder below (read-only folders cannot
/// be emptied).
fn make_writable(dir: &Path) {
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(m) = std::fs::symlink_metadata(&d)
            && m.is_dir()
        {
            let _ = std::fs::set_permissions(
                &d,
                std::fs::Permissions::from_mode(m.permissions().mode() | 0o700),
            );
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
}

/// Puts at `dest`, by renaming it, a file that holds exactly an output's content
/// (a step's output, read into the store and left in place): no new file, no
/// bytes written, nothing deleted. It gets the mode a materialisation gives
/// (`executable` or not). `Ok(false)` when it cannot, and it then stays where it
/// was: it is not a regular file with this one name (a command may have linked
/// it elsewhere); it would not be what a file written there would be (extended
/// attributes: ACLs, security labels, a command's own; another group than the
/// folder gives; a folder with attributes of its own, such as a default ACL);
/// or `dest` is on another file system.
///
/// A process the command left running outside its process group may still
/// write to it; the next run then finds the output changed, as if someone
/// edited it, keeps that aside and puts back the stored content.
pub fn adopt(src: &Path, dest: &Path, executable: bool) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(src)?;
    if !meta.is_file() || meta.nlink() != 1 || has_attributes(src)? {
        return Ok(false);
    }
    let folder = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let there = std::fs::metadata(folder)?;
    let group = if there.mode() & 0o2000 != 0 {
        there.gid()
    } else {
        rustix::process::getegid().as_raw()
    };
    if meta.gid() != group || has_attributes(folder)? {
        return Ok(false);
    }
    let mode = if executable { 0o755 } else { 0o644 };
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(src, std::fs::Permissions::from_mode(mode))?;
    }
    match std::fs::rename(src, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a file or folder has extended attributes (none where the file
/// system keeps none).
pub fn has_attributes(path: &Path) -> std::io::Result<bool> {
    // (`listxattr` with an empty buffer would say 0 whatever there is.)
    match rustix::fs::listxattr_query(path) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::NOTSUP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes `bytes` into `dest` (created or truncated) with `mode`.
pub fn write_new(dest: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(dest)?;
    f.write_all(bytes)?;
    // An existing file keeps its mode on open; the umask may narrow a new one's.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Copies a file, with its permissions: a reflink (a copy-on-write clone) where
/// the file system can, else the bytes (`copy_file_range`). Whether it reflinked.
///
/// Unlike trying a reflink into a new file, deleting it and copying afresh, one
/// file is created: creating and deleting files in quick succession slows
/// ext4's inode allocation down.
///
/// A file small enough for the database is always copied: a reflink would save
/// nothing, and trying one costs a call.
pub fn clone_or_copy(src: &Path, dest: &Path) -> std::io::Result<bool> {
    let mut from = std::fs::File::open(src)?;
    let meta = from.metadata()?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)?;
    let cloned =
        meta.len() > crate::local::INLINE_MAX && rustix::fs::ioctl_ficlone(&to, &from).is_ok();
    if !cloned {
        copy_bytes(&mut from, &mut to, meta.len())?;
    }
    to.set_permissions(meta.permissions())?;
    Ok(cloned)
}

/// Copies the rest of `from` (`len` bytes, as far as is known) to `to`, in the
/// kernel where it can (`copy_file_range`), else through a buffer.
fn copy_bytes(from: &mut std::fs::File, to: &mut std::fs::File, len: u64) -> std::io::Result<()> {
    let mut left = len;
    loop {
        // Past `len`, one more call finds the end (or what was added since).
        let chunk = usize::try_from(left).unwrap_or(usize::MAX).max(1 << 16);
        match rustix::fs::copy_file_range(&*from, None, &*to, None, chunk) {
            // Nothing where there should be something: a file system whose sizes
            // are not its contents' (procfs, some FUSE), read the usual way.
            Ok(0) if left == len && len > 0 => return std::io::copy(from, to).map(drop),
            Ok(0) => return Ok(()),
            Ok(n) => left = left.saturating_sub(n as u64),
            Err(rustix::io::Errno::INTR) => {}
            // Not between these files (another kind of file, an old kernel): the
            // offsets are where the last call left them.
            Err(_) => return std::io::copy(from, to).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn adopt_moves_a_plain_file_and_sets_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dest) = (tmp.path().join("out"), tmp.path().join("ws/out"));
        std::fs::create_dir(tmp.path().join("ws")).unwrap();
        std::fs::write(&src, "x\n").unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(adopt(&src, &dest, true).unwrap());
        assert!(!src.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), b"x\n");
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn adopt_leaves_a_linked_file_or_one_with_attributes() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dest) = (tmp.path().join("out"), tmp.path().join("dest"));
        std::fs::write(&src, "x\n").unwrap();
        std::fs::hard_link(&src, tmp.path().join("elsewhere")).unwrap();
        assert!(!adopt(&src, &dest, false).unwrap());
        assert!(src.exists() && !dest.exists());
        std::fs::remove_file(tmp.path().join("elsewhere")).unwrap();
        // An attribute a file written there would not have (where the file system
        // keeps user attributes at all).
        let set =
            rustix::fs::setxattr(&src, "user.origin", b"cmd", rustix::fs::XattrFlags::empty());
        match set {
            Ok(()) => {
                assert!(!adopt(&src, &dest, false).unwrap());
                assert!(src.exists() && !dest.exists());
            }
            Err(e) => eprintln!("user attributes not kept here ({e}): that case is not checked"),
        }
    }

    #[test]
    fn copy_bytes_copies_what_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, b"0123456789").unwrap();
        let mut from = std::fs::File::open(&a).unwrap();
        let mut to = std::fs::File::create(&b).unwrap();
        // Told fewer bytes than there are: all are copied all the same.
        copy_bytes(&mut from, &mut to, 4).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"0123456789");
    }
}
