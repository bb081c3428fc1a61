//! Hashing file content: memory-mapped and on all cores (BLAKE3's tree mode)
//! for large files, streamed for small ones.

use crate::digest::Digest;
use std::io::Read;
use std::path::Path;

/// Below this size, a plain read beats mapping and threads.
const PARALLEL_THRESHOLD: u64 = 1 << 20;
/// From this size on, a file is read in chunks rather than mapped: a mapped
/// file's pages count in the process's resident memory (RSS), which batch
/// systems watch (HTCondor removes a job over its memory request), so a 1 GiB
/// output would make mustbuild look 1 GiB large. Reading costs a copy only.
const MAP_LIMIT: u64 = 64 << 20;

/// The blob digest of a file's content (what `b3sum` prints), memory-mapped below
/// [`MAP_LIMIT`] (read above it): only for files nobody else writes (the store's
/// own), since a mapped file that shrinks underneath kills the process (SIGBUS).
pub fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let size = std::fs::metadata(path)?.len();
    if size >= MAP_LIMIT {
        return hash_file_read(path);
    }
    let mut hasher = blake3::Hasher::new();
    if size >= PARALLEL_THRESHOLD {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok((hasher.finalize().into(), hasher.count()))
}

/// The blob digest of any file, read (not mapped), hashed on all cores in large
/// chunks: a file changed meanwhile gives a wrong digest, never a crash.
pub fn hash_file_read(path: &Path) -> std::io::Result<(Digest, u64)> {
    const CHUNK: usize = 8 << 20;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![
        0u8;
        CHUNK.min(
            usize::try_from(f.metadata()?.len())
                .unwrap_or(CHUNK)
                .max(64 * 1024)
        )
    ];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if filled >= 1 << 20 {
            hasher.update_rayon(&buf[..filled]);
        } else {
            hasher.update(&buf[..filled]);
        }
        if filled < buf.len() {
            break;
        }
    }
    Ok((hasher.finalize().into(), hasher.count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_files_hash_like_blake3() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 10, 3 << 20, (17 << 20) + 5] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            assert_eq!(hash_file(&p).unwrap(), (Digest::of(&data), size as u64));
            assert_eq!(
                hash_file_read(&p).unwrap(),
                (Digest::of(&data), size as u64)
            );
        }
    }
}
