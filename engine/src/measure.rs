//! What a run's steps cost, as the dispatcher records it: each job's energy
//! (RAPL shared among the steps that overlapped, NVML on its GPUs, else the
//! model), the host's CPU, how memory was measured. Workers call [`Measure::begin`]
//! and [`Measure::end`] around a command; the coordinator puts the figures in
//! the run record, and once every step that shared the machine has ended, the
//! RAPL figure replaces the model's ([`Measure::attributed`]).
//!
//! `MUSTBUILD_NO_MEASURE=1` turns off what costs anything beyond `wait4` (the
//! counters and `/proc/PID/io`), for the benchmark that says what measuring costs.

use mustbuild_executors::energy::{Gpus, Meter, Method, Model};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often RAPL is read while steps run (well within a counter's wrap).
const SAMPLE_PERIOD: Duration = Duration::from_secs(10);

/// `wait4`'s figure when it is no more than mustbuild's own peak, which the
/// kernel counts in: the step's peak is at most that.
pub const MEMORY_BOUND: &str = mustbuild_executors::Peak::AtMost.method();

/// Whether measuring beyond `wait4` is off (`MUSTBUILD_NO_MEASURE=1`).
pub fn off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("MUSTBUILD_NO_MEASURE").is_some_and(|v| v != "0"))
}

/// This host's CPU model, from `/proc/cpuinfo`.
pub fn cpu_model() -> Option<String> {
    static MODEL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            text.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    matches!(k.trim(), "model name" | "Model" | "cpu model").then(|| v.trim())
                })
                .map(str::to_string)
        })
        .clone()
}

/// One job's measuring, from its start to its end.
#[derive(Debug)]
pub struct Started {
    token: u64,
    gpus: Vec<String>,
    gpu_mj: Option<u64>,
}

/// What a job's end tells: its own GPU energy, and RAPL figures for jobs (this
/// one, or others that overlapped it) now complete.
#[derive(Debug, Clone, Default)]
pub struct Ended {
    pub token: u64,
    pub gpu_joules: Option<f64>,
    pub attributed: Vec<(u64, f64)>,
}

/// A job's energy as first recorded: the model's or NVML's, with its method.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub joules: f64,
    pub method: &'static str,
}

#[derive(Debug)]
pub struct Measure {
    meter: Arc<Meter>,
    gpus: Gpus,
    pub model: Model,
    next: AtomicU64,
}

impl Measure {
    pub fn new(model: Model) -> Measure {
        let meter = Arc::new(if off() {
            Meter::new(None)
        } else {
            Meter::here()
        });
        Meter::sample_every(&meter, SAMPLE_PERIOD);
        Measure {
            meter,
            gpus: Gpus::default(),
            model,
            next: AtomicU64::new(0),
        }
    }

    /// Whether RAPL is read on this machine.
    pub fn rapl(&self) -> bool {
        self.meter.measures()
    }

    pub fn begin(&self, gpus: &[String]) -> Started {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let gpu_mj = if off() { None } else { self.gpus.read_mj(gpus) };
        self.meter.begin(token);
        Started {
            token,
            gpus: gpus.to_vec(),
            gpu_mj,
        }
    }

    pub fn end(&self, started: Started, cpu: Duration) -> Ended {
        let attributed = self.meter.end(started.token, cpu);
        let gpu_joules = started.gpu_mj.and_then(|before| {
            let after = self.gpus.read_mj(&started.gpus)?;
            Some(after.saturating_sub(before) as f64 / 1e3)
        });
        Ended {
            token: started.token,
            gpu_joules,
            attributed,
        }
    }

    /// The energy a job's run record gets at once: the model's for its CPU
    /// and memory, plus NVML's for its GPUs.
    pub fn recorded(&self, ended: &Ended, cpu: Duration, wall: Duration, rss: u64) -> Recorded {
        let cpu_joules = self.model.joules(cpu, wall, rss);
        match ended.gpu_joules {
            Some(g) => Recorded {
                joules: cpu_joules + g,
                method: Method::ModelAndNvml.name(),
            },
            None => Recorded {
                joules: cpu_joules,
                method: Method::Model.name(),
            },
        }
    }
}

/// The RAPL figures of a run's jobs, gathered as they come (a job's may come
/// before or after its run record is written), set when the run ends.
#[derive(Debug, Default)]
pub struct Attributions {
    /// Per token: RAPL joules.
    rapl: HashMap<u64, f64>,
    /// Per token: its run record, its GPUs' joules, and the joules first recorded.
    runs: HashMap<u64, (i64, Option<f64>, Option<f64>)>,
}

impl Attributions {
    pub fn ended(&mut self, ended: &Ended) {
        self.rapl.extend(ended.attributed.iter().copied());
    }

    pub fn recorded(&mut self, token: u64, run: i64, gpu: Option<f64>, first: Option<f64>) {
        self.runs.insert(token, (run, gpu, first));
    }

    /// What the RAPL figures change in the run's total: each one's joules
    /// less those first recorded.
    pub fn correction(&self) -> f64 {
        let first: HashMap<i64, f64> = self
            .runs
            .values()
            .map(|(run, _, first)| (*run, first.unwrap_or(0.0)))
            .collect();
        self.energies()
            .iter()
            .map(|(run, joules, _)| joules - first.get(run).copied().unwrap_or(0.0))
            .sum()
    }

    /// Each recorded run with a RAPL figure: (run, joules, method).
    pub fn energies(&self) -> Vec<(i64, f64, &'static str)> {
        let mut out: Vec<(i64, f64, &'static str)> = self
            .runs
            .iter()
            .filter_map(|(token, (run, gpu, _))| {
                let cpu = self.rapl.get(token)?;
                Some(match gpu {
                    Some(g) => (*run, cpu + g, Method::RaplAndNvml.name()),
                    None => (*run, *cpu, Method::Rapl.name()),
                })
            })
            .collect();
        out.sort_by_key(|e| e.0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rapl_figures_meet_their_runs_whichever_comes_first() {
        let mut a = Attributions::default();
        a.recorded(1, 10, None, Some(1.0));
        a.ended(&Ended {
            token: 2,
            gpu_joules: None,
            attributed: vec![(1, 4.0), (2, 6.0)],
        });
        a.recorded(2, 11, Some(100.0), Some(102.0));
        a.recorded(3, 12, None, Some(5.0));
        assert_eq!(
            a.energies(),
            [
                (10, 4.0, "measured (rapl)"),
                (11, 106.0, "measured (rapl+nvml)")
            ]
        );
        // 4 J instead of 1, 106 instead of 102; run 12 keeps its model's 5.
        assert_eq!(a.correction(), 7.0);
    }
}
