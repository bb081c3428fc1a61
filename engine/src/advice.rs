//! What a step should ask a batch system for, from what its executions used:
//! the 95th percentile of its measured peaks and wall times, with a margin,
//! and the steps whose declared resources are far from their use. Memory is
//! sized per instance where history allows: a step whose peaks follow the
//! size of its inputs (a line fits them well) is asked for what its line
//! gives for this instance's inputs, else an instance that ran before for its
//! own p95. The cluster executors take [`sizing`] for steps that declare no
//! memory; `mustbuild stats --advice` shows it all.

use mustbuild_lang::model::Resources;
use mustbuild_store::history::RunRow;
use mustbuild_store::{LocalStore, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Runs of the pipeline whose executions advice is drawn from.
pub const HISTORY_RUNS: usize = 50;
/// Over the 95th percentile: memory × 1.2 (rounded up to 64 MiB), wall × 1.5
/// (rounded up to a minute).
pub const MEMORY_MARGIN: f64 = 1.2;
pub const TIME_MARGIN: f64 = 1.5;
const MEMORY_STEP: u64 = 64 << 20;
/// A declaration this many times what the step uses (p95) is "far above".
pub const FAR_ABOVE: f64 = 4.0;
/// A line of peak memory over input size is used when it explains this much
/// of the peaks' variance, from at least `LINE_SAMPLES` executions whose
/// inputs span a factor of two and 16 MiB.
pub const LINE_R2: f64 = 0.8;
const LINE_SAMPLES: usize = 4;
const LINE_SPAN: u64 = 16 << 20;

/// Peak memory as a line over the bytes of a step's inputs, fitted by least
/// squares to its executions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryLine {
    pub base_bytes: f64,
    pub per_input_byte: f64,
    /// The 95th percentile of how far peaks were above the line.
    pub above_p95_bytes: f64,
    /// The share of the peaks' variance the line explains.
    pub r2: f64,
    pub samples: usize,
}

impl MemoryLine {
    /// Fits `(input bytes, peak bytes)` pairs; `None` unless the inputs vary
    /// enough and the line explains the peaks well (see [`LINE_R2`]).
    pub fn fit(points: &[(u64, u64)]) -> Option<MemoryLine> {
        let (lo, hi) = (
            points.iter().map(|p| p.0).min()?,
            points.iter().map(|p| p.0).max()?,
        );
        if points.len() < LINE_SAMPLES || hi < 2 * lo.max(1) || hi - lo < LINE_SPAN {
            return None;
        }
        let n = points.len() as f64;
        let mean = |f: fn(&(u64, u64)) -> f64| points.iter().map(f).sum::<f64>() / n;
        let (mx, my) = (mean(|p| p.0 as f64), mean(|p| p.1 as f64));
        let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
        let sxy: f64 = (points.iter())
            .map(|p| (p.0 as f64 - mx) * (p.1 as f64 - my))
            .sum();
        let syy: f64 = points.iter().map(|p| (p.1 as f64 - my).powi(2)).sum();
        let slope = sxy / sxx;
        if slope <= 0.0 || syy <= 0.0 {
            return None;
        }
        let r2 = sxy * sxy / (sxx * syy);
        let base = my - slope * mx;
        let mut above: Vec<f64> = (points.iter())
            .map(|p| (p.1 as f64 - (base + slope * p.0 as f64)).max(0.0))
            .collect();
        (r2 >= LINE_R2).then(|| MemoryLine {
            base_bytes: base,
            per_input_byte: slope,
            above_p95_bytes: percentile(&mut above, 95.0),
            r2,
            samples: points.len(),
        })
    }

    /// What an instance whose inputs are `input_bytes` should ask for.
    pub fn request(&self, input_bytes: u64) -> u64 {
        let peak =
            self.base_bytes + self.per_input_byte * input_bytes as f64 + self.above_p95_bytes;
        round_up((peak.max(0.0) * MEMORY_MARGIN) as u64, MEMORY_STEP)
    }
}

/// What one step should ask for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    pub step: String,
    /// Successful executions it is drawn from.
    pub samples: usize,
    pub memory_p95_bytes: u64,
    pub memory_max_bytes: u64,
    /// Whether every peak is only an upper bound (mustbuild's own peak: the
    /// step's was lower; see `crate::measure::MEMORY_BOUND`).
    pub memory_bounded: bool,
    pub wall_p95_s: f64,
    pub wall_max_s: f64,
    /// CPUs it keeps busy (p95 of CPU time over wall time), rounded up.
    pub cpus_used: u32,
    /// What to ask for.
    pub request_memory_bytes: u64,
    pub request_time_s: u64,
    pub request_cpus: u32,
    /// What the pipeline declares, where it does.
    pub declared_memory_bytes: Option<u64>,
    pub declared_time_s: Option<u64>,
    pub declared_cpus: Option<u32>,
    /// Peak memory over input size, where a line fits (see [`MemoryLine`]).
    pub memory_line: Option<MemoryLine>,
    /// Declarations far from use, in words.
    pub warnings: Vec<String>,
}

/// The value at the `p`th percentile (nearest rank) of `values`.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn round_up(value: u64, step: u64) -> u64 {
    value.div_ceil(step).max(1) * step
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// Advice for one step from its executions (any order); `declared`: its
/// resources as the pipeline says, `None` where it says nothing.
pub fn advise(step: &str, runs: &[&RunRow], declared: Option<&Resources>) -> Option<Advice> {
    if runs.is_empty() {
        return None;
    }
    let wall = |r: &RunRow| (r.finished_ms - r.started_ms).max(0) as f64 / 1e3;
    let mut memory: Vec<f64> = runs
        .iter()
        .map(|r| r.max_rss_bytes.unwrap_or(0).max(0) as f64)
        .collect();
    let mut walls: Vec<f64> = runs.iter().map(|r| wall(r)).collect();
    let mut busy: Vec<f64> = runs
        .iter()
        .map(|r| {
            let cpu = (r.user_cpu_ms.unwrap_or(0) + r.sys_cpu_ms.unwrap_or(0)).max(0) as f64 / 1e3;
            if wall(r) > 0.0 { cpu / wall(r) } else { 0.0 }
        })
        .collect();
    let memory_p95 = percentile(&mut memory, 95.0) as u64;
    let memory_max = memory.last().copied().unwrap_or(0.0) as u64;
    let wall_p95 = percentile(&mut walls, 95.0);
    let wall_max = walls.last().copied().unwrap_or(0.0);
    let cpus_used = (percentile(&mut busy, 95.0).ceil() as u32).max(1);
    let request_memory = round_up((memory_p95 as f64 * MEMORY_MARGIN) as u64, MEMORY_STEP);
    let request_time = round_up((wall_p95 * TIME_MARGIN).ceil() as u64, 60);
    let declared_memory = declared.and_then(|d| d.memory_bytes);
    let declared_time = declared.and_then(|d| d.time_seconds);
    let declared_cpus = declared.map(|d| d.cpus);
    let bounded = runs
        .iter()
        .all(|r| r.memory_method.as_deref() == Some(crate::measure::MEMORY_BOUND));
    // The largest peak that is not only an upper bound.
    let exact_max = runs
        .iter()
        .filter(|r| r.memory_method.as_deref() != Some(crate::measure::MEMORY_BOUND))
        .map(|r| r.max_rss_bytes.unwrap_or(0).max(0) as u64)
        .max();
    let mut warnings = Vec::new();
    if let Some(m) = declared_memory {
        if let Some(exact) = exact_max.filter(|&e| m < e) {
            warnings.push(format!(
                "declares memory {} but used up to {}: a batch system would kill it",
                mib(m),
                mib(exact)
            ));
        } else if m as f64 > FAR_ABOVE * memory_p95.max(1) as f64 && m > request_memory {
            warnings.push(format!(
                "declares memory {} but uses {} (p95): ask for {}",
                mib(m),
                mib(memory_p95),
                mib(request_memory)
            ));
        }
    }
    if let Some(t) = declared_time {
        if (t as f64) < wall_max {
            warnings.push(format!(
                "declares time {t} s but took up to {wall_max:.0} s: it would time out"
            ));
        } else if t as f64 > FAR_ABOVE * wall_p95.max(1.0) && t > request_time {
            warnings.push(format!(
                "declares time {t} s but takes {wall_p95:.0} s (p95): ask for {request_time} s"
            ));
        }
    }
    if let Some(c) = declared_cpus
        && c > 1
        && f64::from(c) > FAR_ABOVE * f64::from(cpus_used)
    {
        warnings.push(format!(
            "declares {c} CPUs but keeps {cpus_used} busy (p95)"
        ));
    }
    Some(Advice {
        step: step.to_string(),
        samples: runs.len(),
        memory_p95_bytes: memory_p95,
        memory_max_bytes: memory_max,
        memory_bounded: bounded,
        wall_p95_s: wall_p95,
        wall_max_s: wall_max,
        cpus_used,
        request_memory_bytes: request_memory,
        request_time_s: request_time,
        request_cpus: cpus_used.max(declared_cpus.unwrap_or(1)),
        declared_memory_bytes: declared_memory,
        declared_time_s: declared_time,
        declared_cpus,
        memory_line: MemoryLine::fit(&exact_points(runs)),
        warnings,
    })
}

/// `(input bytes, peak)` of the executions whose peak is exact and whose
/// input size was recorded.
fn exact_points(runs: &[&RunRow]) -> Vec<(u64, u64)> {
    runs.iter()
        .filter(|r| r.memory_method.as_deref() != Some(crate::measure::MEMORY_BOUND))
        .filter_map(|r| Some((r.input_bytes?.max(0) as u64, r.max_rss_bytes?.max(0) as u64)))
        .collect()
}

/// Advice for every step of `pipeline` (a session's pipeline name) that ran
/// in its last [`HISTORY_RUNS`] runs; `declared`: each step's resources.
pub fn for_pipeline(
    store: &LocalStore,
    pipeline: &str,
    declared: &BTreeMap<String, Resources>,
) -> Result<Vec<Advice>, StoreError> {
    let history = store.pipeline_history(pipeline, HISTORY_RUNS)?;
    Ok(by_step(&history)
        .into_iter()
        .filter_map(|(step, runs)| advise(step, &runs, declared.get(step)))
        .collect())
}

/// Executions grouped by step, in step order.
fn by_step(history: &[RunRow]) -> BTreeMap<&str, Vec<&RunRow>> {
    let mut out: BTreeMap<&str, Vec<&RunRow>> = BTreeMap::new();
    for r in history {
        out.entry(&r.step).or_default().push(r);
    }
    out
}

/// What the cluster executors ask for a step that declares no memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    /// For any instance: the step's p95 with a margin.
    pub memory_bytes: u64,
    pub wall_p95_s: f64,
    /// Where peaks follow input size: per instance, from its inputs.
    pub line: Option<MemoryLine>,
    /// Instances that ran before: each one's own p95 with a margin.
    pub instances: HashMap<String, u64>,
}

impl Sizing {
    /// For `instance` (its label) before its input size is known.
    pub fn memory_for(&self, instance: &str) -> u64 {
        self.instances
            .get(instance)
            .copied()
            .unwrap_or(self.memory_bytes)
    }
}

/// Per step of `pipeline` that ran before, what to ask for (see [`Sizing`]).
pub fn sizing(
    store: &LocalStore,
    pipeline: &str,
    declared: &BTreeMap<String, Resources>,
) -> Result<HashMap<String, Sizing>, StoreError> {
    let history = store.pipeline_history(pipeline, HISTORY_RUNS)?;
    let mut out = HashMap::new();
    for (step, runs) in by_step(&history) {
        let Some(a) = advise(step, &runs, declared.get(step)) else {
            continue;
        };
        let mut by_instance: HashMap<&str, Vec<f64>> = HashMap::new();
        for r in &runs {
            if let (Some(i), Some(peak)) = (&r.instance, r.max_rss_bytes) {
                by_instance.entry(i).or_default().push(peak.max(0) as f64);
            }
        }
        let instances = (by_instance.into_iter())
            .map(|(i, mut peaks)| {
                let p95 = percentile(&mut peaks, 95.0);
                (
                    i.to_string(),
                    round_up((p95 * MEMORY_MARGIN) as u64, MEMORY_STEP),
                )
            })
            .collect();
        let sizing = Sizing {
            memory_bytes: a.request_memory_bytes,
            wall_p95_s: a.wall_p95_s,
            line: a.memory_line,
            instances,
        };
        out.insert(step.to_string(), sizing);
    }
    Ok(out)
}

/// An execution for tests: its wall time, peak and CPU time.
#[cfg(test)]
pub(crate) fn test_run(wall_ms: i64, rss: i64, cpu_ms: i64) -> RunRow {
    RunRow {
        id: 1,
        session: Some(1),
        key: mustbuild_store::Digest::of(b"k"),
        step: "s".into(),
        instance: None,
        host: "h".into(),
        started_ms: 0,
        finished_ms: wall_ms,
        outcome: "succeeded".into(),
        exit_code: Some(0),
        user_cpu_ms: Some(cpu_ms),
        sys_cpu_ms: Some(0),
        max_rss_bytes: Some(rss),
        log: None,
        read_bytes: None,
        write_bytes: None,
        energy_joules: None,
        energy_method: None,
        cpu_model: None,
        gpus: None,
        memory_method: Some(mustbuild_executors::Peak::Largest.method().into()),
        input_bytes: None,
        sandboxed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_over_input_size_is_fitted_only_where_it_explains_the_peaks() {
        const MIB: u64 = 1 << 20;
        // Peaks of 50 MiB + twice the input, give or take 2 MiB.
        let points: Vec<(u64, u64)> = [10, 20, 40, 80, 160]
            .iter()
            .enumerate()
            .map(|(i, &m)| (m * MIB, 50 * MIB + 2 * m * MIB + (i as u64 % 2) * 2 * MIB))
            .collect();
        let line = MemoryLine::fit(&points).unwrap();
        assert!((line.per_input_byte - 2.0).abs() < 0.05, "{line:?}");
        assert!(line.r2 > 0.99);
        // 300 MiB of input: about 650 MiB, × 1.2, up to 64 MiB steps.
        let ask = line.request(300 * MIB);
        assert!((768 * MIB..=832 * MIB).contains(&ask), "{}", ask / MIB);
        // Small inputs ask for little.
        assert!(line.request(10 * MIB) <= 128 * MIB);
        // Peaks that do not follow the inputs: no line.
        let flat: Vec<(u64, u64)> = [(10, 90), (20, 40), (40, 95), (80, 45), (160, 60)]
            .iter()
            .map(|&(i, p)| (i * MIB, p * MIB))
            .collect();
        assert_eq!(MemoryLine::fit(&flat), None);
        // Inputs that hardly vary, or too few executions: no line.
        let same: Vec<(u64, u64)> = (0..6)
            .map(|i| ((100 + i) * MIB, (100 + 2 * i) * MIB))
            .collect();
        assert_eq!(MemoryLine::fit(&same), None);
        assert_eq!(MemoryLine::fit(&points[..3]), None);
    }

    #[test]
    fn the_95th_percentile_is_a_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 95.0), 95.0);
        assert_eq!(percentile(&mut [3.0, 1.0, 2.0], 95.0), 3.0);
        assert_eq!(percentile(&mut [], 95.0), 0.0);
    }

    #[test]
    fn requests_come_from_p95_with_margins_and_far_declarations_are_named() {
        // 20 executions: 100..=119 MiB, 10..=29 s, one CPU busy.
        let runs: Vec<RunRow> = (0..20)
            .map(|i| test_run((10 + i) * 1000, (100 + i) << 20, (10 + i) * 1000))
            .collect();
        let refs: Vec<&RunRow> = runs.iter().collect();
        let declared = Resources {
            cpus: 16,
            memory_bytes: Some(8 << 30),
            time_seconds: Some(20),
            ..Resources::default()
        };
        let a = advise("s", &refs, Some(&declared)).unwrap();
        assert_eq!(a.samples, 20);
        assert_eq!(a.memory_p95_bytes, 118 << 20);
        // 118 MiB × 1.2 = 141.6 MiB, up to 192 MiB; 28 s × 1.5 = 42 s, up to a minute.
        assert_eq!(a.request_memory_bytes, 192 << 20);
        assert_eq!(a.request_time_s, 60);
        assert_eq!(a.cpus_used, 1);
        assert_eq!(a.warnings.len(), 3, "{:?}", a.warnings);
        assert!(a.warnings[0].contains("declares memory 8192 MiB but uses 118 MiB"));
        assert!(a.warnings[1].contains("took up to 29 s: it would time out"));
        assert!(a.warnings[2].contains("declares 16 CPUs but keeps 1 busy"));
        // Declared too little memory: it would be killed.
        let tight = Resources {
            memory_bytes: Some(100 << 20),
            ..Resources::default()
        };
        let a = advise("s", &refs, Some(&tight)).unwrap();
        assert!(a.warnings[0].contains("would kill it"), "{:?}", a.warnings);
        assert_eq!(advise("s", &[], None), None);
    }
}
