//! Client affinity as the clients see it: the ratio in force over time,
//! polled from the daemon ([`RatioLog`]), and each client's visits (the
//! load's [`Tally::clients`]) laid against it ([`Journeys`]): the step at
//! which each client moved to the new version, whether any went back, and
//! whether one client's connections within a step reached one backend.
//! The demo narrates it; the shift test asserts it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use bg_lb::{
    cli::ctl::Client,
    protocol::{Request, StatusRequest},
};

use crate::load::{Tally, Visit};

/// How often [`RatioLog`] asks. Every ratio a test or the demo sets is held
/// far longer, so no change goes unseen between two polls.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// One status poll: the ratio was in force at some moment between `asked`
/// and `answered`.
#[derive(Clone, Debug)]
struct Poll {
    asked: Instant,
    answered: Instant,
    ratio: String,
}

/// Polls a service's ratio over the admin socket until dropped; started
/// once the first poll was answered.
pub struct RatioLog {
    polls: Arc<Mutex<Vec<Poll>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RatioLog {
    pub fn start(socket: PathBuf, service: &str) -> Self {
        let (polls, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let request = Request::Status(StatusRequest {
            service: Some(service.to_owned()),
        });
        let (log, stopped) = (polls.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut client = None;
            while !stopped.load(Ordering::Relaxed) {
                let asked = Instant::now();
                if let Some(ratio) = ask_ratio(&mut client, &socket, &request) {
                    let answered = Instant::now();
                    log.lock()
                        .expect("ratio log lock")
                        .push(Poll { asked, answered, ratio });
                }
                thread::sleep(POLL_EVERY);
            }
        });
        let log = RatioLog {
            polls,
            stop,
            thread: Some(thread),
        };
        // Visits are placed between polls: none before the first.
        let until = Instant::now() + Duration::from_secs(10);
        while log.polls.lock().expect("ratio log lock").is_empty() {
            assert!(Instant::now() < until, "the daemon's status never answered");
            thread::sleep(POLL_EVERY);
        }
        log
    }

    /// The ratios seen so far, as phases.
    pub fn phases(&self) -> Phases {
        Phases::of(self.polls.lock().expect("ratio log lock").clone())
    }
}

impl Drop for RatioLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The service's ratio, over `client` (connected first if need be; dropped
/// on an error, to connect again next time).
fn ask_ratio(client: &mut Option<Client>, socket: &Path, request: &Request) -> Option<String> {
    let connected = match client {
        Some(c) => c,
        None => client.insert(Client::connect(socket).ok()?),
    };
    match connected.request(request) {
        Ok(reply) => Some(reply.services?.first()?.ratio.to_string()),
        Err(_) => {
            *client = None;
            None
        }
    }
}

/// The polls cut into phases: runs of polls that saw one ratio.
pub struct Phases {
    polls: Vec<Poll>,
    /// The phase of each poll.
    phase_of: Vec<usize>,
    /// Each phase's ratio, in order.
    ratios: Vec<String>,
}

impl Phases {
    fn of(polls: Vec<Poll>) -> Self {
        let mut ratios: Vec<String> = Vec::new();
        let phase_of = polls
            .iter()
            .map(|poll| {
                if ratios.last() != Some(&poll.ratio) {
                    ratios.push(poll.ratio.clone());
                }
                ratios.len() - 1
            })
            .collect();
        Phases {
            polls,
            phase_of,
            ratios,
        }
    }

    /// The ratio of each phase, in order.
    pub fn ratios(&self) -> &[String] {
        &self.ratios
    }

    /// The phase `visit` surely fell in: a poll answered before it began
    /// and one asked after it ended saw the same phase. `None` for a visit
    /// across a change (or outside the log).
    fn during(&self, visit: &Visit) -> Option<usize> {
        let before = self
            .polls
            .partition_point(|p| p.answered <= visit.started)
            .checked_sub(1)?;
        let after = self.polls.partition_point(|p| p.asked < visit.ended);
        let (a, b) = (self.phase_of[before], *self.phase_of.get(after)?);
        (a == b).then_some(a)
    }

    /// The phase the first poll asked after `visit` ended saw (the last
    /// phase if none was).
    fn at_or_after(&self, visit: &Visit) -> usize {
        let after = self.polls.partition_point(|p| p.asked < visit.ended);
        self.phase_of
            .get(after)
            .or(self.phase_of.last())
            .copied()
            .unwrap_or_default()
    }

    /// What each client saw, phase by phase, `new` being the new version.
    pub fn journeys(&self, tally: &Tally, new: &str) -> Journeys {
        let mut phases: Vec<PhaseReport> = self
            .ratios
            .iter()
            .map(|ratio| PhaseReport {
                ratio: ratio.clone(),
                ..PhaseReport::default()
            })
            .collect();
        let mut went_back = Vec::new();
        for (&client, visits) in &tally.clients {
            // Per phase, the backends and versions that served the client.
            let mut served: BTreeMap<usize, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
            for visit in visits {
                if let Some(p) = self.during(visit) {
                    let (backends, versions) = served.entry(p).or_default();
                    backends.insert(&visit.backend);
                    versions.insert(&visit.version);
                }
            }
            for (p, (backends, versions)) in served {
                phases[p].seen += 1;
                phases[p].on_new += usize::from(versions.contains(new));
                if backends.len() > 1 {
                    phases[p]
                        .split
                        .push((client, backends.iter().map(|b| b.to_string()).collect()));
                }
            }
            let first_new = visits.iter().position(|v| v.version == new);
            if let Some(first) = first_new {
                if first > 0 {
                    // A visit across a change counts in the later phase: a
                    // client keeps its version while the ratio does.
                    phases[self
                        .during(&visits[first])
                        .unwrap_or_else(|| self.at_or_after(&visits[first]))]
                    .moved += 1;
                }
                if visits[first..].iter().any(|v| v.version != new) {
                    went_back.push((client, runs(visits)));
                }
            }
        }
        Journeys {
            clients: tally.clients.len(),
            phases,
            went_back,
        }
    }
}

/// A client's visits as runs: `v1 on b2 x4`.
fn runs(visits: &[Visit]) -> Vec<String> {
    let mut runs: Vec<(&str, &str, usize)> = Vec::new();
    for v in visits {
        match runs.last_mut() {
            Some((version, backend, n)) if *version == v.version && *backend == v.backend => *n += 1,
            _ => runs.push((&v.version, &v.backend, 1)),
        }
    }
    runs.iter()
        .map(|(version, backend, n)| format!("{version} on {backend} x{n}"))
        .collect()
}

/// What the clients saw during one phase (one ratio held), counted in
/// clients.
#[derive(Clone, Debug, Default)]
pub struct PhaseReport {
    pub ratio: String,
    /// Clients with a visit that surely fell in the phase.
    pub seen: usize,
    /// Clients served by the new version in the phase.
    pub on_new: usize,
    /// Clients whose first visit to the new version came in the phase,
    /// after visits to the old one.
    pub moved: usize,
    /// Clients whose connections in the phase reached more than one
    /// backend, with those backends.
    pub split: Vec<(IpAddr, Vec<String>)>,
}

/// Every client's path through a release.
#[derive(Clone, Debug)]
pub struct Journeys {
    pub clients: usize,
    pub phases: Vec<PhaseReport>,
    /// Clients that saw the new version and then the old one again, with
    /// their visits as runs.
    pub went_back: Vec<(IpAddr, Vec<String>)>,
}

impl Journeys {
    /// True when no client went back and no client was split within a
    /// phase.
    pub fn kept(&self) -> bool {
        self.went_back.is_empty() && self.phases.iter().all(|p| p.split.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// Polls every 10 ms from `t0`: 100:0 for the first five, then 90:10.
    fn phases(t0: Instant) -> Phases {
        let polls = (0..10)
            .map(|i| Poll {
                asked: t0 + Duration::from_millis(10 * i),
                answered: t0 + Duration::from_millis(10 * i + 1),
                ratio: if i < 5 { "100:0" } else { "90:10" }.to_owned(),
            })
            .collect();
        Phases::of(polls)
    }

    /// A visit from `from` ms to `to` ms after `t0`.
    fn visit(t0: Instant, from: u64, to: u64, backend: &str, version: &str) -> Visit {
        Visit {
            started: t0 + Duration::from_millis(from),
            ended: t0 + Duration::from_millis(to),
            backend: backend.to_owned(),
            version: version.to_owned(),
        }
    }

    #[test]
    fn journeys_count_moves_by_phase_and_catch_clients_that_go_back_or_split() {
        let t0 = Instant::now();
        let phases = phases(t0);
        assert_eq!(phases.ratios(), ["100:0", "90:10"]);
        let (moved, back, split): (IpAddr, IpAddr, IpAddr) = (
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 0, 0, 2).into(),
            Ipv4Addr::new(10, 0, 0, 3).into(),
        );
        let mut tally = Tally::default();
        tally.clients.insert(
            moved,
            vec![visit(t0, 12, 14, "b0", "v1"), visit(t0, 62, 64, "b2", "v2")],
        );
        // Across the change (asked at 50 ms): placed in the later phase.
        tally.clients.insert(
            back,
            vec![
                visit(t0, 2, 4, "b0", "v1"),
                visit(t0, 45, 55, "b2", "v2"),
                visit(t0, 72, 74, "b0", "v1"),
            ],
        );
        tally.clients.insert(
            split,
            vec![visit(t0, 12, 14, "b0", "v1"), visit(t0, 22, 24, "b1", "v1")],
        );
        let journeys = phases.journeys(&tally, "v2");
        assert_eq!(journeys.clients, 3);
        let [before, after] = &journeys.phases[..] else {
            panic!("two phases: {journeys:?}")
        };
        assert_eq!((before.seen, before.on_new, before.moved), (3, 0, 0));
        // `back`'s visit to v2 is in no phase (it crossed the change), but
        // counts as its move, in the later phase.
        assert_eq!((after.seen, after.on_new, after.moved), (2, 1, 2));
        assert_eq!(before.split, [(split, vec!["b0".to_owned(), "b1".to_owned()])]);
        assert!(after.split.is_empty());
        assert_eq!(
            journeys.went_back,
            [(
                back,
                vec!["v1 on b0 x1".into(), "v2 on b2 x1".into(), "v1 on b0 x1".into()]
            )]
        );
        assert!(!journeys.kept());
    }
}
