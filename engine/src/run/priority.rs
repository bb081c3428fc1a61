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

/// Where a step's predicted duration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Predicted {
    /// Its mean wall time in the pipeline's recent sessions.
    History,
    /// Its declared `time`.
    Declared,
    /// Neither: a typical step's (the lower median of the others').
    Typical,
}

/// Each step's predicted duration in seconds, by step index, and where it
/// comes from; `history` is the store, where there is one.
pub fn step_durations(wf: &Workflow, history: Option<&LocalStore>) -> Vec<(f64, Predicted)> {
    // A store that cannot say predicts from declarations.
    let measured: HashMap<String, f64> = history
        .and_then(|store| store.step_walls(&wf.name, HISTORY_SESSIONS).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let known: Vec<Option<(f64, Predicted)>> = (wf.steps.iter())
        .map(|s| {
            let declared = s
                .resources
                .time_seconds
                .map(|t| (t as f64, Predicted::Declared));
            let seen = measured
                .get(s.name.as_str())
                .map(|&w| (w, Predicted::History));
            seen.or(declared)
        })
        .collect();
    let mut seen: Vec<f64> = known.iter().flatten().map(|k| k.0).collect();
    seen.sort_by(f64::total_cmp);
    // The lower median: a typical step's.
    let typical = seen
        .get(seen.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(1.0);
    (known.into_iter())
        .map(|d| d.unwrap_or((typical, Predicted::Typical)))
        .collect()
}

/// For each instance, the `selected` instances that read its outputs: the
/// run's edges, downward.
pub fn dependents(instances: &Instances, selected: impl Fn(usize) -> bool) -> Vec<Vec<InstanceId>> {
    let mut dependents: Vec<Vec<InstanceId>> = vec![Vec::new(); instances.all.len()];
    for (i, inst) in instances
        .all
        .iter()
        .enumerate()
        .filter(|(i, _)| selected(*i))
    {
        for d in &inst.deps {
            dependents[d.index()].push(InstanceId(i as u32));
        }
    }
    dependents
}

/// Each instance's upward rank: its step's predicted duration plus the
/// highest rank among its `dependents` (the run's edges: selected instances
/// only). Sinks first, so that every rank is known when an upstream needs it.
pub fn upward_ranks(
    instances: &Instances,
    dependents: &[Vec<InstanceId>],
    durations: &[(f64, Predicted)],
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
        rank[i] = durations[instances.all[i].step.index()].0 + below;
        for &u in &upstream[i] {
            left[u] -= 1;
            if left[u] == 0 {
                sinks.push(u);
            }
        }
    }
    rank
}

/// The rank to queue instance `id` with. While the queue is empty none is
/// needed (one job's order cannot matter); the first time a job joins
/// another, every rank is computed (`compute`) and the queued job takes
/// its own. A run that never has two jobs waiting at once (an edit's
/// rerun) reads no history for them.
pub(super) fn rank_for(
    queue: &mut RunQueue,
    ranks: &mut Option<Vec<f64>>,
    id: InstanceId,
    compute: impl FnOnce() -> Vec<f64>,
) -> f64 {
    if ranks.is_none() && queue.len() > 0 {
        let computed = compute();
        queue.rerank(&computed);
        *ranks = Some(computed);
    }
    ranks.as_ref().map_or(0.0, |r| r[id.index()])
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

    /// Gives each queued first try its rank in `ranks`.
    fn rerank(&mut self, ranks: &[f64]) {
        let queued = std::mem::take(&mut self.heap).into_vec();
        self.heap = (queued.into_iter())
            .map(|q| Queued {
                rank: if q.retry {
                    q.rank
                } else {
                    ranks[q.job.id.index()]
                },
                ..q
            })
            .collect();
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

    #[test]
    fn ranks_are_computed_when_a_second_job_waits_and_the_first_takes_its_own() {
        let mut q = RunQueue::default();
        let mut ranks = None;
        let computed = std::cell::Cell::new(0);
        let compute = || {
            computed.set(computed.get() + 1);
            vec![1.0, 5.0, 3.0]
        };
        let r = rank_for(&mut q, &mut ranks, InstanceId(0), compute);
        q.push(job(0), r);
        assert_eq!(ranks, None);
        // Alone, it went out unranked.
        assert_eq!(q.pop().map(|j| j.id), Some(InstanceId(0)));
        let r = rank_for(&mut q, &mut ranks, InstanceId(2), compute);
        q.push(job(2), r);
        assert_eq!(ranks, None);
        let r = rank_for(&mut q, &mut ranks, InstanceId(1), compute);
        q.push(job(1), r);
        assert_eq!((r, computed.get()), (5.0, 1));
        let r = rank_for(&mut q, &mut ranks, InstanceId(0), compute);
        q.push(job(0), r);
        assert_eq!(computed.get(), 1);
        let order: Vec<u32> = std::iter::from_fn(|| q.pop()).map(|r| r.id.0).collect();
        assert_eq!(order, [1, 2, 0]);
    }
}
