//! The `mustbuild` command line: arguments, wiring, rendering of errors, exit
//! codes. Everything else lives in the library crates.

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod render;

use clap::{Parser, Subcommand, ValueEnum};
use mustbuild_lang::graph::GraphFormat;
use mustbuild_lang::{Diagnostic, Diagnostics, Loaded, RealFiles};
use render::{Renderer, count_summary, plural, to_json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Like `println!`/`print!` on stdout, but a closed pipe (`mustbuild graph … | head`)
/// is not an error: there is nobody left to tell.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that never panics when stderr is closed.
macro_rules! tell {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Exit codes, stable for scripts.
mod exit {
    /// Everything is fine.
    pub const OK: u8 = 0;
    /// The pipeline has problems (or `fmt --check` found unformatted files).
    pub const INVALID: u8 = 1;
    // 2: the command line itself is wrong (clap's own code).
    /// Something outside the pipeline failed: a file could not be written.
    pub const ENVIRONMENT: u8 = 3;
}

#[derive(Parser)]
#[command(
    name = "mustbuild",
    version,
    about = "A content-addressed workflow engine for scientific data pipelines",
    after_help = "Exit codes: 0 success, 1 problems in the pipeline, 2 bad command line, 3 environment \
                  (a file could not be written), 101 a bug in mustbuild."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline: syntax, names, references, cycles, paths, resources.
    ///
    /// Every problem is reported at once, each with file:line:column, the source
    /// underlined and a hint.
    #[command(
        after_help = "Examples:\n  mustbuild check pipeline.kdl\n  mustbuild check pipeline.kdl --json | jq '.diagnostics[].message'"
    )]
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Print the result as JSON on stdout (diagnostics with file, line, column,
        /// severity, message, hint).
        #[arg(long)]
        json: bool,
    },
    /// Print the step graph (fan-out collapsed, with instance counts).
    #[command(
        after_help = "Examples:\n  mustbuild graph pipeline.kdl | dot -Tsvg > graph.svg\n  mustbuild graph pipeline.kdl --format mermaid"
    )]
    Graph {
        /// The pipeline file.
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Dot)]
        format: Format,
    },
    /// Format pipeline files canonically, keeping comments.
    ///
    /// Rewrites the files in place (KDL 1.0 files become KDL 2.0); `-` formats
    /// standard input to standard output.
    #[command(
        after_help = "Examples:\n  mustbuild fmt pipeline.kdl\n  mustbuild fmt --check pipeline.kdl rules/*.kdl"
    )]
    Fmt {
        /// Files to format.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing; exit 1 if a file is not formatted.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Dot,
    Mermaid,
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        tell!(
            "internal error: mustbuild crashed; this is a bug, please report it with the command you ran.\n{info}"
        );
    }));
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { pipeline, json } => check(&pipeline, json),
        Command::Graph { pipeline, format } => graph(&pipeline, format),
        Command::Fmt { files, check } => fmt(&files, check),
    };
    ExitCode::from(code)
}

/// Loads a pipeline and matches it against the file system; diagnostics of both, sorted.
fn load_and_expand(path: &Path) -> (Loaded, Option<mustbuild_lang::Expansion>, Vec<Diagnostic>) {
    let mut loaded = mustbuild_lang::load(path);
    let mut diags = std::mem::take(&mut loaded.diagnostics);
    let expansion = loaded.workflow.as_ref().map(|wf| {
        let mut more = Diagnostics::default();
        let e = mustbuild_lang::expand(wf, &RealFiles, &mut more);
        diags.extend(more.into_sorted());
        e
    });
    diags.sort_by_key(|d| (d.span.map(|s| (s.file, s.start, s.end)), d.severity));
    (loaded, expansion, diags)
}

/// Reports past this many are counted, not shown (`--json` lists them all).
const MAX_SHOWN: usize = 100;

fn print_diagnostics(loaded: &Loaded, diags: &[Diagnostic]) {
    let mut r = Renderer::new(&loaded.sources);
    let mut err = std::io::stderr().lock();
    for d in diags.iter().take(MAX_SHOWN) {
        let _ = write!(err, "{}", r.render(d));
    }
    if diags.len() > MAX_SHOWN {
        let _ = writeln!(
            err,
            "… {} not shown (`mustbuild check --json` lists them all)",
            count_summary(&diags[MAX_SHOWN..])
        );
    }
}

fn check(path: &Path, json: bool) -> u8 {
    let (loaded, expansion, diags) = load_and_expand(path);
    let ok = !diags.iter().any(Diagnostic::is_error);
    let counts = loaded
        .workflow
        .as_ref()
        .zip(expansion.as_ref())
        .filter(|_| ok);
    if json {
        let out = serde_json::json!({
            "ok": ok,
            "file": path.display().to_string(),
            "steps": counts.map(|(wf, _)| wf.steps.len()),
            "derivations": counts.map(|(_, e)| e.derivations),
            "edges": counts.map(|(_, e)| e.edges),
            "diagnostics": diags.iter().map(|d| to_json(d, &loaded.sources)).collect::<Vec<_>>(),
        });
        outln!("{out}");
    } else {
        print_diagnostics(&loaded, &diags);
        match counts {
            Some((wf, e)) => {
                let warnings = if diags.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", count_summary(&diags))
                };
                outln!(
                    "{}: ok: pipeline `{}`, {}, {}, {}{warnings}",
                    path.display(),
                    wf.name,
                    plural(wf.steps.len(), "step"),
                    plural(e.derivations, "derivation"),
                    plural(e.edges, "edge"),
                );
            }
            None => tell!("{}: {}", path.display(), count_summary(&diags)),
        }
    }
    if ok { exit::OK } else { exit::INVALID }
}

fn graph(path: &Path, format: Format) -> u8 {
    let (loaded, expansion, diags) = load_and_expand(path);
    print_diagnostics(&loaded, &diags);
    let (Some(wf), Some(e)) = (&loaded.workflow, &expansion) else {
        tell!("{}: {}", path.display(), count_summary(&diags));
        return exit::INVALID;
    };
    if diags.iter().any(Diagnostic::is_error) {
        tell!("{}: {}", path.display(), count_summary(&diags));
        return exit::INVALID;
    }
    let format = match format {
        Format::Dot => GraphFormat::Dot,
        Format::Mermaid => GraphFormat::Mermaid,
    };
    out!(
        "{}",
        mustbuild_lang::graph::render(wf, &e.instances, format)
    );
    exit::OK
}

fn fmt(paths: &[PathBuf], check: bool) -> u8 {
    let mut code = exit::OK;
    for path in paths {
        if path == Path::new("-") {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                tell!("error: cannot read standard input: {e}");
                return exit::ENVIRONMENT;
            }
            match mustbuild_lang::format_source(&text) {
                Some(out) => out!("{out}"),
                None => {
                    let mut files = mustbuild_lang::MemoryFiles::new();
                    files.insert("<stdin>", text);
                    let f = mustbuild_lang::format_file(&files, Path::new("<stdin>"));
                    print_fmt_errors(&f);
                    code = code.max(exit::INVALID);
                }
            }
            continue;
        }
        let f = mustbuild_lang::format_file(&RealFiles, path);
        let Some(formatted) = &f.formatted else {
            print_fmt_errors(&f);
            code = code.max(exit::INVALID);
            continue;
        };
        if *formatted == f.original {
            continue;
        }
        if check {
            tell!(
                "{}: not formatted (run `mustbuild fmt {}`)",
                path.display(),
                path.display()
            );
            code = code.max(exit::INVALID);
        } else if let Err(e) = write_atomically(path, formatted) {
            tell!("error: cannot write {}: {e}", path.display());
            code = exit::ENVIRONMENT;
        } else {
            tell!("formatted {}", path.display());
        }
    }
    code
}

fn print_fmt_errors(f: &mustbuild_lang::Formatted) {
    let mut r = Renderer::new(&f.sources);
    for d in &f.diagnostics {
        let _ = write!(std::io::stderr().lock(), "{}", r.render(d));
    }
    if let Some(file) = f.sources.files().next() {
        tell!(
            "{}: not formatted: {}",
            file.1.path.display(),
            count_summary(&f.diagnostics)
        );
    }
}

/// Replaces a file's content so that a crash leaves either the old or the new text.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.mustbuild-fmt.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(std::fs::metadata(path)?.permissions())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
