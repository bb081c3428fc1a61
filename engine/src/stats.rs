//! `mustbuild stats`: what a run's steps cost (executions, wall, CPU, peak
//! memory, I/O, energy with its methods), what its cache hits avoided (what the
//! reused results cost when they were made), and the same per run over a
//! pipeline's history. Energy becomes CO2e through the facility's PUE and the
//! grid's carbon intensity ([`Footprint`]).

use mustbuild_store::history::RunRow;
use mustbuild_store::{LocalStore, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;

/// How energy at the machine becomes emissions. The defaults: the Green
/// Algorithms calculator's PUE (1.67), and the world's average carbon
/// intensity of electricity in 2019 (475 gCO2e/kWh, IEA).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Footprint {
    pub pue: f64,
    /// gCO2e per kWh.
    pub carbon_intensity: f64,
}

impl Default for Footprint {
    fn default() -> Footprint {
        Footprint {
            pue: 1.67,
            carbon_intensity: 475.0,
        }
    }
}

impl Footprint {
    /// Grams of CO2e for `joules` at the machine.
    pub fn grams(&self, joules: f64) -> f64 {
        joules / 3.6e6 * self.pue * self.carbon_intensity
    }
}

/// One step's costs in a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepCost {
    pub step: String,
    /// Executions recorded (retries included), and how many failed.
    pub executions: u64,
    pub failed: u64,
    /// Instances taken from the cache, and how many of them this run
    /// fetched from a remote cache.
    pub reused: u64,
    pub fetched: u64,
    pub wall_mean_s: f64,
    pub wall_max_s: f64,
    pub cpu_mean_s: f64,
    pub cpu_max_s: f64,
    pub peak_memory_max_bytes: u64,
    pub peak_memory_mean_bytes: u64,
    /// Executions whose peak is only an upper bound (mustbuild's own peak,
    /// which the kernel counts in: see `crate::measure::MEMORY_BOUND`).
    pub peak_memory_upper_bounds: u64,
    /// How many executions' peak memory each method gave.
    pub memory_methods: BTreeMap<String, u64>,
    /// Executions whose command ran sandboxed.
    pub sandboxed: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub energy_joules: f64,
    /// How many executions' energy each method gave.
    pub energy_methods: BTreeMap<String, u64>,
    /// What the reused results cost when they were made (those whose
    /// execution is still recorded; `avoided_unknown` the others).
    pub avoided_wall_s: f64,
    pub avoided_energy_joules: f64,
    pub avoided_unknown: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub executions: u64,
    pub failed: u64,
    pub reused: u64,
    /// Per remote cache, the reused results this run fetched from it.
    pub fetched_from: BTreeMap<String, u64>,
    /// Reused over reused and executed instances.
    pub hit_ratio: Option<f64>,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub energy_joules: f64,
    pub co2e_grams: f64,
    pub avoided_wall_s: f64,
    pub avoided_energy_joules: f64,
    pub avoided_co2e_grams: f64,
}

/// A run's costs, per step and in total.
#[derive(Debug, Clone, Serialize)]
pub struct RunCosts {
    pub run: i64,
    /// A no-op run's figures are those of the run it repeated, all reused.
    pub same_as_run: Option<i64>,
    pub pipeline: String,
    pub steps: Vec<StepCost>,
    pub totals: Totals,
    pub footprint: Footprint,
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1e3
}

fn wall(r: &RunRow) -> f64 {
    seconds(r.finished_ms - r.started_ms)
}

fn cpu(r: &RunRow) -> f64 {
    seconds(r.user_cpu_ms.unwrap_or(0) + r.sys_cpu_ms.unwrap_or(0))
}

fn bytes(v: Option<i64>) -> u64 {
    v.unwrap_or(0).max(0) as u64
}

/// The latest run, or `run`; `None` when the store has none.
fn session(
    store: &LocalStore,
    run: Option<i64>,
) -> Result<Option<mustbuild_store::history::SessionRow>, StoreError> {
    Ok(match run {
        Some(id) => store.session(id)?,
        None => store.sessions(1)?.pop(),
    })
}

/// The pipeline of `run` (default: the latest): its name in the store, and
/// its file as that run recorded it (empty when it did not).
pub fn pipeline_of(
    store: &LocalStore,
    run: Option<i64>,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(session(store, run)?.map(|s| {
        let info = crate::provenance::RunInfo::parse(s.info.as_deref());
        (s.pipeline, info.pipeline_file)
    }))
}

/// The costs of `run` (default: the latest).
pub fn run_costs(
    store: &LocalStore,
    run: Option<i64>,
    footprint: Footprint,
) -> Result<Option<RunCosts>, StoreError> {
    let Some(s) = session(store, run)? else {
        return Ok(None);
    };
    let info = crate::provenance::RunInfo::parse(s.info.as_deref());
    let executions = match s.alias_of {
        Some(_) => Vec::new(),
        None => store.runs_in(s.id)?,
    };
    let mut steps: BTreeMap<String, StepCost> = BTreeMap::new();
    let mut memory_sum: BTreeMap<String, u64> = BTreeMap::new();
    for r in &executions {
        let c = steps.entry(r.step.clone()).or_default();
        c.executions += 1;
        if r.outcome != "succeeded" {
            c.failed += 1;
        }
        c.wall_mean_s += wall(r);
        c.wall_max_s = c.wall_max_s.max(wall(r));
        c.cpu_mean_s += cpu(r);
        c.cpu_max_s = c.cpu_max_s.max(cpu(r));
        let peak = bytes(r.max_rss_bytes);
        c.peak_memory_max_bytes = c.peak_memory_max_bytes.max(peak);
        *memory_sum.entry(r.step.clone()).or_default() += peak;
        if r.memory_method.as_deref() == Some(crate::measure::MEMORY_BOUND) {
            c.peak_memory_upper_bounds += 1;
        }
        if let Some(m) = &r.memory_method {
            *c.memory_methods.entry(m.clone()).or_default() += 1;
        }
        c.sandboxed += u64::from(r.sandboxed == Some(true));
        c.read_bytes += bytes(r.read_bytes);
        c.written_bytes += bytes(r.write_bytes);
        if let (Some(j), Some(m)) = (r.energy_joules, &r.energy_method) {
            c.energy_joules += j;
            *c.energy_methods.entry(m.clone()).or_default() += 1;
        }
    }
    let mut fetched_from: BTreeMap<String, u64> = BTreeMap::new();
    for reuse in store.reused_makers(s.id)? {
        let c = steps.entry(reuse.step).or_default();
        c.reused += 1;
        let fetched = reuse.fetched_from.is_some();
        if let Some(cache) = reuse.fetched_from {
            c.fetched += 1;
            *fetched_from.entry(cache).or_default() += 1;
        }
        match reuse.maker {
            Some(m) => {
                c.avoided_wall_s += wall(&m);
                c.avoided_energy_joules += m.energy_joules.unwrap_or(0.0);
            }
            // Made by another store: its cost was never recorded here.
            None if fetched => {}
            None => c.avoided_unknown += 1,
        }
    }
    let mut totals = Totals {
        fetched_from,
        ..Totals::default()
    };
    let steps: Vec<StepCost> = steps
        .into_iter()
        .map(|(name, mut c)| {
            totals.executions += c.executions;
            totals.failed += c.failed;
            totals.reused += c.reused;
            totals.wall_s += c.wall_mean_s;
            totals.cpu_s += c.cpu_mean_s;
            totals.read_bytes += c.read_bytes;
            totals.written_bytes += c.written_bytes;
            totals.energy_joules += c.energy_joules;
            totals.avoided_wall_s += c.avoided_wall_s;
            totals.avoided_energy_joules += c.avoided_energy_joules;
            if c.executions > 0 {
                let n = c.executions as f64;
                c.wall_mean_s /= n;
                c.cpu_mean_s /= n;
                c.peak_memory_mean_bytes =
                    memory_sum.get(&name).copied().unwrap_or(0) / c.executions;
            }
            c.step = name;
            c
        })
        .collect();
    let instances = totals.reused + totals.executions - totals.failed;
    totals.hit_ratio = (instances > 0).then(|| totals.reused as f64 / instances as f64);
    totals.co2e_grams = footprint.grams(totals.energy_joules);
    totals.avoided_co2e_grams = footprint.grams(totals.avoided_energy_joules);
    Ok(Some(RunCosts {
        run: s.id,
        same_as_run: s.alias_of,
        pipeline: if info.pipeline_file.is_empty() {
            s.pipeline
        } else {
            info.pipeline_file
        },
        steps,
        totals,
        footprint,
    }))
}

/// The costs of the latest `limit` runs of the pipeline of `run` (default:
/// the latest run's), newest first.
pub fn history(
    store: &LocalStore,
    run: Option<i64>,
    limit: usize,
    footprint: Footprint,
) -> Result<Vec<RunCosts>, StoreError> {
    let Some(s) = session(store, run)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    // Sessions of every pipeline, newest first, until `limit` of this one.
    for other in store.sessions(usize::MAX)? {
        if out.len() >= limit {
            break;
        }
        if other.pipeline == s.pipeline
            && other.id <= s.id
            && let Some(c) = run_costs(store, Some(other.id), footprint)?
        {
            out.push(c);
        }
    }
    Ok(out)
}
