//! What `mustbuild run` tells people on stderr while it runs (`--json` is not
//! handled here).
//!
//! On a terminal: one live status line (done / total, executed, cached, running,
//! failed, an ETA, what is running), redrawn by indicatif's ticker thread; executed
//! steps, failures with their log tail, retries and replaced files are printed
//! above it, cached instances only counted (a run can find thousands). Anywhere else
//! (a pipe, a file, `TERM=dumb`): one plain line per event, which scripts and the
//! tests read.
//!
//! The ETA comes from the executed steps only ([`eta`]): cached instances resolve
//! in milliseconds, so an overall rate would promise far too much.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use mustbuild_engine::run::Event;
use mustbuild_executors::Outcome;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often the status line is redrawn when nothing happens (its clock and ETA move).
const TICK: Duration = Duration::from_millis(150);

/// Skipped instances listed above the status line; the rest are counted.
const SKIPPED_SHOWN: usize = 10;

/// Running instances named on the status line (what fits of them is shown).
const RUNNING_NAMED: usize = 8;

/// "step" or "step (value, value)": how an instance is named to people.
pub fn label(step: &str, values: &[String]) -> String {
    if values.is_empty() {
        step.to_string()
    } else {
        format!("{step} ({})", values.join(", "))
    }
}

/// Whether stderr can take a live status line: a terminal that is not `TERM=dumb`.
pub fn stderr_is_live() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// The plain text of an event, as printed when stderr is not a terminal (a failure
/// spans several lines: its log tail follows).
fn describe(event: &Event) -> String {
    match event {
        Event::Warning { message } => format!("warning: {message}"),
        Event::Cached { step, values } => format!("cached   {}", label(step, values)),
        Event::Started { step, values } => format!("run      {}", label(step, values)),
        Event::Executed {
            step,
            values,
            seconds,
            ..
        } => format!("done     {} in {seconds:.2} s", label(step, values)),
        Event::Failed {
            step,
            values,
            outcome,
            log_tail,
        } => {
            let mut text = match outcome {
                // mustbuild's own words: as they are.
                Outcome::Infrastructure(why) => format!("FAILED   {}: {why}", label(step, values)),
                Outcome::OutOfMemory { .. } | Outcome::Held { .. } => {
                    format!("FAILED   {}: {outcome}", label(step, values))
                }
                _ => format!("FAILED   {}: {outcome:?}", label(step, values)),
            };
            for line in log_tail.lines() {
                text.push_str("\n    | ");
                text.push_str(line);
            }
            text
        }
        Event::Retrying {
            step,
            values,
            attempt,
            why,
        } => format!(
            "retry    {} (attempt {attempt}): {why}",
            label(step, values)
        ),
        Event::Replaced { path, backup } => format!(
            "warning: `{path}` was edited since mustbuild wrote it: kept as `{backup}`, replaced"
        ),
        Event::Skipped { step, values } => {
            format!("skipped  {} (an input failed)", label(step, values))
        }
    }
}

/// Tells people about a run's events on stderr: a live status line on a terminal,
/// plain lines elsewhere.
#[derive(Debug)]
pub enum Reporter {
    Plain,
    Live(Live),
}

impl Reporter {
    /// `total`: the instances this run processes; `jobs`: how many commands run at once.
    pub fn new(live: bool, total: usize, jobs: usize) -> Self {
        if live {
            Self::Live(Live::new(total, jobs))
        } else {
            Self::Plain
        }
    }

    pub fn event(&mut self, event: &Event) {
        match self {
            Self::Plain => tell!("{}", describe(event)),
            Self::Live(live) => live.event(event),
        }
    }

    /// Clears the status line (before the summary is printed).
    pub fn finish(self) {
        if let Self::Live(live) = self {
            live.finish();
        }
    }
}

/// The live status line and the counts it shows.
#[derive(Debug)]
pub struct Live {
    bar: ProgressBar,
    /// Shared with the ticker thread, which renders it. Never held while calling
    /// the bar: the ticker holds the bar's lock while it takes this one.
    tally: Arc<Mutex<Tally>>,
}

impl Live {
    fn new(total: usize, jobs: usize) -> Self {
        let tally = Arc::new(Mutex::new(Tally {
            jobs: jobs.max(1),
            total,
            ..Tally::default()
        }));
        let counts = {
            let tally = Arc::clone(&tally);
            move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = w.write_str(&t.counts(Instant::now()));
            }
        };
        let clock = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&clock(state.elapsed().as_secs()));
        };
        let style =
            ProgressStyle::with_template("[{clock}] {bar:16} {pos}/{len}  {counts}  {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key("counts", counts)
                .with_key("clock", clock)
                .progress_chars("█░");
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
            .with_style(style);
        bar.enable_steady_tick(TICK);
        Self { bar, tally }
    }

    /// Updates the counts; never touches the bar (see `tally`).
    fn update<R>(&self, f: impl FnOnce(&mut Tally) -> R) -> R {
        f(&mut self.tally.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn event(&self, event: &Event) {
        let seen = self.update(|t| t.record(event, Instant::now()));
        if seen.finished {
            self.bar.inc(1);
        }
        if let Some(names) = seen.running {
            self.bar.set_message(names);
        }
        if seen.print {
            self.bar.println(describe(event));
        }
    }

    fn finish(self) {
        let more = self.update(|t| t.skipped.saturating_sub(SKIPPED_SHOWN));
        if more > 0 {
            self.bar
                .println(format!("… and {more} more skipped (an input failed)"));
        }
        self.bar.finish_and_clear();
    }
}

/// What the status line does about one event.
#[derive(Debug, PartialEq)]
struct Seen {
    /// An instance is done: the bar moves.
    finished: bool,
    /// The running list changed: the names to show now.
    running: Option<String>,
    /// The event's line goes above the status line.
    print: bool,
}

/// What the status line counts.
#[derive(Debug, Default)]
struct Tally {
    executed: usize,
    cached: usize,
    failed: usize,
    cancelled: usize,
    skipped: usize,
    /// Wall time of the executed steps, added up.
    executed_seconds: f64,
    /// Their CPU time and energy, added up.
    cpu_seconds: f64,
    energy_joules: f64,
    /// What runs now and since when, oldest first.
    running: Vec<(String, Instant)>,
    jobs: usize,
    total: usize,
}

impl Tally {
    /// Counts an event; says what the status line should do about it.
    fn record(&mut self, event: &Event, now: Instant) -> Seen {
        let mut seen = Seen {
            finished: true,
            running: None,
            print: true,
        };
        let stopped = match event {
            Event::Warning { .. } => {
                seen.finished = false;
                false
            }
            // Taken from the store (or realised by another process meanwhile):
            // off the running list if it was ever on it.
            Event::Cached { step, values } => {
                self.cached += 1;
                seen.print = false;
                self.stop(step, values)
            }
            Event::Started { step, values } => {
                self.running.push((label(step, values), now));
                seen.finished = false;
                seen.print = false;
                true
            }
            Event::Executed {
                step,
                values,
                seconds,
                cpu_seconds,
                energy_joules,
            } => {
                self.executed += 1;
                self.executed_seconds += seconds;
                self.cpu_seconds += cpu_seconds;
                self.energy_joules += energy_joules.unwrap_or(0.0);
                self.stop(step, values)
            }
            Event::Failed {
                step,
                values,
                outcome,
                ..
            } => {
                if *outcome == Outcome::Cancelled {
                    self.cancelled += 1;
                } else {
                    self.failed += 1;
                }
                self.stop(step, values)
            }
            Event::Retrying { .. } | Event::Replaced { .. } => {
                seen.finished = false;
                false
            }
            Event::Skipped { .. } => {
                self.skipped += 1;
                seen.print = self.skipped <= SKIPPED_SHOWN;
                false
            }
        };
        if stopped {
            seen.running = Some(self.running_names());
        }
        seen
    }

    /// Takes an instance off the running list; whether it was on it.
    fn stop(&mut self, step: &str, values: &[String]) -> bool {
        if self.running.is_empty() {
            return false;
        }
        let name = label(step, values);
        match self.running.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                self.running.remove(i);
                true
            }
            None => false,
        }
    }

    fn finished(&self) -> usize {
        self.executed + self.cached + self.failed + self.cancelled + self.skipped
    }

    /// "executed 40 · cached 370 · running 2 · failed 0 · ETA 0:31 · CPU 80.2 s · 1.2 kJ".
    fn counts(&self, now: Instant) -> String {
        let mut s = format!(
            "executed {} · cached {} · running {} · failed {}",
            self.executed,
            self.cached,
            self.running.len(),
            self.failed
        );
        if self.cancelled > 0 {
            s.push_str(&format!(" · cancelled {}", self.cancelled));
        }
        if self.skipped > 0 {
            s.push_str(&format!(" · skipped {}", self.skipped));
        }
        let elapsed: Vec<f64> = self
            .running
            .iter()
            .map(|(_, since)| now.saturating_duration_since(*since).as_secs_f64())
            .collect();
        let pending = self
            .total
            .saturating_sub(self.finished() + self.running.len());
        if let Some(left) = eta(
            pending,
            &elapsed,
            self.executed,
            self.executed_seconds,
            self.jobs,
        ) {
            s.push_str(&format!(" · ETA {}", clock(seconds_up(left))));
        }
        if self.executed > 0 {
            s.push_str(&format!(
                " · CPU {:.1} s · {}",
                self.cpu_seconds,
                crate::stats::joules(self.energy_joules)
            ));
        }
        s
    }

    /// "▸ newest, older, …": the running instances, most recent first.
    fn running_names(&self) -> String {
        if self.running.is_empty() {
            return String::new();
        }
        let names: Vec<&str> = self
            .running
            .iter()
            .rev()
            .take(RUNNING_NAMED)
            .map(|(n, _)| n.as_str())
            .collect();
        let more = if self.running.len() > RUNNING_NAMED {
            ", …"
        } else {
            ""
        };
        format!("▸ {}{more}", names.join(", "))
    }
}

/// Seconds until the run ends, judged by the steps executed so far, or `None`
/// before one has (cached instances resolve in milliseconds: their rate says
/// nothing about the steps still to run).
///
/// Each of the `pending` instances (not started yet) is taken to run for the mean
/// wall time of the executed steps, and each running one for what is left of that
/// mean (nothing once past it). That work is spread over the `jobs` slots, or over
/// fewer when fewer instances are left, and the result is never less than the
/// longest rest of a running step. Pending instances that turn out to be cached
/// make it an overestimate that falls as they resolve.
pub fn eta(
    pending: usize,
    running_elapsed: &[f64],
    executed: usize,
    executed_seconds: f64,
    jobs: usize,
) -> Option<f64> {
    if executed == 0 {
        return None;
    }
    let mean = executed_seconds / executed as f64;
    let rests = running_elapsed.iter().map(|e| (mean - e).max(0.0));
    let longest_rest = rests.clone().fold(0.0, f64::max);
    let work = pending as f64 * mean + rests.sum::<f64>();
    let slots = jobs.min(pending + running_elapsed.len()).max(1);
    Some((work / slots as f64).max(longest_rest))
}

/// Whole seconds, rounded up: an ETA with anything left never reads 0:00.
fn seconds_up(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds.ceil() as u64
    } else {
        0
    }
}

/// "0:07", "12:34", "1:02:03".
pub fn clock(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_eta_before_a_step_executed() {
        assert_eq!(eta(1000, &[], 0, 0.0, 4), None);
        assert_eq!(eta(1000, &[3.0], 0, 0.0, 4), None);
    }

    #[test]
    fn eta_spreads_the_pending_steps_over_the_jobs() {
        // 8 left at a mean of 2 s on 4 slots: 4 s.
        assert_eq!(eta(8, &[], 2, 4.0, 4), Some(4.0));
        // Fewer left than slots: they run side by side.
        assert_eq!(eta(2, &[], 1, 10.0, 8), Some(10.0));
        // One slot: one after the other.
        assert_eq!(eta(3, &[], 3, 3.0, 1), Some(3.0));
    }

    #[test]
    fn eta_counts_what_running_steps_have_left() {
        // Mean 10 s; one has run 4 s (6 left), one 12 s (past the mean: 0 left).
        assert_eq!(eta(0, &[4.0, 12.0], 1, 10.0, 4), Some(6.0));
        // 2 pending (20 s) and those 6 s, over 4 slots (4 instances left): 6.5 s.
        assert_eq!(eta(2, &[4.0, 12.0], 1, 10.0, 4), Some(6.5));
        // Nothing left anywhere.
        assert_eq!(eta(0, &[], 5, 5.0, 4), Some(0.0));
    }

    #[test]
    fn eta_never_promises_less_than_the_longest_running_step_needs() {
        // Mean 10 s, 8 slots: a step just started needs 10 s even though 1 pending
        // step and it share the slots.
        assert_eq!(eta(1, &[0.0], 2, 20.0, 8), Some(10.0));
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(0), "0:00");
        assert_eq!(clock(31), "0:31");
        assert_eq!(clock(754), "12:34");
        assert_eq!(clock(3723), "1:02:03");
        assert_eq!(seconds_up(0.0), 0);
        assert_eq!(seconds_up(0.2), 1);
        assert_eq!(seconds_up(754.5), 755);
        assert_eq!(seconds_up(f64::NAN), 0);
        assert_eq!(seconds_up(-3.0), 0);
    }

    fn tally() -> Tally {
        Tally {
            jobs: 2,
            total: 1001,
            ..Tally::default()
        }
    }

    #[test]
    fn the_status_line_counts() {
        let now = Instant::now();
        let mut t = tally();
        t.cached = 370;
        assert_eq!(
            t.counts(now),
            "executed 0 · cached 370 · running 0 · failed 0"
        );
        t.executed = 40;
        t.executed_seconds = 40.0;
        t.cpu_seconds = 75.25;
        t.energy_joules = 1234.0;
        t.running.push(("each (v1)".into(), now));
        t.running.push(("each (v2)".into(), now));
        // 589 pending and 2 running steps of 1 s each, on 2 slots: 295.5 s.
        assert_eq!(
            t.counts(now),
            "executed 40 · cached 370 · running 2 · failed 0 · ETA 4:56 · CPU 75.2 s · 1.23 kJ"
        );
        assert_eq!(t.running_names(), "▸ each (v2), each (v1)");
        t.failed = 1;
        t.cancelled = 2;
        t.skipped = 3;
        assert!(t.stop("each", &["v1".to_string()]));
        assert!(!t.stop("each", &["v1".to_string()]));
        assert_eq!(t.running.len(), 1);
        assert!(
            t.counts(now).starts_with(
                "executed 40 · cached 370 · running 1 · failed 1 · cancelled 2 · skipped 3 · ETA "
            ),
            "{}",
            t.counts(now)
        );
    }

    #[test]
    fn events_move_the_counts_and_only_some_are_printed() {
        let now = Instant::now();
        let mut t = tally();
        let one = |v: &str| vec![v.to_string()];
        let started = |v: &str| Event::Started {
            step: "s".into(),
            values: one(v),
        };
        let seen = |finished, running: Option<&str>, print| Seen {
            finished,
            running: running.map(str::to_string),
            print,
        };
        assert_eq!(
            t.record(&started("a"), now),
            seen(false, Some("▸ s (a)"), false)
        );
        assert_eq!(
            t.record(&started("b"), now),
            seen(false, Some("▸ s (b), s (a)"), false)
        );
        // Cached without a start: counted, not printed, the running list unchanged.
        let cached = |v: &str| Event::Cached {
            step: "s".into(),
            values: one(v),
        };
        assert_eq!(t.record(&cached("c"), now), seen(true, None, false));
        // Cached after a start (realised by another process meanwhile).
        assert_eq!(
            t.record(&cached("a"), now),
            seen(true, Some("▸ s (b)"), false)
        );
        let retry = Event::Retrying {
            step: "s".into(),
            values: one("b"),
            attempt: 1,
            why: "exited with status 1".into(),
        };
        assert_eq!(t.record(&retry, now), seen(false, None, true));
        let executed = Event::Executed {
            step: "s".into(),
            values: one("b"),
            seconds: 2.0,
            cpu_seconds: 1.5,
            energy_joules: Some(20.0),
        };
        assert_eq!(t.record(&executed, now), seen(true, Some(""), true));
        let cancelled = Event::Failed {
            step: "s".into(),
            values: one("d"),
            outcome: Outcome::Cancelled,
            log_tail: String::new(),
        };
        assert_eq!(t.record(&cancelled, now), seen(true, None, true));
        let skipped = Event::Skipped {
            step: "s".into(),
            values: one("e"),
        };
        for _ in 0..SKIPPED_SHOWN {
            assert!(t.record(&skipped, now).print);
        }
        assert_eq!(t.record(&skipped, now), seen(true, None, false));
        assert_eq!(
            (t.cached, t.executed, t.failed, t.cancelled, t.skipped),
            (2, 1, 0, 1, SKIPPED_SHOWN + 1)
        );
        assert_eq!(t.executed_seconds, 2.0);
        assert_eq!((t.cpu_seconds, t.energy_joules), (1.5, 20.0));
        assert!(
            t.counts(now).ends_with(" · CPU 1.5 s · 20.0 J"),
            "{}",
            t.counts(now)
        );
    }

    #[test]
    fn many_running_are_cut_short() {
        let now = Instant::now();
        let mut t = tally();
        for i in 0..10 {
            t.running.push((format!("s{i}"), now));
        }
        assert_eq!(t.running_names(), "▸ s9, s8, s7, s6, s5, s4, s3, s2, …");
    }

    #[test]
    fn plain_lines_are_as_before() {
        let v = vec!["a.fastq".to_string()];
        assert_eq!(
            describe(&Event::Executed {
                step: "stats".into(),
                values: v.clone(),
                seconds: 1.234,
                cpu_seconds: 1.0,
                energy_joules: None,
            }),
            "done     stats (a.fastq) in 1.23 s"
        );
        assert_eq!(
            describe(&Event::Failed {
                step: "bad".into(),
                values: vec![],
                outcome: Outcome::Failed { exit_code: 3 },
                log_tail: "one\ntwo\n".into()
            }),
            "FAILED   bad: Failed { exit_code: 3 }\n    | one\n    | two"
        );
        assert_eq!(
            describe(&Event::Skipped {
                step: "after".into(),
                values: v
            }),
            "skipped  after (a.fastq) (an input failed)"
        );
    }
}
