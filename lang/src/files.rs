//! Where pipeline files and source files come from: the real file system, or
//! memory (for tests and the fuzzer).

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The largest pipeline file read (a 100,000-step pipeline is about 15 MB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Read access to pipeline files and source data.
pub trait Files {
    /// The whole content of a file, or a user-facing reason why not.
    fn read(&self, path: &Path) -> Result<Vec<u8>, String>;

    /// The same value for two paths that name one file (for include cycles).
    fn identity(&self, path: &Path) -> PathBuf {
        normalize(path)
    }

    /// The files under `root` whose root-relative, `/`-separated path matches
    /// `matcher`; `base` is the pattern's folder without wildcards (relative to root),
    /// where the walk starts. Sorted.
    fn glob(
        &self,
        root: &Path,
        base: &str,
        matcher: &globset::GlobMatcher,
    ) -> Result<Vec<String>, String>;
}

/// Lexically cleans a path: drops `.` and folds `a/..`.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "file not found".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        io::ErrorKind::IsADirectory => "it is a directory, not a file".to_string(),
        _ => e.to_string(),
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFiles;

impl Files for RealFiles {
    fn read(&self, path: &Path) -> Result<Vec<u8>, String> {
        let meta = std::fs::metadata(path).map_err(|e| describe_io(&e))?;
        if meta.is_dir() {
            return Err("it is a directory, not a file".to_string());
        }
        if !meta.is_file() {
            return Err("it is not a regular file".to_string());
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "the file is {} MiB; pipeline files are limited to {} MiB",
                meta.len() >> 20,
                MAX_FILE_BYTES >> 20
            ));
        }
        std::fs::read(path).map_err(|e| describe_io(&e))
    }

    fn identity(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| normalize(path))
    }

    fn glob(
        &self,
        root: &Path,
        base: &str,
        matcher: &globset::GlobMatcher,
    ) -> Result<Vec<String>, String> {
        let mut found = Vec::new();
        let start = if base.is_empty() {
            root.to_path_buf()
        } else {
            root.join(base)
        };
        let mut stack = vec![(start, base.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot list {}: {}",
                        dir.display(),
                        describe_io(&e)
                    ));
                }
            };
            for entry in entries {
                let entry = entry
                    .map_err(|e| format!("cannot list {}: {}", dir.display(), describe_io(&e)))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let rel_path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                // Symbolic links to folders are not followed: no loops, no escapes.
                let file_type = entry.file_type().map_err(|e| describe_io(&e))?;
                if file_type.is_dir() {
                    stack.push((entry.path(), rel_path));
                } else if matcher.is_match(&rel_path) {
                    found.push(rel_path);
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

/// Files held in memory, keyed by normalized path.
#[derive(Debug, Default, Clone)]
pub struct MemoryFiles {
    files: HashMap<PathBuf, Vec<u8>>,
}

impl MemoryFiles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, path: impl AsRef<Path>, content: impl Into<Vec<u8>>) {
        self.files.insert(normalize(path.as_ref()), content.into());
    }
}

impl Files for MemoryFiles {
    fn read(&self, path: &Path) -> Result<Vec<u8>, String> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or_else(|| "file not found".to_string())
    }

    fn glob(
        &self,
        root: &Path,
        _base: &str,
        matcher: &globset::GlobMatcher,
    ) -> Result<Vec<String>, String> {
        let root = normalize(root);
        let mut found: Vec<String> = self
            .files
            .keys()
            .filter_map(|p| p.strip_prefix(&root).ok())
            .filter_map(|p| p.to_str())
            .filter(|p| matcher.is_match(p))
            .map(str::to_string)
            .collect();
        found.sort();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(Path::new("a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(normalize(Path::new("../a")), PathBuf::from("../a"));
    }

    #[test]
    fn real_glob_walks_from_the_base_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        for p in [
            "raw/b.fits",
            "raw/a.fits",
            "raw/x.txt",
            "raw/sub/c.fits",
            "other/d.fits",
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        let m = globset::GlobBuilder::new("raw/*.fits")
            .literal_separator(true)
            .build()
            .unwrap()
            .compile_matcher();
        assert_eq!(
            RealFiles.glob(dir.path(), "raw", &m).unwrap(),
            ["raw/a.fits", "raw/b.fits"]
        );
        let m = globset::GlobBuilder::new("**/*.fits")
            .literal_separator(true)
            .build()
            .unwrap()
            .compile_matcher();
        assert_eq!(RealFiles.glob(dir.path(), "", &m).unwrap().len(), 4);
    }
}
