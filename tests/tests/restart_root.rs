//! End-to-end tests (root) of what a restarted daemon keeps: `bg-lb run` in
//! a network namespace, killed with SIGKILL (pins kept) and started again.
//! - a backend that was down stays out of the tables across restarts and a
//!   crash loop until its probes bring it up (`rise` successes).

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddrV4,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData};
use bg_lb::{dataplane::pins::PinLayout, protocol::BackendHealth};
use bg_lb_common::maps::{self, Backend, NO_BACKEND, Service, ServiceKey};
use bg_lb_tests::lab::{NameLab, NameLabConfig};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
/// The backend that goes down.
const DOWN: usize = 3;

fn open(pin_dir: &Path, name: &str) -> Map {
    let path = PinLayout::new(pin_dir).maps_dir().join(name);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open pinned {name}: {e}"));
    Map::from_map_data(data).expect("a known map type")
}

/// The backends the pinned lookup table of `vip` sends new flows to: what
/// the data plane does, whatever the daemon reports.
fn table_backends(pin_dir: &Path, vip: SocketAddrV4) -> BTreeSet<SocketAddrV4> {
    let services: HashMap<_, ServiceKey, Service> = open(pin_dir, maps::SERVICES).try_into().unwrap();
    let tables: Array<_, u32> = open(pin_dir, maps::LOOKUP_TABLES).try_into().unwrap();
    let backends: Array<_, Backend> = open(pin_dir, maps::BACKENDS).try_into().unwrap();
    let service = services
        .get(&ServiceKey::new(vip), 0)
        .expect("the service is programmed");
    let ids: BTreeSet<u32> = (service.lut_base..service.lut_base + service.lut_size)
        .map(|slot| tables.get(&slot, 0).expect("read LOOKUP_TABLES"))
        .filter(|&id| id != NO_BACKEND)
        .collect();
    ids.iter()
        .map(|id| backends.get(id, 0).expect("read BACKENDS").addr())
        .collect()
}

/// Polls `status` until backend `i` has `health`; panics after 30 s.
fn wait_health(lab: &NameLab, i: usize, health: BackendHealth) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.daemon.status("web").backends[i].health != health {
        assert!(Instant::now() < deadline, "b{i} never {health}:\n{}", lab.daemon.log());
        thread::sleep(Duration::from_millis(100));
    }
}

/// Right after a (re)start, before any probe could bring it up: b3 is not
/// in the table, and no new connection reaches it.
fn assert_kept_out(lab: &NameLab, when: &str) {
    let down = lab.backend_addr(DOWN);
    let table = table_backends(&lab.daemon.pin_dir, lab.vip());
    assert!(!table.contains(&down), "{when}: b3 is in the table {table:?}");
    assert_eq!(table.len(), 3, "{when}: the other backends serve: {table:?}");
    let names = lab.names(40);
    assert!(
        !names.iter().any(|n| n == "b3"),
        "{when}: a connection reached b3: {names:?}"
    );
}

#[test]
fn a_backend_down_before_a_restart_or_a_crash_loop_gets_no_connection_before_rise_successes() {
    // rise = 100 at 1 s: the checks below run long before b3 could rise.
    let config = NameLabConfig {
        service: "ratio = \"50:50\"\nlookup_table_size = 251\n\n[service.health]\ninterval = \"1s\"\n\
                  fast_interval = \"1s\"\ntimeout = \"500ms\"\nrise = 100\nfall = 1\n",
        ..NameLabConfig::default()
    };
    let mut lab = NameLab::start(BG_LB, 4, None, &config);
    lab.stop_server(DOWN);
    wait_health(&lab, DOWN, BackendHealth::Down);

    lab.daemon.kill9();
    // Its port accepts again: one successful probe would be enough for a
    // daemon that counted unknown health as up.
    lab.start_server(DOWN);
    lab.daemon.spawn();
    assert_kept_out(&lab, "after a restart");
    let status = lab.daemon.status("web");
    assert_eq!(status.backends[DOWN].health, BackendHealth::Down, "{status:#?}");

    for cycle in 0..3 {
        lab.daemon.kill9();
        lab.daemon.spawn();
        assert_kept_out(&lab, &format!("crash loop, restart {cycle}"));
    }

    // With rise = 2 its probes bring it back: the state was not stuck.
    let path = lab.daemon.config_path();
    let text = fs::read_to_string(&path).unwrap().replace("rise = 100", "rise = 2");
    fs::write(&path, text).unwrap();
    lab.daemon.ctl_ok(&["reload"]);
    wait_health(&lab, DOWN, BackendHealth::Up);
    assert!(table_backends(&lab.daemon.pin_dir, lab.vip()).contains(&lab.backend_addr(DOWN)));
    assert!(lab.names(40).iter().any(|n| n == "b3"), "b3 serves again after rise");
}
