//! Time to parse and check generated pipelines of 1,000, 10,000 and 100,000
//! steps, of two shapes:
//!
//! - `parse_and_check`: layered, short names; every step reads the outputs of
//!   one or two steps of the layer before, one step in ten fans out over three
//!   values, and every step has a resources line (target: 100,000 in well under
//!   a second on one core);
//! - `wfcommons`: a WfCommons Seismology instance as a converter writes it, one
//!   path per file: a deconvolution step per station (two literal input files,
//!   one output, long distinct names) and a final step that gathers all of
//!   their outputs by name (10,000 steps: 5 MB; targets: 10,000 under 0.3 s,
//!   100,000 under 3 s).
//!
//! Run: `cargo bench --bench check`.

#![expect(
    clippy::expect_used,
    reason = "a benchmark on an invalid pipeline must stop"
)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mustbuild_lang::{Diagnostics, MemoryFiles};
use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

/// A layered pipeline of `steps` steps, 100 per layer.
pub fn generate(steps: usize) -> String {
    let mut s = String::with_capacity(steps * 220);
    s.push_str("pipeline \"generated\"\nparam threshold 0.05\ninput seed \"data/seed.txt\"\ntool python3\nenv LC_ALL \"C\"\n\n");
    let width = 100;
    for i in 0..steps {
        let _ = writeln!(s, "step s{i} {{");
        let fan = i % 10 == 5;
        if fan {
            s.push_str("    foreach k \"a\" \"b\" \"c\"\n");
        }
        if i < width {
            s.push_str("    in src=seed\n");
        } else {
            let up = i - width + (i * 7) % width;
            let _ = writeln!(s, "    in a=s{}.out", i - width);
            if up != i - width {
                let _ = writeln!(s, "    in b=s{up}.out");
            }
        }
        if fan {
            let _ = writeln!(s, "    out out=\"work/{i}/{{k}}.txt\"");
        } else {
            let _ = writeln!(s, "    out out=\"work/{i}.txt\"");
        }
        let input = if i < width { "{in.src}" } else { "{in.a}" };
        let _ = writeln!(
            s,
            "    run \"python3 step.py --threshold {{param.threshold}} {input} > {{out.out}}\""
        );
        s.push_str("    resources cpus=1 memory=\"512MiB\" time=\"10m\"\n}\n");
    }
    s
}

/// A WfCommons Seismology instance of `steps` steps: `steps - 1` deconvolutions
/// and the step that sifts them all.
pub fn seismology(steps: usize) -> String {
    let decon = steps - 1;
    let mut s = String::with_capacity(steps * 520 + decon * 40);
    s.push_str("pipeline \"seismology-wfcommons\"\ntool sG1IterDecon\ntool siftSTFByMisfit\n\n");
    let networks = ["IU", "II", "GE", "G", "CN"];
    for i in 0..decon {
        let net = networks[i % networks.len()];
        let sta = i % 977;
        let day = i % 28 + 1;
        let hour = i % 24;
        let trace = |c: &str| {
            format!("data/seismology/{net}.S{sta:04}.00.{c}.2020-06-{day:02}T{hour:02}.{i:08}.sac")
        };
        let _ = writeln!(
            s,
            "step sG1IterDecon_{i:08} {{\n    in vertical=(file)\"{}\" radial=(file)\"{}\"\n    \
             out stf=\"work/stf/{net}.S{sta:04}.00.2020-06-{day:02}T{hour:02}.{i:08}.stf.txt\"\n    \
             run \"sG1IterDecon --vertical {{in.vertical}} --radial {{in.radial}} --gauss 2.5 \
             --iterations 200 --min-error 0.001 --output {{out.stf}}\"\n    \
             resources cpus=1 memory=\"1GiB\" time=\"20m\"\n}}",
            trace("BHZ"),
            trace("BHR"),
        );
    }
    s.push_str("step siftSTFByMisfit {\n");
    for start in (0..decon).step_by(50) {
        s.push_str("    in");
        for i in start..(start + 50).min(decon) {
            let _ = write!(s, " stf{i}=sG1IterDecon_{i:08}.stf");
        }
        s.push('\n');
    }
    s.push_str("    out sifted=\"work/siftSTFByMisfit.tar.gz\"\n    run \"siftSTFByMisfit");
    for i in 0..decon {
        let _ = write!(s, " {{in.stf{i}}}");
    }
    s.push_str(" --output {out.sifted}\"\n}\n");
    s
}

/// What `mustbuild check` does: parse, check, match globs and check output paths.
/// The result is returned so that freeing it is not timed: the command exits
/// without freeing it.
fn check(files: &MemoryFiles) -> (mustbuild_lang::Loaded, mustbuild_lang::Expansion) {
    let loaded = mustbuild_lang::load_with(files, Path::new("p/pipeline.kdl"));
    let wf = loaded
        .workflow
        .as_ref()
        .expect("the generated pipeline is valid");
    let mut diags = Diagnostics::default();
    let e = mustbuild_lang::expand(wf, files, &mut diags);
    assert!(!diags.has_errors());
    (loaded, e)
}

fn bench(c: &mut Criterion) {
    for (name, generator) in [
        ("parse_and_check", generate as fn(usize) -> String),
        ("wfcommons", seismology),
    ] {
        let mut group = c.benchmark_group(name);
        for steps in [1_000, 10_000, 100_000] {
            let text = generator(steps);
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.sample_size(if steps >= 100_000 { 10 } else { 20 });
            group.measurement_time(Duration::from_secs(if steps >= 100_000 { 15 } else { 5 }));
            let mut files = MemoryFiles::new();
            files.insert("p/pipeline.kdl", text);
            group.bench_with_input(BenchmarkId::from_parameter(steps), &files, |b, f| {
                b.iter_with_large_drop(|| check(black_box(f)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
