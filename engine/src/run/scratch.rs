//! The folder a job runs in: a worker's scratch folder, reused from job to job,
//! and putting a job's inputs in place there.

use super::{RunError, io_err};
use mustbuild_executors::ExecRequest;
use mustbuild_store::{Digest, LocalStore, ObjectData, OutputKind};
use std::path::{Path, PathBuf};

/// A worker's scratch folder, reused from job to job: emptied between jobs but
/// for `.mustbuild/home` and `.mustbuild/tmp` (themselves emptied), so that a job
/// creates no folders beyond its own. The log lives beside it and is truncated.
pub(crate) struct Scratch {
    pub(crate) root: PathBuf,
    pub(crate) home: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) log: PathBuf,
    /// Where the files a job leaves wait to be reused by the next one's copies:
    /// ext4 slows inode allocation down behind recent deletions, and a job that
    /// reads k files would otherwise create and delete k inodes.
    pub(crate) spare: PathBuf,
    /// The kept files: a small one keeps its bytes until it is written over
    /// (emptying a file, then filling it again, costs more than writing over it).
    pub(crate) spares: std::cell::RefCell<Vec<PathBuf>>,
    pub(crate) named: std::cell::Cell<u64>,
    /// Whether the spare folder is known to be there.
    pub(crate) spare_made: std::cell::Cell<bool>,
}

/// Files kept for reuse per worker, at most.
pub(crate) const MAX_SPARES: usize = 64;

impl Scratch {
    /// Worker `worker` of this process's run number `run`.
    pub(crate) fn new(store: &LocalStore, run: u64, worker: usize) -> Scratch {
        let name = format!("{}-{run}-{worker}", std::process::id());
        let base = store.root().join("scratch");
        Scratch::with(
            base.join(&name),
            base.join(format!("{name}.log")),
            base.join(format!("{name}.spare")),
        )
    }

    /// A batch job's folder `folder` (on the shared filesystem): the step runs in
    /// `work/`, its log is `log`.
    pub(crate) fn at(folder: &Path) -> Scratch {
        Scratch::with(
            folder.join(crate::worker::WORK),
            folder.join(crate::worker::LOG),
            folder.join("spare"),
        )
    }

    fn with(root: PathBuf, log: PathBuf, spare: PathBuf) -> Scratch {
        Scratch {
            home: root.join(".mustbuild/home"),
            tmp: root.join(".mustbuild/tmp"),
            log,
            spare,
            spares: Default::default(),
            named: Default::default(),
            spare_made: Default::default(),
            root,
        }
    }

    /// Points `request` at this folder: its working folder, log, `HOME` and `TMPDIR`.
    pub(crate) fn take(&self, request: &mut ExecRequest) {
        request.dir = self.root.clone();
        request.log = self.log.clone();
        request
            .env
            .push(("HOME".into(), self.home.display().to_string()));
        request
            .env
            .push(("TMPDIR".into(), self.tmp.display().to_string()));
    }

    /// Makes it empty (creating it the first time), but for the folders in
    /// `keep` (relative paths), which stay, emptied: a job that needs the same
    /// folders as the last one creates and deletes none. The kept folders that
    /// were there (and are now empty), by relative path.
    fn reset(
        &self,
        keep: &std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashSet<String>, RunError> {
        real_folder(&self.root)?;
        if !self.spare_made.get() {
            real_folder(&self.spare)?;
            self.spare_made.set(true);
        }
        let mut found = std::collections::HashSet::new();
        self.empty(&self.root, "", keep, &mut found)?;
        // In `.mustbuild`, only `home` and `tmp` stay, emptied.
        let dot = self.root.join(".mustbuild");
        if found.contains(".mustbuild") {
            let mustbuild_keep = [".mustbuild/home", ".mustbuild/tmp"].into_iter().collect();
            self.empty(&dot, ".mustbuild", &mustbuild_keep, &mut found)?;
        }
        // A job may have removed these folders, or replaced one by a link or a
        // file (removed above, never followed): they are made again.
        for (rel, dir) in [
            (".mustbuild", &dot),
            (".mustbuild/home", &self.home),
            (".mustbuild/tmp", &self.tmp),
        ] {
            if !found.contains(rel) {
                real_folder(dir)?;
            }
        }
        Ok(found)
    }

    /// Removes what is in `dir` (`rel` within the scratch folder) but the folders
    /// in `keep` and a real `.mustbuild` folder at the top, which stay: the
    /// kept ones are emptied in turn, and all go in `found`. Files are kept
    /// aside for reuse.
    fn empty(
        &self,
        dir: &Path,
        rel: &str,
        keep: &std::collections::HashSet<&str>,
        found: &mut std::collections::HashSet<String>,
    ) -> Result<(), RunError> {
        for e in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
            let e = e.map_err(io_err("list", dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let path = e.path();
            let kind = e.file_type().map_err(io_err("read", &path))?;
            if rel.is_empty() && name == ".mustbuild" && kind.is_dir() {
                found.insert(".mustbuild".to_string());
                continue;
            }
            let inner = if rel.is_empty() {
                name.into_owned()
            } else {
                format!("{rel}/{name}")
            };
            let gone = if kind.is_dir() && keep.contains(inner.as_str()) {
                self.empty(&path, &inner, keep, found)?;
                found.insert(inner);
                continue;
            } else if kind.is_dir() {
                std::fs::remove_dir_all(&path)
            } else if kind.is_file() {
                self.retire(&path)
            } else {
                std::fs::remove_file(&path)
            };
            gone.map_err(io_err("clean", &path))?;
        }
        Ok(())
    }

    /// Keeps a file's inode for a later copy rather than deleting it.
    fn retire(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mut spares = self.spares.borrow_mut();
        // Only a file that no other name shares (a command may have hard-linked
        // anything, a user's data included) is reused; others lose this name only.
        let meta = std::fs::symlink_metadata(path)?;
        let sole = meta.is_file() && meta.nlink() == 1;
        // Nor one with extended attributes (ACLs, labels, a command's own).
        let plain = || mustbuild_store::materialize::has_attributes(path).is_ok_and(|has| !has);
        if !sole || spares.len() >= MAX_SPARES || !plain() {
            return std::fs::remove_file(path);
        }
        let n = self.named.get();
        self.named.set(n + 1);
        let dest = self.spare.join(n.to_string());
        // Writable again (a copy of a store object is read-only); a big file is
        // emptied now, a small one when it is written over.
        if meta.mode() & 0o600 != 0o600 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        if meta.len() > mustbuild_store::INLINE_MAX {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(0)?;
        }
        if std::fs::rename(path, &dest).is_err() {
            // The spare folder is gone (a command may remove anything): made
            // again by the next reset; this file goes.
            self.spare_made.set(false);
            return std::fs::remove_file(path);
        }
        spares.push(dest);
        Ok(())
    }

    /// Puts a kept inode at `dest`, when there is one: whether it did. It is
    /// looked at again there: a command could have linked it elsewhere since it
    /// was kept.
    fn reuse_spare(&self, dest: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(spare) = self.spares.borrow_mut().pop() else {
            return false;
        };
        if std::fs::rename(&spare, dest).is_err() {
            let _ = std::fs::remove_file(&spare);
            false
        } else if !std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_file() && m.nlink() == 1) {
            let _ = std::fs::remove_file(dest);
            false
        } else {
            true
        }
    }

    /// Writes a small file's bytes at `dest`, over a kept inode's when there is
    /// one (then cut to length: nothing of what it held is left).
    fn write_file(&self, bytes: &[u8], dest: &Path, mode: u32) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        if !self.reuse_spare(dest) {
            return mustbuild_store::materialize::write_new(dest, bytes, mode);
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(dest)?;
        f.write_all(bytes)?;
        // As long as it is now, not as it was kept: a process a command left
        // behind could have written to it since.
        if f.metadata()?.len() > bytes.len() as u64 {
            f.set_len(bytes.len() as u64)?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// Copies `src` to `dest` (its permissions too, or `mode`), in a kept inode
    /// when there is one.
    fn copy_file(&self, src: &Path, dest: &Path, mode: Option<u32>) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.reuse_spare(dest);
        mustbuild_store::materialize::clone_or_copy(src, dest)?;
        if let Some(mode) = mode {
            std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// Copies a source file or folder into the scratch folder (`dest`'s folder
    /// is there); gives the bytes of its files.
    fn copy_in(&self, src: &Path, dest: &Path) -> Result<u64, RunError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(src).map_err(io_err("read input", src))?;
        if meta.is_file() && meta.len() <= mustbuild_store::INLINE_MAX {
            let bytes = read_whole(src, meta.len()).map_err(io_err("read input", src))?;
            self.write_file(&bytes, dest, meta.permissions().mode() & 0o7777)
                .map_err(io_err("copy input", src))?;
            return Ok(bytes.len() as u64);
        }
        if meta.is_dir() {
            std::fs::create_dir_all(dest).map_err(io_err("create", dest))?;
            let mut bytes = 0;
            for e in std::fs::read_dir(src).map_err(io_err("list", src))? {
                let e = e.map_err(io_err("list", src))?;
                bytes += self.copy_in(&e.path(), &dest.join(e.file_name()))?;
            }
            return Ok(bytes);
        }
        self.copy_file(src, dest, None)
            .map_err(io_err("copy input", src))?;
        Ok(meta.len())
    }

    pub(crate) fn remove(&self) {
        let _ = remove_any(&self.root);
        let _ = remove_any(&self.spare);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A small file's bytes (`len`: its size when looked at, a hint).
pub(crate) fn read_whole(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0) + 1);
    // Through `take`: `File::read_to_end` would ask the size again (fstat, lseek).
    std::fs::File::open(path)?
        .take(u64::MAX)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Makes `dir` a real folder: a link or a file there is removed first.
pub(crate) fn real_folder(dir: &Path) -> Result<(), RunError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(dir).map_err(io_err("replace", dir))?,
        Err(_) => {}
    }
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))
}

/// Removes a file, a link or a folder (never following a link).
pub(crate) fn remove_any(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Removes what is in `base` whose name gives (through `pid_of`) a process
/// of this machine that is gone.
fn remove_dead(base: &Path, pid_of: impl Fn(&str) -> Option<u32>) {
    let Ok(listing) = std::fs::read_dir(base) else {
        return;
    };
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = pid_of(&name)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = remove_any(&e.path());
        }
    }
}

/// Removes scratch folders left by runs that were killed (their process is gone).
pub(crate) fn remove_stale_scratch(store: &LocalStore) {
    remove_dead(&store.root().join("scratch"), |name| {
        name.split(['-', '.']).next()?.parse().ok()
    });
}

/// Removes the batch runs' folders (`STORE/spool/HOST-PID-RUN`) that runs of
/// this host left when killed. Only this host's: the store may be shared by
/// login nodes whose process numbers mean nothing here.
pub(crate) fn remove_stale_spool(store: &LocalStore) {
    let host = mustbuild_store::hostname();
    remove_dead(&store.root().join("spool"), |name| {
        let mut parts = name.rsplitn(3, '-');
        let (_run, pid, from) = (parts.next(), parts.next()?, parts.next()?);
        (from == host).then(|| pid.parse().ok())?
    });
}

/// One input put in place in a scratch folder (`to`: relative to it).
pub(crate) enum Placement {
    /// A source file or folder, copied (reflinked where possible).
    Source { from: PathBuf, to: String },
    /// An upstream output, from the store.
    Object {
        digest: Digest,
        kind: OutputKind,
        to: String,
    },
    /// A folder the command will write in.
    Folder(String),
}

/// The folder part of a relative path (`""` for none).
pub(crate) fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// An emptied scratch folder with the job's inputs in place.
/// Gives the bytes it put there (a tree's, all its files').
pub(crate) fn place_inputs(
    store: &LocalStore,
    scratch: &Scratch,
    placements: &[Placement],
) -> Result<u64, RunError> {
    // The folders this job needs: the parents of its inputs, its output folders.
    let mut keep = std::collections::HashSet::new();
    for p in placements {
        let (path, itself) = match p {
            Placement::Source { to, .. } | Placement::Object { to, .. } => (to.as_str(), false),
            Placement::Folder(dir) => (dir.as_str(), true),
        };
        if itself {
            keep.insert(path);
        }
        keep.extend(path.match_indices('/').map(|(i, _)| &path[..i]));
    }
    // The folders there now, and a way to make the others once.
    let mut there = scratch.reset(&keep)?;
    let mut folder = |rel: &str| -> Result<(), RunError> {
        if !rel.is_empty() && !there.contains(rel) {
            let dir = scratch.root.join(rel);
            std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            there.insert(rel.to_string());
        }
        Ok(())
    };
    let mut bytes = 0;
    for p in placements {
        match p {
            Placement::Source { from, to } => {
                folder(parent(to))?;
                bytes += scratch.copy_in(from, &scratch.root.join(to))?;
            }
            Placement::Object {
                digest,
                kind: OutputKind::Tree,
                to,
            } => {
                store.materialize(digest, OutputKind::Tree, &scratch.root.join(to))?;
                bytes += store.read_tree(digest).map_or(0, |t| t.total_size());
            }
            Placement::Object { digest, kind, to } => {
                folder(parent(to))?;
                let dest = scratch.root.join(to);
                let mode = if *kind == OutputKind::Executable {
                    0o755
                } else {
                    0o644
                };
                match store.object_data(digest)? {
                    ObjectData::Inline(data) => {
                        bytes += data.len() as u64;
                        scratch.write_file(&data, &dest, mode)
                    }
                    ObjectData::File(src) => {
                        bytes += std::fs::metadata(&src).map_or(0, |m| m.len());
                        scratch.copy_file(&src, &dest, Some(mode))
                    }
                }
                .map_err(io_err("copy input", &dest))?;
            }
            Placement::Folder(dir) => folder(dir)?,
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_hosts_killed_batch_runs_lose_their_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path().join("store")).unwrap();
        let spool = store.root().join("spool");
        let host = mustbuild_store::hostname();
        // No process has number 4194304 (above the kernel's pid_max).
        let dead = spool.join(format!("{host}-4194304-0"));
        let live = spool.join(format!("{host}-{}-0", std::process::id()));
        let other = spool.join("login2.must.example-4194304-0");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d.join("7/work")).unwrap();
        }
        remove_stale_spool(&store);
        assert!(!dead.exists(), "a killed run of this host");
        assert!(live.exists(), "a live run");
        assert!(
            other.exists(),
            "another host's: its process numbers mean nothing here"
        );
    }
}
