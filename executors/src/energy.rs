//! The energy a step used, and how it was found out:
//!
//! - **RAPL** (`measured (rapl)`): the package and DRAM counters under
//!   `/sys/class/powercap`, read as steps start and end. A package's counter is
//!   the whole package's, not a process's: the energy of each interval between
//!   two such events is shared among the steps running in it by their rate of
//!   CPU use (their CPU time over their wall time), once no step that overlaps
//!   them is left running ([`Meter`], [`attribute`]). Intervals with no step
//!   running are nobody's. The steps get only their share of the host's busy
//!   CPU time in `/proc/stat` over each second or so: what other processes
//!   used (another mustbuild's steps among them) is theirs, so two runs on one
//!   host never both count a package's energy. Counters wrap at `max_energy_range_uj` ([`delta_uj`]).
//!   Nested zones are never summed twice: `core` and `uncore` are inside their
//!   package; `dram` is not; `psys` (the whole platform) is used only where no
//!   package zone is; the `intel-rapl-mmio` zones repeat the packages.
//! - **NVML** (`measured (nvml)`): the driver's total-energy counter of each GPU
//!   the step was given (GPUs are never shared between running steps, so the
//!   difference is the step's own).
//! - **Model** (`modelled`): CPU time × power per core + peak memory × wall time
//!   × power per GB ([`Model`]), for machines whose counters cannot be read
//!   (most: reading RAPL needs root on kernels since 5.10).
//!
//! The energy is the machine's (IT energy); the facility's PUE and the grid's
//! carbon intensity are applied when it is reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a step's energy was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Rapl,
    Nvml,
    RaplAndNvml,
    Model,
    ModelAndNvml,
}

impl Method {
    /// As run records and reports write it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rapl => "measured (rapl)",
            Method::Nvml => "measured (nvml)",
            Method::RaplAndNvml => "measured (rapl+nvml)",
            Method::Model => "modelled",
            Method::ModelAndNvml => "modelled+measured (nvml)",
        }
    }
}

/// The power figures of the model. The defaults are the Green Algorithms
/// calculator's (Lannelongue et al. 2021, doi:10.1002/advs.202100707): 12 W per
/// core for a CPU it does not know, 0.3725 W per GB of memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub core_watts: f64,
    pub memory_watts_per_gb: f64,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            core_watts: 12.0,
            memory_watts_per_gb: 0.3725,
        }
    }
}

impl Model {
    /// Joules for a step that used `cpu` time and held `memory_bytes` at its
    /// peak for `wall`.
    pub fn joules(&self, cpu: Duration, wall: Duration, memory_bytes: u64) -> f64 {
        let gb = memory_bytes as f64 / 1e9;
        cpu.as_secs_f64() * self.core_watts + wall.as_secs_f64() * gb * self.memory_watts_per_gb
    }
}

/// The energy a counter that wraps at `max_range` µJ counted from `before` to
/// `after`, if it wrapped at most once in between. (The usual range, about
/// 2.6e11 µJ, lasts 22 minutes at 200 W: [`Meter::sample_every`] reads at least
/// that often while steps run.)
pub fn delta_uj(before: u64, after: u64, max_range: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        max_range.saturating_sub(before) + after
    }
}

/// One counter read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    pub energy: PathBuf,
    pub max_range_uj: u64,
}

/// The RAPL zones whose sum is the machine's energy, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rapl {
    pub zones: Vec<Zone>,
}

impl Rapl {
    /// The zones under `root` (`/sys/class/powercap`) that can be read, or
    /// `None` when there are none (no RAPL, or not readable by this user).
    pub fn discover(root: &Path) -> Option<Rapl> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        let mut found: Vec<(String, bool, Zone)> = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        dirs.sort();
        for dir in dirs {
            let Some(base) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            // intel-rapl:0 is a package; intel-rapl:0:1 a zone inside it.
            let Some(rest) = base.strip_prefix("intel-rapl:") else {
                continue;
            };
            let nested = rest.contains(':');
            let Some(name) = read(dir.join("name")) else {
                continue;
            };
            let energy = dir.join("energy_uj");
            let Some(max_range_uj) =
                read(dir.join("max_energy_range_uj")).and_then(|s| s.parse().ok())
            else {
                continue;
            };
            // Readable by this user, now.
            if read(energy.clone())
                .and_then(|s| s.parse::<u64>().ok())
                .is_none()
            {
                continue;
            }
            found.push((
                name.clone(),
                nested,
                Zone {
                    name,
                    energy,
                    max_range_uj,
                },
            ));
        }
        let packages = found
            .iter()
            .any(|(name, nested, _)| !nested && name.starts_with("package"));
        let zones: Vec<Zone> = found
            .into_iter()
            .filter(|(name, nested, _)| match (nested, name.as_str()) {
                (false, n) if n.starts_with("package") => true,
                (false, "psys") => !packages,
                (true, "dram") => true,
                _ => false,
            })
            .map(|(_, _, z)| z)
            .collect();
        (!zones.is_empty()).then_some(Rapl { zones })
    }

    /// Every zone's counter, in µJ; `None` if one cannot be read.
    pub fn read(&self) -> Option<Vec<u64>> {
        self.zones
            .iter()
            .map(|z| std::fs::read_to_string(&z.energy).ok()?.trim().parse().ok())
            .collect()
    }

    /// Joules between two reads of [`Rapl::read`].
    pub fn joules(&self, before: &[u64], after: &[u64]) -> f64 {
        self.zones
            .iter()
            .zip(before.iter().zip(after))
            .map(|(z, (b, a))| delta_uj(*b, *a, z.max_range_uj) as f64 / 1e6)
            .sum()
    }
}

/// An interval between two events (a step started or ended), with the energy
/// counted in it, the steps running through it, how long it lasted and the
/// CPU time the whole host was busy meanwhile (where `/proc/stat` says).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub joules: f64,
    pub steps: Vec<u64>,
    pub wall_s: f64,
    pub host_cpu_s: Option<f64>,
}

/// How much wall time of segments is pooled to compare the steps' CPU time
/// with the host's: `/proc/stat` counts in hundredths of a second per CPU.
const HOST_WINDOW_S: f64 = 1.0;

/// A step's part of the energy of the segments it ran through, by its rate of
/// CPU use (`rates`: CPU seconds per wall second, per step); steps that used
/// no CPU measurably share a segment evenly when all of them did so. Where the
/// host's busy CPU time is known, the steps of each window of segments (a
/// second or more) get only their share of it: the rest is other processes'.
pub fn attribute(segments: &[Segment], rates: &HashMap<u64, f64>) -> HashMap<u64, f64> {
    let rate = |s: &u64| rates.get(s).copied().unwrap_or(0.0).max(0.0);
    let busy: Vec<&Segment> = segments.iter().filter(|s| !s.steps.is_empty()).collect();
    let mut out: HashMap<u64, f64> = HashMap::new();
    let mut rest = busy.as_slice();
    while !rest.is_empty() {
        let mut wall = 0.0;
        let n = rest
            .iter()
            .position(|seg| {
                wall += seg.wall_s;
                wall >= HOST_WINDOW_S
            })
            .map_or(rest.len(), |i| i + 1);
        let (window, after) = rest.split_at(n);
        rest = after;
        let ours: f64 = (window.iter())
            .map(|seg| seg.wall_s * seg.steps.iter().map(rate).sum::<f64>())
            .sum();
        let host: Option<f64> = window.iter().map(|seg| seg.host_cpu_s).sum();
        let part = match host {
            Some(host) if host > ours => ours / host,
            _ => 1.0,
        };
        for seg in window {
            let total: f64 = seg.steps.iter().map(rate).sum();
            for s in &seg.steps {
                let share = if total > 0.0 {
                    rate(s) / total
                } else {
                    1.0 / seg.steps.len() as f64
                };
                *out.entry(*s).or_default() += seg.joules * share * part;
            }
        }
    }
    out
}

/// The CPU time, in seconds, that every CPU of the host has been busy since
/// boot (user, nice, system, irq, softirq: not idle, I/O wait or time stolen
/// by a hypervisor), from the first line of a `/proc/stat` text.
pub fn host_busy_s(stat: &str) -> Option<f64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    // USER_HZ, which /proc/stat counts in, is 100 on every Linux.
    Some(busy as f64 / 100.0)
}

#[derive(Debug)]
struct MeterState {
    last: Option<Vec<u64>>,
    /// When the counters were last read, and the host's busy CPU then.
    last_at: Instant,
    last_host: Option<f64>,
    running: Vec<u64>,
    segments: Vec<Segment>,
    /// Steps ended but not yet attributed: their rate of CPU use.
    ended: HashMap<u64, f64>,
    started: HashMap<u64, Instant>,
    /// A read failed since the last attribution: those steps get nothing.
    broken: bool,
}

/// Shares a machine's RAPL energy among the steps that run on it at once. Call
/// [`Meter::begin`] as a step starts and [`Meter::end`] as it ends; an end that
/// leaves nothing running gives every pending step its joules.
#[derive(Debug)]
pub struct Meter {
    rapl: Option<Rapl>,
    /// A `/proc/stat`, for the host's busy CPU time (none: steps share all).
    stat: Option<PathBuf>,
    state: Mutex<MeterState>,
}

impl Meter {
    /// A meter that shares a package's energy among its own steps only.
    pub fn new(rapl: Option<Rapl>) -> Meter {
        Meter::with_host_stat(rapl, None)
    }

    /// A meter whose steps get their share of the host's busy CPU time, as
    /// `stat` (a `/proc/stat`) counts it.
    pub fn with_host_stat(rapl: Option<Rapl>, stat: Option<PathBuf>) -> Meter {
        Meter {
            rapl,
            stat,
            state: Mutex::new(MeterState {
                last: None,
                last_at: Instant::now(),
                last_host: None,
                running: Vec::new(),
                segments: Vec::new(),
                ended: HashMap::new(),
                started: HashMap::new(),
                broken: false,
            }),
        }
    }

    /// This machine's meter: RAPL where it can be read, else none.
    pub fn here() -> Meter {
        let rapl = Rapl::discover(Path::new("/sys/class/powercap"));
        Meter::with_host_stat(rapl, Some(PathBuf::from("/proc/stat")))
    }

    fn host_busy(&self) -> Option<f64> {
        use std::io::Read;
        // The first line only: the rest grows with the CPUs and interrupts.
        let mut head = [0u8; 512];
        let n = std::fs::File::open(self.stat.as_ref()?)
            .and_then(|mut f| f.read(&mut head))
            .ok()?;
        host_busy_s(std::str::from_utf8(&head[..n]).ok()?)
    }

    pub fn measures(&self) -> bool {
        self.rapl.is_some()
    }

    /// Reads the counters every `period` while steps run, on a thread of its
    /// own, so that no counter wraps twice between two reads; the thread ends
    /// with the meter.
    pub fn sample_every(meter: &std::sync::Arc<Meter>, period: Duration) {
        if meter.rapl.is_none() {
            return;
        }
        let weak = std::sync::Arc::downgrade(meter);
        let _ = std::thread::Builder::new()
            .name("rapl".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(period);
                    let Some(meter) = weak.upgrade() else { return };
                    let Ok(mut st) = meter.state.lock() else {
                        return;
                    };
                    if !st.running.is_empty() {
                        meter.tick(&mut st);
                    }
                }
            });
    }

    /// Closes the segment up to now.
    fn tick(&self, st: &mut MeterState) {
        let Some(rapl) = &self.rapl else { return };
        let now = rapl.read();
        let (at, host) = (Instant::now(), self.host_busy());
        match (&st.last, &now) {
            (Some(before), Some(after)) => {
                if !st.running.is_empty() {
                    st.segments.push(Segment {
                        joules: rapl.joules(before, after),
                        steps: st.running.clone(),
                        wall_s: at.duration_since(st.last_at).as_secs_f64(),
                        host_cpu_s: host.zip(st.last_host).map(|(now, then)| now - then),
                    });
                }
            }
            (_, None) => st.broken = true,
            (None, Some(_)) => {}
        }
        st.last = now;
        (st.last_at, st.last_host) = (at, host);
    }

    pub fn begin(&self, step: u64) {
        if self.rapl.is_none() {
            return;
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        self.tick(&mut st);
        st.running.push(step);
        st.started.insert(step, Instant::now());
    }

    /// `cpu`: the CPU time the step used. Gives the joules of every step now
    /// attributed (this one, and those it overlapped), once none is left running.
    pub fn end(&self, step: u64, cpu: Duration) -> Vec<(u64, f64)> {
        if self.rapl.is_none() {
            return Vec::new();
        }
        let Ok(mut st) = self.state.lock() else {
            return Vec::new();
        };
        self.tick(&mut st);
        st.running.retain(|s| *s != step);
        let wall = st
            .started
            .remove(&step)
            .map_or(Duration::ZERO, |t| t.elapsed());
        let rate = if wall.is_zero() {
            0.0
        } else {
            cpu.as_secs_f64() / wall.as_secs_f64()
        };
        st.ended.insert(step, rate);
        if !st.running.is_empty() {
            return Vec::new();
        }
        let segments = std::mem::take(&mut st.segments);
        let rates = std::mem::take(&mut st.ended);
        if std::mem::take(&mut st.broken) {
            return Vec::new();
        }
        let joules = attribute(&segments, &rates);
        rates
            .keys()
            .map(|s| (*s, joules.get(s).copied().unwrap_or(0.0)))
            .collect()
    }
}

/// The total-energy counters of the GPUs NVML sees, by the names steps are
/// given (indices or UUIDs). Opened at the first use: NVML takes a while to load.
pub struct Gpus {
    nvml: std::sync::OnceLock<Option<nvml_wrapper::Nvml>>,
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus").finish_non_exhaustive()
    }
}

impl Default for Gpus {
    fn default() -> Gpus {
        Gpus {
            nvml: std::sync::OnceLock::new(),
        }
    }
}

impl Gpus {
    /// The sum of the counters of `gpus`, in millijoules; `None` when one
    /// cannot be read (no driver, a GPU older than Volta).
    pub fn read_mj(&self, gpus: &[String]) -> Option<u64> {
        if gpus.is_empty() {
            return None;
        }
        let nvml = self
            .nvml
            .get_or_init(|| nvml_wrapper::Nvml::init().ok())
            .as_ref()?;
        let mut total = 0u64;
        for g in gpus {
            let device = if g.starts_with("GPU-") || g.starts_with("MIG-") {
                nvml.device_by_uuid(g.as_str()).ok()?
            } else {
                nvml.device_by_index(g.parse().ok()?).ok()?
            };
            total += device.total_energy_consumption().ok()?;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_that_wraps_counts_across_the_wrap() {
        assert_eq!(delta_uj(100, 250, 1000), 150);
        // 950 → 1000 (the range), then 0 → 30.
        assert_eq!(delta_uj(950, 30, 1000), 80);
        assert_eq!(delta_uj(5, 5, 1000), 0);
    }

    /// A powercap tree as a two-socket Intel server shows it, with psys and
    /// the mmio copy of package 0.
    fn tree(root: &Path, counters: &[(&str, &str, u64)]) {
        for (dir, name, uj) in counters {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(d.join("energy_uj"), format!("{uj}\n")).unwrap();
            std::fs::write(d.join("max_energy_range_uj"), "262143328850\n").unwrap();
        }
    }

    #[test]
    fn nested_zones_are_not_summed_twice() {
        let tmp = tempfile::tempdir().unwrap();
        tree(
            tmp.path(),
            &[
                ("intel-rapl:0", "package-0", 1_000_000),
                ("intel-rapl:0:0", "core", 600_000),
                ("intel-rapl:0:1", "uncore", 100_000),
                ("intel-rapl:0:2", "dram", 50_000),
                ("intel-rapl:1", "package-1", 2_000_000),
                ("intel-rapl:2", "psys", 9_000_000),
                ("intel-rapl-mmio:0", "package-0", 1_000_000),
            ],
        );
        let rapl = Rapl::discover(tmp.path()).unwrap();
        let names: Vec<&str> = rapl.zones.iter().map(|z| z.name.as_str()).collect();
        assert_eq!(names, ["package-0", "dram", "package-1"]);
        let before = rapl.read().unwrap();
        assert_eq!(before, [1_000_000, 50_000, 2_000_000]);
        // psys alone, where there is no package zone.
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path(), &[("intel-rapl:0", "psys", 7)]);
        let rapl = Rapl::discover(tmp.path()).unwrap();
        assert_eq!(rapl.zones.len(), 1);
        // No zone readable: no RAPL.
        assert_eq!(Rapl::discover(&tmp.path().join("none")), None);
    }

    #[test]
    fn a_package_is_shared_by_cpu_rate_among_the_steps_that_overlapped() {
        // A runs alone for 10 J, then with B for 30 J, then B alone for 5 J.
        // A used 1 CPU per second, B 0.5.
        let segments = [
            Segment {
                joules: 10.0,
                steps: vec![1],
                wall_s: 1.0,
                host_cpu_s: None,
            },
            Segment {
                joules: 30.0,
                steps: vec![1, 2],
                wall_s: 1.0,
                host_cpu_s: None,
            },
            Segment {
                joules: 5.0,
                steps: vec![2],
                wall_s: 1.0,
                host_cpu_s: None,
            },
            Segment {
                joules: 7.0,
                steps: vec![],
                wall_s: 1.0,
                host_cpu_s: None,
            },
        ];
        let rates = HashMap::from([(1, 1.0), (2, 0.5)]);
        let j = attribute(&segments, &rates);
        assert!((j[&1] - 30.0).abs() < 1e-9, "{j:?}");
        assert!((j[&2] - 15.0).abs() < 1e-9, "{j:?}");
        // The idle segment's 7 J are nobody's; the rest is shared out exactly.
        assert!((j.values().sum::<f64>() - 45.0).abs() < 1e-9);
        // Steps that used no CPU share evenly.
        let j = attribute(&segments[1..2], &HashMap::from([(1, 0.0), (2, 0.0)]));
        assert_eq!((j[&1], j[&2]), (15.0, 15.0));
    }

    #[test]
    fn steps_get_only_their_share_of_the_hosts_busy_cpu() {
        // Step 1 used 1 CPU per second for 2 s, while the host was busy 2 CPU
        // seconds per second (another run's step beside it): half is its.
        let seg = |joules, wall_s, host| Segment {
            joules,
            steps: vec![1],
            wall_s,
            host_cpu_s: Some(host),
        };
        let rates = HashMap::from([(1, 1.0)]);
        let j = attribute(&[seg(40.0, 2.0, 4.0)], &rates);
        assert!((j[&1] - 20.0).abs() < 1e-9, "{j:?}");
        // The other run's meter, counting the same package, takes the other
        // half: together they count it once.
        let both = j[&1] + attribute(&[seg(40.0, 2.0, 4.0)], &rates)[&1];
        assert!((both - 40.0).abs() < 1e-9);
        // Alone on the host (a little less busy than the step: the counters'
        // grain), it has it all.
        let j = attribute(&[seg(40.0, 2.0, 1.98)], &rates);
        assert!((j[&1] - 40.0).abs() < 1e-9, "{j:?}");
        // Short segments are pooled to a second before the host's figure is
        // used, so one that read 0 ticks is not all the step's.
        let short = [seg(1.0, 0.5, 0.0), seg(1.0, 0.5, 2.0)];
        let j = attribute(&short, &rates);
        assert!((j[&1] - 1.0).abs() < 1e-9, "{j:?}");
    }

    #[test]
    fn the_hosts_busy_time_is_read_from_proc_stat() {
        let stat = "cpu  4705 150 1120 1000000 530 10 25 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            host_busy_s(stat),
            Some((4705 + 150 + 1120 + 10 + 25) as f64 / 100.0)
        );
        assert_eq!(host_busy_s("intr 1 2 3\n"), None);
        // This host's.
        let here = std::fs::read_to_string("/proc/stat").unwrap();
        assert!(host_busy_s(&here).unwrap() > 0.0);
    }

    #[test]
    fn the_meter_attributes_once_nothing_runs_and_follows_a_wrap() {
        let tmp = tempfile::tempdir().unwrap();
        let max = 262_143_328_850u64;
        tree(
            tmp.path(),
            &[("intel-rapl:0", "package-0", max - 1_000_000)],
        );
        let counter = tmp.path().join("intel-rapl:0/energy_uj");
        let set = |uj: u64| std::fs::write(&counter, format!("{uj}\n")).unwrap();
        let meter = Meter::new(Rapl::discover(tmp.path()));
        assert!(meter.measures());
        meter.begin(1);
        set(max - 500_000); // 0.5 J, step 1 alone
        meter.begin(2);
        set(1_500_000); // through the wrap: 0.5 + 1.5 = 2 J, both
        assert_eq!(meter.end(1, Duration::ZERO), []);
        set(2_500_000); // 1 J, step 2 alone
        let mut got = meter.end(2, Duration::ZERO);
        got.sort_by_key(|g| g.0);
        // Both used no CPU: the shared 2 J are split evenly.
        assert_eq!(got.len(), 2);
        assert!((got[0].1 - 1.5).abs() < 1e-9, "{got:?}");
        assert!((got[1].1 - 2.0).abs() < 1e-9, "{got:?}");
    }

    #[test]
    fn the_meter_reads_the_hosts_busy_time_with_the_counters() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path(), &[("intel-rapl:0", "package-0", 1_000_000)]);
        let stat = tmp.path().join("stat");
        let busy = |ticks: u64| {
            std::fs::write(&stat, format!("cpu  {ticks} 0 0 9999 0 0 0 0 0 0\n")).unwrap()
        };
        busy(1000);
        let meter = Meter::with_host_stat(Rapl::discover(tmp.path()), Some(stat.clone()));
        meter.begin(1);
        // Long enough that the meter's own microseconds do not count.
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(tmp.path().join("intel-rapl:0/energy_uj"), "11000000\n").unwrap();
        busy(1200); // the host: 2 CPU seconds; the step says it used 1
        let got = meter.end(1, Duration::from_secs(1));
        assert_eq!(got.len(), 1);
        assert!((got[0].1 - 5.0).abs() < 0.1, "{got:?}");
    }

    #[test]
    fn the_model_counts_cpu_time_and_memory_held() {
        let m = Model::default();
        let j = m.joules(
            Duration::from_secs(10),
            Duration::from_secs(20),
            2_000_000_000,
        );
        assert!((j - (10.0 * 12.0 + 20.0 * 2.0 * 0.3725)).abs() < 1e-9);
    }
}
