//! `mustbuild simulate`: a cold run of a pipeline replayed on `cores` cores
//! without running anything, each instance taking its step's predicted
//! duration (history, else its declared `time`, else a typical step's: see
//! [`crate::run::priority`]) and its declared CPUs, in the order the
//! dispatcher hands jobs out (upward rank; a job that does not fit the free
//! cores lets a later one that does go first, as the dispatcher's slots do).
//! It reports the makespan against the lower bound max(critical path,
//! work / cores), for what-if questions ("16 cores or 64?").

use crate::instantiate::Instances;
use crate::run::priority::{Predicted, dependents, step_durations, upward_ranks};
use mustbuild_lang::model::Workflow;
use mustbuild_store::LocalStore;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// What a simulated run took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Simulation {
    pub cores: usize,
    pub instances: usize,
    /// Seconds from the first start to the last end.
    pub makespan: f64,
    /// max(critical path, work / cores): no schedule can beat it.
    pub lower_bound: f64,
    /// The longest predicted path through the graph, in seconds.
    pub critical_path: f64,
    /// Core-seconds of all instances together.
    pub work: f64,
    /// The share of the cores' time that ran instances, in [0, 1].
    pub utilisation: f64,
    /// How many steps' durations came from history, declarations or neither.
    pub predicted_from_history: usize,
    pub predicted_from_declarations: usize,
    pub predicted_as_typical: usize,
}

/// One instance to place: its duration, its cores, the instances it waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub seconds: f64,
    pub cores: usize,
    pub after: Vec<usize>,
}

/// Simulates a cold run of the `selected` instances (all when `None`) on
/// `cores` cores; `history` is the store, where there is one.
pub fn simulate(
    wf: &Workflow,
    instances: &Instances,
    history: Option<&LocalStore>,
    selected: Option<&[bool]>,
    cores: usize,
) -> Simulation {
    let cores = cores.max(1);
    let n = instances.all.len();
    let chosen = |i: usize| selected.is_none_or(|s| s[i]);
    let durations = step_durations(wf, history);
    let ranks = upward_ranks(instances, &dependents(instances, chosen), &durations);
    // The selected instances, renumbered, with the selected upstream only.
    let index: Vec<Option<usize>> = (0..n)
        .scan(0, |next, i| {
            Some(chosen(i).then(|| {
                *next += 1;
                *next - 1
            }))
        })
        .collect();
    let tasks: Vec<(Task, f64)> = (0..n)
        .filter(|&i| chosen(i))
        .map(|i| {
            let inst = &instances.all[i];
            let step = wf.step(inst.step);
            let task = Task {
                seconds: durations[inst.step.index()].0,
                cores: (step.resources.cpus as usize).clamp(1, cores),
                after: inst.deps.iter().filter_map(|d| index[d.index()]).collect(),
            };
            (task, ranks[i])
        })
        .collect();
    // The steps that have an instance in the run, by where their durations come from.
    let mut in_run = vec![false; wf.steps.len()];
    for (_, inst) in instances.all.iter().enumerate().filter(|(i, _)| chosen(*i)) {
        in_run[inst.step.index()] = true;
    }
    let count = |p: Predicted| {
        (durations.iter().zip(&in_run))
            .filter(|((_, from), used)| **used && *from == p)
            .count()
    };
    let (tasks, ranks): (Vec<Task>, Vec<f64>) = tasks.into_iter().unzip();
    let makespan = list_schedule(&tasks, &ranks, cores);
    let work: f64 = tasks.iter().map(|t| t.seconds * t.cores as f64).sum();
    let critical_path = ranks.iter().copied().fold(0.0, f64::max);
    let lower_bound = critical_path.max(work / cores as f64);
    Simulation {
        cores,
        instances: tasks.len(),
        makespan,
        lower_bound,
        critical_path,
        work,
        utilisation: if makespan > 0.0 {
            work / (makespan * cores as f64)
        } else {
            0.0
        },
        predicted_from_history: count(Predicted::History),
        predicted_from_declarations: count(Predicted::Declared),
        predicted_as_typical: count(Predicted::Typical),
    }
}

/// A ready task, highest rank first, then the first declared.
struct Ready {
    rank: f64,
    task: usize,
}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.rank.total_cmp(&other.rank)).then(other.task.cmp(&self.task))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ready {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ready {}

/// A running task, the first to end first.
struct Ends(f64, usize);

impl Ord for Ends {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.0.total_cmp(&self.0)).then(other.1.cmp(&self.1))
    }
}

impl PartialOrd for Ends {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ends {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ends {}

/// The makespan of the list schedule of `tasks` (their `after` lists point
/// at earlier or later tasks alike) on `cores` cores: whenever cores are
/// free, the ready tasks in rank order, each that fits started.
pub fn list_schedule(tasks: &[Task], ranks: &[f64], cores: usize) -> f64 {
    let n = tasks.len();
    let mut waiting: Vec<usize> = tasks.iter().map(|t| t.after.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, t) in tasks.iter().enumerate() {
        for &u in &t.after {
            dependents[u].push(i);
        }
    }
    let mut ready: BinaryHeap<Ready> = (0..n)
        .filter(|&i| waiting[i] == 0)
        .map(|task| Ready {
            rank: ranks[task],
            task,
        })
        .collect();
    let mut running: BinaryHeap<Ends> = BinaryHeap::new();
    let (mut free, mut now, mut end) = (cores, 0.0_f64, 0.0_f64);
    let mut held = Vec::new();
    loop {
        // Start, in rank order, every ready task that fits.
        while free > 0
            && let Some(r) = ready.pop()
        {
            let t = &tasks[r.task];
            if t.cores <= free {
                free -= t.cores;
                running.push(Ends(now + t.seconds, r.task));
            } else {
                held.push(r);
            }
        }
        ready.extend(held.drain(..));
        let Some(Ends(at, task)) = running.pop() else {
            break;
        };
        now = at;
        end = end.max(at);
        let mut ended = vec![task];
        while running.peek().is_some_and(|e| e.0 <= now) {
            ended.extend(running.pop().map(|e| e.1));
        }
        for task in ended {
            free += tasks[task].cores;
            for &d in &dependents[task] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    ready.push(Ready {
                        rank: ranks[d],
                        task: d,
                    });
                }
            }
        }
    }
    end
}

/// Each task's upward rank (its duration plus the highest rank below it).
#[cfg(test)]
fn ranks_of(tasks: &[Task]) -> Vec<f64> {
    let mut rank = vec![0.0_f64; tasks.len()];
    // Tests give tasks with their upstream first.
    for i in (0..tasks.len()).rev() {
        let below = (i + 1..tasks.len())
            .filter(|&j| tasks[j].after.contains(&i))
            .map(|j| rank[j])
            .fold(0.0, f64::max);
        rank[i] = tasks[i].seconds + below;
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(seconds: f64, after: &[usize]) -> Task {
        Task {
            seconds,
            cores: 1,
            after: after.to_vec(),
        }
    }

    #[test]
    fn the_critical_path_goes_first() {
        // Two short sinks declared first, a chain of two after them.
        let tasks = [
            task(1.0, &[]),
            task(1.0, &[]),
            task(1.0, &[]),
            task(1.0, &[2]),
        ];
        let ranks = ranks_of(&tasks);
        assert_eq!(ranks, [1.0, 1.0, 2.0, 1.0]);
        assert_eq!(list_schedule(&tasks, &ranks, 2), 2.0);
        // In declaration order the chain starts last.
        assert_eq!(list_schedule(&tasks, &[0.0; 4], 2), 3.0);
    }

    #[test]
    fn a_task_too_big_for_the_free_cores_lets_a_smaller_one_go_first() {
        let mut wide = task(2.0, &[]);
        wide.cores = 2;
        let tasks = [task(3.0, &[]), wide, task(1.0, &[])];
        // 0–3: the first on a core; the wide one waits; the last fills the other.
        let ranks = [3.0, 2.0, 1.0];
        assert_eq!(list_schedule(&tasks, &ranks, 2), 5.0);
    }

    #[test]
    fn nothing_takes_no_time() {
        assert_eq!(list_schedule(&[], &[], 4), 0.0);
    }
}
