//! The fleet's state store against a real etcd (Debian's etcd-server, on
//! loopback; no root needed): what one host saves reaches the others, a
//! concurrent change is refused rather than lost, etcd away refuses changes
//! by name, and a shift lead passes on when its host's lease dies.
//! Deadlines are generous and never asserted as timings.

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use bg_lb::{
    cluster::{
        report::{HostCounters, HostReport},
        store::{StateStore, StoreError},
        watch::FleetUpdate,
    },
    config::ClusterConfig,
    ratio::Ratio,
    shift::{CountersByHost, PoolCounters},
    state_file::{self, OperatorState},
};
use bg_lb_tests::etcd::Etcd;
use tokio::sync::mpsc::UnboundedReceiver;

const DEADLINE: Duration = Duration::from_secs(20);

/// One host's store: its own state dir under the test's directory.
struct Host {
    store: StateStore,
    state: OperatorState,
    updates: UnboundedReceiver<FleetUpdate>,
    dir: PathBuf,
}

impl Host {
    fn open(etcd: &Etcd, name: &str, test: &str) -> Host {
        let dir = std::env::temp_dir().join(format!("bglb-fleet-store-{}-{test}-{name}", std::process::id()));
        let cluster = ClusterConfig {
            etcd: vec![etcd.client.to_string()],
            host: name.into(),
            prefix: format!("/test-{test}"),
        };
        let (mut store, state) = StateStore::open(&dir, Some(&cluster)).expect("open the fleet store");
        let updates = store.fleet_mut().expect("a fleet").take_updates().expect("updates");
        Host {
            store,
            state,
            updates,
            dir,
        }
    }

    fn set_ratio(&mut self, blue: u32) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        next.services.entry("web".into()).or_default().ratio = Some(Ratio::new(blue).unwrap());
        self.store.save(&next)?;
        self.state = next;
        Ok(())
    }

    fn ratio(&self) -> Option<Ratio> {
        self.state.services.get("web")?.ratio
    }

    /// Takes the fleet updates that came.
    fn take_updates(&mut self) {
        while let Ok(update) = self.updates.try_recv() {
            if let Some(services) = self.store.fleet_mut().unwrap().accept(update).expect("a valid state") {
                self.state.services = services;
            }
        }
    }

    /// Takes fleet updates until the ratio is `blue`; panics after the
    /// deadline.
    fn await_ratio(&mut self, blue: u32) {
        let deadline = Instant::now() + DEADLINE;
        while self.ratio() != Ratio::new(blue).ok() {
            match self.updates.try_recv() {
                Ok(update) => {
                    if let Some(services) = self.store.fleet_mut().unwrap().accept(update).expect("a valid state") {
                        self.state.services = services;
                    }
                }
                Err(_) => {
                    assert!(Instant::now() < deadline, "ratio {:?}, never {blue}", self.ratio());
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_change_saved_on_one_host_reaches_the_other_and_a_concurrent_change_is_refused_not_lost() {
    let etcd = Etcd::start_on_loopback();
    let mut a = Host::open(&etcd, "a", "change");
    let mut b = Host::open(&etcd, "b", "change");
    a.set_ratio(30).expect("a's change");
    b.await_ratio(30);
    // The host's copy follows: a restart while etcd is away starts from it.
    assert_eq!(
        state_file::load(&a.dir).unwrap().services["web"].ratio,
        Ratio::new(30).ok()
    );

    // a writes again before b has seen it: b's write, made on the older
    // revision, is refused and changes nothing.
    a.set_ratio(40).expect("a's second change");
    let refused = b.set_ratio(90).expect_err("b wrote over a change it had not seen");
    assert!(matches!(refused, StoreError::Conflict), "{refused}");
    assert!(
        refused.to_string().contains("another host changed the fleet state"),
        "{refused}"
    );
    b.await_ratio(40);
    b.set_ratio(90).expect("b's change once it has seen a's");
    a.await_ratio(90);

    // Someone deletes the key: the hosts keep their state, and the next
    // change, once they have seen the deletion, writes it again.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = bg_lb::cluster::etcd::Etcd::new(&[etcd.client.to_string()]);
    runtime
        .block_on(client.delete("/test-change/state"))
        .expect("delete the fleet key");
    until("a never wrote the fleet state again", || {
        a.take_updates();
        match a.set_ratio(60) {
            Ok(()) => true,
            Err(StoreError::Conflict) => false,
            Err(e) => panic!("{e}"),
        }
    });
    assert_eq!(a.ratio(), Ratio::new(60).ok());
    b.await_ratio(60);
}

#[test]
fn with_etcd_gone_changes_are_refused_naming_etcd_and_a_restart_starts_from_the_hosts_copy() {
    let mut etcd = Etcd::start_on_loopback();
    let mut a = Host::open(&etcd, "a", "gone");
    a.set_ratio(20).expect("a change while etcd runs");
    etcd.kill();
    let refused = a.set_ratio(80).expect_err("a change without etcd");
    let message = refused.to_string();
    assert!(
        message.contains("etcd is unreachable")
            && message.contains(&etcd.client.to_string())
            && message.contains("every host keeps forwarding with its last state"),
        "{message}"
    );
    assert_eq!(a.ratio(), Ratio::new(20).ok());
    assert_eq!(
        state_file::load(&a.dir).unwrap().services["web"].ratio,
        Ratio::new(20).ok()
    );
    // A daemon restarted meanwhile starts from the host's copy, and refuses
    // changes until it has read the fleet's state.
    let mut again = Host::open(&etcd, "a", "gone");
    assert_eq!(again.ratio(), Ratio::new(20).ok());
    let refused = again.set_ratio(80).expect_err("a change before reading etcd");
    assert!(
        refused.to_string().contains("has not read the fleet state from etcd"),
        "{refused}"
    );
}

#[test]
fn a_shift_lead_is_held_by_one_host_and_passes_on_when_that_hosts_lease_dies() {
    let etcd = Etcd::start_on_loopback();
    let a = Host::open(&etcd, "a", "lead");
    let b = Host::open(&etcd, "b", "lead");
    let lead = |host: &Host| host.store.fleet().unwrap().lead("web").expect("etcd answers");
    let others = |host: &Host| {
        host.store
            .fleet()
            .unwrap()
            .others_counters("web")
            .expect("etcd answers")
    };
    let publish = |host: &Host, counters: PoolCounters| {
        let counters = HostCounters::from([("web".to_owned(), [counters, PoolCounters::default()])]);
        host.store.fleet().unwrap().publish(&HostReport {
            counters,
            ..Default::default()
        });
    };
    let (of_a, of_b) = (
        PoolCounters {
            new_flows: 7,
            refused: 2,
            resets: 1,
        },
        PoolCounters {
            new_flows: 5,
            ..Default::default()
        },
    );
    until("host a never took the lead", || lead(&a));
    // Counters go under the host's lease: once a sees b's, b has a lease
    // and could lead.
    until("a never saw b's counters", || {
        publish(&b, of_b);
        others(&a) == CountersByHost::from([("b".into(), [of_b, PoolCounters::default()])])
    });
    assert!(!lead(&b), "two hosts lead one shift");
    assert!(lead(&a), "the leader lost the lead while alive");
    until("b never saw a's counters", || {
        publish(&a, of_a);
        others(&b) == CountersByHost::from([("a".into(), [of_a, PoolCounters::default()])])
    });

    // a dies: its lease expires, its lead and counters go, b takes over.
    drop(a);
    until("b never took the lead after a died", || lead(&b));
    until("a's counters outlived its lease", || others(&b).is_empty());
}
