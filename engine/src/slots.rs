//! The CPUs, memory and GPUs that commands share on this machine.
//!
//! A worker prepares a job (its key's lock, its scratch folder, its inputs) before
//! it asks for the job's share, and takes the share only for the command itself:
//! so when a command ends, the next one is ready to start at once, and the file
//! work of jobs (copies, fsyncs) overlaps the commands instead of keeping a slot
//! idle. When a share comes back, only the waiter it goes to is woken: waking
//! them all would have every waiting worker take the lock in turn, for nothing,
//! between one command's end and the next one's start.
//!
//! Jobs start in the order the run hands them out, as far as resources allow: a
//! job is queued when handed out, and a share goes to the first queued job it
//! fits, even if a later one is prepared sooner (a job waiting for another
//! process's lock on its derivation leaves the queue meanwhile).

use mustbuild_executors::CancelToken;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What one command holds while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Share {
    pub cpus: usize,
    pub memory: u64,
    /// The GPUs it was given, by the names `CUDA_VISIBLE_DEVICES` takes.
    pub gpus: Vec<String>,
}

/// Why a worker did not get its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The run stops starting commands (a failure without `--keep-going`).
    Closed,
    /// Ctrl-C.
    Cancelled,
}

pub(crate) struct Slots {
    free: Mutex<Free>,
}

struct Free {
    cpus: usize,
    memory: u64,
    gpus: Vec<String>,
    closed: bool,
    /// The queued jobs, by ticket.
    waiting: std::collections::BTreeMap<u64, Waiter>,
}

/// A queued job: what it needs (CPUs, memory, GPUs), and how to wake its worker
/// once that waits (`None` while it still prepares the job).
struct Waiter {
    need: (usize, u64, usize),
    wake: Option<Arc<Condvar>>,
}

impl Free {
    fn fits(&self, &(cpus, memory, gpus): &(usize, u64, usize)) -> bool {
        cpus <= self.cpus && memory <= self.memory && gpus <= self.gpus.len()
    }

    /// Wakes the worker of the first queued job that fits what is free: the one
    /// that may take a share now (if it waits already; else it takes it when it
    /// asks).
    fn wake_next(&self) {
        if let Some(w) = self.waiting.values().find(|w| self.fits(&w.need))
            && let Some(wake) = &w.wake
        {
            wake.notify_one();
        }
    }

    fn wake_all(&self) {
        for wake in self.waiting.values().filter_map(|w| w.wake.as_ref()) {
            wake.notify_one();
        }
    }
}

/// How often a waiting worker looks at the cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(50);

impl Slots {
    pub(crate) fn new(cpus: usize, memory: u64, gpus: Vec<String>) -> Slots {
        Slots {
            free: Mutex::new(Free {
                cpus,
                memory,
                gpus,
                closed: false,
                waiting: Default::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Free> {
        // The counters stay whole even if a holder panicked: every change is one
        // assignment made after its checks.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job handed out (`ticket`s are unique and given in order).
    pub(crate) fn queue(&self, ticket: u64, cpus: usize, memory: u64, gpus: usize) {
        let need = (cpus, memory, gpus);
        self.lock()
            .waiting
            .insert(ticket, Waiter { need, wake: None });
    }

    /// Takes a job out of the queue (it waits for something else, or ends without
    /// running a command): later ones no longer wait behind it.
    pub(crate) fn leave(&self, ticket: u64) {
        let mut free = self.lock();
        if free.waiting.remove(&ticket).is_some() {
            free.wake_next();
        }
    }

    /// Waits until `cpus` CPUs, `memory` bytes and `gpus` GPUs are free and no job
    /// queued with an earlier `ticket` could take them, and takes them (queuing
    /// the job again if it left). The caller has made sure that the whole machine
    /// can hold them. `taken` is called before any other job can take a share, so
    /// that what it reports comes in the order shares were taken.
    pub(crate) fn take(
        &self,
        ticket: u64,
        cpus: usize,
        memory: u64,
        gpus: usize,
        cancel: &CancelToken,
        taken: impl FnOnce(),
    ) -> Result<Share, Refused> {
        let need = (cpus, memory, gpus);
        let wake = Arc::new(Condvar::new());
        let mut free = self.lock();
        free.waiting.insert(
            ticket,
            Waiter {
                need,
                wake: Some(wake.clone()),
            },
        );
        loop {
            let refused = if free.closed {
                Some(Refused::Closed)
            } else if cancel.is_cancelled() {
                Some(Refused::Cancelled)
            } else {
                None
            };
            if let Some(why) = refused {
                free.waiting.remove(&ticket);
                return Err(why);
            }
            let first = !free
                .waiting
                .range(..ticket)
                .any(|(_, w)| free.fits(&w.need));
            if first && free.fits(&need) {
                free.waiting.remove(&ticket);
                free.cpus -= cpus;
                free.memory -= memory;
                let at = free.gpus.len() - gpus;
                let gpus = free.gpus.split_off(at);
                taken();
                // What is left may fit a later waiter that waited behind this one.
                free.wake_next();
                return Ok(Share { cpus, memory, gpus });
            }
            free = match wake.wait_timeout(free, CANCEL_POLL) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Gives a share back when its command has ended.
    pub(crate) fn give(&self, share: Share) {
        let mut free = self.lock();
        free.cpus += share.cpus;
        free.memory += share.memory;
        free.gpus.extend(share.gpus);
        free.wake_next();
    }

    /// Whether commands may no longer start (`close`).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// No command starts from now on; waiters are refused.
    pub(crate) fn close(&self) {
        let mut free = self.lock();
        free.closed = true;
        free.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiter_starts_when_a_share_comes_back() {
        let slots = Arc::new(Slots::new(2, 10, vec!["0".into(), "1".into()]));
        let cancel = CancelToken::default();
        let big = slots.take(0, 2, 4, 2, &cancel, || ()).unwrap();
        assert_eq!(big.gpus.len(), 2);
        let (s, c) = (slots.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || s.take(1, 1, 6, 1, &c, || ()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "took a share that was not free");
        slots.give(big);
        let small = waiter.join().unwrap().unwrap();
        assert_eq!((small.cpus, small.memory, small.gpus.len()), (1, 6, 1));
        // 1 CPU, 4 bytes and 1 GPU are left: 5 bytes do not fit.
        let (s, c) = (slots.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || s.take(2, 1, 5, 0, &c, || ()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        slots.give(small);
        assert!(waiter.join().unwrap().is_ok());
    }

    #[test]
    fn the_first_waiter_that_fits_goes_first() {
        let slots = Arc::new(Slots::new(2, u64::MAX, Vec::new()));
        let cancel = CancelToken::default();
        let held = slots.take(0, 2, 0, 0, &cancel, || ()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Tickets 3, 2, 1 start waiting in that order; 4 needs both CPUs.
        let mut waiters = Vec::new();
        for ticket in [4, 3, 2, 1] {
            let (s, c, tx) = (slots.clone(), cancel.clone(), tx.clone());
            let cpus = if ticket == 4 { 2 } else { 1 };
            waiters.push(std::thread::spawn(move || {
                let share = s
                    .take(ticket, cpus, 0, 0, &c, || tx.send(ticket).unwrap())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(30));
                s.give(share);
            }));
            std::thread::sleep(Duration::from_millis(10));
        }
        slots.give(held);
        for w in waiters {
            w.join().unwrap();
        }
        let order: Vec<u64> = rx.try_iter().collect();
        assert_eq!(&order[..2], &[1, 2], "{order:?}");
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn a_queued_job_is_waited_for_until_it_leaves() {
        let slots = Arc::new(Slots::new(1, u64::MAX, Vec::new()));
        let cancel = CancelToken::default();
        slots.queue(0, 1, 0, 0);
        slots.queue(1, 1, 0, 0);
        let (s, c) = (slots.clone(), cancel.clone());
        let later = std::thread::spawn(move || s.take(1, 1, 0, 0, &c, || ()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!later.is_finished(), "went before the job queued first");
        slots.leave(0);
        assert!(later.join().unwrap().is_ok());
    }

    #[test]
    fn closing_and_cancelling_refuse_waiters() {
        let slots = Arc::new(Slots::new(1, u64::MAX, Vec::new()));
        let cancel = CancelToken::default();
        let held = slots.take(0, 1, 0, 0, &cancel, || ()).unwrap();
        let (s, c) = (slots.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || s.take(1, 1, 0, 0, &c, || ()));
        slots.close();
        assert_eq!(waiter.join().unwrap(), Err(Refused::Closed));
        slots.give(held);
        assert_eq!(slots.take(2, 1, 0, 0, &cancel, || ()), Err(Refused::Closed));

        let slots = Arc::new(Slots::new(1, u64::MAX, Vec::new()));
        let held = slots.take(0, 1, 0, 0, &cancel, || ()).unwrap();
        let (s, c) = (slots.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || s.take(1, 1, 0, 0, &c, || ()));
        cancel.cancel();
        assert_eq!(waiter.join().unwrap(), Err(Refused::Cancelled));
        drop(held);
    }
}
