//! Inputs the fuzzer found that once crashed or hung the front end. Each must now
//! load (with whatever diagnostics) quickly, and format idempotently if it parses.

use mustbuild_lang::{MemoryFiles, format_source, load_with};
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn every_fuzz_regression_loads_quickly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let mut files = MemoryFiles::new();
        files.insert("p/pipeline.kdl", data.as_slice());
        files.insert("p/other.kdl", data.as_slice());
        let start = Instant::now();
        let loaded = load_with(&files, Path::new("p/pipeline.kdl"));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} took {:?}",
            path.display(),
            start.elapsed()
        );
        assert!(
            loaded.workflow.is_some() || loaded.has_errors(),
            "{}",
            path.display()
        );
        if let Some(once) = std::str::from_utf8(&data).ok().and_then(format_source) {
            assert_eq!(
                format_source(&once).as_deref(),
                Some(once.as_str()),
                "{}",
                path.display()
            );
        }
        seen += 1;
    }
    assert!(seen > 0);
}
