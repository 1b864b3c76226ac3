//! The sweeper: a thread of its own that sweeps the flow table and lists
//! flows for `ctl flows`, through [`SweepMaps`], so the event loop never
//! walks the table. It answers with messages ([`Done`]); the daemon applies
//! what follows from them, and stays the only writer of service state.

use std::{
    sync::mpsc::{self, Receiver, Sender, TryRecvError},
    thread::{self, JoinHandle},
    time::Instant,
};

use tokio::sync::{mpsc::UnboundedSender, oneshot};

use crate::{
    dataplane::{
        DataplaneError, FlowTimeouts,
        sweep::{FlowListing, FlowQuery, SweepMaps, SweepReport},
    },
    protocol::Reply,
};

/// What the daemon asks of the sweeper.
enum Job {
    /// Sweep once; `writes` is [`crate::dataplane::Dataplane::writes`] now.
    Sweep { timeouts: FlowTimeouts, writes: u64 },
    List {
        query: FlowQuery,
        reply: oneshot::Sender<Reply>,
    },
}

/// What the sweeper sends back.
pub enum Done {
    Swept {
        result: Result<Box<SweepReport>, DataplaneError>,
        writes: u64,
        started: Instant,
    },
    Listed {
        result: Result<FlowListing, DataplaneError>,
        reply: oneshot::Sender<Reply>,
    },
}

/// The daemon's handle on the sweeper thread; dropping it stops the thread
/// at its next slice and waits for it.
pub(super) struct Sweeper {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    pub(super) fn spawn(maps: SweepMaps, done: UnboundedSender<Done>) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let thread = thread::Builder::new().name("bg-lb-sweeper".into()).spawn(move || {
            lower_priority();
            run(&maps, &queue, &done)
        })?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Asks for a sweep; `false` if the thread is gone.
    pub(super) fn sweep(&self, timeouts: FlowTimeouts, writes: u64) -> bool {
        self.send(Job::Sweep { timeouts, writes }).is_ok()
    }

    /// Asks for a listing, answered on `reply`; gives `reply` back if the
    /// thread is gone.
    pub(super) fn list(&self, query: FlowQuery, reply: oneshot::Sender<Reply>) -> Result<(), oneshot::Sender<Reply>> {
        match self.send(Job::List { query, reply }) {
            Err(Job::List { reply, .. }) => Err(reply),
            _ => Ok(()),
        }
    }

    fn send(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(maps: &SweepMaps, queue: &Receiver<Job>, done: &UnboundedSender<Done>) {
    let mut ipv6 = Ipv6Idle::default();
    while let Ok(job) = queue.recv() {
        match job {
            Job::List { query, reply } => list(maps, query, reply, done),
            Job::Sweep { timeouts, writes } => {
                let started = Instant::now();
                let skip_ipv6 = ipv6.still_idle(writes);
                // Between slices: listings wait for a slice, not a sweep. The
                // daemon asks for no sweep while one runs.
                let result = maps.sweep(&timeouts, skip_ipv6, || {
                    loop {
                        match queue.try_recv() {
                            Ok(Job::List { query, reply }) => list(maps, query, reply, done),
                            Ok(Job::Sweep { .. }) => {}
                            Err(TryRecvError::Empty) => return true,
                            Err(TryRecvError::Disconnected) => return false,
                        }
                    }
                });
                ipv6.found(result.as_ref().is_ok_and(|r| r.ipv6_idle), writes);
                let _ = done.send(Done::Swept {
                    result: result.map(Box::new),
                    writes,
                    started,
                });
            }
        }
    }
}

/// Whether the IPv6 tables may be left unswept: a sweep found them idle
/// (no IPv6 service, no entry) when the data plane's write count was
/// `at`. With no write since, no IPv6 service can have come and gone.
#[derive(Debug, Default)]
struct Ipv6Idle {
    at: Option<u64>,
}

impl Ipv6Idle {
    fn still_idle(&self, writes: u64) -> bool {
        self.at == Some(writes)
    }

    /// A sweep asked for at `writes` found IPv6 `idle` or not.
    fn found(&mut self, idle: bool, writes: u64) {
        self.at = idle.then_some(writes);
    }
}

/// Nice 10 for this thread only: on a busy host the event loop and the
/// health probes get the CPU before a sweep does.
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id
    // changes only this thread's nice value.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) != 0
    };
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the sweeper's priority");
    }
}

fn list(maps: &SweepMaps, query: FlowQuery, reply: oneshot::Sender<Reply>, done: &UnboundedSender<Done>) {
    let result = maps.list(&query);
    let _ = done.send(Done::Listed { result, reply });
}

#[cfg(test)]
mod tests {
    use super::Ipv6Idle;

    #[test]
    fn ipv6_tables_are_skipped_only_until_the_data_plane_is_written_again() {
        let mut ipv6 = Ipv6Idle::default();
        assert!(!ipv6.still_idle(0), "the first sweep walks them");
        ipv6.found(true, 7);
        assert!(ipv6.still_idle(7));
        assert!(!ipv6.still_idle(8), "a write since may have added an IPv6 service");
        ipv6.found(false, 8);
        assert!(!ipv6.still_idle(8), "found busy: walked again");
    }
}
