//! `mustbuild stats`: what a run's steps cost, laid out for people, as JSON or
//! as CSV. The figures come from `mustbuild_engine::stats`.

use crate::exit;
pub use mustbuild_engine::human::joules;
use mustbuild_engine::human::secs;
use mustbuild_engine::stats::{self, Footprint, RunCosts};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// One line per step of the run.
    Step,
    /// One line per run of the pipeline, newest first.
    Run,
}

#[derive(clap::Args)]
pub struct StatsArgs {
    /// The run [default: the latest].
    #[arg(long, value_name = "ID")]
    pub run: Option<i64>,
    #[arg(long, value_enum, default_value_t = By::Step)]
    pub by: By,
    /// With `--by run`: how many runs.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
    /// What each step should ask a batch system for (the 95th percentile of
    /// its peaks and wall times over the pipeline's last runs, with a margin),
    /// and the declarations far from use.
    #[arg(long, conflicts_with_all = ["by", "csv"])]
    pub advice: bool,
    /// Print CSV on stdout (one row per line of the table).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    #[command(flatten)]
    pub common: crate::provenance::Common,
}

/// How energy becomes CO2e for the pipeline of `run`: the configuration beside
/// it (and the user's), or the environment's figures.
fn footprint_of(store: &mustbuild_store::LocalStore, run: Option<i64>) -> Result<Footprint, u8> {
    let file = stats::pipeline_of(store, run)
        .ok()
        .flatten()
        .map(|(_, file)| file)
        .unwrap_or_default();
    let folder = std::path::Path::new(&file)
        .parent()
        .filter(|_| !file.is_empty());
    crate::footprint(folder)
}

pub fn stats(args: StatsArgs) -> u8 {
    let store = match crate::provenance::open(args.common.store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let footprint = match footprint_of(&store, args.run) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if args.advice {
        return advice(&store, args.run, args.common.json);
    }
    let runs = match args.by {
        By::Step => stats::run_costs(&store, args.run, footprint).map(|c| c.into_iter().collect()),
        By::Run => stats::history(&store, args.run, args.limit, footprint),
    };
    let runs: Vec<RunCosts> = match runs {
        Ok(r) => r,
        Err(e) => {
            tell!("error: {e}");
            return exit::ENVIRONMENT;
        }
    };
    if runs.is_empty() {
        return no_run(args.run);
    }
    let text = match (args.by, args.common.json, args.csv) {
        (By::Step, true, _) => json(&runs[0]),
        (By::Run, true, _) => json(&runs),
        (By::Step, _, true) => steps_csv(&runs[0]),
        (By::Run, _, true) => runs_csv(&runs),
        (By::Step, _, _) => steps_table(&runs[0]),
        (By::Run, _, _) => runs_table(&runs),
    };
    out!("{text}");
    exit::OK
}

fn json<T: serde::Serialize>(value: &T) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

/// "0.0123 g", "4.5 kg": grams of CO2e.
fn grams(g: f64) -> String {
    if g >= 1e3 {
        format!("{:.2} kg", g / 1e3)
    } else if g >= 1.0 {
        format!("{g:.1} g")
    } else {
        format!("{g:.4} g")
    }
}

/// The methods that gave a step's energy: "modelled", "measured (rapl) ×3, modelled ×1".
fn methods(m: &std::collections::BTreeMap<String, u64>) -> String {
    match m.len() {
        0 => "-".to_string(),
        1 => m.keys().next().cloned().unwrap_or_default(),
        _ => m
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn steps_table(c: &RunCosts) -> String {
    let t = &c.totals;
    let mut out = String::new();
    let _ = write!(
        out,
        "run {} of {}: {} executed, {} reused",
        c.run, c.pipeline, t.executions, t.reused
    );
    if let Some(r) = t.hit_ratio {
        let _ = write!(out, " ({:.0}% from the cache)", r * 100.0);
    }
    if let Some(of) = c.same_as_run {
        let _ = write!(out, "; a no-op repeating run {of}");
    }
    out.push('\n');
    let header = [
        "STEP", "RAN", "REUSED", "WALL", "MAX", "CPU", "PEAK MEM", "READ", "WRITTEN", "ENERGY",
        "METHOD",
    ];
    let rows: Vec<[String; 11]> = c
        .steps
        .iter()
        .map(|s| {
            let ran = s.executions > 0;
            let dash = || "-".to_string();
            [
                s.step.clone(),
                s.executions.to_string(),
                s.reused.to_string(),
                if ran { secs(s.wall_mean_s) } else { dash() },
                if ran { secs(s.wall_max_s) } else { dash() },
                if ran { secs(s.cpu_mean_s) } else { dash() },
                match (ran, s.peak_memory_upper_bounds == s.executions) {
                    (false, _) => dash(),
                    // Every figure is an upper bound (see `stats` --help).
                    (true, true) => format!("≤{}", crate::bytes(s.peak_memory_max_bytes)),
                    (true, false) => crate::bytes(s.peak_memory_max_bytes),
                },
                if ran {
                    crate::bytes(s.read_bytes)
                } else {
                    dash()
                },
                if ran {
                    crate::bytes(s.written_bytes)
                } else {
                    dash()
                },
                if ran { joules(s.energy_joules) } else { dash() },
                methods(&s.energy_methods),
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::from(" ");
        for (i, (cell, w)) in cells.iter().zip(&width).enumerate() {
            // Names and the method to the left, figures to the right.
            if i == 0 || i == cells.len() - 1 {
                let _ = write!(l, " {cell:<w$}");
            } else {
                let _ = write!(l, " {cell:>w$}");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_string)));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    let f = &c.footprint;
    let _ = writeln!(
        out,
        "total: {} of steps, {} CPU, {} read, {} written, {} ({} CO2e at PUE {}, {} gCO2e/kWh)",
        secs(t.wall_s),
        secs(t.cpu_s),
        crate::bytes(t.read_bytes),
        crate::bytes(t.written_bytes),
        joules(t.energy_joules),
        grams(t.co2e_grams),
        f.pue,
        f.carbon_intensity
    );
    if t.reused > 0 {
        let unknown: u64 = c.steps.iter().map(|s| s.avoided_unknown).sum();
        let _ = write!(
            out,
            "the cache avoided: {} of steps, {} ({} CO2e)",
            secs(t.avoided_wall_s),
            joules(t.avoided_energy_joules),
            grams(t.avoided_co2e_grams)
        );
        if unknown > 0 {
            let _ = write!(
                out,
                "; {unknown} reused results' costs are no longer recorded"
            );
        }
        out.push('\n');
    }
    if !t.fetched_from.is_empty() {
        let from: Vec<String> = t
            .fetched_from
            .iter()
            .map(|(cache, n)| format!("{n} from {cache}"))
            .collect();
        let _ = writeln!(
            out,
            "fetched from remote caches (made elsewhere, so their cost is not recorded here): {}",
            from.join(", ")
        );
    }
    out
}

/// A CSV field, quoted when it must be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn steps_csv(c: &RunCosts) -> String {
    let mut out = String::from(
        "run,step,executions,failed,reused,wall_mean_s,wall_max_s,cpu_mean_s,cpu_max_s,\
         peak_memory_max_bytes,peak_memory_mean_bytes,read_bytes,written_bytes,energy_joules,\
         energy_method,avoided_wall_s,avoided_energy_joules\n",
    );
    for s in &c.steps {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{:.3},{},{:.3},{:.3}",
            c.run,
            field(&s.step),
            s.executions,
            s.failed,
            s.reused,
            s.wall_mean_s,
            s.wall_max_s,
            s.cpu_mean_s,
            s.cpu_max_s,
            s.peak_memory_max_bytes,
            s.peak_memory_mean_bytes,
            s.read_bytes,
            s.written_bytes,
            s.energy_joules,
            field(&methods(&s.energy_methods)),
            s.avoided_wall_s,
            s.avoided_energy_joules
        );
    }
    out
}

fn runs_table(runs: &[RunCosts]) -> String {
    let mut out = format!(
        "{:>5}  {:>6}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}\n",
        "RUN", "RAN", "CACHED", "STEPS", "CPU", "ENERGY", "CO2E", "AVOIDED"
    );
    for c in runs {
        let t = &c.totals;
        let _ = writeln!(
            out,
            "{:>5}  {:>6}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}",
            c.run,
            t.executions,
            t.reused,
            secs(t.wall_s),
            secs(t.cpu_s),
            joules(t.energy_joules),
            grams(t.co2e_grams),
            joules(t.avoided_energy_joules)
        );
    }
    out
}

fn runs_csv(runs: &[RunCosts]) -> String {
    let mut out = String::from(
        "run,pipeline,executions,failed,reused,wall_s,cpu_s,read_bytes,written_bytes,\
         energy_joules,co2e_grams,avoided_wall_s,avoided_energy_joules\n",
    );
    for c in runs {
        let t = &c.totals;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.3},{:.3},{},{},{:.3},{:.6},{:.3},{:.3}",
            c.run,
            field(&c.pipeline),
            t.executions,
            t.failed,
            t.reused,
            t.wall_s,
            t.cpu_s,
            t.read_bytes,
            t.written_bytes,
            t.energy_joules,
            t.co2e_grams,
            t.avoided_wall_s,
            t.avoided_energy_joules
        );
    }
    out
}

/// Each step's declared resources, from the pipeline file (as it is now).
fn declared(file: &str) -> BTreeMap<String, mustbuild_lang::model::Resources> {
    if file.is_empty() {
        return BTreeMap::new();
    }
    let loaded = mustbuild_lang::load(std::path::Path::new(file));
    loaded
        .workflow
        .map(|wf| {
            wf.steps
                .iter()
                .map(|s| (s.name.to_string(), s.resources.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn advice(store: &mustbuild_store::LocalStore, run: Option<i64>, json: bool) -> u8 {
    let pipeline = match stats::pipeline_of(store, run) {
        Ok(Some(p)) => p,
        Ok(None) => return no_run(run),
        Err(e) => {
            tell!("error: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let (name, file) = pipeline;
    let declared = declared(&file);
    let advice = match mustbuild_engine::advice::for_pipeline(store, &name, &declared) {
        Ok(a) => a,
        Err(e) => {
            tell!("error: {e}");
            return exit::ENVIRONMENT;
        }
    };
    if json {
        out!("{}", self::json(&advice));
        return exit::OK;
    }
    let mut out = format!(
        "what to ask for, from the last {} runs of {} (p95 × {} memory, × {} time)\n",
        mustbuild_engine::advice::HISTORY_RUNS,
        if file.is_empty() { &name } else { &file },
        mustbuild_engine::advice::MEMORY_MARGIN,
        mustbuild_engine::advice::TIME_MARGIN
    );
    let _ = writeln!(
        out,
        "  {:<20} {:>7} {:>11} {:>11} {:>9} {:>9} {:>5}",
        "STEP", "SAMPLES", "MEMORY p95", "ASK", "TIME p95", "ASK", "CPUS"
    );
    for a in &advice {
        let bound = if a.memory_bounded { "≤" } else { "" };
        let _ = writeln!(
            out,
            "  {:<20} {:>7} {:>11} {:>11} {:>9} {:>9} {:>5}",
            a.step,
            a.samples,
            format!("{bound}{}", crate::bytes(a.memory_p95_bytes)),
            crate::bytes(a.request_memory_bytes),
            secs(a.wall_p95_s),
            secs(a.request_time_s as f64),
            a.request_cpus
        );
        if let Some(line) = &a.memory_line {
            let _ = writeln!(
                out,
                "    memory follows input size: {} + {:.2} × input (R² {:.2}, {} runs): \
                 each instance asks for its own",
                crate::bytes(line.base_bytes.max(0.0) as u64),
                line.per_input_byte,
                line.r2,
                line.samples
            );
        }
        for w in &a.warnings {
            let _ = writeln!(out, "    warning: {} {w}", a.step);
        }
    }
    if advice.is_empty() {
        out.push_str("  (no successful execution recorded yet)\n");
    }
    out!("{out}");
    exit::OK
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The run [default: the latest].
    #[arg(long, value_name = "ID")]
    pub run: Option<i64>,
    /// The HTML file to write.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: std::path::PathBuf,
    /// The store [default: $MUSTBUILD_STORE, else $XDG_CACHE_HOME/mustbuild/store,
    /// else ~/.cache/mustbuild/store].
    #[arg(long, value_name = "PATH")]
    pub store: Option<std::path::PathBuf>,
}

/// Each step and the steps it reads, from the pipeline file (as it is now).
fn step_graph(file: &str) -> Option<Vec<(String, Vec<String>)>> {
    if file.is_empty() {
        return None;
    }
    let wf = mustbuild_lang::load(std::path::Path::new(file)).workflow?;
    Some(
        wf.steps
            .iter()
            .map(|s| {
                let deps = s
                    .deps
                    .iter()
                    .map(|d| wf.step(*d).name.to_string())
                    .collect();
                (s.name.to_string(), deps)
            })
            .collect(),
    )
}

pub fn report(args: ReportArgs) -> u8 {
    let store = match crate::provenance::open(args.store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let footprint = match footprint_of(&store, args.run) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let found = (|| -> Result<_, mustbuild_store::StoreError> {
        let Some(costs) = stats::run_costs(&store, args.run, footprint)? else {
            return Ok(None);
        };
        let session = store.session(costs.run)?;
        let runs = match costs.same_as_run {
            Some(_) => Vec::new(),
            None => store.runs_in(costs.run)?,
        };
        let (_, file) = stats::pipeline_of(&store, Some(costs.run))?.unwrap_or_default();
        Ok(Some((costs, session, runs, file)))
    })();
    let (costs, session, runs, file) = match found {
        Ok(Some(f)) => f,
        Ok(None) => {
            return no_run(args.run);
        }
        Err(e) => {
            tell!("error: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let input = mustbuild_engine::report::ReportInput {
        costs: &costs,
        runs: &runs,
        graph: step_graph(&file),
        started: session
            .as_ref()
            .map(|s| crate::provenance::utc(s.started_ms))
            .unwrap_or_default(),
        wall_s: session
            .as_ref()
            .and_then(|s| s.finished_ms.map(|f| (f - s.started_ms) as f64 / 1e3)),
    };
    let html = mustbuild_engine::report::render(&input);
    if let Err(e) = crate::write_atomically(&args.output, &html) {
        tell!("error: cannot write {}: {e}", args.output.display());
        return exit::ENVIRONMENT;
    }
    tell!(
        "wrote {} (run {}, {} executions)",
        args.output.display(),
        costs.run,
        runs.len()
    );
    exit::OK
}

/// Tells that the store has no such run (or none yet).
pub fn no_run(run: Option<i64>) -> u8 {
    match run {
        Some(id) => tell!("error: the store has no run {id}"),
        None => tell!("error: the store has no run yet"),
    }
    exit::INVALID
}
