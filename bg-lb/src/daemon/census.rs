//! The flow census: sweeps of the flow table, run by the [`sweeper`]
//! thread and bounded in cost, whose counts status, metrics and drains read.
//!
//! [`sweeper`]: super::sweeper

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{Daemon, RequestError, SWEEP_DUTY_CYCLE, sweeper::Done};
use crate::dataplane::{listener::ListenerKey, sweep::SweepReport};

impl Daemon {
    /// Once a second: flow housekeeping, then the fleet's counters and
    /// shift leads (`[cluster]`), then progressive shifts, then SYN floods.
    pub fn tick(&mut self) {
        self.request_sweep(Duration::from_secs(1));
        self.tick_fleet();
        self.tick_shifts();
        self.tick_slow_starts();
        self.tick_drain_deadlines();
        if let Err(e) = self.log_syn_floods() {
            tracing::error!(error = %e, "reading the SYN flood detectors failed");
        }
    }

    /// Asks the sweeper for a sweep if the census is older than `max_age`
    /// and none runs, unless the last sweep was so costly (a huge flow
    /// table) that sweeping now would keep a core busy more than a quarter
    /// of the time.
    pub(super) fn request_sweep(&mut self, max_age: Duration) {
        let due = self
            .swept
            .is_none_or(|(at, cost)| at.elapsed() >= max_age.max(cost * SWEEP_DUTY_CYCLE));
        if self.sweeping || !due {
            return;
        }
        if self.sweeper.sweep(self.config.timeouts, self.dataplane.writes()) {
            self.sweeping = true;
        } else {
            tracing::error!("the flow sweeper thread is gone; flows are no longer swept");
        }
    }

    /// A message from the sweeper: a sweep's outcome, or a listing to
    /// answer.
    pub fn on_sweeper(&mut self, done: Done) {
        match done {
            Done::Swept {
                result,
                writes,
                started,
            } => {
                self.sweeping = false;
                match result {
                    Ok(report) => self.settle(*report, writes, started),
                    Err(e) => tracing::error!(error = %e, "flow housekeeping failed"),
                }
            }
            Done::Listed { result, reply } => {
                let answer = self.flows_reply(result);
                self.answer(crate::protocol::FLOWS_CMD, answer, reply);
            }
        }
    }

    /// Takes a sweep begun at `started` into account: its census, and what
    /// the data plane must do after it.
    fn settle(&mut self, report: SweepReport, writes: u64, started: Instant) {
        if let Err(e) = self.dataplane.settle(&report, writes, &self.live_backends()) {
            tracing::error!(error = %e, "flow housekeeping failed");
        }
        tracing::debug!(
            took_ms = report.took.as_millis() as u64,
            flows_read = report.flows.visited,
            reverse_read = report.reverse.visited,
            expired = report.census.expired,
            orphans = report.census.orphans,
            complete = report.complete,
            "flow sweep done"
        );
        if !report.complete {
            tracing::warn!(
                visited = report.flows.visited,
                repeats = report.flows.repeats,
                "the flow sweep gave up on a walk the kernel kept restarting; counts stay those of the last complete sweep"
            );
            return;
        }
        self.swept = Some((started, report.took));
        self.census = report.census;
    }

    /// Sweeps here and now, for the census at start-up.
    pub(super) fn sweep_now(&mut self) -> Result<(), RequestError> {
        let started = Instant::now();
        let live = self.live_backends();
        self.census = self.dataplane.housekeeping(&self.config.timeouts, &live)?;
        self.swept = Some((started, started.elapsed()));
        Ok(())
    }

    /// The configured backends of each service key (live and standby VIP):
    /// ids of the others are freed once no flow names them.
    fn live_backends(&self) -> HashMap<ListenerKey, HashSet<SocketAddr>> {
        self.config
            .services
            .iter()
            .flat_map(|s| {
                let backends: HashSet<_> = s.backends.iter().map(|b| b.address).collect();
                s.keys().map(move |key| (key, backends.clone()))
            })
            .collect()
    }
}
