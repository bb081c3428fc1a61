//! Store throughput, printed as a table of medians (run: `cargo bench --bench store`).
//!
//! - put and get of 10,000 small objects (1 KiB), in one transaction, and put one
//!   by one (each durable on its own) for 1,000 of them;
//! - put and get (materialise) of one 2 GiB file;
//! - hashing throughput of that file next to `b3sum` on the same file, when
//!   `b3sum` is on PATH (`cargo install b3sum`).
//!
//! `MUSTBUILD_BENCH_BIG_MIB` changes the size of the big file; `MUSTBUILD_BENCH_RUNS`
//! the number of runs each median is taken over (default 5).

use mustbuild_store::{Ingest, LocalStore, OutputKind, hashing::hash_file};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn row(what: &str, d: Duration, bytes: u64, items: u64) {
    let secs = d.as_secs_f64();
    let rate = if bytes > 0 {
        format!("{:>9.1} MiB/s", bytes as f64 / secs / (1 << 20) as f64)
    } else {
        String::new()
    };
    let per = if items > 1 {
        format!("{:>9.1} µs/item", secs * 1e6 / items as f64)
    } else {
        String::new()
    };
    println!("| {what:<44} | {:>10.3} s | {rate:>15} | {per:>15} |", secs);
}

fn main() {
    let runs: usize = std::env::var("MUSTBUILD_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let big_mib: u64 = std::env::var("MUSTBUILD_BENCH_BIG_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    // Criterion-style filter arguments are ignored; `--bench` is passed by cargo.
    let base = std::env::var_os("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("scratch folder");
    println!(
        "store benchmark, medians of {runs} runs, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| {:<44} | {:>12} | {:>15} | {:>15} |",
        "operation", "time", "throughput", "per item"
    );
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(46),
        "-".repeat(14),
        "-".repeat(17),
        "-".repeat(17)
    );

    // Small objects.
    let small: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| format!("{i:>8}").repeat(128).into_bytes())
        .collect();
    let refs: Vec<&[u8]> = small.iter().map(Vec::as_slice).collect();
    let mut puts = Vec::new();
    let mut gets = Vec::new();
    for r in 0..runs {
        let store = LocalStore::open(dir.path().join(format!("small-{r}"))).expect("store");
        let (t, digests) = time(|| store.add_many_bytes(&refs).expect("put"));
        puts.push(t);
        let ws = dir.path().join(format!("ws-small-{r}"));
        let (t, ()) = time(|| {
            for (i, d) in digests.iter().enumerate() {
                store
                    .materialize(d, OutputKind::File, &ws.join(format!("{i}")))
                    .expect("get");
            }
        });
        gets.push(t);
    }
    let total: u64 = small.iter().map(|s| s.len() as u64).sum();
    row(
        "put 10,000 × 1 KiB (one transaction)",
        median(puts),
        total,
        10_000,
    );
    row(
        "get 10,000 × 1 KiB (materialise each)",
        median(gets),
        total,
        10_000,
    );
    let mut singles = Vec::new();
    for r in 0..runs.min(3) {
        let store = LocalStore::open(dir.path().join(format!("single-{r}"))).expect("store");
        let (t, ()) = time(|| {
            for s in &refs[..1000] {
                store.add_bytes(s).expect("put");
            }
        });
        singles.push(t);
    }
    row(
        "put 1,000 × 1 KiB (one durable commit each)",
        median(singles),
        total / 10,
        1000,
    );

    // One big file.
    let big = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).expect("create"));
        let mut block = vec![0u8; 1 << 20];
        for mib in 0..big_mib {
            for (i, b) in block.iter_mut().enumerate() {
                *b = (i as u64 ^ mib.wrapping_mul(2_654_435_761)) as u8;
            }
            f.write_all(&block).expect("write");
        }
    }
    let big_bytes = big_mib << 20;
    let label = |what: &str| {
        format!(
            "{what} {}",
            if big_mib >= 1024 {
                format!("{} GiB", big_mib / 1024)
            } else {
                format!("{big_mib} MiB")
            }
        )
    };
    let mut hashes = Vec::new();
    for _ in 0..runs {
        hashes.push(time(|| hash_file(&big).expect("hash")).0);
    }
    let ours = median(hashes);
    row(
        &label("hash (mustbuild, mmap + all cores)"),
        ours,
        big_bytes,
        1,
    );
    if let Some(theirs) = b3sum(&big, runs) {
        row(&label("hash (b3sum)"), theirs, big_bytes, 1);
        println!(
            "\nmustbuild hashing runs at {:.0}% of b3sum's speed",
            100.0 * theirs.as_secs_f64() / ours.as_secs_f64()
        );
    } else {
        println!("\n(b3sum not found on PATH: `cargo install b3sum` to compare)");
    }
    let mut puts = Vec::new();
    let mut gets = Vec::new();
    for r in 0..runs.min(3) {
        let store = LocalStore::open(dir.path().join(format!("big-{r}"))).expect("store");
        let (t, stored) = time(|| store.add_path(&big, Ingest::Copy).expect("put"));
        puts.push(t);
        let dest = dir.path().join(format!("big-out-{r}"));
        gets.push(
            time(|| {
                store
                    .materialize(&stored.digest, stored.kind, &dest)
                    .expect("get")
            })
            .0,
        );
        std::fs::remove_file(&dest).ok();
        drop(store);
        std::fs::remove_dir_all(dir.path().join(format!("big-{r}"))).ok();
    }
    row(
        &label("put (copy in, fsync, hash)"),
        median(puts),
        big_bytes,
        1,
    );
    row(
        &label("get (materialise: reflink or copy)"),
        median(gets),
        big_bytes,
        1,
    );
}

/// The median wall time of `b3sum` on `file`, if it is installed.
fn b3sum(file: &Path, runs: usize) -> Option<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let (t, out) = time(|| std::process::Command::new("b3sum").arg(file).output());
        if !out.ok()?.status.success() {
            return None;
        }
        times.push(t);
    }
    Some(median(times))
}
