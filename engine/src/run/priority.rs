//! The order runnable jobs are handed out in: jobs tried again first, then
//! the highest upward rank (the longest predicted path from a job to the end
//! of the run, its own duration included), so that the critical path starts
//! first, as HEFT's list schedule orders its tasks; the order they became
//! runnable breaks ties. A step's predicted duration is its mean wall time
//! in its pipeline's recent sessions, else its declared `time`, else the
//! median of the others' (1 s when none is known).

use super::Runnable;
use crate::instantiate::{InstanceId, Instances};
use mustbuild_lang::model::Workflow;
use mustbuild_store::LocalStore;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The recent sessions whose runs predict a step's duration.
const HISTORY_SESSIONS: usize = 5;

/// Each step's predicted duration in seconds, by step index.
pub(super) fn step_durations(wf: &Workflow, store: &LocalStore) -> Vec<f64> {
    // No history (a store that cannot say) predicts from declarations.
    let measured: HashMap<String, f64> = (store.step_walls(&wf.name, HISTORY_SESSIONS))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let known: Vec<Option<f64>> = (wf.steps.iter())
        .map(|s| {
            let declared = s.resources.time_seconds.map(|t| t as f64);
            measured.get(s.name.as_str()).copied().or(declared)
        })
        .collect();
    let mut seen: Vec<f64> = known.iter().flatten().copied().collect();
    seen.sort_by(f64::total_cmp);
    // The lower median: a typical step's.
    let default = seen
        .get(seen.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(1.0);
    known.into_iter().map(|d| d.unwrap_or(default)).collect()
}

/// Each instance's upward rank: its step's predicted duration plus the
/// highest rank among its `dependents` (the run's edges: selected instances
/// only). Sinks first, so that every rank is known when an upstream needs it.
pub(super) fn upward_ranks(
    instances: &Instances,
    dependents: &[Vec<InstanceId>],
    durations: &[f64],
) -> Vec<f64> {
    let n = instances.all.len();
    let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (d, below) in dependents.iter().enumerate() {
        for i in below {
            upstream[i.index()].push(d);
        }
    }
    let mut left: Vec<usize> = dependents.iter().map(Vec::len).collect();
    let mut rank = vec![0.0; n];
    let mut sinks: Vec<usize> = (0..n).filter(|&i| left[i] == 0).collect();
    while let Some(i) = sinks.pop() {
        let below = (dependents[i].iter())
            .map(|d| rank[d.index()])
            .fold(0.0, f64::max);
        rank[i] = durations[instances.all[i].step.index()] + below;
        for &u in &upstream[i] {
            left[u] -= 1;
            if left[u] == 0 {
                sinks.push(u);
            }
        }
    }
    rank
}

/// The runnable jobs, in the order they are handed out (see the module).
#[derive(Default)]
pub(super) struct RunQueue {
    heap: BinaryHeap<Queued>,
    pushed: u64,
}

struct Queued {
    retry: bool,
    rank: f64,
    /// When it was queued: the earlier first, among equals.
    order: u64,
    job: Runnable,
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.retry.cmp(&other.retry))
            .then(self.rank.total_cmp(&other.rank))
            .then(other.order.cmp(&self.order))
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Queued {}

impl RunQueue {
    /// Queues a job of this upward rank.
    pub(super) fn push(&mut self, job: Runnable, rank: f64) {
        self.queue(job, rank, false);
    }

    /// Queues a job tried again: ahead of every first try, behind the jobs
    /// tried again before it.
    pub(super) fn retry(&mut self, job: Runnable) {
        self.queue(job, 0.0, true);
    }

    fn queue(&mut self, job: Runnable, rank: f64, retry: bool) {
        self.pushed += 1;
        self.heap.push(Queued {
            retry,
            rank,
            order: self.pushed,
            job,
        });
    }

    /// The next job to hand out.
    pub(super) fn pop(&mut self) -> Option<Runnable> {
        self.heap.pop().map(|q| q.job)
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mustbuild_store::Digest;

    fn job(i: u32) -> Runnable {
        Runnable {
            id: InstanceId(i),
            key: Digest::of(&i.to_le_bytes()),
            forced: false,
            attempt: 0,
            memory: None,
        }
    }

    #[test]
    fn retries_then_the_highest_rank_then_the_first_queued() {
        let mut q = RunQueue::default();
        q.push(job(0), 1.0);
        q.push(job(1), 3.0);
        q.push(job(2), 1.0);
        q.retry(job(3));
        q.push(job(4), 3.0);
        q.retry(job(5));
        let order: Vec<u32> = std::iter::from_fn(|| q.pop()).map(|r| r.id.0).collect();
        assert_eq!(order, [3, 5, 1, 4, 0, 2]);
        assert_eq!(q.len(), 0);
    }
}
