//! The `mustbuild` command line: arguments, wiring, rendering of errors, exit
//! codes. Everything else lives in the library crates.

// Library code returns errors; tests may unwrap (clippy.toml allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod render;

use clap::{Parser, Subcommand, ValueEnum};
use mustbuild_lang::graph::GraphFormat;
use mustbuild_lang::{Diagnostic, Diagnostics, Loaded, RealFiles};
use mustbuild_store::LocalStore;
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

// After the macros, which they use.
mod cache;
mod dagman;
mod progress;
mod provenance;
mod simulate;
mod stats;

/// Exit codes, stable for scripts.
mod exit {
    /// Everything is fine.
    pub const OK: u8 = 0;
    /// The pipeline has problems (or `fmt --check` found unformatted files).
    pub const INVALID: u8 = 1;
    // 2: the command line itself is wrong (clap's own code).
    /// Something outside the pipeline failed: a file could not be written.
    pub const ENVIRONMENT: u8 = 3;
    /// The command line is wrong (as clap reports it).
    pub const USAGE: u8 = 2;
    /// Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;

    /// The code of a command that ran steps: interrupted, some failed, or fine.
    pub fn of_work(interrupted: bool, failed: bool) -> u8 {
        if interrupted {
            INTERRUPTED
        } else if failed {
            INVALID
        } else {
            OK
        }
    }
}

#[derive(Parser)]
#[command(
    name = "mustbuild",
    version,
    about = "A content-addressed workflow engine for scientific data pipelines",
    after_help = "Exit codes: 0 success, 1 problems in the pipeline or a failed step, 2 bad command line, 3 environment \
                  (a file could not be written), 130 interrupted, 101 a bug in mustbuild."
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
    /// Run a pipeline: execute what changed, take the rest from the store.
    ///
    /// Steps run up to -j CPUs at a time; after a failure nothing new starts unless
    /// --keep-going. On a terminal, stderr shows a live status line (counts, ETA,
    /// what runs) with executed and failed steps above it; elsewhere one plain line
    /// per event. The summary goes to stdout.
    #[command(
        after_help = "Examples:\n  mustbuild run examples/quickstart/pipeline.kdl\n  mustbuild run pipeline.kdl -j 8 --store /scratch/me/store"
    )]
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Inspect and maintain the store: info, verify, gc.
    Store {
        /// The store [default: $MUSTBUILD_STORE, else $XDG_CACHE_HOME/mustbuild/store,
        /// else ~/.cache/mustbuild/store].
        #[arg(long, global = true, value_name = "PATH")]
        store: Option<PathBuf>,
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Why a step ran (down to the root causes) or was reused.
    ///
    /// TARGET is an output path, a step, `step[VALUE]` (the instance with that
    /// fan-out value) or `step[V1, V2]`. Default: the latest run that touched it.
    /// Compares the key of each instance that ran with its previous key and
    /// follows each changed input upstream to what changed it.
    #[command(
        after_help = "Examples:\n  mustbuild why results/summary.tsv\n  mustbuild why align[s1] --run 12\n  mustbuild why plot --json | jq '.root_causes'\n  mustbuild why --depends trim[s1] report"
    )]
    Why {
        #[arg(required_unless_present = "depends")]
        target: Option<String>,
        /// The paths by which B reads what A makes, in the derivation graph of a run.
        #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "target")]
        depends: Option<Vec<String>>,
        /// The run to explain (`mustbuild runs` lists them).
        #[arg(long, value_name = "ID")]
        run: Option<i64>,
        #[command(flatten)]
        common: provenance::Common,
    },
    /// A derivation: its key, inputs by digest, command, outputs, the run that made it.
    #[command(
        after_help = "Examples:\n  mustbuild show results/summary.tsv\n  mustbuild show align[s1] --json"
    )]
    Show {
        target: String,
        #[arg(long, value_name = "ID")]
        run: Option<i64>,
        #[command(flatten)]
        common: provenance::Common,
    },
    /// The stored output (stdout and stderr) of the execution that made a result.
    ///
    /// With --run: of that run's execution of it (a failed one too).
    #[command(
        after_help = "Examples:\n  mustbuild log align[s1]\n  mustbuild log results/a.txt --run 7"
    )]
    Log {
        target: String,
        #[arg(long, value_name = "ID")]
        run: Option<i64>,
        /// The store [default: $MUSTBUILD_STORE, else $XDG_CACHE_HOME/mustbuild/store,
        /// else ~/.cache/mustbuild/store].
        #[arg(long, value_name = "PATH")]
        store: Option<PathBuf>,
    },
    /// Rerun realised results aside and compare their bytes: are they reproducible?
    ///
    /// Each realised derivation (of the targets; all without) runs again in a
    /// fresh folder, its inputs taken from the workspace's sources and the store;
    /// the workspace and the store's results are left alone. The verdict is kept
    /// (`why` and `show` print it). Exit 1 when any output differs.
    #[command(
        after_help = "Examples:\n  mustbuild audit pipeline.kdl\n  mustbuild audit pipeline.kdl plot --sample 20"
    )]
    Audit {
        pipeline: PathBuf,
        /// Steps or output paths (with what they read); all without.
        targets: Vec<String>,
        /// At most N derivations, spread over the pipeline.
        #[arg(long, value_name = "N", conflicts_with = "all")]
        sample: Option<usize>,
        /// Every realised derivation (the default).
        #[arg(long)]
        all: bool,
        /// Run them unsandboxed (by default they run sandboxed, as `run` runs them).
        #[arg(long)]
        no_sandbox: bool,
        #[command(flatten)]
        common: provenance::Common,
    },
    /// Replay a cold run on N cores without running anything: the makespan
    /// against the lower bound max(critical path, work / cores).
    ///
    /// Each instance takes its step's mean wall time in the pipeline's recent
    /// runs (the store's), else its declared `time`, else a typical step's,
    /// and its declared CPUs; jobs go in the dispatcher's order (the longest
    /// path to the end first).
    #[command(
        after_help = "Examples:\n  mustbuild simulate pipeline.kdl --cores 16\n  mustbuild simulate pipeline.kdl --cores 64 --json | jq .makespan"
    )]
    Simulate {
        pipeline: PathBuf,
        /// Steps or output paths (with what they read); all without.
        targets: Vec<String>,
        /// Cores to simulate [default: this machine's].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        cores: Option<u32>,
        #[command(flatten)]
        common: provenance::Common,
    },
    /// Export a run's provenance.
    Export {
        #[command(subcommand)]
        what: ExportCommand,
    },
    /// The latest runs: id, when, wall time, steps run, cached and failed, pipeline.
    #[command(after_help = "Examples:\n  mustbuild runs\n  mustbuild runs -n 100 --json")]
    Runs {
        /// How many runs, newest first.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        common: provenance::Common,
    },
    /// What the steps of a run cost: executions, wall and CPU time, peak memory,
    /// I/O, energy (and how it was found), CO2e, and what cache hits avoided.
    ///
    /// Energy is measured with RAPL where this user can read it (shared among the
    /// steps that ran at once by their CPU use), with NVML on the GPUs a step was
    /// given, else modelled from CPU time and memory; CO2e applies the PUE and the
    /// carbon intensity (MUSTBUILD_PUE, MUSTBUILD_CARBON_INTENSITY in gCO2e/kWh).
    /// A peak memory shown as ≤X is an upper bound: the kernel counts mustbuild's
    /// own peak in the peak of every process it starts, and the step's was lower.
    #[command(
        after_help = "Examples:\n  mustbuild stats\n  mustbuild stats --run 12 --json\n  mustbuild stats --by run --csv"
    )]
    Stats(stats::StatsArgs),
    /// The shared cache: make a signing key, push a run's results, list or check
    /// what a cache holds.
    #[command(
        subcommand,
        after_help = "Examples:\n  mustbuild cache keygen lab-1 -o ~/.config/mustbuild\n  mustbuild cache push s3://results/lab?endpoint=http://127.0.0.1:8333\n  mustbuild cache ls file:///sps/lab/cache"
    )]
    Cache(cache::CacheCommand),
    /// One self-contained HTML file about a run: its summary, a timeline of its
    /// executions per slot, the step graph, a table per step, energy and memory
    /// charts. It fetches nothing: styles, script and charts are inline.
    #[command(
        after_help = "Examples:\n  mustbuild report -o report.html\n  mustbuild report --run 12 -o run12.html"
    )]
    Report(stats::ReportArgs),
    /// Run one step of a batch job: what the HTCondor (and Slurm) jobs of
    /// `mustbuild run --executor …` run on their node. Not for use by hand.
    ///
    /// It checks the step's declared tools are the ones in its key, runs the
    /// command in the job folder as a local run would, and writes result.json
    /// beside the spec; the run that submitted the job stores the outputs.
    /// A DAGMan node's PRE or POST script (`mustbuild export dagman`).
    #[command(hide = true)]
    DagmanNode {
        #[arg(value_enum)]
        phase: dagman::Phase,
        /// The exported folder.
        dir: PathBuf,
        /// The node's name in its DAG.
        node: String,
    },
    Worker {
        /// The steps' specs (JOB/job.json, written by `mustbuild run`): several
        /// short steps run one after another in one batch job.
        #[arg(required = true)]
        specs: Vec<PathBuf>,
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

#[derive(Subcommand)]
enum ExportCommand {
    /// A Workflow Run RO-Crate (Provenance Run Crate 0.5) of a run: the pipeline
    /// files, each execution with its command, inputs and outputs by digest,
    /// times and measurements.
    #[command(
        name = "ro-crate",
        after_help = "Examples:\n  mustbuild export ro-crate -o crate/ --license https://spdx.org/licenses/CC-BY-4.0\n  mustbuild export ro-crate --run 12 -o run12/ --license https://spdx.org/licenses/CC0-1.0"
    )]
    RoCrate {
        /// The run (default: the latest).
        #[arg(long, value_name = "ID")]
        run: Option<i64>,
        /// The folder to write (made if missing).
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        /// The licence of the crate (an IRI, e.g. an SPDX URL): required by the profile.
        #[arg(long, value_name = "IRI")]
        license: String,
        #[command(flatten)]
        common: provenance::Common,
    },
    /// A DAG for HTCondor's DAGMan: one node per step to run (its job runs
    /// `mustbuild worker`; PRE and POST scripts prepare and store it on the
    /// submit host), realised steps as DONE nodes, and the submit files.
    #[command(after_help = "Examples:
  mustbuild export dagman pipeline.kdl -o dag/ && condor_submit_dag dag/pipeline.dag")]
    Dagman {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The folder to write (made if missing); not under /tmp, which DAGMan refuses for logs.
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        #[command(flatten)]
        flags: RunFlags,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Where the store is and what it holds.
    #[command(
        after_help = "Examples:\n  mustbuild store info\n  mustbuild store --store /scratch/me/store info --json"
    )]
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Rehash every object (in parallel); report corrupt and missing ones.
    ///
    /// With --repair, corrupt files move to the store's quarantine/ folder, and the
    /// objects, the folders above them and the realisations that named them are
    /// forgotten: the next run rebuilds them. Exit 1 if anything was wrong.
    #[command(
        after_help = "Examples:\n  mustbuild store verify\n  mustbuild store verify --repair"
    )]
    Verify {
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete what no root reaches.
    ///
    /// Roots: pinned results, the derivations of the last N runs of each pipeline,
    /// and what running mustbuild processes are using. Safe while another mustbuild
    /// writes to the store.
    #[command(
        after_help = "Examples:\n  mustbuild store gc --dry-run\n  mustbuild store gc --keep-last 3"
    )]
    Gc {
        /// Keep the results of this many last runs of each pipeline.
        #[arg(long, default_value_t = 5)]
        keep_last: usize,
        /// Say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
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
        Command::Worker { specs } => worker(&specs),
        Command::DagmanNode { phase, dir, node } => dagman_node(phase, &dir, &node),
        Command::Export {
            what:
                ExportCommand::Dagman {
                    pipeline,
                    output,
                    mut flags,
                },
        } => {
            flags.dag.export = Some(output);
            run_command(&pipeline, flags)
        }
        Command::Store { store, command } => store_command(store, command),
        Command::Run { pipeline, flags } => run_command(&pipeline, flags),
        Command::Why {
            target,
            depends,
            run,
            common,
        } => match (target, depends) {
            (_, Some(ab)) => provenance::depends(&ab[0], &ab[1], run, common),
            (Some(target), None) => provenance::why(&target, run, common),
            (None, None) => exit::USAGE,
        },
        Command::Show {
            target,
            run,
            common,
        } => provenance::show(&target, run, common),
        Command::Log { target, run, store } => provenance::log(&target, run, store),
        Command::Runs { limit, common } => provenance::runs(limit, common),
        Command::Stats(args) => stats::stats(args),
        Command::Cache(command) => cache::command(command),
        Command::Report(args) => stats::report(args),
        Command::Export {
            what:
                ExportCommand::RoCrate {
                    run,
                    output,
                    license,
                    common,
                },
        } => provenance::export_ro_crate(run, &output, &license, common),
        Command::Simulate {
            pipeline,
            targets,
            cores,
            common,
        } => simulate::simulate(
            &pipeline,
            &targets,
            cores.map(|c| c as usize),
            common.store,
            common.json,
        ),
        Command::Audit {
            pipeline,
            targets,
            sample,
            all: _,
            no_sandbox,
            common,
        } => provenance::audit(&pipeline, &targets, sample, !no_sandbox, common),
    };
    ExitCode::from(code)
}

/// Loads a pipeline and matches it against the file system; diagnostics of both, sorted.
fn load_and_expand(path: &Path) -> (Loaded, Option<mustbuild_lang::Expansion>, Vec<Diagnostic>) {
    load_and_expand_with(path, &[])
}

/// A pipeline loaded, matched against the file system and instantiated, with
/// the instances its `targets` select (`None`: all); its diagnostics, or an
/// unknown target, are printed and give the exit status.
fn load_targets(
    pipeline: &Path,
    targets: &[String],
) -> Result<
    (
        mustbuild_lang::Workflow,
        mustbuild_engine::Instances,
        Option<Vec<bool>>,
    ),
    u8,
> {
    let (loaded, expansion, diags) = load_and_expand_with(pipeline, &[]);
    if loaded.workflow.is_none() || expansion.is_none() {
        print_diagnostics(&loaded, &diags);
        tell!("{}: {}", pipeline.display(), count_summary(&diags));
        return Err(exit::INVALID);
    }
    let (Some(wf), Some(expansion)) = (loaded.workflow, expansion) else {
        return Err(exit::INVALID);
    };
    let instances = mustbuild_engine::instantiate(&wf, &expansion);
    let selected = select_targets(&wf, &instances, targets).map_err(|message| {
        tell!("error: {message}");
        exit::INVALID
    })?;
    Ok((wf, instances, selected))
}

/// The same, with `--param` overrides applied before the file system is matched.
fn load_and_expand_with(
    path: &Path,
    overrides: &[(String, String)],
) -> (Loaded, Option<mustbuild_lang::Expansion>, Vec<Diagnostic>) {
    let mut loaded = mustbuild_lang::load(path);
    let mut diags = std::mem::take(&mut loaded.diagnostics);
    if let Some(wf) = loaded.workflow.as_mut() {
        for (name, value) in overrides {
            if let Err(near) = wf.override_param(name, value) {
                let hint = near
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                diags.push(Diagnostic::file_error(
                    path,
                    format!("--param {name}: the pipeline has no param `{name}`{hint}"),
                ));
                loaded.workflow = None;
                break;
            }
        }
    }
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

/// Writes a file's whole content so that a crash leaves either the old text (or
/// no file) or the new one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.mustbuild.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        // A file replaced keeps its mode; a new one gets the default.
        if let Ok(old) = std::fs::metadata(path) {
            f.set_permissions(old.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn store_command(location: Option<PathBuf>, command: StoreCommand) -> u8 {
    let root = location.unwrap_or_else(LocalStore::default_location);
    let store = match LocalStore::open(&root) {
        Ok(s) => s,
        Err(e) => {
            tell!("error: cannot open the store at {}: {e}", root.display());
            return exit::ENVIRONMENT;
        }
    };
    let result = match command {
        StoreCommand::Info { json } => store.info().map(|info| {
            if json {
                outln!("{}", serde_json::to_string(&info).unwrap_or_default());
            } else {
                outln!("store:        {}", info.location.display());
                outln!("objects:      {} ({} files, {} folders), {}", info.objects, info.blobs, info.trees, bytes(info.bytes));
                outln!("derivations:  {} ({} realised)", info.derivations, info.realisations);
                outln!("runs:         {} in {} sessions", info.runs, info.sessions);
                outln!("roots:        {}", info.roots);
                outln!("database:     {}", bytes(info.database_bytes));
            }
            exit::OK
        }),
        StoreCommand::Verify { repair, json } => store.verify(repair).map(|r| {
            if json {
                outln!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                for d in &r.corrupt {
                    outln!("corrupt  {d}");
                }
                for d in &r.missing {
                    outln!("missing  {d}");
                }
                for d in &r.unreadable {
                    outln!("unreadable {d}");
                }
                outln!(
                    "checked {} objects ({}): {} corrupt, {} missing, {} unreadable{}",
                    r.checked,
                    bytes(r.bytes),
                    r.corrupt.len(),
                    r.missing.len(),
                    r.unreadable.len(),
                    if r.dangling_realisations > 0 { format!(", {} realisations naming absent objects", r.dangling_realisations) } else { String::new() },
                );
                if r.repaired {
                    outln!(
                        "repaired: corrupt files moved to {}, {} folders above them and {} realisations forgotten; the next run rebuilds them",
                        store.root().join("quarantine").display(),
                        r.broken_trees.len(),
                        r.dropped_realisations
                    );
                } else if !r.is_clean() {
                    tell!("hint: `mustbuild store verify --repair` quarantines them and forgets what used them");
                }
            }
            if r.is_clean() || r.repaired { exit::OK } else { exit::INVALID }
        }),
        StoreCommand::Gc { keep_last, dry_run, json } => store.gc(keep_last, dry_run).map(|r| {
            if json {
                outln!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                const LISTED: usize = 20;
                for (d, size) in r.removed.iter().take(LISTED) {
                    outln!("{} {d} ({})", if dry_run { "would remove" } else { "removed" }, bytes(*size));
                }
                if r.removed.len() > LISTED {
                    outln!("… and {} more objects", r.removed.len() - LISTED);
                }
                outln!(
                    "{} {} objects ({}), {} realisations, {} derivation records, {} old sessions, {} stray files; kept {} objects",
                    if dry_run { "would remove" } else { "removed" },
                    r.objects_removed,
                    bytes(r.bytes_freed),
                    r.realisations_removed,
                    r.derivations_removed,
                    r.sessions_removed,
                    r.stray_files_removed,
                    r.objects_kept,
                );
            }
            exit::OK
        }),
    };
    result.unwrap_or_else(|e| {
        tell!("error: {e}");
        exit::ENVIRONMENT
    })
}

/// A number from the environment variable `name`, when set: it must be a
/// positive number.
fn env_number(name: &str) -> Result<Option<f64>, u8> {
    let Some(v) = std::env::var_os(name) else {
        return Ok(None);
    };
    match v.to_str().and_then(|s| s.trim().parse::<f64>().ok()) {
        Some(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
        _ => {
            tell!(
                "error: {name}={} is not a positive number",
                v.to_string_lossy()
            );
            Err(exit::USAGE)
        }
    }
}

/// The configuration for a pipeline in `folder` (engine::config), on this host;
/// a file that cannot be used is told, with where and why.
fn config(folder: Option<&Path>) -> Result<mustbuild_engine::config::Config, u8> {
    mustbuild_engine::config::load(folder, &mustbuild_store::hostname()).map_err(|e| {
        tell!("error: {e}");
        if let Some(hint) = &e.hint {
            tell!("  hint: {hint}");
        }
        exit::INVALID
    })
}

/// How energy becomes CO2e for a pipeline in `folder`: the configuration's
/// figures, or MUSTBUILD_PUE and MUSTBUILD_CARBON_INTENSITY (gCO2e/kWh).
fn footprint(folder: Option<&Path>) -> Result<mustbuild_engine::stats::Footprint, u8> {
    let mut f = config(folder)?.footprint;
    if let Some(pue) = env_number("MUSTBUILD_PUE")? {
        f.pue = pue;
    }
    if let Some(ci) = env_number("MUSTBUILD_CARBON_INTENSITY")? {
        f.carbon_intensity = ci;
    }
    Ok(f)
}

/// The power figures of the energy model: the configuration's, or
/// MUSTBUILD_CORE_WATTS and MUSTBUILD_MEMORY_WATTS_PER_GB.
fn energy_model(
    config: &mustbuild_engine::config::Config,
) -> Result<mustbuild_executors::energy::Model, u8> {
    let mut m = config.model;
    if let Some(w) = env_number("MUSTBUILD_CORE_WATTS")? {
        m.core_watts = w;
    }
    if let Some(w) = env_number("MUSTBUILD_MEMORY_WATTS_PER_GB")? {
        m.memory_watts_per_gb = w;
    }
    Ok(m)
}

/// "1.5 MiB".
fn bytes(n: u64) -> String {
    mustbuild_engine::human::bytes(n)
}

/// The options of `mustbuild run`.
#[derive(clap::Args)]
struct RunFlags {
    /// Run only what these need: step names or output paths (relative to the
    /// pipeline's folder).
    targets: Vec<String>,
    /// Override a param: --param bins=40 (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Run this step's derivations even when realised (repeatable).
    #[arg(long, value_name = "STEP")]
    force: Vec<String>,
    /// How many commands run at once [default: the number of cores].
    #[arg(short, long)]
    jobs: Option<usize>,
    /// The store [default: $MUSTBUILD_STORE, else $XDG_CACHE_HOME/mustbuild/store,
    /// else ~/.cache/mustbuild/store].
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Go on with everything that does not depend on a failed step.
    #[arg(long)]
    keep_going: bool,
    /// Run local steps unsandboxed. By default each runs in a sandbox
    /// (Landlock): it may read its inputs, the system's folders and what its
    /// PATH names, write only its own folder, and use no network, so that an
    /// undeclared read or write fails instead of being cached.
    #[arg(long, conflicts_with = "require_sandbox")]
    no_sandbox: bool,
    /// Fail where this kernel cannot sandbox steps (no Landlock), rather than
    /// warn and run them unsandboxed.
    #[arg(long)]
    require_sandbox: bool,
    /// For each sandboxed step that is refused, find all it needs: it runs
    /// again with each path it was refused allowed, until it succeeds or is
    /// refused nothing new, and a report lists the paths with the line to
    /// add. Nothing such a step makes is stored. Local steps only; add
    /// --force to watch steps already realised.
    #[arg(long, conflicts_with = "no_sandbox")]
    sandbox_report: bool,
    /// Say what would run and why; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object per event on stdout, then a summary object.
    #[arg(long)]
    json: bool,
    /// Where commands run [default: `executor` in mustbuild.kdl, else local]:
    /// `htcondor` submits each step to run as an HTCondor job (from a login
    /// node whose store is on the filesystem the nodes share).
    #[arg(long, value_enum, value_name = "NAME")]
    executor: Option<ExecutorName>,
    #[command(flatten)]
    cache: cache::CacheFlags,
    #[command(flatten)]
    dag: DagFlags,
}

/// What `export dagman` and a DAG node's scripts set (hidden).
#[derive(clap::Args, Default)]
struct DagFlags {
    #[arg(skip)]
    export: Option<PathBuf>,
    /// Prepare this job folder for DAGMan (a node's PRE script).
    #[arg(long, hide = true, value_name = "FOLDER")]
    dag_prepare: Option<PathBuf>,
    /// Store what the job left in this folder (a node's POST script).
    #[arg(long, hide = true, value_name = "FOLDER")]
    dag_finish: Option<PathBuf>,
}

/// `mustbuild dagman-node PHASE DIR NODE`: `mustbuild run` on the node's
/// instance, its job folder as the batch system.
fn dagman_node(phase: dagman::Phase, dir: &Path, node: &str) -> u8 {
    let (export, target, folder) = match dagman::node_run(dir, node) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut args: Vec<std::ffi::OsString> = vec!["mustbuild".into(), "run".into()];
    args.push(export.pipeline.clone().into());
    args.push(target.into());
    args.push("--store".into());
    args.push(export.store.clone().into());
    for (k, v) in &export.params {
        args.push(format!("--param={k}={v}").into());
    }
    args.push(match phase {
        dagman::Phase::Prepare => "--dag-prepare".into(),
        dagman::Phase::Finish => "--dag-finish".into(),
    });
    args.push(folder.into());
    match Cli::try_parse_from(args) {
        Ok(Cli {
            command: Command::Run { pipeline, flags },
            ..
        }) => run_command(&pipeline, flags),
        Ok(_) => exit::USAGE,
        Err(e) => {
            tell!("error: {e}");
            exit::USAGE
        }
    }
}

/// `mustbuild worker SPEC…`: a batch job's steps, on its node, in order.
fn worker(specs: &[PathBuf]) -> u8 {
    let cancel = mustbuild_executors::CancelToken::default();
    // The batch system removes a job with SIGTERM: the step's processes go too.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, cancel.flag());
    }
    let mut code = exit::OK;
    let mut digests = mustbuild_engine::worker::ToolDigests::default();
    for spec in specs {
        // Removed: the steps not started yet are left without a result.
        if cancel.is_cancelled() {
            break;
        }
        if let Err(e) = mustbuild_engine::worker::run(spec, &cancel, &mut digests) {
            tell!("error: {e}");
            code = exit::ENVIRONMENT;
        }
    }
    code
}

/// Where a run's commands run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExecutorName {
    /// This machine.
    Local,
    /// An HTCondor pool, through condor_submit (from a login node).
    Htcondor,
    /// A Slurm cluster, through sbatch job arrays (from a login node).
    Slurm,
}

/// The batch system a run uses: `--executor`, else `executor "…"` in the
/// configuration; `None` for this machine.
fn batch_options(
    flag: Option<ExecutorName>,
    config: Option<&mustbuild_engine::config::ExecutorConfig>,
    pipeline: &str,
    dag: &DagFlags,
) -> Result<Option<mustbuild_engine::run::Batch>, u8> {
    use mustbuild_engine::run::{Batch, System};
    let node = match (&dag.dag_prepare, &dag.dag_finish) {
        (Some(folder), _) => Some(System::DagPrepare {
            folder: folder.clone(),
        }),
        (_, Some(folder)) => Some(System::DagFinish {
            folder: folder.clone(),
        }),
        _ => None,
    };
    if let Some(system) = node {
        return Ok(Some(Batch {
            system,
            max_queued: 1,
            program: PathBuf::new(),
        }));
    }
    let name = match flag {
        Some(ExecutorName::Local) => return Ok(None),
        Some(ExecutorName::Htcondor) => "htcondor",
        Some(ExecutorName::Slurm) => "slurm",
        None => config.map_or("local", |c| c.name.as_str()),
    };
    if name == "local" {
        return Ok(None);
    }
    // Settings apply to the executor they were written for.
    let c = config.filter(|c| c.name == name);
    let max_queued = c.and_then(|c| c.max_queued).unwrap_or(2000);
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            tell!("error: cannot tell where this mustbuild is, for the jobs to run it: {e}");
            return Err(exit::ENVIRONMENT);
        }
    };
    if name == "slurm" {
        let mut settings = mustbuild_executors::slurm::Settings {
            job_name: format!("mustbuild-{pipeline}"),
            ..Default::default()
        };
        if let Some(c) = c {
            settings.bin = c.bin.clone();
            settings.partition = c.partition.clone();
            settings.account = c.account.clone();
            settings.qos = c.qos.clone();
            settings.constraint = c.constraint.clone();
            settings.extra = c.sbatch.clone();
        }
        return Ok(Some(Batch {
            system: System::Slurm(settings),
            max_queued,
            program,
        }));
    }
    let mut settings = mustbuild_executors::htcondor::Settings {
        batch_name: format!("mustbuild {pipeline}"),
        ..Default::default()
    };
    if let Some(c) = c {
        settings.bin = c.bin.clone();
        settings.accounting_group = c.accounting_group.clone();
        settings.requirements = c.requirements.clone();
        settings.extra = c.submit.clone();
        if let Some(t) = c.held_timeout_s {
            settings.held_timeout = std::time::Duration::from_secs(t);
        }
    }
    Ok(Some(Batch {
        system: System::HtCondor(settings),
        max_queued,
        program,
    }))
}

/// This machine's memory, from /proc/meminfo.
fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run_command(path: &Path, flags: RunFlags) -> u8 {
    use mustbuild_engine::run::RunOptions;
    let RunFlags {
        targets,
        params,
        force,
        jobs,
        store,
        keep_going,
        no_sandbox,
        require_sandbox,
        sandbox_report,
        dry_run,
        json,
        executor,
        cache: cache_flags,
        dag,
    } = flags;
    // An export plans as a dry run does.
    let dry_run = dry_run || dag.export.is_some();
    let mut overrides: Vec<(String, String)> = Vec::new();
    for p in &params {
        match p.split_once('=') {
            Some((k, v)) => overrides.push((k.trim().to_string(), v.to_string())),
            None => {
                tell!("error: `--param {p}` needs NAME=VALUE");
                return exit::USAGE;
            }
        }
    }
    let path_var =
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string());
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let store_root = store.unwrap_or_else(LocalStore::default_location);
    let wall = std::time::Instant::now();
    let noop_request = mustbuild_engine::noop::Request {
        pipeline: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        // As the loader takes it: the folder of the path as given.
        root: std::path::absolute(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .unwrap_or_default(),
        overrides: overrides.clone(),
        path_var: path_var.clone(),
        ..Default::default()
    };
    // A rerun that changes nothing is told from the last complete run's record,
    // without computing keys (engine::noop); MUSTBUILD_NO_NOOP_RECORD=1 turns
    // that off (to measure the full path).
    let may_be_noop = !dry_run
        && targets.is_empty()
        && force.is_empty()
        && std::env::var_os("MUSTBUILD_NO_NOOP_RECORD").is_none();
    let info = mustbuild_engine::provenance::RunInfo {
        overrides: overrides.clone(),
        targets: targets.clone(),
        forced: force.clone(),
        jobs,
        ..mustbuild_engine::provenance::RunInfo::here(&noop_request.pipeline)
    };
    // Configuration is read (and a mistake in it told) whether or not the run is a no-op.
    let folder = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    let config = match config(folder) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let energy_model = match energy_model(&config) {
        Ok(m) => m,
        Err(code) => return code,
    };
    if let Err(code) = cache::check_flags(&cache_flags, &config.cache) {
        return code;
    }
    let said = if may_be_noop && let Ok(store) = LocalStore::open(&store_root) {
        let noop_info = mustbuild_engine::provenance::RunInfo {
            noop: true,
            ..info.clone()
        };
        mustbuild_engine::noop::check(&store, &noop_request, Some(&noop_info.to_json()))
            .unwrap_or(mustbuild_engine::noop::Check::None)
    } else {
        mustbuild_engine::noop::Check::None
    };
    let prior = match said {
        mustbuild_engine::noop::Check::Partial(prior) => Some(prior),
        mustbuild_engine::noop::Check::None => None,
        mustbuild_engine::noop::Check::NoOp(noop) => {
            let total = noop.instances.len();
            // Every instance is cached: their lines go out in one write (a no-op
            // over 100,000 instances would otherwise make 100,000 calls).
            let live = !json && progress::stderr_is_live();
            if !live {
                let text = cached_lines(&noop.instances, json);
                let _ = if json {
                    std::io::stdout().lock().write_all(text.as_bytes())
                } else {
                    std::io::stderr().lock().write_all(text.as_bytes())
                };
            }
            return report_run(json, total, jobs, wall, None, false, |_| {
                Ok(mustbuild_engine::run::RunSummary {
                    cached: total,
                    session: noop.session,
                    from_noop_record: true,
                    ..Default::default()
                })
            });
        }
    };
    // Opened only now: a no-op needs no cache (opening one costs milliseconds).
    let cache = match cache::for_run(&cache_flags, &config.cache) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (loaded, expansion, diags) = load_and_expand_with(path, &overrides);
    let (Some(wf), Some(expansion)) = (&loaded.workflow, &expansion) else {
        print_diagnostics(&loaded, &diags);
        tell!("{}: {}", path.display(), count_summary(&diags));
        return exit::INVALID;
    };
    if diags.iter().any(Diagnostic::is_error) {
        print_diagnostics(&loaded, &diags);
        tell!("{}: {}", path.display(), count_summary(&diags));
        return exit::INVALID;
    }
    let store = match LocalStore::open(&store_root) {
        Ok(s) => s,
        Err(e) => {
            tell!(
                "error: cannot open the store at {}: {e}",
                store_root.display()
            );
            return exit::ENVIRONMENT;
        }
    };
    let instances = mustbuild_engine::instantiate(wf, expansion);
    let selected = match select_targets(wf, &instances, &targets) {
        Ok(s) => s,
        Err(message) => {
            tell!("error: {message}");
            return exit::INVALID;
        }
    };
    let mut forced = Vec::new();
    for name in &force {
        match wf.step_by_name(name) {
            Some(id) => forced.push(id),
            None => {
                let hint = mustbuild_lang::names::did_you_mean(
                    name,
                    wf.steps.iter().map(|s| s.name.as_str()),
                );
                tell!(
                    "error: --force names no step `{name}`{}",
                    hint.map(|h| format!("; {h}")).unwrap_or_default()
                );
                return exit::INVALID;
            }
        }
    }
    if dry_run {
        use mustbuild_engine::plan::{Plan, plan};
        return match plan(
            wf,
            &instances,
            &store,
            &path_var,
            selected.as_deref(),
            &forced,
        ) {
            Ok(items) if dag.export.is_some() => {
                let settings = match batch_options(
                    Some(ExecutorName::Htcondor),
                    config.executor.as_ref(),
                    &wf.name,
                    &DagFlags::default(),
                ) {
                    Ok(Some(mustbuild_engine::run::Batch {
                        system: mustbuild_engine::run::System::HtCondor(s),
                        ..
                    })) => s,
                    Ok(_) => Default::default(),
                    Err(code) => return code,
                };
                let dir = dag.export.as_deref().unwrap_or(Path::new("."));
                dagman::export(
                    dir,
                    dagman::Planned {
                        wf,
                        instances: &instances,
                        store: &store,
                        items: &items,
                        pipeline: path,
                        store_root: &store_root,
                        params: &overrides,
                        settings: &settings,
                    },
                )
            }
            Ok(items) => {
                let (mut run, mut cached, mut after) = (0, 0, 0);
                for (id, p) in &items {
                    let inst = instances.get(*id);
                    let name = progress::label(&wf.step(inst.step).name, &inst.values);
                    let (status, why) = match p {
                        Plan::Cached => {
                            cached += 1;
                            ("cached", Vec::new())
                        }
                        Plan::Run(reasons) => {
                            run += 1;
                            ("run", reasons.clone())
                        }
                        Plan::After(steps) => {
                            after += 1;
                            (
                                "after",
                                steps.iter().map(|s| format!("after `{s}` runs")).collect(),
                            )
                        }
                    };
                    if json {
                        outln!(
                            "{}",
                            serde_json::json!({"event": "plan", "status": status, "step": wf.step(inst.step).name.as_str(), "values": inst.values, "why": why})
                        );
                    } else if status != "cached" {
                        outln!("{status:<7} {name}: {}", why.join(", "));
                    }
                }
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({"event": "summary", "dry_run": true, "run": run, "cached": cached, "after": after})
                    );
                } else {
                    outln!(
                        "would run {run}, cached {cached}, decided after an upstream runs {after}"
                    );
                }
                exit::OK
            }
            Err(e) => {
                tell!("error: {e}");
                exit::ENVIRONMENT
            }
        };
    }
    let cancel = mustbuild_executors::CancelToken::default();
    // Ctrl-C and SIGTERM stop the run: commands are killed, the store stays
    // consistent, and the next run resumes.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, cancel.flag());
    }
    // What the status line counts to: every instance a run processes ends as one of
    // cached, executed, failed or skipped.
    let total = selected.as_ref().map_or(instances.all.len(), |s| {
        s.iter().filter(|&&keep| keep).count()
    });
    let noop = selected.is_none().then(|| mustbuild_engine::noop::Request {
        pipeline_files: loaded.v1_files.is_empty().then(|| {
            loaded
                .sources
                .files()
                .map(|(_, f)| {
                    let file = std::path::absolute(&f.path).unwrap_or_else(|_| f.path.clone());
                    (file, mustbuild_store::Digest::of(f.text.as_bytes()))
                })
                .collect()
        }),
        glob_files: expansion.glob_files.clone(),
        ..noop_request
    });
    let batch = match batch_options(executor, config.executor.as_ref(), &wf.name, &dag) {
        Ok(b) => b,
        Err(code) => return code,
    };
    // Where the kernel cannot sandbox, said once: the steps run unsandboxed
    // (or, when required, not at all).
    if sandbox_report && batch.is_some() {
        tell!("error: --sandbox-report watches steps on this machine only");
        tell!(
            "  help: run it without --executor (or with --executor local) to find what steps need"
        );
        return exit::USAGE;
    }
    let sandbox = !no_sandbox
        && !dry_run
        && match mustbuild_executors::sandbox::support() {
            Ok(()) => true,
            Err(why) if require_sandbox => {
                tell!("error: steps cannot be sandboxed: {why}");
                tell!("  help: run on a kernel with Landlock, or without --require-sandbox");
                return exit::ENVIRONMENT;
            }
            Err(why) => {
                tell!("warning: steps run unsandboxed: {why} (--no-sandbox says it is meant)");
                if sandbox_report {
                    tell!("warning: --sandbox-report has no sandbox to report on here");
                }
                false
            }
        };
    let options = RunOptions {
        jobs,
        memory_bytes: total_memory(),
        path_var,
        keep_going,
        sandbox,
        sandbox_report: sandbox && sandbox_report && !dry_run,
        require_sandbox,
        cancel: cancel.clone(),
        selected,
        force: forced,
        // Only asked for when a step wants GPUs: NVML takes a moment to load.
        gpus: if wf.steps.iter().any(|s| s.resources.gpus > 0) {
            mustbuild_executors::gpus::detect().0
        } else {
            Vec::new()
        },
        noop,
        prior,
        info: Some(mustbuild_engine::provenance::RunInfo {
            files: loaded
                .sources
                .files()
                .map(|(_, f)| {
                    let file = std::path::absolute(&f.path).unwrap_or_else(|_| f.path.clone());
                    let digest = mustbuild_store::Digest::of(f.text.as_bytes());
                    (file.to_string_lossy().into_owned(), digest.to_hex())
                })
                .collect(),
            params: wf
                .params
                .iter()
                .map(|p| (p.name.to_string(), p.value.clone()))
                .collect(),
            ..info
        }),
        energy_model,
        cache,
        batch,
    };
    let pre_skip = dag.dag_prepare.is_some();
    report_run(
        json,
        total,
        jobs,
        wall,
        Some(&cancel),
        pre_skip,
        |on_event| mustbuild_engine::run::run(wf, &instances, &store, &options, on_event),
    )
}

/// The `cached` event of each instance, as `--json` lines or as plain lines.
fn cached_lines(instances: &[(String, Vec<String>)], json: bool) -> String {
    let mut text = String::with_capacity(instances.len() * 64);
    for (step, values) in instances {
        if json {
            // As `serde_json::json!` writes it (keys sorted), without building a map.
            text.push_str(r#"{"event":"cached","step":"#);
            text.push_str(&serde_json::Value::from(step.as_str()).to_string());
            text.push_str(r#","values":"#);
            text.push_str(&serde_json::Value::from(values.clone()).to_string());
            text.push_str("}\n");
        } else {
            text.push_str("cached   ");
            text.push_str(&progress::label(step, values));
            text.push('\n');
        }
    }
    text
}

/// Reports a run's events as they come (JSON lines, a live line or plain lines)
/// and its summary; the exit code.
fn report_run(
    json: bool,
    total: usize,
    jobs: usize,
    wall: std::time::Instant,
    cancel: Option<&mustbuild_executors::CancelToken>,
    // A DAGMan node's PRE script: a realised instance is told by PRE_SKIP.
    pre_skip: bool,
    run: impl FnOnce(
        &mut dyn FnMut(mustbuild_engine::run::Event),
    ) -> Result<mustbuild_engine::run::RunSummary, mustbuild_engine::run::RunError>,
) -> u8 {
    use mustbuild_engine::run::Event;
    let mut people = progress::Reporter::new(!json && progress::stderr_is_live(), total, jobs);
    let mut on_event = |e: Event| {
        if json {
            let v = match &e {
                Event::Warning { message } => {
                    serde_json::json!({"event": "warning", "message": message})
                }
                Event::Cached { step, values } => {
                    serde_json::json!({"event": "cached", "step": step, "values": values})
                }
                Event::Started { step, values } => {
                    serde_json::json!({"event": "started", "step": step, "values": values})
                }
                Event::Executed {
                    step,
                    values,
                    seconds,
                    cpu_seconds,
                    energy_joules,
                } => {
                    serde_json::json!({"event": "executed", "step": step, "values": values, "seconds": seconds,
                        "cpu_seconds": cpu_seconds, "energy_joules": energy_joules})
                }
                Event::Failed {
                    step,
                    values,
                    outcome,
                    log_tail,
                } => serde_json::json!({
                    "event": "failed", "step": step, "values": values, "outcome": format!("{outcome:?}"), "log_tail": log_tail
                }),
                Event::Retrying {
                    step,
                    values,
                    attempt,
                    why,
                } => {
                    serde_json::json!({"event": "retrying", "step": step, "values": values, "attempt": attempt, "why": why})
                }
                Event::Replaced { path, backup } => {
                    serde_json::json!({"event": "replaced", "path": path, "backup": backup})
                }
                Event::Skipped { step, values } => {
                    serde_json::json!({"event": "skipped", "step": step, "values": values})
                }
            };
            outln!("{v}");
            return;
        }
        people.event(&e);
    };
    let result = run(&mut on_event);
    people.finish();
    match result {
        Ok(s) => {
            if json {
                let summary = serde_json::json!({"event": "summary", "executed": s.executed, "cached": s.cached,
                    "failed": s.failed, "cancelled": s.cancelled, "skipped": s.skipped, "run_id": s.session,
                    "wall_seconds": wall.elapsed().as_secs_f64(), "cpu_seconds": s.cpu_seconds,
                    "energy_joules": s.energy_joules,
                    "noop_record": s.from_noop_record, "unexpected": s.unexpected,
                    "batch": s.batch_calls.map(|(system, c)| serde_json::json!({
                        "system": system, "submits": c.submits, "queries": c.queries}))});
                outln!("{summary}");
            } else {
                let cancelled = if s.cancelled > 0 {
                    format!(", cancelled {}", s.cancelled)
                } else {
                    String::new()
                };
                outln!(
                    "executed {}, cached {}, failed {}, skipped {}{cancelled} in {:.2} s, {:.2} s CPU, {} (run {}{})",
                    s.executed,
                    s.cached,
                    s.failed,
                    s.skipped,
                    wall.elapsed().as_secs_f64(),
                    s.cpu_seconds,
                    stats::joules(s.energy_joules),
                    s.session,
                    if s.from_noop_record {
                        ", nothing changed"
                    } else {
                        ""
                    }
                );
            }
            if !json && let Some((system, c)) = s.batch_calls {
                outln!(
                    "{system}: {} submission(s), {} queue quer{}",
                    c.submits,
                    c.queries,
                    if c.queries == 1 { "y" } else { "ies" }
                );
            }
            if !json && let Some((first, _)) = s.unexpected.first() {
                let mut what: Vec<&str> = s
                    .unexpected
                    .iter()
                    .flat_map(|(_, c)| c.iter().map(String::as_str))
                    .collect();
                what.sort_unstable();
                what.dedup();
                outln!(
                    "note: {} ran again only because {} changed; `mustbuild why {first}` tells more",
                    render::plural(s.unexpected.len(), "step"),
                    what.join(", ")
                );
            }
            let interrupted = cancel.is_some_and(|c| c.is_cancelled());
            if pre_skip && !interrupted && s.failed == 0 && s.prepared == 0 {
                return dagman::PRE_SKIP;
            }
            exit::of_work(interrupted, s.failed > 0)
        }
        Err(e) => {
            tell!("error: {e}");
            exit::ENVIRONMENT
        }
    }
}

/// The instances the targets need (all without targets): the named steps' instances,
/// or the instance writing a named output path, with everything they read from.
fn select_targets(
    wf: &mustbuild_lang::Workflow,
    instances: &mustbuild_engine::Instances,
    targets: &[String],
) -> Result<Option<Vec<bool>>, String> {
    if targets.is_empty() {
        return Ok(None);
    }
    let mut keep = vec![false; instances.all.len()];
    let mut stack: Vec<usize> = Vec::new();
    for t in targets {
        let before = stack.len();
        if let Some(step) = wf.step_by_name(t) {
            stack.extend(instances.of_step(step).map(|i| i.index()));
        } else {
            let wanted = t.trim_start_matches("./").trim_end_matches('/');
            stack.extend(
                instances
                    .all
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| i.outputs.iter().any(|o| o == wanted))
                    .map(|(i, _)| i),
            );
        }
        if stack.len() == before {
            let hint =
                mustbuild_lang::names::did_you_mean(t, wf.steps.iter().map(|s| s.name.as_str()));
            return Err(format!(
                "target `{t}` is neither a step nor an output path{}",
                hint.map(|h| format!("; {h}")).unwrap_or_default()
            ));
        }
    }
    while let Some(i) = stack.pop() {
        if !keep[i] {
            keep[i] = true;
            stack.extend(instances.all[i].deps.iter().map(|d| d.index()));
        }
    }
    Ok(Some(keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_lines_are_the_events_a_run_prints() {
        let instances = vec![
            ("a".to_string(), vec![]),
            (
                "b \"q\"".to_string(),
                vec!["x".to_string(), "ü\t".to_string()],
            ),
        ];
        let json: Vec<String> = instances
            .iter()
            .map(|(step, values)| {
                serde_json::json!({"event": "cached", "step": step, "values": values}).to_string()
            })
            .collect();
        assert_eq!(cached_lines(&instances, true), json.join("\n") + "\n");
        assert_eq!(
            cached_lines(&instances, false),
            "cached   a\ncached   b \"q\" (x, ü\t)\n"
        );
    }
}
