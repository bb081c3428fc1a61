//! Reading a job event log (`log = FILE` in the submit description) as it
//! grows: each call reads only what was appended, and keeps a partial event
//! for the next. Events are text blocks that end with a `...` line:
//!
//! ```text
//! 005 (123.004.000) 2026-12-07 11:00:02 Job terminated.
//!     (1) Normal termination (return value 0)
//!     …
//!        Memory (MB)          :        3        1         1
//! ...
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// One event of interest, for job `cluster.proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub cluster: u64,
    pub proc: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// 001: running on this host.
    Executing { host: Option<String> },
    /// 005: ended by itself, with the memory it used (MB) where told.
    Terminated { exit: Exit, memory_mb: Option<u64> },
    /// 004: evicted from its machine (it will run again unless held).
    Evicted,
    /// 012: held, with the reason and HTCondor's codes.
    Held {
        reason: String,
        code: Option<u32>,
        subcode: Option<u32>,
    },
    /// 013: released from hold.
    Released,
    /// 009: removed (aborted), with the reason.
    Aborted { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// An event log, read from where the last call stopped.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl EventLog {
    pub fn new(path: PathBuf) -> EventLog {
        EventLog {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The events appended since the last call (none while the file is absent).
    pub fn read_new(&mut self) -> std::io::Result<Vec<Event>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        Ok(self.take_complete())
    }

    fn take_complete(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        // Events end with a line of three dots.
        while let Some(end) = self
            .partial
            .find("\n...\n")
            .map(|i| i + 5)
            .or_else(|| self.partial.starts_with("...\n").then_some(4))
        {
            let block: String = self.partial.drain(..end).collect();
            if let Some(e) = parse(&block) {
                events.push(e);
            }
        }
        events
    }
}

/// One event's text, `...` line included; `None` for events of no interest.
pub fn parse(block: &str) -> Option<Event> {
    let mut lines = block
        .lines()
        .map(str::trim_end)
        .skip_while(|l| l.trim().is_empty());
    let head = lines.next()?;
    let (code, rest) = head.split_once(' ')?;
    let id = rest.strip_prefix('(')?.split(')').next()?;
    let mut parts = id.split('.');
    let cluster = parts.next()?.parse().ok()?;
    let proc = parts.next()?.parse().ok()?;
    let body: Vec<&str> = lines.map(str::trim).filter(|l| *l != "...").collect();
    let kind = match code {
        "001" => Kind::Executing {
            host: head
                .split_once("host: ")
                .map(|(_, h)| h.trim().trim_matches(['<', '>']).to_string()),
        },
        "004" => Kind::Evicted,
        "005" => {
            let exit = body.iter().find_map(|l| {
                if let Some(v) = l.split_once("(return value ") {
                    v.1.trim_end_matches(')').parse().ok().map(Exit::Code)
                } else if let Some(v) = l.split_once("(signal ") {
                    v.1.trim_end_matches(')').parse().ok().map(Exit::Signal)
                } else {
                    None
                }
            })?;
            let memory_mb = body.iter().find_map(|l| {
                let (name, values) = l.split_once(':')?;
                (name.trim() == "Memory (MB)")
                    .then(|| values.split_whitespace().next()?.parse().ok())?
            });
            Kind::Terminated { exit, memory_mb }
        }
        "009" => Kind::Aborted {
            reason: body.first().map(|s| s.to_string()).unwrap_or_default(),
        },
        "012" => {
            let codes = body.iter().find(|l| l.starts_with("Code "));
            let number = |word: &str| {
                codes.and_then(|l| {
                    let mut w = l.split_whitespace();
                    while let Some(x) = w.next() {
                        if x == word {
                            return w.next()?.parse().ok();
                        }
                    }
                    None
                })
            };
            Kind::Held {
                reason: body
                    .iter()
                    .find(|l| !l.starts_with("Code "))
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                code: number("Code"),
                subcode: number("Subcode"),
            }
        }
        "013" => Kind::Released,
        _ => return None,
    };
    Some(Event {
        cluster,
        proc,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // As HTCondor 23.9 (Debian 13) writes them, from the pool of
    // scripts/htcondor-pool.
    const LOG: &str = "000 (007.000.000) 2026-12-07 11:00:00 Job submitted from host: <127.0.0.1:9618?addrs=127.0.0.1-9618>
...
001 (007.000.000) 2026-12-07 11:00:01 Job executing on host: <127.0.0.1:9618?addrs=127.0.0.1-9618&alias=node1>
...
005 (007.000.000) 2026-12-07 11:00:02 Job terminated.
\t(1) Normal termination (return value 3)
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage
\t0  -  Run Bytes Sent By Job
\tPartitionable Resources :    Usage  Request Allocated
\t   Cpus                 :                 1         1
\t   Disk (KB)            :       25        1    123456
\t   Memory (MB)          :       12        1         1
...
012 (007.001.000) 2026-12-07 11:00:05 Job was held.
\tmemory usage exceeded 1.5 x request_memory: 300 MB used, 128 MB requested
\tCode 21 Subcode 102
...
009 (007.001.000) 2026-12-07 11:00:09 Job was aborted.
\tremoved by the memory policy: memory usage exceeded 1.5 x request_memory
...
005 (007.002.000) 2026-12-07 11:00:02 Job terminated.
\t(0) Abnormal termination (signal 9)
...
";

    #[test]
    fn events_are_parsed_as_the_pool_writes_them() {
        let events: Vec<Event> = LOG.split_inclusive("...\n").filter_map(parse).collect();
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!((events[0].cluster, events[0].proc), (7, 0));
        assert!(
            matches!(&events[0].kind, Kind::Executing { host: Some(h) } if h.starts_with("127.0.0.1"))
        );
        assert_eq!(
            events[1].kind,
            Kind::Terminated {
                exit: Exit::Code(3),
                memory_mb: Some(12)
            }
        );
        assert_eq!(
            events[2].kind,
            Kind::Held {
                reason: "memory usage exceeded 1.5 x request_memory: 300 MB used, 128 MB requested"
                    .into(),
                code: Some(21),
                subcode: Some(102)
            }
        );
        assert!(
            matches!(&events[3].kind, Kind::Aborted { reason } if reason.starts_with("removed by the memory policy"))
        );
        assert_eq!(
            events[4].kind,
            Kind::Terminated {
                exit: Exit::Signal(9),
                memory_mb: None
            }
        );
    }

    #[test]
    fn a_growing_log_is_read_in_pieces_and_a_partial_event_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let mut log = EventLog::new(path.clone());
        assert!(log.read_new().unwrap().is_empty(), "no file yet");
        let cut = LOG.find("\t(1) Normal").unwrap();
        std::fs::write(&path, &LOG[..cut]).unwrap();
        let first = log.read_new().unwrap();
        assert_eq!(first.len(), 1, "only the executing event is complete");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &LOG.as_bytes()[cut..]).unwrap();
        let rest = log.read_new().unwrap();
        assert_eq!(rest.len(), 4);
        assert!(matches!(rest[0].kind, Kind::Terminated { .. }));
        assert!(log.read_new().unwrap().is_empty(), "nothing read twice");
    }
}
