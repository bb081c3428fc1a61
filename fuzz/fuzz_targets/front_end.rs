//! The whole front end on arbitrary bytes: read, parse, check, expand, render the
//! graph and format. Nothing may panic, hang or overflow the stack, every
//! diagnostic must point inside its file, and formatting must keep the meaning
//! of a file (same checked workflow) and be idempotent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mustbuild_lang::graph::{GraphFormat, render};
use mustbuild_lang::{Diagnostics, MemoryFiles, expand, format_source, load_with};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let mut files = MemoryFiles::new();
    files.insert("p/pipeline.kdl", data);
    // The same bytes as an include target, so that `include "other.kdl"` resolves
    // (and cycles through it are found).
    files.insert("p/other.kdl", data);
    files.insert("p/data/a.csv", "x");
    let loaded = load_with(&files, Path::new("p/pipeline.kdl"));
    for d in &loaded.diagnostics {
        if let Some(span) = d.span {
            let f = loaded.sources.file(span.file);
            assert!(span.start <= span.end && span.end as usize <= f.text.len(), "span out of its file: {d:?}");
            f.line_col(span.start as usize);
        }
    }
    if let Some(wf) = &loaded.workflow {
        let mut diags = Diagnostics::default();
        let e = expand(wf, &files, &mut diags);
        render(wf, &e.instances, GraphFormat::Dot);
        render(wf, &e.instances, GraphFormat::Mermaid);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(once) = format_source(text) else { return };
    let twice = format_source(&once).expect("formatted text parses again");
    assert_eq!(once, twice, "formatting is not idempotent");
    if let Some(wf) = &loaded.workflow {
        let mut again = MemoryFiles::new();
        again.insert("p/pipeline.kdl", once.as_bytes());
        again.insert("p/other.kdl", data);
        let reloaded = load_with(&again, Path::new("p/pipeline.kdl"));
        let a = serde_json::to_value(wf).expect("serializes");
        let b = serde_json::to_value(reloaded.workflow.as_ref().expect("formatted pipeline checks")).expect("serializes");
        assert_eq!(a, b, "formatting changed the checked workflow");
    }
});
